"""What `rlhfkit annotate import` reads and what `export` writes: validation errors name file, line and
field; exported rows are TRL preference / SFT records that `datasets` and rlhfkit's loaders accept."""

import json

import pytest

from rlhfkit.annotate.export import demonstration_rows, majority_rows, per_annotator_rows, write_jsonl
from rlhfkit.annotate.records import read_tasks
from rlhfkit.data import DataError, load_preference, load_sft

PAIR = {"prompt": "how is the tea ?", "response_a": "the tea is warm .", "response_b": "the tea is cold ."}


def write(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_reads_what_sample_pairs_writes(tmp_path):
    # rlhfkit sample-pairs: {**extra columns, id, prompt, response_a, response_b}
    rows = [{"category": "food", "id": "0-0", **PAIR}, {**PAIR, "id": 7, "gold": "b", "metadata": {"src": "x"}},
            {**PAIR, "response_b": "the tea is sour ."}]
    tasks = read_tasks(write(tmp_path, rows))
    assert [t.external_id for t in tasks] == ["0-0", "7", "pairs.jsonl:3"]
    assert tasks[0].meta == {"category": "food"} and tasks[1].meta == {"src": "x"}
    assert [t.gold for t in tasks] == [None, "b", None]
    assert tasks[0].response_a == PAIR["response_a"] and tasks[0].kind == "pair"


@pytest.mark.parametrize("bad,line,field,message", [
    ('{"prompt": "x", "response_a": ', 2, None, "invalid JSON"),
    (json.dumps({"prompt": "x", "response_a": "y"}), 2, "response_b", "missing"),
    (json.dumps({**PAIR, "gold": "left"}), 2, "gold", "expected \"a\" or \"b\", got 'left'"),
    (json.dumps({**PAIR, "gold": 1}), 2, "gold", "expected \"a\" or \"b\""),
    (json.dumps({**PAIR, "prompt": ""}), 2, "prompt", "empty string"),
    (json.dumps({**PAIR, "response_b": PAIR["response_a"]}), 2, "response_b", "identical"),
    (json.dumps({**PAIR, "metadata": [1]}), 2, "metadata", "expected an object"),
    (json.dumps({**PAIR, "id": "p1"}), 2, "id", "duplicate id 'p1'"),
    ('["a", "b"]', 2, None, "expected a JSON object"),
])
def test_bad_records_name_file_line_and_field(tmp_path, bad, line, field, message):
    path = write(tmp_path, [json.dumps({**PAIR, "id": "p1"}), bad, json.dumps({**PAIR, "id": "p3"})])
    with pytest.raises(DataError) as e:
        read_tasks(path)
    text = str(e.value)
    assert text.startswith(f"{path}:{line}:"), text
    assert (f"field '{field}'" in text) if field else ("field '" not in text), text
    assert message in text, text


def test_demonstration_records(tmp_path):
    tasks = read_tasks(write(tmp_path, [{"prompt": "write a haiku"}, {"prompt": "greet", "completion": "hello"}]),
                       "demonstration")
    assert [(t.kind, t.draft) for t in tasks] == [("demonstration", None), ("demonstration", "hello")]
    with pytest.raises(DataError, match=r"\.jsonl:1: field 'prompt': missing"):
        read_tasks(write(tmp_path, [{"completion": "x"}], "d.jsonl"), "demonstration")


TASKS = {
    1: {"external_id": "p1", "prompt": "q1", "response_a": "A1", "response_b": "B1", "gold": None},
    2: {"external_id": "p2", "prompt": "q2", "response_a": "A2", "response_b": "B2", "gold": None},
    3: {"external_id": "p3", "prompt": "q3", "response_a": "A3", "response_b": "B3", "gold": None},
    4: {"external_id": "p4", "prompt": "q4", "response_a": "A4", "response_b": "B4", "gold": None},
    5: {"external_id": "g5", "prompt": "q5", "response_a": "A5", "response_b": "B5", "gold": "a"},
    6: {"external_id": "c6", "prompt": [{"role": "user", "content": "hi"}], "response_a": "A6", "response_b": "B6",
        "gold": None},
    7: {"external_id": "d7", "prompt": "write", "response_a": None, "response_b": None, "gold": None},
}


def lab(task, who, choice, margin=None, kind="pair", completion=None, left="a"):
    return {"task_id": task, "annotator": who, "choice": choice, "margin": margin, "kind": kind, "left": left,
            "completion": completion, "gold": TASKS[task]["gold"]}


LABELS = [
    lab(1, "u", "b", 1.0), lab(1, "v", "b", 1 / 3), lab(1, "w", "a", 2 / 3),  # b wins 2:1, margin mean(1, 1/3)
    lab(2, "u", "a"), lab(2, "v", "b"),  # no strict majority: dropped
    lab(3, "u", "tie"), lab(3, "v", "tie"), lab(3, "w", "a"),  # majority tie: dropped
    lab(4, "u", "a"),  # one label
    lab(5, "u", "a"), lab(5, "v", "a"),  # gold: left out by default
    lab(6, "u", "b", 2 / 3), lab(6, "v", "b"),
    lab(7, "u", None, kind="demonstration", completion="a poem"),
]


def test_majority_rows_by_hand():
    rows, dropped = majority_rows(TASKS, LABELS)
    assert dropped == {"no_majority": 1, "tie": 1, "gold": 1}
    by_id = {r["id"]: r for r in rows}
    assert list(by_id) == ["p1", "p4", "c6"]
    assert by_id["p1"] == {"prompt": "q1", "chosen": "B1", "rejected": "A1", "margin": pytest.approx(2 / 3),
                           "agreement": pytest.approx(2 / 3), "id": "p1", "labels": 3, "source": "human"}
    assert "margin" not in by_id["p4"] and by_id["p4"]["agreement"] == 1.0 and by_id["p4"]["chosen"] == "A4"
    # A chat prompt gives chosen/rejected as assistant messages (TRL's conversational form).
    assert by_id["c6"]["chosen"] == [{"role": "assistant", "content": "B6"}]
    assert by_id["c6"]["margin"] == pytest.approx(2 / 3)  # only one of the two gave a strength
    rows, dropped = majority_rows(TASKS, LABELS, include_gold=True)
    assert "g5" in {r["id"] for r in rows} and "gold" not in dropped


def test_per_annotator_rows_flag_agreement():
    rows, dropped = per_annotator_rows(TASKS, LABELS)
    assert dropped == {"tie": 2, "gold": 2}
    p1 = [r for r in rows if r["id"] == "p1"]
    assert [(r["annotator"], r["chosen"], r["agrees_with_majority"]) for r in p1] == [
        ("u", "B1", True), ("v", "B1", True), ("w", "A1", False)]
    assert p1[2]["margin"] == pytest.approx(2 / 3) and p1[0]["agreement"] == pytest.approx(2 / 3)
    p2 = [r for r in rows if r["id"] == "p2"]
    assert [r["agrees_with_majority"] for r in p2] == [None, None]  # no majority to agree with
    assert all(r["annotator_flagged"] in (True, False) for r in rows)


def test_exported_files_load_with_datasets_and_rlhfkit(tmp_path):
    rows, _ = majority_rows(TASKS, [r for r in LABELS if r["task_id"] != 6])  # string prompts only
    prefs = tmp_path / "prefs.jsonl"
    write_jsonl(rows, prefs)
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(prefs), split="train")
    assert ds.num_rows == 2 and {"prompt", "chosen", "rejected", "margin", "agreement"} <= set(ds.column_names)
    assert ds[0]["chosen"] == "B1" and ds[1]["margin"] is None
    examples = load_preference(str(prefs))
    assert [(e.chosen, e.rejected, e.margin) for e in examples] == [("B1", "A1", pytest.approx(2 / 3)),
                                                                    ("A4", "B4", None)]
    demos, _ = demonstration_rows(TASKS, LABELS)
    sft = tmp_path / "sft.jsonl"
    write_jsonl(demos, sft)
    assert demos == [{"prompt": "write", "completion": "a poem", "id": "d7", "annotator": "u"}]
    assert load_sft(str(sft))[0].completion == "a poem"
