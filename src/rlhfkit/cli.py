"""``rlhfkit STAGE --config FILE.yaml [--field value ...]``: one subcommand per stage.

Errors a user can fix (bad data, bad config, a run that must stop) print one line and exit
non-zero; ``--debug`` shows the traceback as well.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

USAGE = """usage: rlhfkit STAGE [--config FILE.yaml] [--field value ...]

stages:
  sft     supervised fine-tuning on {prompt, completion}, {messages} or {text} data
  rm      train a reward model on {prompt, chosen, rejected} pairs
  dpo     direct preference optimisation (DPO, IPO, robust DPO, hinge) on pairs
  ppo     PPO with a critic against a reward model and/or reward functions, KL to a reference
  rloo    REINFORCE leave-one-out (several samples per prompt)
  grpo    group relative policy optimisation (group-normalised rewards, KL in the loss)
  best-of-n  sample N completions per prompt and keep the best by a reward source
  sample-pairs  sample k responses per prompt from a policy into {prompt, response_a, response_b} pairs
  judge   label {prompt, response_a, response_b} pairs with an AI judge (an OpenAI-compatible URL, a local
          model or a reward model), both orders, bias statistics -> TRL preference JSONL (RLAIF)
  merge-lora  merge a LoRA run's adapter folder (any trainer with lora_r > 0) into its base model:
          a full folder that AutoModelForCausalLM / AutoModelForSequenceClassification loads
  serve   serve a model through an OpenAI-compatible API (/v1/chat/completions, /v1/completions, streaming)
          behind optional input/output filters (--guard FILE)
  pipeline  run stages listed in a YAML file, each feeding the next; finished stages are skipped
  annotate  collect human preferences: `rlhfkit annotate serve|import|add-user|export|stats|guidelines|migrate`
  demo    the built-in demo: base -> SFT -> pairs -> simulated annotators -> RM -> DPO and PPO
          -> gold evaluation -> runs/demo/report.html (a `pipeline` on rlhfkit/configs/demo.yaml)
  lab LEVER  the lever lab on the demo world: noise | kl | coverage | knowledge; each writes a
          figure and a table to runs/lab/ (label noise -> RM accuracy -> gold reward; KL strength ->
          proxy vs gold reward; a category left out of the preferences; a fact pretraining never had)
  eval    a policy vs a baseline on prompts: win rate with 95% CI, length-controlled win rate, reward,
          length, KL to the baseline (scored by a reward model or reward functions)
  frontier  reward (proxy and held-out) vs KL to a baseline across runs/checkpoints, Gao et al. fits
  rm-eval   a reward model on held-out pairs: accuracy with CI, reliability diagram, per-category accuracy
  coverage  which evaluation/red-team prompt clusters have few or no preference pairs near them
  audit   bias probes for a reward source: counterfactual name/gender/age/dialect swaps, length bias
  noise   label-noise finder: k-fold reward models flag pairs whose out-of-fold margin contradicts the label
  world-base, world-data, simulate-annotators, gold-eval
          the demo world's stages, for pipelines of your own

`rlhfkit STAGE --help` lists every field of that stage with its default."""

EXIT_USER_ERROR = 2


def _stages():
    from .stages import registry
    from .config import ServeConfig
    from .serve import run_serve
    from .world.demo import DemoConfig, run_demo
    from .world.lab import LabConfig, run_lab

    # serve runs until stopped, so it is no pipeline stage
    return {**registry(), "demo": (DemoConfig, run_demo), "lab": (LabConfig, run_lab), "serve": (ServeConfig, run_serve)}


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="[rlhfkit] %(message)s")
    for name in ("httpx", "urllib3", "filelock", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        # Asked for: stdout, exit 0. Missing stage: an error, so stderr (as argparse does), exit 2.
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_USER_ERROR
    stage, rest = argv[0], argv[1:]
    if stage == "lab" and rest and not rest[0].startswith("-"):  # `rlhfkit lab noise ...`
        rest = ["--lever", rest[0], *rest[1:]]
    if stage == "annotate":  # a web app with subcommands of its own; needs neither torch nor transformers
        from .annotate.cli import main as annotate_main

        return annotate_main(rest)
    debug = "--debug" in rest
    _quiet_libraries()
    stages = _stages()
    if stage not in stages and stage != "pipeline":
        print(f"rlhfkit: error: unknown stage {stage!r}\n\n{USAGE}", file=sys.stderr)
        return EXIT_USER_ERROR
    return _run_stage(stage, rest, stages, debug)


def _end_distributed() -> None:
    """Tear the process group down before the interpreter exits: left to shutdown, gloo's threads
    can abort a run that succeeded ("terminate called without an active exception", exit -6)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run_stage(stage: str, rest: list[str], stages: dict, debug: bool) -> int:
    from .config import ConfigError, parse_config
    from .data import DataError
    from .judge import JudgeError
    from .train.distributed import TrainingError

    try:
        if stage == "pipeline":  # its file lists stages, so it has no config dataclass of its own
            from .pipeline import main as pipeline_main

            summary = pipeline_main([a for a in rest if a != "--debug"])
        else:
            cls, fn = stages[stage]
            cfg = parse_config(cls, rest, prog=f"rlhfkit {stage}")
            summary = fn(cfg)
    except (DataError, ConfigError, TrainingError, JudgeError, ValueError, OSError) as e:
        if debug:
            traceback.print_exc()
        kind = type(e).__name__
        print(f"rlhfkit {stage}: error: {e}" if kind in ("DataError", "ConfigError", "TrainingError", "JudgeError")
              else f"rlhfkit {stage}: error: {kind}: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"rlhfkit {stage}: interrupted", file=sys.stderr)
        return 130
    # under torchrun / accelerate launch every process returns here: one line from the main one
    if (isinstance(summary, dict) and "train_seconds" in summary and stage not in ("demo", "lab")
            and os.environ.get("RANK", "0") == "0"):
        print(f"rlhfkit {stage}: done -> {cfg.output_dir} ({summary.get('steps')} steps, "
              f"{summary.get('train_seconds')} s)")
    return 0


def entry() -> None:
    try:
        code = main()
    finally:
        _end_distributed()
    sys.exit(code)


if __name__ == "__main__":
    entry()
