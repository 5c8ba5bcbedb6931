"""on_bad_record: skip drops records that fail validation, counts them and keeps the first few
references; error (the library default) stops at the first one. File-level problems stop the
run either way. Each file puts bad lines between good ones so a wrong line number fails."""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfkit.data import DataError, LoadReport, load_preference, load_prompts, load_sft

GOOD = [{"prompt": f"q{i}?", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(6)]


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_skip_drops_counts_and_names_bad_records(tmp_path):
    path = write(tmp_path / "p.jsonl", [
        json.dumps(GOOD[0]),
        json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}),  # hh-rlhf has such rows
        json.dumps(GOOD[1]),
        '{"prompt": "q", "chosen": ',  # cut-off line of a dump
        '["q", "a", "b"]',
        json.dumps({"prompt": "q", "chosen": "a"}),
        json.dumps(GOOD[2]),
    ])
    report = LoadReport()
    pairs = load_preference(path, on_bad_record="skip", report=report)
    assert [p.prompt for p in pairs] == ["q0?", "q1?", "q2?"]
    assert [p.where for p in pairs] == [f"{path}:1", f"{path}:3", f"{path}:7"]
    assert (report.rows, report.bad) == (7, 4)
    assert report.examples == [
        f"{path}:2: field 'rejected': identical to 'chosen'",
        f"{path}:4: invalid JSON: Expecting value at column 27",
        f"{path}:5: expected a JSON object, got list",
        f"{path}:6: field 'rejected': missing",
    ]


def test_error_is_the_default_and_stops_at_the_first_bad_record(tmp_path):
    path = write(tmp_path / "p.jsonl", [json.dumps(GOOD[0]), json.dumps({"prompt": "q", "chosen": "s", "rejected": "s"})])
    for kwargs in ({}, {"on_bad_record": "error"}):
        with pytest.raises(DataError) as info:
            load_preference(path, **kwargs)
        assert str(info.value) == f"{path}:2: field 'rejected': identical to 'chosen'"


def test_examples_keep_the_first_five_and_count_all(tmp_path):
    bad = json.dumps({"prompt": "q", "chosen": "s", "rejected": "s"})
    path = write(tmp_path / "p.jsonl", [json.dumps(GOOD[0])] + [bad] * 8)
    report = LoadReport()
    assert len(load_preference(path, on_bad_record="skip", report=report)) == 1
    assert report.bad == 8
    assert report.examples == [f"{path}:{i}: field 'rejected': identical to 'chosen'" for i in range(2, 7)]
    assert report.summary() == {"bad_records": 8, "bad_record_examples": report.examples}


def test_no_valid_record_left_is_a_file_error(tmp_path):
    bad = json.dumps({"prompt": "q", "chosen": "s", "rejected": "s"})
    path = write(tmp_path / "p.jsonl", [bad, "{oops"])
    with pytest.raises(DataError) as info:
        load_preference(path, on_bad_record="skip")
    assert str(info.value) == (f"{path}: no valid records: all 2 failed validation (on_bad_record: skip); "
                               f"first: {path}:1: field 'rejected': identical to 'chosen'")


@pytest.mark.parametrize("lines, message", [
    ([], "empty: no records"),
    (["[1, 2"], "invalid JSON"),  # .json whole-file document: not per record
])
def test_file_level_problems_still_stop(tmp_path, lines, message):
    path = write(tmp_path / ("p.jsonl" if not lines else "p.json"), lines)
    with pytest.raises(DataError) as info:
        load_preference(path, on_bad_record="skip")
    assert message in str(info.value)


def test_missing_file_still_stops(tmp_path):
    with pytest.raises(DataError) as info:
        load_preference(str(tmp_path / "nope.jsonl"), on_bad_record="skip")
    assert str(info.value) == f"{tmp_path / 'nope.jsonl'}: no such file"


def test_file_mixing_forms_still_stops(tmp_path):
    conv = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    path = write(tmp_path / "p.jsonl", [json.dumps(GOOD[0]), json.dumps(conv)])
    with pytest.raises(DataError) as info:
        load_preference(path, on_bad_record="skip")
    assert str(info.value).startswith(f"{path}:2: field 'chosen': conversational record, but the first record")


def test_json_list_skips_a_non_object_element(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([GOOD[0], "oops", GOOD[1]]), encoding="utf-8")
    report = LoadReport()
    assert [p.prompt for p in load_preference(str(path), on_bad_record="skip", report=report)] == ["q0?", "q1?"]
    assert report.examples == [f"{path}: record 2: expected a JSON object, got string"]


def test_sft_and_prompts_skip(tmp_path):
    sft = write(tmp_path / "s.jsonl", [json.dumps({"prompt": "p", "completion": "c"}), json.dumps({"prompt": "p"}),
                                       json.dumps({"text": "t"})])
    report = LoadReport()
    assert [e.kind for e in load_sft(sft, on_bad_record="skip", report=report)] == ["prompt_completion", "text"]
    assert report.examples == [f"{sft}:2: field 'completion': missing (a 'prompt' needs its 'completion')"]
    prompts = write(tmp_path / "q.jsonl", [json.dumps({"prompt": ""}), json.dumps({"prompt": "hi"})])
    report = LoadReport()
    assert [e.prompt for e in load_prompts(prompts, on_bad_record="skip", report=report)] == ["hi"]
    assert report.examples == [f"{prompts}:1: field 'prompt': empty string"]


def test_unknown_policy_is_refused(tmp_path):
    path = write(tmp_path / "p.jsonl", [json.dumps(GOOD[0])])
    with pytest.raises(ValueError, match="on_bad_record"):
        load_preference(path, on_bad_record="ignore")


_line = st.sampled_from([
    json.dumps(GOOD[0]), json.dumps({"prompt": "q", "chosen": "s", "rejected": "s"}), json.dumps({"chosen": "a"}),
    '{"prompt": ', "[1]", "", "  ", json.dumps({"prompt": [{"role": "user", "content": "q"}],
                                                   "chosen": [{"role": "assistant", "content": "a"}],
                                                   "rejected": [{"role": "assistant", "content": "b"}]}),
]) | st.text(max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_line, max_size=6))
def test_fuzz_skip_counts_every_record_once(lines):
    """Skip mode: either a one-line DataError naming the file, or the kept and skipped records add
    up to the records read, with one reference per skipped record (up to five)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.jsonl"
        content = "\n".join(lines)
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
        report = LoadReport()
        try:
            pairs = load_preference(str(path), on_bad_record="skip", report=report)
        except DataError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path))
            return
        assert report.rows == sum(1 for seg in content.removeprefix("\ufeff").split("\n") if seg.strip())
        assert len(pairs) + report.bad == report.rows
        assert len(report.examples) == min(report.bad, 5)
        assert all(x.startswith(f"{path}:") for x in report.examples + [p.where for p in pairs])
