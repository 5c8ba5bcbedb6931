"""read_records and the load_* functions on every supported source type.

Each test writes tiny files into tmp_path and checks the exact records and
locations that come back, so a reader that drops, reorders or mislabels a
record fails.
"""

import gzip
import json
import pickle

import pytest

from rlhfkit.data import (
    DataError,
    Location,
    load_preference,
    load_prompts,
    load_sft,
    read_records,
)

PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "id": "a"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome", "id": "b"},
]
CONV_PAIR = {
    "prompt": [{"role": "user", "content": "Hi"}],
    "chosen": [{"role": "assistant", "content": "Hello!"}],
    "rejected": [{"role": "assistant", "content": "Go away."}],
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def assert_pairs(examples, where):
    assert [(e.prompt, e.chosen, e.rejected) for e in examples] == [
        ("What is 2+2?", "4", "5"),
        ("Capital of France?", "Paris", "Rome"),
    ]
    assert [e.extra for e in examples] == [{"id": "a"}, {"id": "b"}]
    assert [e.where for e in examples] == where


def test_location_str():
    assert str(Location("a.jsonl", 12)) == "a.jsonl:12"
    assert str(Location("a.parquet", 3, "record")) == "a.parquet: record 3"


def test_data_error_str_forms():
    assert str(DataError("bad", "f.jsonl", 3, "chosen")) == "f.jsonl:3: field 'chosen': bad"
    assert str(DataError("bad", "f.json", 2, unit="record")) == "f.json: record 2: bad"
    assert str(DataError("bad", "f.csv")) == "f.csv: bad"
    assert str(DataError("bad", field="x")) == "field 'x': bad"
    assert str(DataError("two\nlines", "f")) == "f: two\\nlines"
    err = DataError("bad", "f.json", 2, "chosen", unit="record")
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.message, back.file, back.line, back.field, back.unit) == ("bad", "f.json", 2, "chosen", "record")


def test_jsonl_round_trip_skips_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n   \n" + json.dumps(PAIRS[1]) + "\n", encoding="utf-8")
    records = read_records(str(path))
    assert records == [(Location(str(path), 1), PAIRS[0]), (Location(str(path), 4), PAIRS[1])]
    assert_pairs(load_preference(str(path)), [f"{path}:1", f"{path}:4"])


def test_jsonl_crlf_and_bom(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(PAIRS[0]).encode() + b"\r\n" + json.dumps(PAIRS[1]).encode())
    assert_pairs(load_preference(str(path)), [f"{path}:1", f"{path}:2"])


def test_jsonl_gz(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in PAIRS))
    assert_pairs(load_preference(str(path)), [f"{path}:1", f"{path}:2"])


@pytest.mark.parametrize("wrap", ["list", "data", "split"])
def test_json_round_trip(tmp_path, wrap):
    path = tmp_path / "p.json"
    body = {"list": PAIRS, "data": {"data": PAIRS}, "split": {"test": PAIRS[:1], "train": PAIRS}}[wrap]
    path.write_text(json.dumps(body, indent=2), encoding="utf-8")
    assert_pairs(load_preference(str(path)), [f"{path}: record 1", f"{path}: record 2"])


def test_json_split_selects_list(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"train": PAIRS, "test": PAIRS[1:]}), encoding="utf-8")
    examples = load_preference(str(path), split="test")
    assert [e.chosen for e in examples] == ["Paris"]


def test_json_top_level_scalar_is_error(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"rows": 3}', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(str(path))
    assert str(info.value).startswith(f"{path}: expected a JSON list of objects")


def test_json_array_element_not_object(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([PAIRS[0], [1, 2]]), encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(str(path))
    assert str(info.value) == f"{path}: record 2: expected a JSON object, got list"


def test_json_bad_json_names_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n {"chosen": "a",\n  "rejected": }\n]', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(str(path))
    assert str(info.value) == f"{path}:3: invalid JSON: Expecting value at column 15"


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(PAIRS), path)
    assert_pairs(load_preference(str(path)), [f"{path}: record 1", f"{path}: record 2"])


def test_parquet_conversational_with_null_margin(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    rows = [dict(CONV_PAIR, margin=1.5), dict(CONV_PAIR, margin=None)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    examples = load_preference(str(path))
    assert [e.margin for e in examples] == [1.5, None]
    assert examples[0].prompt == [{"role": "user", "content": "Hi"}]
    assert examples[1].rejected == [{"role": "assistant", "content": "Go away."}]
    assert examples[0].conversational


def test_parquet_corrupt(tmp_path):
    path = tmp_path / "p.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError) as info:
        read_records(str(path))
    assert str(info.value).startswith(f"{path}: cannot read Parquet:")


def test_csv_round_trip_with_multiline_cell(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        'prompt,chosen,rejected,id\n'
        '"What is 2+2?",4,5,a\n'
        '"Capital\nof France?",Paris,Rome,\n'
        '"Third",yes,no,c\n',
        encoding="utf-8",
    )
    records = read_records(str(path))
    assert [loc.index for loc, _ in records] == [2, 3, 5]
    assert records[1][1] == {"prompt": "Capital\nof France?", "chosen": "Paris", "rejected": "Rome", "id": ""}


def test_csv_load_sft(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("prompt,completion\nHello,World\n\nBye,Now\n", encoding="utf-8")
    examples = load_sft(str(path))
    assert [(e.prompt, e.completion, e.kind, e.where) for e in examples] == [
        ("Hello", "World", "prompt_completion", f"{path}:2"),
        ("Bye", "Now", "prompt_completion", f"{path}:4"),
    ]


def test_csv_wrong_cell_count(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected\na,b,c\na,b\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(str(path))
    assert str(info.value) == f"{path}:3: 2 cells but the header has 3 columns"


def test_csv_unclosed_quote_names_starting_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,chosen,rejected\na,b,c\n"a,b,c\nd,e,f\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(str(path))
    assert str(info.value) == f"{path}:3: malformed CSV: unexpected end of data"


def test_csv_header_only_is_empty(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(str(path))
    assert str(info.value) == f"{path}: empty: no records"


def test_csv_bad_utf8_names_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"prompt,chosen,rejected\na,b,c\na,\xff,c\n")
    with pytest.raises(DataError) as info:
        read_records(str(path))
    assert str(info.value).startswith(f"{path}:3: invalid UTF-8")


def test_datasets_folder_round_trip(tmp_path):
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(folder))
    assert_pairs(load_preference(str(folder)), [f"{folder}: record 1", f"{folder}: record 2"])


def test_dataset_dict_folder_takes_split(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}]),
        "test": datasets.Dataset.from_list([{"prompt": "c"}]),
    }).save_to_disk(str(folder))
    assert [e.prompt for e in load_prompts(str(folder))] == ["a", "b"]
    test = load_prompts(str(folder), split="test")
    assert [(e.prompt, e.where) for e in test] == [("c", f"{folder} (split 'test'): record 1")]
    with pytest.raises(DataError) as info:
        load_prompts(str(folder), split="validation")
    assert str(info.value) == f"{folder}: no split 'validation'; this folder has train, test"


def test_folder_with_split_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", PAIRS)
    write_jsonl(tmp_path / "test.jsonl", PAIRS[:1])
    path = tmp_path / "test.jsonl"
    assert [e.where for e in load_preference(str(tmp_path), split="test")] == [f"{path}:1"]


def test_folder_without_data(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as info:
        read_records(str(tmp_path))
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path}: not a dataset folder")
    assert msg.endswith("found notes.txt")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("hello")
    with pytest.raises(DataError) as info:
        read_records(str(path))
    assert str(info.value).startswith(f"{path}: unsupported file type '.txt'")


@pytest.mark.parametrize("name", ["missing.jsonl", "./missing", "data/sub/missing", "missing.csv"])
def test_missing_path_is_not_sent_to_hub(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        read_records(name)
    assert str(info.value) == f"{name}: no such file"


def test_hub_name_goes_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(source, split):
        calls.append((source, split))
        return datasets.Dataset.from_list([{"prompt": "p1"}, {"prompt": "p2"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_prompts("org/name", split="test")
    assert calls == [("org/name", "test")]
    assert [(e.prompt, e.where) for e in examples] == [
        ("p1", "org/name (split 'test'): record 1"),
        ("p2", "org/name (split 'test'): record 2"),
    ]


def test_hub_failure_is_data_error(monkeypatch):
    import datasets

    def failing(source, split):
        raise FileNotFoundError("Dataset 'org/nope' doesn't exist\non the Hub")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataError) as info:
        read_records("org/nope")
    assert str(info.value) == ("org/nope: not a local file or folder, and the hub load failed: "
                               "FileNotFoundError: Dataset 'org/nope' doesn't exist")


def test_load_sft_all_kinds(tmp_path):
    rows = [
        {"prompt": "Say hi", "completion": "hi"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "prompt": "Hi"},
        {"text": "Once upon a time"},
    ]
    conv = write_jsonl(tmp_path / "conv.jsonl", rows[1:2])
    plain = write_jsonl(tmp_path / "plain.jsonl", [rows[0], rows[2]])
    [messages] = load_sft(conv)
    assert messages.kind == "messages" and messages.extra == {"prompt": "Hi"}
    assert messages.messages[1] == {"role": "assistant", "content": "Hello"}
    assert [(e.kind, e.text, e.completion) for e in load_sft(plain)] == [
        ("prompt_completion", None, "hi"),
        ("text", "Once upon a time", None),
    ]
