"""Agreement and quality statistics: pure functions of the labels, no database, no web.

Choices are compared in the imported order ("a" = ``response_a``), never in the order an
annotator saw them (that is randomised per annotator); ``left`` records what was on the left.

- Cohen's kappa (Cohen 1960) for two annotators on the items both labelled:
  kappa = (p_o - p_e) / (1 - p_e), p_o the observed agreement, p_e = sum_k p1(k) p2(k).
- Fleiss' kappa (Fleiss 1971) over items with at least two labels. With n_i labels on item i and
  n_ik of them in category k: P_i = (sum_k n_ik^2 - n_i) / (n_i (n_i - 1)), P = mean_i P_i,
  p_k = sum_i n_ik / sum_i n_i, P_e = sum_k p_k^2, kappa = (P - P_e) / (1 - P_e). With the same
  n on every item this is Fleiss' formula exactly; with varying n it weights items equally.
- Krippendorff's alpha (nominal), from the ``krippendorff`` package; it handles missing labels.
- Agreement with the majority is leave-one-out: an annotator's label is compared with the strict
  majority of the *other* labels on the item (items where the others tie are left out), so a
  lone label never agrees with itself.
- Position bias: the share of non-tie labels that chose the response shown on the left
  (0.5 is unbiased).

Kappas and alpha are None where undefined (no items, or chance agreement of 1).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from typing import Iterable, Sequence

CATEGORIES = ("a", "b", "tie")
THRESHOLDS = {
    "gold_accuracy": 0.6,  # flagged below this ...
    "min_gold": 3,  # ... once at least this many gold pairs are labelled
    "majority_agreement": 0.5,
    "min_majority_items": 5,
    "position_bias": 0.8,  # flagged above this or below 1 - this
    "min_position_labels": 10,
}


def majority(votes: Iterable[str]) -> str | None:
    """The strict plurality of ``votes``; None when empty or when the top two tie."""
    ranked = Counter(votes).most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def agreement_fraction(votes: Sequence[str]) -> float | None:
    """Share of ``votes`` equal to their majority (None without one)."""
    top = majority(votes)
    return None if top is None else sum(v == top for v in votes) / len(votes)


def cohen_kappa(x: Sequence[str], y: Sequence[str]) -> float | None:
    """Cohen's kappa of two equally long label sequences (same items in the same order)."""
    if len(x) != len(y):
        raise ValueError(f"cohen_kappa needs equally long sequences, got {len(x)} and {len(y)}")
    n = len(x)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[k] * cy[k] for k in cx) / (n * n)
    if p_e == 1:
        return None
    return (p_o - p_e) / (1 - p_e)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa from per-item category counts (rows: items, columns: categories).

    Items with fewer than two labels carry no agreement information and are left out.
    """
    rows = [list(r) for r in counts if sum(r) >= 2]
    if not rows:
        return None
    p_item = [(sum(c * c for c in r) - sum(r)) / (sum(r) * (sum(r) - 1)) for r in rows]
    total = sum(sum(r) for r in rows)
    p_cat = [sum(r[k] for r in rows) / total for k in range(len(rows[0]))]
    p_bar, p_e = sum(p_item) / len(rows), sum(p * p for p in p_cat)
    if p_e == 1:
        return None
    return (p_bar - p_e) / (1 - p_e)


def krippendorff_alpha(units: dict, categories: Sequence[str] = CATEGORIES) -> float | None:
    """Nominal Krippendorff's alpha of ``{item: {annotator: choice}}`` (missing labels allowed)."""
    import krippendorff
    import numpy as np

    annotators = sorted({u for votes in units.values() for u in votes})
    if len(annotators) < 2 or sum(len(v) >= 2 for v in units.values()) == 0:
        return None
    code = {c: i for i, c in enumerate(categories)}
    data = np.full((len(annotators), len(units)), np.nan)
    row = {u: i for i, u in enumerate(annotators)}
    for j, votes in enumerate(units.values()):
        for u, c in votes.items():
            data[row[u], j] = code[c]
    values = set(data[~np.isnan(data)].tolist())
    if len(values) < 2:  # one category used throughout: alpha is undefined (0/0)
        return None
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def position_bias(labels: Iterable[tuple[str, str]]) -> tuple[float | None, int]:
    """(share of non-tie labels choosing the left response, number of non-tie labels) of (choice, left)."""
    decided = [(c, left) for c, left in labels if c != "tie" and left is not None]
    if not decided:
        return None, 0
    return sum(c == left for c, left in decided) / len(decided), len(decided)


def majority_agreement(units: dict) -> dict[str, tuple[int, int]]:
    """{annotator: (labels agreeing with the others' majority, labels compared)}, leave-one-out."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for votes in units.values():
        for u, c in votes.items():
            top = majority(v for w, v in votes.items() if w != u)
            if top is not None:
                out[u][0] += c == top
                out[u][1] += 1
    return {u: (a, n) for u, (a, n) in out.items()}


def pairwise_kappas(units: dict) -> list[dict]:
    """Cohen's kappa for every pair of annotators sharing at least one item."""
    by_annotator: dict[str, dict] = defaultdict(dict)
    for item, votes in units.items():
        for u, c in votes.items():
            by_annotator[u][item] = c
    out = []
    for u, v in combinations(sorted(by_annotator), 2):
        shared = sorted(set(by_annotator[u]) & set(by_annotator[v]), key=str)
        if shared:
            k = cohen_kappa([by_annotator[u][i] for i in shared], [by_annotator[v][i] for i in shared])
            out.append({"annotators": [u, v], "kappa": k, "items": len(shared)})
    return out


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
