"""Constitutions: a YAML file of principles, rendered into the judge prompt.

Format (``rlhfkit/judge/constitutions/default.yaml`` is the shipped default)::

    name: hhh                 # optional
    per_principle: false      # true: one verdict per principle, combined by weight
    principles:
      - name: helpful
        text: Which response does more to help ...?
        weight: 1.0           # optional, >= 0; used when per_principle is true

The judge prompt shows the principles, the request, the two responses as "Response A" and
"Response B", and asks for a single letter. Errors name the file and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..config_yaml import load_yaml_file

DEFAULT = Path(__file__).parent / "constitutions" / "default.yaml"
ANSWER = "Answer with a single letter: A or B."


@dataclass(frozen=True)
class Principle:
    name: str
    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    name: str = "custom"
    per_principle: bool = False


def load_constitution(path: str | Path | None = None) -> Constitution:
    """The constitution in ``path`` (empty: the shipped default), validated."""
    path = Path(path) if path else DEFAULT
    raw = load_yaml_file(path, "constitution file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'principles', got {type(raw).__name__}")
    unknown = set(raw) - {"name", "per_principle", "principles"}
    if unknown:
        raise ConfigError(f"{path}: unknown field {sorted(unknown)[0]!r} (expected name, per_principle, principles)")
    items = raw.get("principles")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: field 'principles': expected a non-empty list of {{name, text, weight?}}")
    principles = []
    for i, item in enumerate(items):
        where = f"{path}: principles[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping {{name, text, weight?}}, got {type(item).__name__}")
        extra = set(item) - {"name", "text", "weight"}
        if extra:
            raise ConfigError(f"{where}: unknown field {sorted(extra)[0]!r} (expected name, text, weight)")
        for key in ("name", "text"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ConfigError(f"{where}: field {key!r}: expected a non-empty string, got {item.get(key)!r}")
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"{where}: field 'weight': expected a number >= 0, got {weight!r}")
        principles.append(Principle(item["name"].strip(), item["text"].strip(), float(weight)))
    if sum(p.weight for p in principles) <= 0:
        raise ConfigError(f"{path}: field 'principles': the weights sum to 0")
    per = raw.get("per_principle", False)
    if not isinstance(per, bool):
        raise ConfigError(f"{path}: field 'per_principle': expected true or false, got {per!r}")
    return Constitution(tuple(principles), str(raw.get("name") or path.stem), per)


def _conversation(prompt) -> str:
    if isinstance(prompt, list):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return str(prompt)


def response_text(response) -> str:
    """A response as text: a string, or the content of an assistant message list."""
    if isinstance(response, list):
        return "\n".join(m["content"] for m in response if m.get("role") == "assistant") or _conversation(response)
    return str(response)


def render(prompt, first, second, principles: tuple[Principle, ...]) -> str:
    """The judge's user message for one ordered pair (``first`` is shown as Response A)."""
    lines = ["You are comparing two responses to the same request.",
             "Judge them by " + ("this principle:" if len(principles) == 1 else "these principles:")]
    lines += [f"- {p.name}: {p.text}" for p in principles]
    lines += ["", "[Request]", _conversation(prompt), "", "[Response A]", response_text(first), "",
              "[Response B]", response_text(second), "", f"Which response is better? {ANSWER}"]
    return "\n".join(lines)
