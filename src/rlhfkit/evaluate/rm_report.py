"""``rlhfkit rm-eval``: how good a reward model is on held-out pairs.

Accuracy (share of pairs scored chosen > rejected; a tie counts as wrong) with a 95% Wilson
interval; calibration of the Bradley-Terry probability P(chosen preferred) = sigmoid(margin) as a
reliability diagram with its expected calibration error; accuracy per ``category`` when the pairs
carry one; and accuracy split by whether the chosen response is the longer one (a reward model
that mostly learnt "longer is better" is right on the first group and wrong on the second).

Calibration is measured over both orientations of each pair ((p, label 1) and (1 - p, label 0)),
which makes the diagram symmetric about 0.5 and its ECE equal to that of the confidence
max(p, 1 - p) against "the likelier side was chosen".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .. import report
from ..config import option, require
from .common import finish, pyplot, text_of, write_jsonl


@dataclass
class RMEvalConfig:
    """Held-out accuracy with CI, calibration and per-category accuracy of a reward model."""

    reward_model: str = option("", "Reward-model folder (from `rlhfkit rm`) (required).")
    data: str = option("", "Held-out preference pairs {prompt, chosen, rejected}, optional `category` (required).")
    output_dir: str = option("", "Where summary.json, scores.jsonl and report.html go (required).")
    category_field: str = option("category", "Column that groups pairs for per-category accuracy (absent: no breakdown).")
    bins: int = option(10, "Bins of the reliability diagram.")
    batch_size: int = option(32, "Sequences per forward pass.")
    device: str = option("auto", "auto, cpu, cuda.")


def accuracy_table(margins: list[float], groups: list) -> list[dict]:
    """Per group value: pairs, accuracy (margin > 0) and its 95% Wilson interval."""
    from ..stats import wilson_interval

    rows = []
    for g in sorted(set(groups), key=str):
        ms = [m for m, x in zip(margins, groups) if x == g]
        right = sum(m > 0 for m in ms)
        rows.append({"group": g, "pairs": len(ms), "accuracy": right / len(ms), "ci": list(wilson_interval(right, len(ms)))})
    return rows


def _figure(cal: dict, cats: list[dict], margins: list[float]):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3 if cats else 2, figsize=(14 if cats else 9.5, 3.8))
    ax = axes[0]
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax.plot([b["confidence"] for b in cal["bins"]], [b["accuracy"] for b in cal["bins"]], "o-")
    ax.set(xlabel="predicted P(chosen preferred)", ylabel="observed frequency", title=f"Reliability (ECE {cal['ece']:.3f})",
           xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    axes[1].hist(margins, bins=30)
    axes[1].axvline(0, color="black", lw=1)
    axes[1].set(xlabel="margin r(chosen) - r(rejected)", ylabel="pairs", title="Held-out margins")
    if cats:
        names = [str(c["group"]) for c in cats]
        acc = [c["accuracy"] for c in cats]
        err = [[a - c["ci"][0] for a, c in zip(acc, cats)], [c["ci"][1] - a for a, c in zip(acc, cats)]]
        axes[2].bar(names, acc, yerr=err, capsize=3)
        axes[2].axhline(0.5, color="grey", ls="--", lw=1)
        axes[2].set(ylabel="accuracy", title="Accuracy per category (95% CI)", ylim=(0, 1))
        axes[2].tick_params(axis="x", rotation=30)
    return fig


def run_rm_eval(cfg: RMEvalConfig) -> dict:
    from ..data import load_preference
    from ..models import resolve_device
    from ..reward_model import RewardModelSource
    from ..stats import calibration, wilson_interval

    require(cfg, "reward_model", "data", "output_dir")
    pairs = load_preference(cfg.data)
    rm = RewardModelSource(cfg.reward_model, resolve_device(cfg.device), batch_size=cfg.batch_size)
    prompts = [p.prompt for p in pairs]
    chosen, rejected = rm.score(prompts, [p.chosen for p in pairs]), rm.score(prompts, [p.rejected for p in pairs])
    margins = (chosen - rejected).tolist()
    right = sum(m > 0 for m in margins)
    probs = [1.0 / (1.0 + math.exp(-max(min(m, 700.0), -700.0))) for m in margins]
    cal = calibration(probs + [1 - p for p in probs], [1] * len(probs) + [0] * len(probs), cfg.bins)
    has_cat = cfg.category_field and all(cfg.category_field in p.extra for p in pairs)
    cats = accuracy_table(margins, [p.extra[cfg.category_field] for p in pairs]) if has_cat else []
    longer = ["chosen longer" if len(text_of(p.chosen)) > len(text_of(p.rejected)) else
              "chosen shorter" if len(text_of(p.chosen)) < len(text_of(p.rejected)) else "same length" for p in pairs]
    by_length = accuracy_table(margins, longer)
    summary = {"accuracy": right / len(pairs), "accuracy_ci": list(wilson_interval(right, len(pairs))),
               "pairs": len(pairs), "ties": sum(m == 0 for m in margins), "mean_margin": sum(margins) / len(margins),
               "ece": cal["ece"], "calibration": cal["bins"], "per_category": cats, "by_length": by_length}
    out = Path(cfg.output_dir)
    write_jsonl(out / "scores.jsonl", [{"index": i, "chosen_reward": c, "rejected_reward": r, "margin": m}
                                       for i, (c, r, m) in enumerate(zip(chosen.tolist(), rejected.tolist(), margins))])
    report.write(out / "report.html", "rlhfkit rm-eval", [
        ("Reward model on held-out pairs", report.table([{k: summary[k] for k in ("accuracy", "accuracy_ci", "pairs", "ece",
                                                                                  "mean_margin")}]) +
         report.figure(_figure(cal, cats, margins))),
        ("Per category", report.table(cats) if cats else "<p class=note>(the pairs carry no category)</p>"),
        ("By length", report.table(by_length) + "<p class=note>Accuracy when the chosen response is the longer one vs "
         "the shorter one: a large gap means the reward model leans on length.</p>")])
    lo, hi = summary["accuracy_ci"]
    print(f"rlhfkit rm-eval: accuracy {summary['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}), ECE {cal['ece']:.3f} -> {out}")
    return finish(cfg, summary)
