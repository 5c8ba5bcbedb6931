"""Labels -> training data in TRL's formats (what ``rlhfkit rm`` / ``dpo`` / ``sft`` read unchanged).

- ``majority`` (default): one row per pair, ``{prompt, chosen, rejected, margin?, agreement, id,
  labels, source}``. The chosen response is the strict majority of the pair's labels; pairs whose
  majority is "tie" or that have no strict majority are dropped (and counted). ``margin`` is the
  mean margin (from the strength) of the majority's labels that gave one; ``agreement`` the share
  of labels that agree with the majority.
- ``per_annotator``: one row per non-tie label, ``{prompt, chosen, rejected, margin?, annotator,
  agreement, agrees_with_majority, annotator_flagged, id, source}``, for noise-aware training or audits.
- ``demonstrations``: one ``{prompt, completion, id, annotator}`` row per written response (SFT).

Preference rows carry ``source: "human"`` so they mix with AI-judge rows (``rlhfkit judge`` writes
``source: "judge:<name>"``) under ``rlhfkit rm`` / ``dpo``'s ``source_weights``.

Gold pairs are quality checks and are left out unless ``include_gold``. A chat-format prompt
(a message list) gives chosen/rejected as one assistant message each, TRL's conversational form.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from ..stats import agreement_fraction, majority
from .agreement import compute_stats

MODES = ("majority", "per_annotator", "demonstrations")
SOURCE = "human"


def _response(prompt, text: str):
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def _pair(task: dict, choice: str) -> dict:
    chosen, rejected = ((task["response_a"], task["response_b"]) if choice == "a"
                        else (task["response_b"], task["response_a"]))
    p = task["prompt"]
    return {"prompt": p, "chosen": _response(p, chosen), "rejected": _response(p, rejected)}


def _votes_by_task(rows: list[dict]) -> dict[int, list[dict]]:
    """Pair labels grouped by task (demonstrations left out)."""
    by_task = defaultdict(list)
    for r in rows:
        if r["kind"] == "pair":
            by_task[r["task_id"]].append(r)
    return by_task


def majority_rows(tasks: dict, rows: list[dict], include_gold: bool = False) -> tuple[list[dict], Counter]:
    """(rows, counts of dropped pairs by reason) — see the module docstring."""
    by_task = _votes_by_task(rows)
    out, dropped = [], Counter()
    for task_id in sorted(by_task):
        task, votes = tasks[task_id], by_task[task_id]
        if task["gold"] is not None and not include_gold:
            dropped["gold"] += 1
            continue
        choices = [v["choice"] for v in votes]
        top = majority(choices)
        if top is None or top == "tie":
            dropped["no_majority" if top is None else "tie"] += 1
            continue
        row = _pair(task, top)
        margins = [v["margin"] for v in votes if v["choice"] == top and v["margin"] is not None]
        if margins:
            row["margin"] = sum(margins) / len(margins)
        row.update(agreement=agreement_fraction(choices), id=task["external_id"], labels=len(votes), source=SOURCE)
        out.append(row)
    return out, dropped


def per_annotator_rows(tasks: dict, rows: list[dict], include_gold: bool = False) -> tuple[list[dict], Counter]:
    flagged = set(compute_stats(rows)["flagged"])
    by_task = _votes_by_task(rows)
    out, dropped = [], Counter()
    for task_id in sorted(by_task):
        task, votes = tasks[task_id], by_task[task_id]
        if task["gold"] is not None and not include_gold:
            dropped["gold"] += len(votes)
            continue
        choices = [v["choice"] for v in votes]
        top, agreement = majority(choices), agreement_fraction(choices)
        for v in votes:
            if v["choice"] == "tie":
                dropped["tie"] += 1
                continue
            row = _pair(task, v["choice"])
            if v["margin"] is not None:
                row["margin"] = v["margin"]
            row.update(annotator=v["annotator"], agreement=agreement,
                       agrees_with_majority=None if top is None else v["choice"] == top,
                       annotator_flagged=v["annotator"] in flagged, id=task["external_id"], source=SOURCE)
            out.append(row)
    return out, dropped


def demonstration_rows(tasks: dict, rows: list[dict]) -> tuple[list[dict], Counter]:
    out = [{"prompt": tasks[r["task_id"]]["prompt"], "completion": r["completion"],
            "id": tasks[r["task_id"]]["external_id"], "annotator": r["annotator"]}
           for r in rows if r["kind"] == "demonstration"]
    return out, Counter()


def export_rows(store, mode: str = "majority", include_gold: bool = False,
                source: str | None = None) -> tuple[list[dict], Counter]:
    """``source``: only the tasks imported under that name (one round of a pipeline)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    tasks, rows = store.task_rows(source=source), store.label_rows(source)
    if mode == "demonstrations":
        return demonstration_rows(tasks, rows)
    fn = majority_rows if mode == "majority" else per_annotator_rows
    return fn(tasks, rows, include_gold)


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    """Write atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_jsonl(rows), encoding="utf-8")
    tmp.replace(path)
