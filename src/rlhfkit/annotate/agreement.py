"""The annotation dashboard's statistics: per-annotator figures, flags and thresholds.

``compute_stats`` turns the store's label rows into what the dashboard and ``GET /api/stats``
show; the maths (kappas, alpha, majority, position bias) is in ``rlhfkit.stats``. Choices are
compared in the imported order ("a" = ``response_a``), never in the order an annotator saw them
(that is randomised per annotator); ``left`` records what was on the left.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

from ..stats import CATEGORIES, fleiss_kappa, krippendorff_alpha, majority_agreement, pairwise_kappas, position_bias

THRESHOLDS = {
    "gold_accuracy": 0.6,  # flagged below this ...
    "min_gold": 3,  # ... once at least this many gold pairs are labelled
    "majority_agreement": 0.5,
    "min_majority_items": 5,
    "position_bias": 0.8,  # flagged above this or below 1 - this
    "min_position_labels": 10,
}


def _ratio(a: int, n: int) -> float | None:
    return a / n if n else None


def flags_for(s: dict, t: dict = THRESHOLDS) -> list[str]:
    """Reasons to look at an annotator's work, from their row of ``compute_stats``."""
    out = []
    if s["gold_labels"] >= t["min_gold"] and s["gold_accuracy"] < t["gold_accuracy"]:
        out.append(f"gold accuracy {s['gold_accuracy']:.2f} on {s['gold_labels']} gold pairs "
                   f"(< {t['gold_accuracy']})")
    if s["majority_items"] >= t["min_majority_items"] and s["agreement_with_majority"] < t["majority_agreement"]:
        out.append(f"agrees with the majority on {s['agreement_with_majority']:.2f} of {s['majority_items']} "
                   f"pairs (< {t['majority_agreement']})")
    bias, hi = s["position_bias"], t["position_bias"]
    if s["position_labels"] >= t["min_position_labels"] and not (1 - hi) <= bias <= hi:
        out.append(f"chooses the left response {bias:.2f} of the time ({s['position_labels']} labels)")
    return out


def compute_stats(rows: Sequence[dict], thresholds: dict = THRESHOLDS) -> dict:
    """Everything the dashboard and ``GET /api/stats`` show, from label rows with keys
    ``task_id, annotator, kind, choice, left, gold`` (``store.Store.label_rows``)."""
    pairs = [r for r in rows if r["kind"] == "pair"]
    units: dict = defaultdict(dict)
    for r in pairs:
        units[r["task_id"]][r["annotator"]] = r["choice"]
    counts = [[Counter(v.values())[c] for c in CATEGORIES] for v in units.values()]
    agree = majority_agreement(units)
    overall_bias, n_bias = position_bias((r["choice"], r["left"]) for r in pairs)
    annotators = {}
    for name in sorted({r["annotator"] for r in rows}):
        mine = [r for r in pairs if r["annotator"] == name]
        gold = [r for r in mine if r["gold"] is not None]
        correct = sum(r["choice"] == r["gold"] for r in gold)
        bias, n_dec = position_bias((r["choice"], r["left"]) for r in mine)
        a, n = agree.get(name, (0, 0))
        s = {"labels": len(mine), "demonstrations": sum(r["annotator"] == name and r["kind"] != "pair" for r in rows),
             "agreement_with_majority": _ratio(a, n), "majority_items": n,
             "gold_accuracy": _ratio(correct, len(gold)), "gold_labels": len(gold),
             "position_bias": bias, "position_labels": n_dec,
             "tie_rate": _ratio(sum(r["choice"] == "tie" for r in mine), len(mine))}
        s["flags"] = flags_for(s, thresholds)
        annotators[name] = s
    return {
        "labels": {"total": len(rows), "pairs": len(pairs), "demonstrations": len(rows) - len(pairs),
                   "by_choice": {c: sum(r["choice"] == c for r in pairs) for c in CATEGORIES},
                   "by_annotator": {u: s["labels"] + s["demonstrations"] for u, s in annotators.items()},
                   "items_labelled": len(units), "items_with_2_or_more": sum(len(v) >= 2 for v in units.values())},
        "krippendorff_alpha": krippendorff_alpha(units),
        "fleiss_kappa": fleiss_kappa(counts),
        "cohen_kappa": pairwise_kappas(units),
        "position_bias": {"left_win_rate": overall_bias, "labels": n_bias},
        "annotators": annotators,
        "flagged": [u for u, s in annotators.items() if s["flags"]],
        "thresholds": dict(thresholds),
    }
