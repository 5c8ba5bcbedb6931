"""``rlhfkit noise``: find preference labels that look wrong, by cross-validated reward models.

The pairs are split into ``folds`` folds. For each fold a reward model is trained on the other
folds (the ``rm`` stage itself: ``train.rm``'s ``run_rm`` on an ``RMConfig``) and scores
the fold's pairs it never saw: margin = r(chosen) - r(rejected). Under the Bradley-Terry model
P(label right) = sigmoid(margin), so a pair whose held-out margin is strongly negative is one
the rest of the data says was labelled the other way round (cf. confident learning, Northcutt et
al. 2021, which uses out-of-fold predictions the same way). Flagged pairs go to
``output_dir/flagged.jsonl`` with ``index`` (0-based row of the input file) and ``score`` =
sigmoid(-margin), the estimated probability that the label is flipped, highest first.

When the records carry a column that says which labels are known to be wrong (``truth_field``,
e.g. flips injected on purpose), precision and recall of the flags are reported.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import report
from ..config import ConfigError, option, require
from ..config_yaml import from_mapping
from .common import finish, pyplot, write_jsonl


@dataclass
class NoiseConfig:
    """Cross-validated reward models score each pair out of fold; pairs whose margin contradicts the label are flagged."""

    data: str = option("", "Preference pairs {prompt, chosen, rejected} (required).")
    model: str = option("", "Model every fold's reward model starts from, e.g. the SFT model (required).")
    output_dir: str = option("", "Where flagged.jsonl, scores.jsonl, summary.json, report.html and the fold models go (required).")
    folds: int = option(5, "Cross-validation folds (each pair is scored by a model that never saw it).")
    flag_above: float = option(0.6, "Flag a pair when the out-of-fold P(label is wrong) = sigmoid(-margin) exceeds this (margins of reward models trained on noisy labels run small, so 0.6 rather than 0.8).")
    flag_fraction: float = option(0.0, "If > 0: flag this fraction of pairs with the highest P(label is wrong) instead.")
    truth_field: str = option("", "Boolean column marking labels known to be wrong; set it to get precision and recall.")
    max_steps: int = option(-1, "Optimiser steps per fold's reward model; -1 means `epochs` passes.")
    epochs: float = option(1.0, "Passes over a fold's training pairs when max_steps is -1.")
    batch_size: int = option(16, "Pairs per optimiser step.")
    learning_rate: float = option(1e-4, "Peak AdamW learning rate of the fold models.")
    warmup_ratio: float = option(0.0, "Warm-up fraction of the fold models' steps.")
    max_length: int = option(512, "Longest prompt + response in tokens.")
    max_prompt_length: int = option(256, "Longest prompt in tokens.")
    keep_models: bool = option(False, "Keep each fold's reward-model weights (off: only their metrics and summaries).")
    seed: int = option(0, "Fold split and training seed.")
    device: str = option("auto", "auto, cpu, cuda.")


def fold_indices(n: int, folds: int, seed: int = 0) -> list[list[int]]:
    """A seeded shuffle of range(n) cut into ``folds`` near-equal parts (sizes differ by at most 1)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [sorted(order[f::folds]) for f in range(folds)]


def flag(p_wrong: list[float], above: float, fraction: float = 0.0) -> list[int]:
    """Indices to flag, most suspicious first: p_wrong > ``above``, or the top ``fraction`` when it is > 0
    (ties at the cut broken by index)."""
    order = sorted(range(len(p_wrong)), key=lambda i: (-p_wrong[i], i))
    if fraction > 0:
        return order[:int(round(fraction * len(p_wrong)))]
    return [i for i in order if p_wrong[i] > above]


def precision_recall(flagged: list[int], truth: list[bool]) -> dict:
    """Precision (flagged that are wrong), recall (wrong that are flagged) and F1."""
    hits = sum(truth[i] for i in flagged)
    wrong = sum(truth)
    p = hits / len(flagged) if flagged else 0.0
    r = hits / wrong if wrong else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "flagged": len(flagged), "known_wrong": wrong, "true_positives": hits}


def _truth(rows: list[dict], pairs: list, field: str) -> list[bool]:
    out = []
    for r, pair in zip(rows, pairs):
        v = r.get(field)
        if not isinstance(v, bool):
            raise ConfigError(f"{pair.where}: field {field!r} (truth_field) must be true or false, got {v!r}")
        out.append(v)
    return out


def _train_fold(cfg: NoiseConfig, train_path: Path, out: Path) -> dict:
    """The ``rm`` stage on one fold's training pairs."""
    from ..train.rm import RMConfig, run_rm

    fields = {k: getattr(cfg, k) for k in ("model", "max_steps", "epochs", "batch_size", "learning_rate", "warmup_ratio",
                                           "max_length", "max_prompt_length", "seed", "device")}
    return run_rm(from_mapping(RMConfig, {**fields, "data": str(train_path), "output_dir": str(out), "logging_steps": 10},
                               f"rlhfkit noise: fold {out.name}"))


def out_of_fold_margins(cfg: NoiseConfig, pairs: list, rows: list[dict], out: Path) -> tuple[list[float], list[dict]]:
    from ..models import resolve_device
    from ..reward_model import RewardModelSource

    margins = [math.nan] * len(pairs)
    fold_summaries = []
    for f, held in enumerate(fold_indices(len(pairs), cfg.folds, cfg.seed)):
        folder = out / "folds" / f"fold{f}"
        held_set = set(held)
        write_jsonl(folder / "train.jsonl", [r for i, r in enumerate(rows) if i not in held_set])
        summary = _train_fold(cfg, folder / "train.jsonl", folder / "rm")
        rm = RewardModelSource(str(folder / "rm"), resolve_device(cfg.device))
        prompts = [pairs[i].prompt for i in held]
        chosen = rm.score(prompts, [pairs[i].chosen for i in held])
        rejected = rm.score(prompts, [pairs[i].rejected for i in held])
        for i, m in zip(held, (chosen - rejected).tolist()):
            margins[i] = m
        fold_summaries.append({"fold": f, "held_out": len(held), "train_loss": summary.get("train", {}).get("loss"),
                               "held_out_accuracy_vs_labels": float(((chosen - rejected) > 0).float().mean())})
        del rm
        (folder / "train.jsonl").unlink()
        if not cfg.keep_models:
            for p in (folder / "rm").glob("*.safetensors"):
                p.unlink()
            shutil.rmtree(folder / "rm" / "checkpoints", ignore_errors=True)
    return margins, fold_summaries


def _figure(p_wrong: list[float], truth: list[bool] | None, cfg: NoiseConfig):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if truth else 1, figsize=(11 if truth else 5.5, 3.8), squeeze=False)
    ax = axes[0][0]
    bins = [i / 20 for i in range(21)]
    if truth:
        ax.hist([p for p, t in zip(p_wrong, truth) if not t], bins=bins, alpha=0.6, label="label right")
        ax.hist([p for p, t in zip(p_wrong, truth) if t], bins=bins, alpha=0.6, label="label flipped")
        ax.legend(fontsize=8)
    else:
        ax.hist(p_wrong, bins=bins)
    if not cfg.flag_fraction:
        ax.axvline(cfg.flag_above, color="black", ls="--", lw=1)
    ax.set(xlabel="out-of-fold P(label is wrong) = sigmoid(-margin)", ylabel="pairs", title="Suspicion of each label")
    ax.set_yscale("log")
    if truth:
        order = sorted(range(len(p_wrong)), key=lambda i: -p_wrong[i])
        hits, prec, rec = 0, [], []
        for n, i in enumerate(order, 1):
            hits += truth[i]
            prec.append(hits / n)
            rec.append(hits / max(sum(truth), 1))
        axes[0][1].plot(rec, prec)
        axes[0][1].set(xlabel="recall", ylabel="precision", title="Flagging the top-k most suspicious pairs",
                       xlim=(0, 1), ylim=(0, 1.02))
        axes[0][1].grid(alpha=0.3)
    return fig


def run_noise(cfg: NoiseConfig) -> dict:
    from ..data import load_preference, read_records

    require(cfg, "data", "model", "output_dir")
    if cfg.folds < 2:
        raise ConfigError(f"config: field 'folds' must be >= 2, got {cfg.folds}")
    if not 0 <= cfg.flag_fraction < 1 or not 0 < cfg.flag_above < 1:
        raise ConfigError("config: need 0 <= flag_fraction < 1 and 0 < flag_above < 1")
    pairs = load_preference(cfg.data)
    rows = [rec for _, rec in read_records(cfg.data)]
    if len(pairs) < 2 * cfg.folds:
        raise ConfigError(f"{cfg.data}: {len(pairs)} pairs are too few for {cfg.folds} folds")
    truth = _truth(rows, pairs, cfg.truth_field) if cfg.truth_field else None
    out = Path(cfg.output_dir)
    margins, folds = out_of_fold_margins(cfg, pairs, rows, out)
    p_wrong = [1.0 / (1.0 + math.exp(min(m, 700.0))) for m in margins]
    flagged = flag(p_wrong, cfg.flag_above, cfg.flag_fraction)
    write_jsonl(out / "flagged.jsonl", [{**rows[i], "index": i, "score": p_wrong[i], "margin": margins[i]}
                                            for i in flagged])
    write_jsonl(out / "scores.jsonl", [{"index": i, "score": p, "margin": m} for i, (p, m) in enumerate(zip(p_wrong, margins))])
    summary = {"pairs": len(pairs), "flagged": len(flagged), "flagged_fraction": len(flagged) / len(pairs),
               "folds": folds, "out_of_fold_accuracy_vs_labels": sum(m > 0 for m in margins) / len(margins)}
    if truth is not None:
        summary.update(precision_recall(flagged, truth))
    fig = _figure(p_wrong, truth, cfg)
    fig.savefig(out / "noise.png", dpi=110, bbox_inches="tight")
    head = {k: summary[k] for k in ("pairs", "flagged", "out_of_fold_accuracy_vs_labels", "precision", "recall", "f1")
            if k in summary}
    report.write(out / "report.html", "rlhfkit noise", [
        ("Label-noise finder", report.table([head]) + report.figure(fig) + report.table(folds)),
        ("Most suspicious pairs", report.table([{"index": i, "score": p_wrong[i], "prompt": str(rows[i].get("prompt", "")),
                                                 "chosen": str(rows[i].get("chosen")), "rejected": str(rows[i].get("rejected"))}
                                                for i in flagged[:30]]))])
    msg = f"rlhfkit noise: flagged {len(flagged)} of {len(pairs)} pairs"
    if truth is not None:
        msg += f"; precision {summary['precision']:.3f}, recall {summary['recall']:.3f}"
    print(f"{msg} -> {out / 'flagged.jsonl'}")
    return finish(cfg, summary)


def read_flagged(folder: str | Path) -> list[dict]:
    return [json.loads(x) for x in (Path(folder) / "flagged.jsonl").read_text().splitlines() if x.strip()]
