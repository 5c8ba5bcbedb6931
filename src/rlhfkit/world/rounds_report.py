"""The per-round section of the demo report: what each round of ``rounds: N`` did.

For every ``<output_dir>/round<r>/`` it finds the stages by kind (their completion markers), so the
template's stage names are free: the reward model's held-out accuracy on the round's fresh pairs
(sampled from the policy it is about to train, labelled by annotators or people), the round's
policy's gold win rate over SFT with its 95% interval, and its KL to SFT.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .. import report

MARKER = ".rlhfkit-stage.json"  # pipeline.MARKER: the pipeline sits above this floor


def _stages(folder: Path) -> dict[str, dict]:
    """kind -> summary of the stages in one round folder (the first of each kind, by name)."""
    found = {}
    for marker in sorted(folder.glob(f"*/{MARKER}")):
        info = json.loads(marker.read_text())
        found.setdefault(info.get("stage"), info.get("summary") or {})
    return found


def round_rows(root: str | Path) -> list[dict]:
    """One row per finished round folder, in round order."""
    rows = []
    folders = [p for p in Path(root).glob("round*") if re.fullmatch(r"round\d+", p.name) and p.is_dir()]
    for folder in sorted(folders, key=lambda p: int(p.name[5:])):
        st = _stages(folder)
        row = {"round": int(folder.name[5:])}
        rm = st.get("rm", {})
        if rm.get("eval_accuracy") is not None:
            lo, hi = rm.get("eval_accuracy_ci") or (None, None)
            row.update(rm_accuracy_fresh=rm["eval_accuracy"], rm_ci_low=lo, rm_ci_high=hi,
                       rm_eval_pairs=rm.get("eval_pairs"))
        labels = st.get("collect") or st.get("simulate-annotators") or {}
        row["train_pairs"] = labels.get("train_pairs")
        if "agreement" in labels:
            row["krippendorff_alpha"] = labels["agreement"].get("krippendorff_alpha")
        policy = next((v for k, v in st.get("gold-eval", {}).items() if k != "sft" and isinstance(v, dict)), None)
        if policy:
            row.update(gold_winrate_vs_sft=policy.get("gold_winrate_vs_sft"), winrate_ci_low=policy.get("gold_winrate_ci_low"),
                       winrate_ci_high=policy.get("gold_winrate_ci_high"), kl_to_sft=policy.get("kl_to_baseline"))
        rows.append(row)
    return rows


def _panel(ax, rows, key, lo, hi, title, ylabel):
    pts = [r for r in rows if r.get(key) is not None]
    if not pts:
        ax.set_visible(False)
        return
    x, y = [r["round"] for r in pts], [r[key] for r in pts]
    if lo and all(r.get(lo) is not None for r in pts):
        err = [[v - r[lo] for v, r in zip(y, pts)], [r[hi] - v for v, r in zip(y, pts)]]
        ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3)
    else:
        ax.plot(x, y, "o-")
    ax.set(xlabel="round", ylabel=ylabel, title=title, xticks=x)
    ax.grid(alpha=0.3)


def figure(rows: list[dict], png_path: str | Path | None = None) -> str:
    """The three per-round panels as an <img>; also written to ``png_path`` when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    _panel(axes[0], rows, "rm_accuracy_fresh", "rm_ci_low", "rm_ci_high", "Reward model on fresh-policy pairs",
           "held-out accuracy")
    _panel(axes[1], rows, "gold_winrate_vs_sft", "winrate_ci_low", "winrate_ci_high", "Policy vs SFT (gold)",
           "gold win rate")
    _panel(axes[2], rows, "kl_to_sft", None, None, "KL to SFT", "nats")
    fig.tight_layout()
    if png_path is not None:
        fig.savefig(png_path, format="png", dpi=110, bbox_inches="tight")
    return report.figure(fig)


def section(root: str | Path) -> tuple[str, str] | None:
    """("Iterated rounds", html) for report.write (the figure also goes to <root>/rounds.png), or
    None when the run had no rounds."""
    rows = round_rows(root)
    if not rows:
        return None
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return ("Iterated rounds", figure(rows, Path(root) / "rounds.png") + report.table(rows, columns) +
            "<p class=note>Each round samples fresh pairs from the latest policy, has them labelled, updates the "
            "reward model and continues policy training from the last round's policy (KL anchor: SFT). Reward-model "
            "accuracy: on the round's held-out fresh pairs (the policy's current outputs), 95% interval. Win rate: "
            "held-out prompts, judged by the gold preference against SFT samples, 95% bootstrap interval.</p>")
