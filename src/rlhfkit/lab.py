"""``rlhfkit lab noise|kl|coverage|knowledge|active``: the seed's four levers, measured in the demo world.

The demo world knows the gold preference the annotators only approximate, so each lever can be
turned and its effect read off against gold:

- ``noise``: annotator flip rate -> reward-model accuracy on gold-ordered held-out pairs -> gold
  reward of best-of-N sampling under that reward model.
- ``kl``: PPO at several KL coefficients -> proxy (reward-model) and gold reward during training,
  and gold reward against KL to the SFT model on held-out prompts. Too weak a KL penalty lets the
  policy climb the proxy while the gold reward falls: reward hacking.
- ``coverage``: DPO on all preference pairs vs. on pairs with one prompt category left out ->
  gold improvement per category.
- ``knowledge``: DPO and PPO change tone (more honest "not sure" answers on questions pretraining
  never answered) but do not teach the missing facts.
- ``active``: labels needed to reach a reward-model accuracy when the pairs to label are picked by
  an ensemble's disagreement (plus a random share) instead of at random (``world/active_lab.py``).

Every lab is a pipeline built from the demo's own stages (``rlhfkit/configs/demo.yaml``, or the
file given by ``--pipeline``) plus the sweep's variants; they share one output folder, so stages
common to several labs (base, data, SFT, pairs, labels, RM) run once and are skipped after. Each lab
writes ``<lever>.png`` (figure), ``<lever>.md`` (table), ``<lever>.json`` and ``<lever>.yaml`` (the
pipeline it ran) to the output folder, and ``index.html`` shows every lab run so far.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import report
from .active import CRITERIA
from .config import ConfigError, option
from .pipeline import load_pipeline, run_pipeline
from .world.gold import gold_score
from .world.tasks import CATEGORIES, Prompt

LEVERS = ("noise", "kl", "coverage", "knowledge", "active")
GOLD_FN = "rlhfkit.world.gold:gold_reward"


@dataclass
class LabConfig:
    """One lever-lab sweep on the demo world (`rlhfkit lab LEVER`)."""

    lever: str = option("", "noise, kl, coverage, knowledge or active (may be given as the first argument).")
    output_dir: str = option("runs/lab", "Folder shared by all labs: stage folders, <lever>.png/.md/.json.")
    pipeline: str = option("", "Pipeline YAML whose stages the lab builds on; empty: the built-in demo.yaml.")
    flip_rates: list[float] = option([0.0, 0.1, 0.2, 0.3, 0.4, 0.45], "noise: annotator flip rates to sweep.")
    best_of: int = option(16, "noise: N of the best-of-N policy that spends each reward model.")
    kl_coefs: list[float] = option([0.0, 0.03, 0.1, 0.3], "kl: PPO KL coefficients to sweep.")
    kl_steps: int = option(0, "kl: PPO steps per run; 0 keeps the demo's.")
    leave_out: str = option("advice", "coverage: the prompt category left out of the preference data.")
    active_budget: int = option(1200, "active: labels random selection spends (the full budget).")
    active_step: int = option(50, "active: labels per batch (and the first, random, batch of both arms).")
    active_ensemble: int = option(5, "active: bootstrap reward-model heads whose disagreement picks pairs.")
    active_random_fraction: float = option(0.25, "active: share of every batch drawn at random (keeps the "
                                                 "labelled set an unbiased sample).")
    active_criterion: str = option("disagreement", "active: how pairs are scored, disagreement (variance of the "
                                                   "members' P(a > b)) or uncertainty (mean P(a > b) near 0.5).")
    active_repeats: int = option(3, "active: repeats (label draws, splits, orders) averaged in the curves.")
    force: list[str] = option([], "Stage names to rerun even if unchanged.")


def _fmt(value: float) -> str:
    return f"{value:g}".replace("-", "m")


def _variant(stage: dict, name: str, **changes) -> dict:
    out = copy.deepcopy(stage)
    out["name"] = name
    out.setdefault("with", {}).update(changes)
    return out


def _demo_stages(cfg: LabConfig) -> tuple[dict, dict]:
    from .demo import builtin_config

    path = cfg.pipeline or builtin_config()
    spec = load_pipeline(path)
    stages = {st["name"]: st for st in spec["stages"]}
    needed = {"base", "data", "sft", "pairs", "labels", "rm", "dpo", "ppo", "eval"}
    if needed - set(stages):
        raise ConfigError(f"{path}: the lab builds on the demo's stages; missing {sorted(needed - set(stages))}")
    return spec, stages


def _eval_stage(demo: dict, policies: list[str], name: str = "eval") -> dict:
    # no best-of-N frontier here: that is the demo's report's, and a lab may have no "{rm}" stage
    return _variant(demo["eval"], name, policies=policies, reward_model="")


def noise_stages(cfg: LabConfig, demo: dict) -> list[dict]:
    stages = [demo[n] for n in ("base", "data", "sft", "pairs")]
    for r in cfg.flip_rates:
        tag = _fmt(r)
        stages.append(_variant(demo["labels"], f"labels_flip{tag}", flip_rate=r))
        # held-out accuracy is measured against the gold order, not against the noisy labels
        stages.append(_variant(demo["rm"], f"rm_flip{tag}", data=f"{{labels_flip{tag}}}/train.jsonl",
                               eval_data=f"{{labels_flip{tag}}}/eval_gold.jsonl"))
        stages.append({"name": f"bon_flip{tag}", "stage": "best-of-n", "with": {
            "model": "{sft}", "data": "{data}/prompts_eval.jsonl", "reward_model": f"{{rm_flip{tag}}}",
            "n": cfg.best_of, "max_new_tokens": demo["eval"]["with"].get("max_new_tokens", 32)}})
    return stages


def kl_stages(cfg: LabConfig, demo: dict) -> list[dict]:
    stages = [demo[n] for n in ("base", "data", "sft", "pairs", "labels", "rm")]
    names = []
    for c in cfg.kl_coefs:
        names.append(f"ppo_kl{_fmt(c)}")
        extra = {"max_steps": cfg.kl_steps} if cfg.kl_steps else {}
        # the gold reward rides along with weight 0: logged, never optimised
        stages.append(_variant(demo["ppo"], names[-1], kl_coef=c, kl_target=0.0, reward_fn=[GOLD_FN],
                               reward_weights=[1.0, 0.0], log_kl=True, **extra))  # kl logged at kl_coef 0 too
    stages.append(_eval_stage(demo, [f"{n}={{{n}}}" for n in names], "eval_kl"))
    return stages


def coverage_stages(cfg: LabConfig, demo: dict) -> list[dict]:
    if cfg.leave_out not in CATEGORIES:
        raise ConfigError(f"field 'leave_out': {cfg.leave_out!r} is not a category ({', '.join(CATEGORIES)})")
    tag = f"no_{cfg.leave_out}"
    stages = [demo[n] for n in ("base", "data", "sft", "pairs", "labels", "dpo")]
    stages.append(_variant(demo["labels"], f"labels_{tag}", exclude_categories=[cfg.leave_out]))
    stages.append(_variant(demo["dpo"], f"dpo_{tag}", data=f"{{labels_{tag}}}/train.jsonl",
                           eval_data=f"{{labels_{tag}}}/eval.jsonl"))
    stages.append(_eval_stage(demo, ["dpo={dpo}", f"dpo_{tag}={{dpo_{tag}}}"], f"eval_{tag}"))
    return stages


def knowledge_stages(cfg: LabConfig, demo: dict) -> list[dict]:
    stages = [demo[n] for n in ("base", "data", "sft", "pairs", "labels", "rm", "dpo", "ppo", "eval")]
    # honesty data: the same pairs plus, for each wrong answer the SFT model gave in them, a pair
    # preferring "i do not know" to it; DPO on that, then the knowledge-gap probe again
    stages.append(_variant(demo["labels"], "labels_idk", idk_pairs=True))
    stages.append(_variant(demo["dpo"], "dpo_idk", data="{labels_idk}/train.jsonl", eval_data="{labels_idk}/eval.jsonl"))
    stages.append(_variant(demo["eval"], "eval_idk", policies=["dpo_idk={dpo_idk}"], reward_model=""))
    # the same policies on the training prompts: facts the preference pairs asked about
    stages.append(_variant(demo["eval"], "eval_train_prompts", data="{data}/prompts_train.jsonl", gap_data="",
                           reward_model="", policies=[*demo["eval"]["with"].get("policies", []), "dpo_idk={dpo_idk}"]))
    return stages


def active_stages(cfg: LabConfig, demo: dict) -> list[dict]:
    if not 0.0 <= cfg.active_random_fraction <= 1.0:
        raise ConfigError(f"field 'active_random_fraction': expected a share in [0, 1], got {cfg.active_random_fraction}")
    if cfg.active_step < 1 or cfg.active_budget < cfg.active_step or cfg.active_ensemble < 2 or cfg.active_repeats < 1:
        raise ConfigError("fields 'active_step', 'active_budget', 'active_ensemble', 'active_repeats': need "
                          "1 <= active_step <= active_budget, active_ensemble >= 2, active_repeats >= 1")
    if cfg.active_criterion not in CRITERIA:
        raise ConfigError(f"field 'active_criterion': expected one of {', '.join(CRITERIA)}, got {cfg.active_criterion!r}")
    return [demo[n] for n in ("base", "data", "sft", "pairs", "labels")]


BUILDERS = {"noise": noise_stages, "kl": kl_stages, "coverage": coverage_stages, "knowledge": knowledge_stages,
            "active": active_stages}


# ---- readouts: tables and figures --------------------------------------------------------------

def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def best_of_n_gold(bon_file: Path, prompt_file: Path, ns: list[int]) -> dict[int, float]:
    """Gold reward of the reward model's pick among each prompt's first N candidates, per N, from
    one best-of-N run (its file keeps every candidate and its reward); N = 1 is the plain sample."""
    from .evaluate.frontier import best_of_n_curve

    prompts = [Prompt(r["prompt"], r["category"], r.get("subject", ""), r.get("answer", "")) for r in _rows(prompt_file)]
    rows = _rows(bon_file)
    if len(rows) != len(prompts):
        raise ValueError(f"{bon_file}: {len(rows)} rows for {len(prompts)} prompts in {prompt_file}")
    gold = [[gold_score(p, c) for c in r["candidates"]] for p, r in zip(prompts, rows)]
    return {c["n"]: c["gold_reward"] for c in best_of_n_curve([r["rewards"] for r in rows], gold, ns)}


def noise_readout(cfg: LabConfig, root: Path, summaries: dict):
    ns = sorted({1, min(4, cfg.best_of), cfg.best_of})
    rows = []
    for r in cfg.flip_rates:
        tag = _fmt(r)
        gold = best_of_n_gold(root / f"bon_flip{tag}" / "best_of_n.jsonl", root / "data" / "prompts_eval.jsonl", ns)
        rm = summaries[f"rm_flip{tag}"]
        rows.append({"flip_rate": r, "label_gold_agreement": summaries[f"labels_flip{tag}"]["label_gold_agreement"],
                     "rm_gold_accuracy": rm["eval_accuracy"], "rm_gold_accuracy_ci_low": rm["eval_accuracy_ci"][0],
                     "rm_gold_accuracy_ci_high": rm["eval_accuracy_ci"][1],
                     **{f"gold_reward_best_of_{n}": gold[n] for n in ns}})
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = [r["flip_rate"] for r in rows]
    a.plot(x, [r["label_gold_agreement"] for r in rows], "o--", color="grey", label="annotator labels")
    a.plot(x, [r["rm_gold_accuracy"] for r in rows], "o-", label="reward model (held out)")
    a.fill_between(x, [r["rm_gold_accuracy_ci_low"] for r in rows], [r["rm_gold_accuracy_ci_high"] for r in rows],
                   alpha=0.2)
    a.set(xlabel="label flip rate", ylabel="agreement with gold order", title="Noise -> reward-model accuracy")
    for n in ns[1:]:
        b.plot(x, [r[f"gold_reward_best_of_{n}"] for r in rows], "o-", label=f"best-of-{n} under the RM")
    b.axhline(rows[0]["gold_reward_best_of_1"], ls=":", color="grey", label="SFT sample (no selection)")
    b.set(xlabel="label flip rate", ylabel="gold reward (held-out prompts)", title="Noise -> final gold reward")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return rows, fig


def _series(metrics: Path, key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in report.read_metrics(metrics) if isinstance(r.get(key), (int, float))]
    return [r["step"] for r in rows], [r[key] for r in rows]


def _tail_mean(values: list[float], share: float = 0.2) -> float:
    tail = values[-max(1, int(len(values) * share)):]
    return sum(tail) / len(tail) if tail else float("nan")


def kl_readout(cfg: LabConfig, root: Path, summaries: dict):
    from .world.report import smooth

    evals = summaries["eval_kl"]
    proxy_key, gold_key = "reward/reward_model:rm", f"reward/{GOLD_FN}"
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    rows = []
    for c in cfg.kl_coefs:
        name = f"ppo_kl{_fmt(c)}"
        metrics = root / name / "metrics.jsonl"
        steps, proxy = _series(metrics, proxy_key)
        _, gold = _series(metrics, gold_key)
        _, kl = _series(metrics, "kl")
        line, = axes[0].plot(steps, smooth(proxy), label=f"kl_coef {c:g}")
        axes[1].plot(steps, smooth(gold), color=line.get_color(), label=f"kl_coef {c:g}")
        axes[2].plot(smooth(kl), smooth(gold), "--", color=line.get_color(), alpha=0.7,
                     label=f"kl_coef {c:g}, training")
        ev = evals[name]
        axes[2].scatter([ev["kl_to_baseline"]], [ev["gold_reward"]], marker="*", s=80, color=line.get_color())
        smoothed = smooth(gold)
        rows.append({"kl_coef": c, "proxy_reward_start": proxy[0] if proxy else None,
                     "proxy_reward_end": _tail_mean(proxy), "gold_reward_train_peak": max(smoothed) if gold else None,
                     "gold_reward_train_end": _tail_mean(gold), "train_kl_end": _tail_mean(kl),
                     "heldout_gold_reward": ev["gold_reward"], "heldout_kl_to_sft": ev["kl_to_baseline"],
                     "heldout_winrate_vs_sft": ev["gold_winrate_vs_sft"], "length_words": ev["length_words"]})
    axes[2].scatter([0.0], [evals["sft"]["gold_reward"]], marker="*", s=80, color="black", label="SFT (stars: held out)")
    axes[0].set(xlabel="PPO step", ylabel="reward-model score (proxy)", title="Proxy reward during PPO")
    axes[1].set(xlabel="PPO step", ylabel="gold reward (same samples)", title="Gold reward during PPO")
    axes[2].set(xlabel="KL(policy || SFT), nats", ylabel="gold reward", title="Gold reward vs KL")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.text(0.5, -0.08, "lines: 10-step trailing means of the training rollouts; stars: held-out prompts",
             ha="center", fontsize=8)
    return rows, fig


def coverage_readout(cfg: LabConfig, root: Path, summaries: dict):
    tag = f"no_{cfg.leave_out}"
    evals = summaries[f"eval_{tag}"]
    sft, full, gap = evals["sft"], evals["dpo"], evals[f"dpo_{tag}"]
    cats = sorted(k[5:] for k in sft if k.startswith("gold/"))
    rows = [{"category": c, "left_out": c == cfg.leave_out, "gold_sft": sft[f"gold/{c}"],
             "gain_all_categories": full[f"gold/{c}"] - sft[f"gold/{c}"],
             f"gain_without_{cfg.leave_out}": gap[f"gold/{c}"] - sft[f"gold/{c}"]} for c in cats]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = range(len(cats))
    ax.bar([x - 0.2 for x in xs], [r["gain_all_categories"] for r in rows], 0.4, label="DPO, pairs from every category")
    ax.bar([x + 0.2 for x in xs], [r[f"gain_without_{cfg.leave_out}"] for r in rows], 0.4,
           label=f"DPO, no '{cfg.leave_out}' pairs")
    ax.set_xticks(list(xs), [f"{c}\n(left out)" if c == cfg.leave_out else c for c in cats])
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="gold reward gain over SFT", title="Coverage: RLHF fixes what the preferences cover")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return rows, fig


def knowledge_readout(cfg: LabConfig, root: Path, summaries: dict):
    evals, trained = {**summaries["eval"], "dpo_idk": summaries["eval_idk"]["dpo_idk"]}, summaries["eval_train_prompts"]
    rows = [{"policy": name, "asked_in_pairs_correct": trained[name].get("correct/fact"),
             "pretraining_only_correct": r.get("correct/fact"), "gap_correct": r["gap_correct"],
             "gap_wrong": r["gap_wrong"], "gap_unsure": r["gap_unsure"], "gap_gold_reward": r["gap_gold_reward"]}
            for name, r in evals.items()]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    keys = [("asked_in_pairs_correct", "capital asked about in the preference data: correct"),
            ("pretraining_only_correct", "capital only in pretraining text: correct"),
            ("gap_correct", "capital never seen: correct"), ("gap_wrong", "capital never seen: wrong capital"),
            ("gap_unsure", "capital never seen: says it does not know")]
    width = 0.8 / len(keys)
    for i, (k, label) in enumerate(keys):
        ax.bar([j + (i - (len(keys) - 1) / 2) * width for j in range(len(rows))], [r[k] or 0.0 for r in rows],
               width, label=label)
    ax.set_xticks(range(len(rows)), [{"dpo_idk": "DPO + 'i do not\nknow' pairs"}.get(r["policy"], r["policy"].upper())
                                     for r in rows])
    ax.set(ylabel="share of samples", ylim=(0, 1),
           title="Knowledge: RLHF picks among answers the model has; it cannot add one")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return rows, fig


def active_readout(cfg: LabConfig, root: Path, summaries: dict):
    from .world import active_lab

    labels = yaml.safe_load((root / "labels" / "config.yaml").read_text())
    result = active_lab.sweep(root / "pairs" / "pairs.jsonl", str(root / "sft"), labels["temperature"],
                              labels["flip_rate"], cfg.active_budget, cfg.active_step, cfg.active_ensemble,
                              cfg.active_random_fraction, cfg.active_repeats, labels.get("seed", 0),
                              cfg.active_criterion)
    result["note"] = active_lab.note(result, cfg.active_random_fraction, cfg.active_criterion)
    (root / "active_curves.json").write_text(json.dumps(result, indent=2))
    fig = active_lab.figure(result, cfg.active_random_fraction, cfg.active_criterion)
    fig.lab_note = result["note"]  # printed and shown under the figure
    return active_lab.table_rows(result), fig


READOUTS = {"noise": noise_readout, "kl": kl_readout, "coverage": coverage_readout, "knowledge": knowledge_readout,
            "active": active_readout}


def markdown_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(report.header(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(report.fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _index(root: Path) -> Path:
    sections = []
    for lever in LEVERS:
        if (root / f"{lever}.json").exists():
            rows = json.loads((root / f"{lever}.json").read_text())["rows"]
            img = (root / f"{lever}.png").read_bytes()
            note = json.loads((root / f"{lever}.json").read_text()).get("note", "")
            note = f"<p class=note>{report.esc(note)}</p>" if note else ""
            sections.append((f"rlhfkit lab {lever}", report.png(img) + note + report.table(rows)))
    return report.write(root / "index.html", "rlhfkit lever lab", sections)


def run_lab(cfg: LabConfig) -> dict:
    if cfg.lever not in LEVERS:
        raise ConfigError(f"field 'lever': expected one of {', '.join(LEVERS)}, got {cfg.lever!r}")
    spec, demo = _demo_stages(cfg)
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    lab_spec = {"output_dir": str(root), "defaults": spec.get("defaults") or {},
                "stages": BUILDERS[cfg.lever](cfg, demo)}
    path = root / f"{cfg.lever}.yaml"
    path.write_text(yaml.safe_dump(lab_spec, sort_keys=False))
    summaries = run_pipeline(path, str(root), tuple(cfg.force))
    rows, fig = READOUTS[cfg.lever](cfg, root, summaries)
    figure = root / f"{cfg.lever}.png"
    fig.savefig(figure, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    table = markdown_table(rows)
    (root / f"{cfg.lever}.md").write_text(table)
    note = getattr(fig, "lab_note", "")
    (root / f"{cfg.lever}.json").write_text(json.dumps({"lever": cfg.lever, "rows": rows, "note": note}, indent=2))
    index = _index(root)
    print(f"\nrlhfkit lab {cfg.lever}\n{table}\n{note + chr(10) if note else ''}figure: {figure}\nall labs: {index}")
    return {"lever": cfg.lever, "rows": rows, "note": note, "figure": str(figure), "index": str(index)}
