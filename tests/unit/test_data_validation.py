"""TRL record formats parse to the right examples; every kind of bad input gives
one DataError whose single line names the file, the line and the field."""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfkit.data import (
    DataError,
    Location,
    PreferenceExample,
    PromptExample,
    SFTExample,
    load_preference,
    load_prompts,
    load_sft,
    parse_preference,
    parse_prompt,
    parse_sft,
)

HERE = Location("data.jsonl", 7)


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


GOOD_PAIR = {"prompt": "Q?", "chosen": "yes", "rejected": "no"}
GOOD_SFT = {"prompt": "Q?", "completion": "A."}
GOOD_CONV_PAIR = {"prompt": [user("Q")], "chosen": [bot("a")], "rejected": [bot("b")]}


# ------------------------------------------------------------- formats that parse


def test_standard_string_pair_keeps_extra_columns():
    ex = parse_preference({"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": 3, "source": "x"}, HERE)
    assert ex == PreferenceExample("2+2?", "4", "5", None, "data.jsonl:7", {"id": 3, "source": "x"})
    assert not ex.conversational


def test_conversational_pair():
    rec = {"prompt": [{"role": "system", "content": ""}, user("Hi")], "chosen": [bot("Hello")],
           "rejected": [bot("Bye")], "margin": 2}
    ex = parse_preference(rec, HERE)
    assert ex.prompt == [{"role": "system", "content": ""}, user("Hi")]
    assert (ex.chosen, ex.rejected, ex.margin) == ([bot("Hello")], [bot("Bye")], 2.0)
    assert isinstance(ex.margin, float) and ex.conversational


def test_conversational_pair_with_prompt_repeated_in_responses():
    rec = {"prompt": [user("Hi")], "chosen": [user("Hi"), bot("Hello")], "rejected": [user("Hi"), bot("Bye")]}
    ex = parse_preference(rec, HERE)
    assert (ex.prompt, ex.chosen, ex.rejected) == ([user("Hi")], [bot("Hello")], [bot("Bye")])


def test_message_extra_keys_are_kept():
    msg = {"role": "assistant", "content": "ok", "name": "helper"}
    ex = parse_preference({"prompt": [user("Hi")], "chosen": [msg], "rejected": [bot("no")]}, HERE)
    assert ex.chosen == [msg]


def test_implicit_string_prompt_cut_at_word_boundary():
    """The separating space goes to the responses (" blue." is how the whole text tokenizes)."""
    ex = parse_preference({"chosen": "Q: colour? A: The sky is blue.", "rejected": "Q: colour? A: The sky is green."})
    assert (ex.prompt, ex.chosen, ex.rejected) == ("Q: colour? A: The sky is", " blue.", " green.")


def test_implicit_string_shared_partial_word_goes_to_responses():
    ex = parse_preference({"chosen": "Answer:\nyes", "rejected": "Answer:\nyeah, sure"}, HERE)
    assert (ex.prompt, ex.chosen, ex.rejected) == ("Answer:", "\nyes", "\nyeah, sure")


def test_implicit_messages_longest_common_prefix():
    shared = [{"role": "system", "content": "Be brief."}, user("Hi"), bot("Hello"), user("Weather?")]
    ex = parse_preference({"chosen": shared + [bot("Sunny")], "rejected": shared + [bot("Dunno")], "id": 1}, HERE)
    assert (ex.prompt, ex.chosen, ex.rejected) == (shared, [bot("Sunny")], [bot("Dunno")])
    assert ex.extra == {"id": 1} and ex.conversational


@pytest.mark.parametrize("margin, expected", [(0, 0.0), (-1.5, -1.5), (None, None)])
def test_margin_values(margin, expected):
    ex = parse_preference(dict(GOOD_PAIR, margin=margin), HERE)
    assert ex.margin == expected


def test_sft_formats():
    pc = parse_sft({"prompt": [user("Hi")], "completion": [bot("Hello")], "lang": "en"}, HERE)
    assert (pc.kind, pc.prompt, pc.completion, pc.extra) == ("prompt_completion", [user("Hi")], [bot("Hello")],
                                                             {"lang": "en"})
    assert pc.conversational
    msgs = parse_sft({"messages": [user("Hi"), bot("Hello"), user("Thanks")]}, HERE)
    assert (msgs.kind, msgs.where, len(msgs.messages)) == ("messages", "data.jsonl:7", 3)
    text = parse_sft({"text": "Once upon a time"}, HERE)
    assert text == SFTExample(text="Once upon a time", where="data.jsonl:7")
    assert text.kind == "text" and not text.conversational


def test_prompt_only_formats():
    assert parse_prompt({"prompt": "Hi", "id": 2}, HERE) == PromptExample("Hi", "data.jsonl:7", {"id": 2})
    conv = parse_prompt({"prompt": [user("Hi")], "chosen": "ignored"}, HERE)
    assert conv.prompt == [user("Hi")] and conv.extra == {"chosen": "ignored"} and conv.conversational


def test_parse_without_location_still_names_field():
    with pytest.raises(DataError) as info:
        parse_preference({"prompt": "Q", "chosen": 1, "rejected": "r"})
    assert str(info.value) == "field 'chosen': expected a string or a list of messages, got number"


# ------------------------------------------------------------- bad input


def write_lines(tmp_path, lines, name="bad.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def error_of(loader, path) -> str:
    with pytest.raises(DataError) as info:
        loader(str(path))
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg
    return msg


def bad_record(tmp_path, loader, good, bad):
    """The message for a file whose line 1 is good and line 2 is `bad` (so line 2 must be named)."""
    return error_of(loader, write_lines(tmp_path, [json.dumps(good), json.dumps(bad)]))


def prefix(tmp_path, field, line=2, name="bad.jsonl"):
    return f"{tmp_path / name}:{line}: field '{field}': "


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert error_of(load_preference, path) == f"{path}: empty: no records"


def test_only_blank_lines(tmp_path):
    path = write_lines(tmp_path, ["", "   ", "\t"], "blank.jsonl")
    assert error_of(load_sft, path) == f"{path}: empty: no records"


@pytest.mark.parametrize("missing", ["chosen", "rejected"])
def test_missing_preference_field(tmp_path, missing):
    bad = {k: v for k, v in GOOD_PAIR.items() if k != missing}
    assert bad_record(tmp_path, load_preference, GOOD_PAIR, bad) == prefix(tmp_path, missing) + "missing"


def test_missing_sft_prompt(tmp_path):
    msg = bad_record(tmp_path, load_sft, GOOD_SFT, {"completion": "A."})
    assert msg == prefix(tmp_path, "prompt") + "missing (a 'completion' needs its 'prompt')"


def test_missing_sft_completion(tmp_path):
    msg = bad_record(tmp_path, load_sft, GOOD_SFT, {"prompt": "Q?"})
    assert msg == prefix(tmp_path, "completion") + "missing (a 'prompt' needs its 'completion')"


def test_missing_prompt_for_prompt_only(tmp_path):
    msg = bad_record(tmp_path, load_prompts, {"prompt": "Q"}, {"question": "Q"})
    assert msg.startswith(prefix(tmp_path, "prompt") + "missing; prompt-only records need a 'prompt'")


def test_record_matching_no_format_lists_formats(tmp_path):
    msg = bad_record(tmp_path, load_preference, GOOD_PAIR, {"question": "Q", "answer": "A"})
    assert msg.startswith(f"{tmp_path / 'bad.jsonl'}:2: matches no preference format; accepted: "
                          "{prompt, chosen, rejected}")
    msg = bad_record(tmp_path, load_sft, GOOD_SFT, {"question": "Q"})
    assert msg == (f"{tmp_path / 'bad.jsonl'}:2: matches no SFT format; accepted: "
                   "{prompt, completion} (strings or message lists), {messages} or {text}")


@pytest.mark.parametrize("field, value, got", [
    ("chosen", 3, "number"), ("chosen", None, "null"), ("rejected", {"a": 1}, "object"),
    ("prompt", True, "boolean"),
])
def test_mistyped_preference_field(tmp_path, field, value, got):
    msg = bad_record(tmp_path, load_preference, GOOD_PAIR, dict(GOOD_PAIR, **{field: value}))
    assert msg == prefix(tmp_path, field) + f"expected a string or a list of messages, got {got}"


@pytest.mark.parametrize("value, got", [(True, "boolean"), ("0.5", "string"), ([1], "list")])
def test_mistyped_margin(tmp_path, value, got):
    msg = bad_record(tmp_path, load_preference, GOOD_PAIR, dict(GOOD_PAIR, margin=value))
    assert msg == prefix(tmp_path, "margin") + f"expected a number, got {got}"


def test_nan_margin(tmp_path):
    path = write_lines(tmp_path, [json.dumps(GOOD_PAIR), '{"prompt": "Q", "chosen": "a", "rejected": "b", '
                                                         '"margin": NaN}'])
    assert error_of(load_preference, path) == prefix(tmp_path, "margin") + "expected a finite number, got nan"


def test_margin_beyond_float_range(tmp_path):
    msg = bad_record(tmp_path, load_preference, GOOD_PAIR, dict(GOOD_PAIR, margin=10**400))
    assert msg == prefix(tmp_path, "margin") + "expected a finite number, got 10000000000000000000"


def test_mistyped_text(tmp_path):
    msg = bad_record(tmp_path, load_sft, {"text": "ok"}, {"text": ["a"]})
    assert msg == prefix(tmp_path, "text") + "expected a string, got list"


@pytest.mark.parametrize("message, field, tail", [
    ("hello", "chosen[0]", "expected a message object with 'role' and 'content', got string"),
    ({"content": "x"}, "chosen[0].role", "expected a string role, got null"),
    ({"role": "bot", "content": "x"}, "chosen[0].role",
     "unknown role 'bot'; expected one of system, user, assistant, tool"),
    ({"role": "assistant", "content": None}, "chosen[0].content", "expected string content, got null"),
    ({"role": "assistant", "content": [{"type": "text"}]}, "chosen[0].content", "expected string content, got list"),
])
def test_bad_message(tmp_path, message, field, tail):
    bad = {"prompt": [user("Hi")], "chosen": [message], "rejected": [bot("no")]}
    assert bad_record(tmp_path, load_preference, GOOD_CONV_PAIR, bad) == prefix(tmp_path, field) + tail


@pytest.mark.parametrize("chosen", ["same answer", [bot("same answer")]])
def test_chosen_equals_rejected(tmp_path, chosen):
    prompt = "Q?" if isinstance(chosen, str) else [user("Q?")]
    good = {"prompt": prompt, "chosen": chosen, "rejected": chosen + "!" if isinstance(chosen, str) else [bot("x")]}
    bad = {"prompt": prompt, "chosen": chosen, "rejected": chosen}
    assert bad_record(tmp_path, load_preference, good, bad) == prefix(tmp_path, "rejected") + "identical to 'chosen'"


def test_chosen_equals_rejected_implicit(tmp_path):
    msg = bad_record(tmp_path, load_preference, GOOD_PAIR, {"chosen": "Q? yes", "rejected": "Q? yes"})
    assert msg == prefix(tmp_path, "rejected") + "identical to 'chosen'"


@pytest.mark.parametrize("blank, kind", [("", "empty string"), ("  \n\t ", "whitespace-only string")])
@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected"])
def test_blank_preference_strings(tmp_path, blank, kind, field):
    msg = bad_record(tmp_path, load_preference, GOOD_PAIR, dict(GOOD_PAIR, **{field: blank}))
    assert msg == prefix(tmp_path, field) + kind


@pytest.mark.parametrize("blank, kind", [("", "empty string"), (" \n ", "whitespace-only string")])
def test_blank_sft_strings(tmp_path, blank, kind):
    assert bad_record(tmp_path, load_sft, GOOD_SFT, {"prompt": "Q", "completion": blank}) == \
        prefix(tmp_path, "completion") + kind
    assert bad_record(tmp_path, load_sft, {"text": "ok"}, {"text": blank}) == prefix(tmp_path, "text") + kind
    assert bad_record(tmp_path, load_prompts, {"prompt": "ok"}, {"prompt": blank}) == prefix(tmp_path, "prompt") + kind


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_final_assistant_turn(tmp_path, blank):
    good = {"messages": [user("Hi"), bot("Hello")]}
    bad = {"messages": [user("Hi"), bot("Hello"), user("More?"), bot(blank)]}
    assert bad_record(tmp_path, load_sft, good, bad) == prefix(tmp_path, "messages[3].content") + \
        "empty assistant message"


def test_messages_without_assistant(tmp_path):
    good = {"messages": [user("Hi"), bot("Hello")]}
    msg = bad_record(tmp_path, load_sft, good, {"messages": [user("Hi"), user("Hello?")]})
    assert msg == prefix(tmp_path, "messages") + "no assistant message"


def test_empty_message_list(tmp_path):
    msg = bad_record(tmp_path, load_sft, {"messages": [user("Hi"), bot("Hello")]}, {"messages": []})
    assert msg == prefix(tmp_path, "messages") + "empty message list"


def test_lone_surrogate(tmp_path):
    path = write_lines(tmp_path, [json.dumps(GOOD_PAIR), '{"prompt": "Q", "chosen": "a\\ud800", "rejected": "b"}'])
    assert error_of(load_preference, path) == prefix(tmp_path, "chosen") + "unpaired surrogate '\\ud800' at character 1"


def test_bad_json(tmp_path):
    path = write_lines(tmp_path, [json.dumps(GOOD_PAIR), '{"prompt": "Q", "chosen": "a", "rejected": }'])
    assert error_of(load_preference, path) == f"{path}:2: invalid JSON: Expecting value at column 44"


def test_bad_utf8(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(GOOD_PAIR).encode() + b'\n{"prompt": "Q\xff", "chosen": "a", "rejected": "b"}\n')
    assert error_of(load_preference, path) == f"{path}:2: invalid UTF-8 (byte 0xff at column 14)"


def test_jsonl_line_is_list(tmp_path):
    path = write_lines(tmp_path, [json.dumps(GOOD_PAIR), '["Q", "a", "b"]'])
    assert error_of(load_preference, path) == f"{path}:2: expected a JSON object, got list"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert error_of(load_preference, path) == f"{path}: no such file"


@pytest.mark.parametrize("bad, field, form, other", [
    ({"prompt": "Q", "chosen": [bot("a")], "rejected": [bot("b")]}, "chosen", "a message list", "a string"),
    ({"prompt": [user("Q")], "chosen": "a", "rejected": "b"}, "chosen", "a string", "a message list"),
    ({"prompt": "Q", "chosen": "a", "rejected": [bot("b")]}, "rejected", "a message list", "a string"),
    ({"chosen": [user("Q"), bot("a")], "rejected": "Q b"}, "rejected", "a string", "a message list"),
])
def test_mixed_formats_in_one_record(tmp_path, bad, field, form, other):
    msg = bad_record(tmp_path, load_preference, GOOD_PAIR, bad)
    first = "chosen" if field == "rejected" else "prompt"
    assert msg.startswith(prefix(tmp_path, field) + f"is {form} but '{first}' is {other}; use one form for both")


def test_mixed_sft_record(tmp_path):
    msg = bad_record(tmp_path, load_sft, GOOD_SFT, {"prompt": [user("Q")], "completion": "A"})
    assert msg == prefix(tmp_path, "completion") + "is a string but 'prompt' is a message list; use one form for both"


def test_file_mixing_string_and_conversational_records(tmp_path):
    path = write_lines(tmp_path, [json.dumps(GOOD_PAIR), json.dumps(GOOD_PAIR), json.dumps(GOOD_CONV_PAIR)])
    assert error_of(load_preference, path) == prefix(tmp_path, "chosen", line=3) + \
        f"conversational record, but the first record ({path}:1) is plain-text; a file must use one form"


def test_sft_file_mixing_text_and_messages(tmp_path):
    msg = bad_record(tmp_path, load_sft, {"messages": [user("Hi"), bot("Hello")]}, {"text": "plain"})
    assert msg.startswith(prefix(tmp_path, "text") + "plain-text record, but the first record")


def test_implicit_without_shared_prompt(tmp_path):
    msg = bad_record(tmp_path, load_preference, GOOD_PAIR, {"chosen": "Yes indeed", "rejected": "No way"})
    assert msg.startswith(prefix(tmp_path, "prompt") + "no prompt: without a 'prompt' key")


@pytest.mark.parametrize("chosen, rejected, field", [
    ("Q: it ", "Q: it is", "chosen"),
    ([user("Q"), bot("A")], [user("Q"), bot("A"), user("and?"), bot("B")], "chosen"),
    ("Q: maybe so", "Q: maybe ", "rejected"),
])
def test_implicit_nothing_left_after_prompt(tmp_path, chosen, rejected, field):
    good = GOOD_PAIR if isinstance(chosen, str) else GOOD_CONV_PAIR
    msg = bad_record(tmp_path, load_preference, good, {"chosen": chosen, "rejected": rejected})
    assert msg == prefix(tmp_path, field) + "nothing left after removing the prompt shared with the other response"


def test_implicit_one_response_extends_the_other():
    ex = parse_preference({"chosen": "Q: it is", "rejected": "Q: it is not"}, HERE)
    assert (ex.prompt, ex.chosen, ex.rejected) == ("Q: it", " is", " is not")


# ------------------------------------------------------------- fuzzing

# Small alphabets make shared prefixes, equal responses and blank strings common,
# so the implicit-prompt and duplicate checks get exercised, not just type errors.
_short_text = st.text(alphabet="ab \n", max_size=6)
_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | _short_text
_json_values = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
_messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "tool", "bot"]),
    "content": _short_text | _json_scalars,
}), max_size=4)
_good_messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["user", "assistant"]), "content": _short_text}), min_size=1, max_size=3)
_turns = _short_text | _good_messages
# Records that are close to valid, so the fuzz also reaches the success path.
_near_valid = st.fixed_dictionaries({"chosen": _turns, "rejected": _turns}, optional={
    "prompt": _turns, "margin": st.floats() | st.integers() | st.none(), "completion": _turns,
    "messages": _good_messages, "text": _short_text})
_records = _near_valid | st.dictionaries(
    st.sampled_from(["prompt", "chosen", "rejected", "margin", "completion", "messages", "text", "id"]),
    _json_values | _short_text | _messages, max_size=5)
_lines = st.lists(_records.map(json.dumps) | _json_values.map(json.dumps) | st.text(max_size=20)
                  | st.just(""), max_size=4).map("\n".join).map(lambda s: s.encode("utf-8", "surrogatepass"))
_files = st.binary(max_size=60) | _lines


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=_files)
def test_fuzz_jsonl_only_raises_data_error(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.jsonl"
        path.write_bytes(content)
        for loader, kind in ((load_preference, PreferenceExample), (load_sft, SFTExample),
                             (load_prompts, PromptExample)):
            try:
                examples = loader(str(path))
            except DataError as e:
                msg = str(e)
                assert "\n" not in msg and msg.startswith(str(path))
                continue
            assert examples and all(isinstance(ex, kind) for ex in examples)
            assert len({ex.conversational for ex in examples}) == 1
            assert all(ex.where.startswith(f"{path}:") for ex in examples)


# ------------------------------------------------------------- ultrafeedback_binarized rows


UF = {"prompt": "Q?", "prompt_id": "x", "chosen": [user("Q?"), bot("a")], "rejected": [user("Q?"), bot("b")],
      "messages": [user("Q?"), bot("a")], "score_chosen": 9.0, "score_rejected": 3.5}


def test_string_prompt_with_whole_conversations_takes_the_shared_prefix():
    ex = parse_preference(UF, HERE)
    assert (ex.prompt, ex.chosen, ex.rejected, ex.margin) == ([user("Q?")], [bot("a")], [bot("b")], None)
    assert ex.conversational and ex.extra == {k: UF[k] for k in ("prompt_id", "messages", "score_chosen", "score_rejected")}
    system = {"role": "system", "content": "Be brief."}
    ex = parse_preference({**UF, "chosen": [system, *UF["chosen"]], "rejected": [system, *UF["rejected"]]}, HERE)
    assert (ex.prompt, ex.chosen) == ([system, user("Q?")], [bot("a")])


def test_string_prompt_that_differs_from_the_shared_prefix():
    with pytest.raises(DataError) as info:
        parse_preference({**UF, "prompt": "Another question?"}, HERE)
    assert str(info.value) == ("data.jsonl:7: field 'prompt': differs from the first user message that 'chosen' "
                               "and 'rejected' start with")


def test_string_prompt_with_identical_conversations():
    with pytest.raises(DataError) as info:
        parse_preference({**UF, "rejected": UF["chosen"]}, HERE)
    assert str(info.value) == "data.jsonl:7: field 'rejected': identical to 'chosen'"


def test_margin_from_scores():
    assert parse_preference(UF, HERE, margin_from_scores=True).margin == 5.5
    assert parse_preference({**UF, "margin": 1.0}, HERE, margin_from_scores=True).margin == 1.0  # explicit wins
    plain = {"prompt": "Q", "chosen": "a", "rejected": "b", "score_chosen": 2, "score_rejected": 3}
    assert parse_preference(plain, HERE, margin_from_scores=True).margin == -1.0
    with pytest.raises(DataError) as info:
        parse_preference({k: v for k, v in UF.items() if k != "score_rejected"}, HERE, margin_from_scores=True)
    assert str(info.value) == ("data.jsonl:7: field 'score_rejected': missing (margin_from_scores needs "
                               "'score_chosen' and 'score_rejected')")
    with pytest.raises(DataError) as info:
        parse_preference({**UF, "score_chosen": "9"}, HERE, margin_from_scores=True)
    assert str(info.value) == "data.jsonl:7: field 'score_chosen': expected a number, got string"
