"""Normalise raw records into typed examples, accepting TRL's dataset formats unchanged.

Preference: {prompt, chosen, rejected} as strings or chat message lists, or the
implicit-prompt form {chosen, rejected} where both hold the whole conversation, or a
string prompt with chosen/rejected holding the whole conversation (UltraFeedback);
optional `margin` (or score_chosen - score_rejected with `margin_from_scores`). SFT: {prompt, completion}, {messages} or {text}. Prompt-only:
{prompt}. Unknown keys (ids, sources, scores) are kept in `extra`.

Validation happens here, at load time, because bad pairs otherwise surface only hours later: an
empty response leaves no token to average the loss over (NaN), identical responses give the
reward-model and DPO losses no gradient (a flat loss). Splitting out an unstated prompt: prompt_split.py.
The load_* functions stop at the first bad record (`on_bad_record="error"`, the
library default) or skip and count it in a `LoadReport` ("skip", the trainers' default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .errors import DataError
from .load import Location, json_type, open_records, split_source
from .prompt_split import prompt_from_prefix, split_implicit, strip_prompt
from .report import BAD_RECORD_POLICIES, LoadReport

Message = dict  # {"role": str, "content": str}, extra keys (e.g. "name") kept
ROLES = ("system", "user", "assistant", "tool")
PREFERENCE_KEYS = ("prompt", "chosen", "rejected", "margin")
SFT_KEYS = ("prompt", "completion", "messages", "text")

PREFERENCE_FORMATS = ("{prompt, chosen, rejected} as strings or message lists, "
                      "or {chosen, rejected} with the prompt inside both; optional margin")
SFT_FORMATS = "{prompt, completion} (strings or message lists), {messages} or {text}"


@dataclass
class PreferenceExample:
    prompt: str | list[Message]  # conversational when a list
    chosen: str | list[Message]  # the completion only (prompt part removed)
    rejected: str | list[Message]
    margin: float | None = None
    where: str = ""  # str(Location), for later error messages
    extra: dict = field(default_factory=dict)

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass
class SFTExample:
    prompt: str | list[Message] | None = None  # {prompt, completion} format
    completion: str | list[Message] | None = None
    messages: list[Message] | None = None  # {messages} format
    text: str | None = None  # {text} format
    where: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.messages is not None:
            return "messages"
        if self.text is not None:
            return "text"
        return "prompt_completion"

    @property
    def conversational(self) -> bool:
        return self.messages is not None or isinstance(self.prompt, list)


@dataclass
class PromptExample:
    prompt: str | list[Message]
    where: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


# ---------------------------------------------------------------- field checks


def _err(where: Location | None, message: str, name: str | None = None) -> DataError:
    return DataError.at(where, message, name)


def _text(value, where, name: str) -> str:
    """A non-empty string that encodes to UTF-8 (tokenizers reject lone surrogates)."""
    if not isinstance(value, str):
        raise _err(where, f"expected a string, got {json_type(value)}", name)
    if not value.strip():
        raise _err(where, "empty string" if not value else "whitespace-only string", name)
    _check_encodable(value, where, name)
    return value


def _check_encodable(value: str, where, name: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _err(where, f"unpaired surrogate {value[e.start]!r} at character {e.start}", name) from e


def _messages(value, where, name: str) -> list[Message]:
    """A non-empty list of {role, content} objects; content may be empty except
    in the final assistant turn, which `_check_assistant` checks."""
    if not isinstance(value, list):
        raise _err(where, f"expected a list of messages, got {json_type(value)}", name)
    if not value:
        raise _err(where, "empty message list", name)
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _err(where, f"expected a message object with 'role' and 'content', got {json_type(m)}",
                       f"{name}[{i}]")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str):
            raise _err(where, f"expected a string role, got {json_type(role)}", f"{name}[{i}].role")
        if role not in ROLES:
            raise _err(where, f"unknown role {role!r}; expected one of {', '.join(ROLES)}", f"{name}[{i}].role")
        if not isinstance(content, str):
            raise _err(where, f"expected string content, got {json_type(content)}", f"{name}[{i}].content")
        _check_encodable(content, where, f"{name}[{i}].content")
    return [dict(m) for m in value]


def _check_assistant(messages: list[Message], where, name: str) -> None:
    """At least one assistant turn, and the last one says something (it is what the loss trains on)."""
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None)
    if last is None:
        raise _err(where, "no assistant message", name)
    if not messages[last]["content"].strip():
        raise _err(where, "empty assistant message", f"{name}[{last}].content")


def _turns(value, where, name: str) -> str | list[Message]:
    """A string or a message list (structure checked; assistant turns checked by the caller)."""
    if isinstance(value, list):
        return _messages(value, where, name)
    if isinstance(value, str):
        return _text(value, where, name)
    raise _err(where, f"expected a string or a list of messages, got {json_type(value)}", name)


def _same_form(a, b, where, a_name: str, b_name: str, hint: str = "") -> None:
    """Both strings or both message lists: a mix has no single chat template rendering."""
    if isinstance(a, list) != isinstance(b, list):
        form = "a message list" if isinstance(b, list) else "a string"
        other = "a message list" if isinstance(a, list) else "a string"
        raise _err(where, f"is {form} but '{a_name}' is {other}; use one form for both{hint}", b_name)


def _number(value, where, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(where, f"expected a number, got {json_type(value)}", name)
    try:
        number = float(value)  # OverflowError for ints beyond float range
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _err(where, f"expected a finite number, got {str(value)[:20]}", name)
    return number


def _margin(rec: dict, where, from_scores: bool = False) -> float | None:
    """`margin`, else (with `from_scores`) score_chosen - score_rejected (UltraFeedback's columns)."""
    value = rec.get("margin")
    if value is not None:  # columnar formats (Parquet, datasets) fill absent cells with null
        return _number(value, where, "margin")
    if not from_scores:
        return None
    for name in ("score_chosen", "score_rejected"):
        if rec.get(name) is None:
            raise _err(where, "missing (margin_from_scores needs 'score_chosen' and 'score_rejected')", name)
    return _number(rec["score_chosen"], where, "score_chosen") - _number(rec["score_rejected"], where, "score_rejected")


# ---------------------------------------------------------------- records


def _require_dict(rec, where) -> dict:
    if not isinstance(rec, dict):
        raise _err(where, f"expected an object (a record), got {json_type(rec)}")
    return rec


def _extra(rec: dict, used) -> dict:
    return {k: v for k, v in rec.items() if k not in used}


def parse_preference(rec: dict, where: Location | None = None, margin_from_scores: bool = False) -> PreferenceExample:
    """One preference record in any TRL preference format, validated; with `margin_from_scores`
    a record without `margin` takes score_chosen - score_rejected."""
    rec = _require_dict(rec, where)
    for name in ("chosen", "rejected"):
        if name not in rec:
            if not any(k in rec for k in ("prompt", "chosen", "rejected")):
                raise _err(where, f"matches no preference format; accepted: {PREFERENCE_FORMATS}")
            raise _err(where, "missing", name)
    margin = _margin(rec, where, margin_from_scores)
    chosen = _turns(rec["chosen"], where, "chosen")
    rejected = _turns(rec["rejected"], where, "rejected")
    _same_form(chosen, rejected, where, "chosen", "rejected")
    if "prompt" in rec:
        prompt = _turns(rec["prompt"], where, "prompt")
        if isinstance(prompt, str) and isinstance(chosen, list):
            prompt, chosen, rejected = prompt_from_prefix(prompt, chosen, rejected, where)
        hint = " (or drop 'prompt' if chosen/rejected hold the whole conversation)"
        _same_form(prompt, chosen, where, "prompt", "chosen", hint)  # rejected matches chosen already
        if isinstance(prompt, list):
            chosen, rejected = strip_prompt(prompt, chosen), strip_prompt(prompt, rejected)
            for name, value in (("chosen", chosen), ("rejected", rejected)):
                if not value:
                    raise _err(where, "no messages after the prompt", name)
    if chosen == rejected:
        raise _err(where, "identical to 'chosen'", "rejected")
    if "prompt" not in rec:
        prompt, chosen, rejected = split_implicit(chosen, rejected, where)
    if isinstance(chosen, list):
        _check_assistant(chosen, where, "chosen")
        _check_assistant(rejected, where, "rejected")
    return PreferenceExample(prompt, chosen, rejected, margin, _where(where), _extra(rec, PREFERENCE_KEYS))


def parse_sft(rec: dict, where: Location | None = None) -> SFTExample:
    """One SFT record: {prompt, completion}, {messages} or {text}, validated."""
    rec = _require_dict(rec, where)
    if "completion" in rec:
        if "prompt" not in rec:
            raise _err(where, "missing (a 'completion' needs its 'prompt')", "prompt")
        prompt = _turns(rec["prompt"], where, "prompt")
        completion = _turns(rec["completion"], where, "completion")
        _same_form(prompt, completion, where, "prompt", "completion")
        if isinstance(completion, list):
            completion = strip_prompt(prompt, completion)
            if not completion:
                raise _err(where, "no messages after the prompt", "completion")
            _check_assistant(completion, where, "completion")
        ex = SFTExample(prompt=prompt, completion=completion)
        used = ("prompt", "completion")
    elif "messages" in rec:
        ex = SFTExample(messages=_messages(rec["messages"], where, "messages"))
        _check_assistant(ex.messages, where, "messages")
        used = ("messages",)
    elif "text" in rec:
        ex, used = SFTExample(text=_text(rec["text"], where, "text")), ("text",)
    elif "prompt" in rec:
        raise _err(where, "missing (a 'prompt' needs its 'completion')", "completion")
    else:
        raise _err(where, f"matches no SFT format; accepted: {SFT_FORMATS}")
    ex.where, ex.extra = _where(where), _extra(rec, used)
    return ex


def parse_prompt(rec: dict, where: Location | None = None) -> PromptExample:
    """One prompt-only record: {prompt} as a string or message list; other keys kept in `extra`."""
    rec = _require_dict(rec, where)
    if "prompt" not in rec:
        raise _err(where, "missing; prompt-only records need a 'prompt' (a string or a message list)",
                   "prompt")
    prompt = _turns(rec["prompt"], where, "prompt")
    return PromptExample(prompt, _where(where), _extra(rec, ("prompt",)))


def _where(where: Location | None) -> str:
    return "" if where is None else str(where)


# ---------------------------------------------------------------- loaders


def _load(source: str, split, parse: Callable, form_field: Callable, on_bad_record: str = "error",
          report: LoadReport | None = None) -> list:
    """Parse every record and refuse files that mix plain-text and conversational records
    (one file gets one rendering). A record that fails validation stops the load
    (`on_bad_record="error"`) or is dropped and counted in `report` ("skip")."""
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {', '.join(BAD_RECORD_POLICIES)}, got {on_bad_record!r}")
    skip = on_bad_record == "skip"
    report = LoadReport() if report is None else report
    records, report.split = open_records(source, split, keep_bad=skip)
    report.source, report.rows = split_source(source)[0], len(records)
    examples, first = [], None
    for loc, rec in records:
        try:
            if isinstance(rec, DataError):  # a line the reader could not parse (skip mode only)
                raise rec
            ex = parse(rec, loc)
        except DataError as e:
            if not skip:
                raise
            report.add(e)
            continue
        if first is None:
            first = (ex.conversational, loc)
        elif ex.conversational != first[0]:
            forms = ("conversational", "plain-text") if ex.conversational else ("plain-text", "conversational")
            raise DataError.at(loc, f"{forms[0]} record, but the first record ({first[1]}) is {forms[1]}; "
                                    "a file must use one form", form_field(ex))
        examples.append(ex)
    if not examples:
        raise DataError(f"no valid records: all {report.rows} failed validation (on_bad_record: skip); "
                        f"first: {report.examples[0]}", report.source)
    return examples


def load_preference(source: str, split="train", on_bad_record: str = "error", report: LoadReport | None = None,
                    margin_from_scores: bool = False) -> list[PreferenceExample]:
    """Validated preference pairs from `source` (see `read_records` for sources and `split`)."""
    return _load(source, split, lambda rec, loc: parse_preference(rec, loc, margin_from_scores),
                 lambda ex: "chosen", on_bad_record, report)


def load_sft(source: str, split="train", on_bad_record: str = "error",
             report: LoadReport | None = None) -> list[SFTExample]:
    """Validated SFT examples from `source`."""
    return _load(source, split, parse_sft, lambda ex: {"prompt_completion": "prompt"}.get(ex.kind, ex.kind),
                 on_bad_record, report)


def load_prompts(source: str, split="train", on_bad_record: str = "error",
                 report: LoadReport | None = None) -> list[PromptExample]:
    """Validated prompts from `source`."""
    return _load(source, split, parse_prompt, lambda ex: "prompt", on_bad_record, report)
