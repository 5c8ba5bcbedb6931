"""The one registry of stages: every ``rlhfkit NAME``, its one-line summary, where its config class
and run function live, and whether a pipeline may use it.

``rlhfkit --help`` (``usage``), ``rlhfkit pipeline`` (``registry``) and docs/configuration.md
(``python -m rlhfkit.stages docs``) are all generated from ``STAGES``. Modules are imported only when
a stage is loaded, so ``rlhfkit --help`` stays fast and ``rlhfkit serve --help`` needs no web stack.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator


@dataclass(frozen=True)
class Stage:
    """A stage: ``module`` (under ``rlhfkit``) holds ``config`` (a dataclass) and ``run``
    (``run(config) -> summary dict``); a stage without a module has a command line of its own."""

    name: str
    summary: str
    module: str = ""
    config: str = ""
    run: str = ""
    pipeline: bool = True
    usage: str = ""  # how the usage text names it, when more than the name ("lab LEVER")

    def load(self) -> tuple[type, Callable]:
        """(config class, run function), importing the module now."""
        module = importlib.import_module(f"rlhfkit.{self.module}")
        return getattr(module, self.config), getattr(module, self.run)


STAGES: tuple[Stage, ...] = (
    Stage("sft", "supervised fine-tuning on {prompt, completion}, {messages} or {text} data",
          "train.sft", "SFTConfig", "run_sft"),
    Stage("rm", "train a reward model on {prompt, chosen, rejected} pairs", "train.rm", "RMConfig", "run_rm"),
    Stage("dpo", "direct preference optimisation (DPO, IPO, robust DPO, hinge) on pairs",
          "train.dpo", "DPOConfig", "run_dpo"),
    Stage("ppo", "PPO with a critic against a reward model and/or reward functions, KL to a reference",
          "train.ppo", "PPOConfig", "run_ppo"),
    Stage("rloo", "REINFORCE leave-one-out (several samples per prompt)", "train.rloo", "RLOOConfig", "run_rloo"),
    Stage("grpo", "group relative policy optimisation (group-normalised rewards, KL in the loss)",
          "train.grpo", "GRPOConfig", "run_grpo"),
    Stage("best-of-n", "sample N completions per prompt and keep the best by a reward source",
          "best_of_n", "BestOfNConfig", "run_best_of_n"),
    Stage("sample-pairs", "sample k responses per prompt from a policy into {prompt, response_a, response_b} pairs",
          "sample_pairs", "SamplePairsConfig", "run_sample_pairs"),
    Stage("mix-pairs", "this round's preference pairs plus a share of earlier rounds' (iterated rounds)",
          "mix_pairs", "MixPairsConfig", "run_mix_pairs"),
    Stage("collect", "people in the loop: push pairs to a running `rlhfkit annotate serve`, wait for K labels each, "
          "pull them with agreement statistics", "annotate.collect", "CollectConfig", "run_collect"),
    Stage("judge", "label pairs with an AI judge (an OpenAI-compatible URL, a local model or a reward model), "
          "both orders, bias statistics -> TRL preference JSONL (RLAIF)", "judge.run", "JudgeConfig", "run_judge"),
    Stage("merge-lora", "merge a LoRA run's adapter folder into its base model: a full Hugging Face folder",
          "merge_lora", "MergeLoraConfig", "run_merge_lora"),
    # serve runs until stopped, so it is no pipeline stage
    Stage("serve", "serve a model through an OpenAI-compatible API (/v1/chat/completions, /v1/completions, "
          "streaming) behind optional input/output filters (--guard FILE)", "serve", "ServeConfig", "run_serve",
          pipeline=False),
    Stage("pipeline", "run stages listed in a YAML file, each feeding the next; finished stages are skipped",
          pipeline=False),
    Stage("annotate", "collect human preferences: `rlhfkit annotate serve|import|add-user|export|stats|guidelines"
          "|migrate`", pipeline=False),
    Stage("demo", "the built-in demo: base -> SFT -> pairs -> simulated annotators -> RM -> DPO and PPO -> gold "
          "evaluation -> runs/demo/report.html (a `pipeline` on rlhfkit/configs/demo.yaml)",
          "demo", "DemoConfig", "run_demo", pipeline=False),
    Stage("lab", "the lever lab on the demo world: noise | kl | coverage | knowledge | active; each writes a figure and a "
          "table to runs/lab/", "lab", "LabConfig", "run_lab", pipeline=False, usage="lab LEVER"),
    Stage("eval", "a policy vs a baseline on prompts: win rate with 95% CI, length-controlled win rate, reward, "
          "length, KL to the baseline", "evaluate.winrate", "EvalConfig", "run_eval"),
    Stage("frontier", "reward (proxy and held-out) vs KL to a baseline across runs/checkpoints, Gao et al. fits",
          "evaluate.frontier_stage", "FrontierConfig", "run_frontier"),
    Stage("rm-eval", "a reward model on held-out pairs: accuracy with CI, reliability diagram, per-category accuracy",
          "evaluate.rm_report", "RMEvalConfig", "run_rm_eval"),
    Stage("coverage", "which evaluation/red-team prompt clusters have few or no preference pairs near them",
          "evaluate.coverage", "CoverageConfig", "run_coverage"),
    Stage("audit", "bias probes for a reward source: counterfactual name/gender/age/dialect swaps, length bias",
          "evaluate.audit", "AuditConfig", "run_audit"),
    Stage("noise", "label-noise finder: k-fold reward models flag pairs whose out-of-fold margin contradicts the "
          "label", "evaluate.noise", "NoiseConfig", "run_noise"),
    Stage("world-base", "the demo world's pretrained base model (built once, cached)",
          "world.stages", "WorldBaseConfig", "run_world_base"),
    Stage("world-data", "the demo world's demonstrations, training, held-out and knowledge-gap prompts",
          "world.stages", "WorldDataConfig", "run_world_data"),
    Stage("simulate-annotators", "label sampled pairs with the demo world's simulated annotators",
          "world.stages", "SimulateAnnotatorsConfig", "run_simulate_annotators"),
    Stage("gold-eval", "sample policies on held-out prompts and judge them with the demo world's gold preference",
          "world.stages", "GoldEvalConfig", "run_gold_eval"),
)


def find(name: str) -> Stage | None:
    return next((s for s in STAGES if s.name == name), None)


class _Registry(Mapping):
    """name -> (config class, run function) of the pipeline stages, each imported when first asked for."""

    def __init__(self) -> None:
        self._stages = {s.name: s for s in STAGES if s.pipeline and s.module}

    def __getitem__(self, name: str) -> tuple[type, Callable]:
        return self._stages[name].load()

    def __iter__(self) -> Iterator[str]:
        return iter(self._stages)

    def __len__(self) -> int:
        return len(self._stages)


def registry() -> Mapping[str, tuple[type, Callable]]:
    """The stages a pipeline file may name."""
    return _Registry()


def usage() -> str:
    """``rlhfkit --help``."""
    lines = ["usage: rlhfkit STAGE [--config FILE.yaml] [--field value ...]", "", "stages:"]
    for s in STAGES:
        label = s.usage or s.name
        head = f"  {label:<12}  " if len(label) <= 12 else f"  {label}  "
        lines += textwrap.wrap(s.summary, 110, initial_indent=head, subsequent_indent=" " * 16,
                               break_on_hyphens=False, break_long_words=False)
    lines += ["", "`rlhfkit STAGE --help` lists every field of that stage with its default."]
    return "\n".join(lines)


# ------------------------------------------------------------------ docs/configuration.md


def _owner(cls: type, name: str) -> type:
    """The class in ``cls``'s hierarchy that declares field ``name`` last (the one whose default wins)."""
    return next(k for k in cls.__mro__ if name in vars(k).get("__annotations__", {}))


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return f'`"{value}"`' if isinstance(value, str) else f"`{value!r}`"


def _type_name(hint) -> str:
    return hint.__name__ if type(hint) is type else str(hint).replace("typing.", "")


def _table(cls: type, names: list[str]) -> list[str]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)  # not f.type: HfArgumentParser resolves it in place, a string until then
    rows = ["| field | type | default | help |", "| --- | --- | --- | --- |"]
    for name in names:
        f = fields[name]
        choices = f.metadata.get("choices")
        help_text = f.metadata.get("help", "") + (f" One of: {', '.join(choices)}." if choices else "")
        rows.append(f"| `{name}` | {_cell(_type_name(hints[name]))} | {_cell(_default(f))} | {_cell(help_text)} |")
    return rows


def configuration_markdown() -> str:
    """docs/configuration.md: every stage's summary and fields; the shared groups' fields once, at the end."""
    loaded = [(s, s.load()[0]) for s in STAGES if s.module]
    stage_classes = {cls for _, cls in loaded}
    out = ["# Configuration", "",
           "Every stage's fields, generated from the code by `python -m rlhfkit.stages docs` (a test fails when",
           "this file is stale). Set a field in the YAML file of `--config` or as `--field value`; a pipeline",
           "stage sets them under `with:`. A stage built on shared groups lists its own fields and overrides",
           "here and names the groups; each group's fields are listed once, under [Shared groups](#shared-groups)",
           "(a later group's field replaces an earlier one's of the same name).", ""]
    groups: list[type] = []
    for s, cls in loaded:
        owners = {f.name: _owner(cls, f.name) for f in dataclasses.fields(cls)}
        own = [n for n, k in owners.items() if k in stage_classes]
        used = [k for k in reversed(cls.__mro__) if k not in stage_classes and dataclasses.is_dataclass(k)
                and any(o is k for o in owners.values())]
        groups += [k for k in used if k not in groups]
        out += [f"## `rlhfkit {s.usage or s.name}`", "", s.summary[0].upper() + s.summary[1:] + ".", "",
                f"Config class: `{cls.__module__}.{cls.__name__}`.", ""]
        if used:
            out += ["Shared groups: " + ", ".join(f"[{k.__name__}](#{k.__name__.lower()})" for k in used) + ".", ""]
        if own:
            out += _table(cls, own) + [""]
    out += ["## Shared groups", ""]
    for k in groups:
        own = [f.name for f in dataclasses.fields(k) if _owner(k, f.name) is k]
        out += [f"### {k.__name__}", "", f"`{k.__module__}.{k.__name__}`: {(k.__doc__ or '').strip().splitlines()[0]}",
                ""] + _table(k, own) + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m rlhfkit.stages docs [PATH]``: write docs/configuration.md (or PATH)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "docs" or len(argv) > 2:
        print("usage: python -m rlhfkit.stages docs [PATH]  (default PATH: docs/configuration.md)", file=sys.stderr)
        return 2
    path = Path(argv[1] if len(argv) > 1 else "docs/configuration.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(configuration_markdown(), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
