"""Validate the files ``rlhfkit annotate import`` reads.

Pairs: ``{prompt, response_a, response_b}`` with optional ``id``, ``metadata`` (an object) and
``gold: "a" | "b"`` — exactly what ``rlhfkit sample-pairs`` writes (its extra columns, such as
``category``, are kept in ``metadata``). Demonstrations: ``{prompt}`` with an optional draft
``completion`` to edit, ``id`` and ``metadata``. ``prompt`` is a string or a chat message list.

The whole file is checked before anything is written: the first bad record stops the import
with a ``DataError`` naming file, line and field, and the database is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.errors import DataError
from ..data.load import json_type, read_records

PAIR_KEYS = ("id", "prompt", "response_a", "response_b", "metadata", "gold")
DEMO_KEYS = ("id", "prompt", "completion", "metadata")
GOLD = ("a", "b")


@dataclass
class TaskRecord:
    external_id: str
    kind: str  # "pair" | "demonstration"
    prompt: str | list
    response_a: str | None = None
    response_b: str | None = None
    draft: str | None = None
    gold: str | None = None
    meta: dict = field(default_factory=dict)
    where: str = ""


def _text(rec: dict, key: str, where, optional: bool = False) -> str | None:
    if key not in rec or rec[key] is None:
        if optional:
            return None
        raise DataError.at(where, "missing", key)
    value = rec[key]
    if not isinstance(value, str):
        raise DataError.at(where, f"expected a string, got {json_type(value)}", key)
    if not value.strip():
        if optional:
            return None
        raise DataError.at(where, "empty string" if not value else "whitespace-only string", key)
    return value


def _prompt(rec: dict, where) -> str | list:
    value = rec.get("prompt")
    if isinstance(value, list):
        if not value or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                and isinstance(m.get("content"), str) for m in value):
            raise DataError.at(where, "expected a string or a non-empty list of {role, content} messages", "prompt")
        return value
    return _text(rec, "prompt", where)


def _id(rec: dict, where, default: str) -> str:
    value = rec.get("id")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError.at(where, f"expected a string or an integer, got {json_type(value)}", "id")
    value = str(value)
    if not value.strip() or len(value) > 200:
        raise DataError.at(where, "expected 1 to 200 characters", "id")
    return value


def _meta(rec: dict, known: tuple, where) -> dict:
    meta = rec.get("metadata") or {}
    if not isinstance(meta, dict):
        raise DataError.at(where, f"expected an object, got {json_type(meta)}", "metadata")
    return {**{k: v for k, v in rec.items() if k not in known}, **meta}


def parse_pair(rec: dict, where, index: int, stem: str) -> TaskRecord:
    prompt = _prompt(rec, where)
    a, b = _text(rec, "response_a", where), _text(rec, "response_b", where)
    if a.strip() == b.strip():
        raise DataError.at(where, "identical to 'response_a'", "response_b")
    gold = rec.get("gold")
    if gold is not None and gold not in GOLD:
        raise DataError.at(where, f"expected \"a\" or \"b\", got {gold!r}"[:120], "gold")
    return TaskRecord(_id(rec, where, f"{stem}:{index}"), "pair", prompt, a, b, gold=gold,
                      meta=_meta(rec, PAIR_KEYS, where), where=str(where))


def parse_demonstration(rec: dict, where, index: int, stem: str) -> TaskRecord:
    return TaskRecord(_id(rec, where, f"{stem}:{index}"), "demonstration", _prompt(rec, where),
                      draft=_text(rec, "completion", where, optional=True), meta=_meta(rec, DEMO_KEYS, where),
                      where=str(where))


def read_tasks(path: str, kind: str = "pair") -> list[TaskRecord]:
    """Every record of ``path`` validated; raises ``DataError`` (file, line, field) on the first bad one."""
    parse = parse_pair if kind == "pair" else parse_demonstration
    stem = path.rsplit("/", 1)[-1]
    out, seen = [], {}
    for i, (where, rec) in enumerate(read_records(path), start=1):
        task = parse(rec, where, i, stem)
        if task.external_id in seen:
            raise DataError.at(where, f"duplicate id {task.external_id!r} (first at {seen[task.external_id]})", "id")
        seen[task.external_id] = str(where)
        out.append(task)
    return out
