"""Per-source loss weights: mixing human and AI (judge) labels in one preference file.

``rlhfkit annotate export`` writes ``source: "human"``; ``rlhfkit judge`` writes
``source: "judge:<name>"``. ``source_weights`` (RM and DPO configs) maps sources to weights:

- a key equal to a row's source wins;
- else the longest key that the source starts with (``judge`` or ``judge:`` covers every judge);
- else the ``default`` key; else 1.0. Rows without a ``source`` field count as source ``""``.

Weights are then scaled so their mean over the training set is 1: the loss of a step is
sum(w_i l_i) / (pairs in the step), the same normaliser as without weights, so gradient
accumulation and data parallelism still give the same gradient as one large batch, and a file
with a single source trains exactly as it would unweighted.
"""

from __future__ import annotations

import math

DEFAULT = "default"


def parse_source_weights(entries: list[str] | dict, where: str = "source_weights") -> dict[str, float]:
    """``["human=1.0", "judge:=0.5"]`` or ``{"human": 1.0}`` -> {source: weight}; errors name ``where``."""
    if isinstance(entries, dict):
        items = list(entries.items())
    else:
        items = []
        for entry in entries:
            key, sep, value = str(entry).rpartition("=")
            if not sep:
                raise ValueError(f"{where}: expected 'source=weight', got {entry!r}")
            items.append((key, value))
    out = {}
    for key, value in items:
        try:
            weight = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: weight of {key!r} is not a number: {value!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{where}: weight of {key!r} must be a finite number >= 0, got {value!r}")
        out[str(key)] = weight
    return out


def source_weight(source, weights: dict[str, float]) -> float:
    """The weight of one row's ``source`` under the rules in the module docstring."""
    source = "" if source is None else str(source)
    if source in weights:
        return weights[source]
    prefixes = [k for k in weights if k != DEFAULT and k and source.startswith(k)]
    if prefixes:
        return weights[max(prefixes, key=len)]
    return weights.get(DEFAULT, 1.0)


def example_weights(sources: list, weights: dict[str, float]) -> list[float]:
    """One weight per row, scaled to mean 1 (see the module docstring)."""
    raw = [source_weight(s, weights) for s in sources]
    total = sum(raw)
    if not raw:
        return []
    if total <= 0:
        raise ValueError("source_weights gives every training pair weight 0")
    return [w * len(raw) / total for w in raw]


def apply_source_weights(pairs: list, entries: list[str]) -> dict[str, dict]:
    """Set ``weight`` on tokenized pairs from their ``extra["source"]``; returns {source: {pairs, weight}}
    for the log (empty when ``entries`` is empty: every weight stays 1)."""
    if not entries:
        return {}
    table = parse_source_weights(entries)
    sources = [p.extra.get("source") for p in pairs]
    for pair, w in zip(pairs, example_weights(sources, table)):
        pair.weight = w
    report: dict[str, dict] = {}
    for s in sources:
        key = "" if s is None else str(s)
        entry = report.setdefault(key or "(none)", {"pairs": 0, "weight": source_weight(s, table)})
        entry["pairs"] += 1
    return report
