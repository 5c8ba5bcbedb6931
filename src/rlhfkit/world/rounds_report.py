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


def _round(r: int, st: dict[str, dict]) -> list[dict]:
    """The rows of one round: one per policy its gold evaluation scored (one row if none)."""
    row = {"round": r}
    rm = st.get("rm", {})
    if rm.get("eval_accuracy") is not None:
        lo, hi = rm.get("eval_accuracy_ci") or (None, None)
        row.update(rm_accuracy_fresh=rm["eval_accuracy"], rm_ci_low=lo, rm_ci_high=hi,
                   rm_eval_pairs=rm.get("eval_pairs"))
    labels = st.get("collect") or st.get("simulate-annotators") or {}
    row["train_pairs"] = labels.get("train_pairs")
    if "agreement" in labels:
        row["krippendorff_alpha"] = labels["agreement"].get("krippendorff_alpha")
    policies = [(k, v) for k, v in st.get("gold-eval", {}).items() if k != "sft" and isinstance(v, dict)]
    return [{**row, "policy": name, "gold_winrate_vs_sft": p.get("gold_winrate_vs_sft"),
             "winrate_ci_low": p.get("gold_winrate_ci_low"), "winrate_ci_high": p.get("gold_winrate_ci_high"),
             "kl_to_sft": p.get("kl_to_baseline")} for name, p in policies] or [row]


def round_rows(root: str | Path) -> list[dict]:
    """Rows per finished round folder (one per evaluated policy), in round order. When there are
    round folders and the stages before them hold a gold evaluation too, those are round 0."""
    root = Path(root)
    folders = [p for p in root.glob("round*") if re.fullmatch(r"round\d+", p.name) and p.is_dir()]
    rows = []
    if folders and "gold-eval" in (first := _stages(root)):
        rows += _round(0, first)
    for folder in sorted(folders, key=lambda p: int(p.name[5:])):
        rows += _round(int(folder.name[5:]), _stages(folder))
    return rows


def _panel(ax, rows, key, lo, hi, title, ylabel):
    pts = [r for r in rows if r.get(key) is not None]
    if not pts:
        ax.set_visible(False)
        return
    policies = list(dict.fromkeys(r.get("policy") for r in pts))
    for policy in policies:
        mine = [r for r in pts if r.get("policy") == policy]
        x, y = [r["round"] for r in mine], [r[key] for r in mine]
        label = policy if len(policies) > 1 else None
        if lo and all(r.get(lo) is not None for r in mine):
            err = [[v - r[lo] for v, r in zip(y, mine)], [r[hi] - v for v, r in zip(y, mine)]]
            ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, label=label)
        else:
            ax.plot(x, y, "o-", label=label)
    ax.set(xlabel="round", ylabel=ylabel, title=title, xticks=sorted({r["round"] for r in pts}))
    if len(policies) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def figure(rows: list[dict], png_path: str | Path | None = None) -> str:
    """The three per-round panels as an <img>; also written to ``png_path`` when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    per_round = list({r["round"]: {**r, "policy": None} for r in rows}.values())  # one reward model a round
    _panel(axes[0], per_round, "rm_accuracy_fresh", "rm_ci_low", "rm_ci_high", "Reward model on fresh-policy pairs",
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
