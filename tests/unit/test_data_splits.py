"""Split selection for `data` and `eval_data`: `path:split`, `data_split` / `eval_split`
(eval default: test, then validation), on `datasets` folders, `<split>.jsonl` folders and
hub-style Parquet shard folders; HuggingFaceH4/ultrafeedback_binarized's layout and rows
(built here from the published schema: no download)."""

import json

import pytest

from rlhfkit.data import DataError, LoadReport, load_preference, load_prompts, load_sft
from rlhfkit.data.load import choose_split, split_source


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def uf_row(i: int) -> dict:
    """A row of ultrafeedback_binarized's *_prefs splits (its published columns)."""
    prompt = f"How do I make tea number {i}?"
    chosen = [user(prompt), bot(f"Boil water, steep {i} minutes.")]
    return {"prompt": prompt, "prompt_id": f"id{i}", "chosen": chosen,
            "rejected": [user(prompt), bot("Use cold water.")], "messages": chosen,
            "score_chosen": 8.0 + i, "score_rejected": 5.5}


def uf_sft_row(i: int) -> dict:
    return {"prompt": f"p{i}", "prompt_id": f"id{i}", "messages": [user(f"p{i}"), bot(f"a{i}")]}


UF_SPLITS = {"train_prefs": 4, "test_prefs": 2, "train_sft": 3, "test_sft": 1, "train_gen": 3, "test_gen": 1}


def uf_rows(split: str, n: int) -> list[dict]:
    offset = 100 if split.startswith("test") else 0
    make = uf_row if split.endswith("prefs") else uf_sft_row
    return [make(offset + i) for i in range(n)]


@pytest.fixture
def uf_folder(tmp_path):
    """ultrafeedback_binarized as `save_to_disk` writes it."""
    import datasets

    folder = tmp_path / "uf"
    datasets.DatasetDict({s: datasets.Dataset.from_list(uf_rows(s, n)) for s, n in UF_SPLITS.items()}
                         ).save_to_disk(str(folder))
    return folder


# ------------------------------------------------------------------ path:split


def test_split_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dd").mkdir()
    (tmp_path / "odd:name.jsonl").write_text("{}\n")
    (tmp_path / "p.jsonl").write_text("{}\n")
    assert split_source("dd:test") == ("dd", "test")
    assert split_source(f"{tmp_path}/dd:test_prefs") == (f"{tmp_path}/dd", "test_prefs")
    assert split_source("p.jsonl:train") == ("p.jsonl", "train")
    assert split_source("org/name:validation") == ("org/name", "validation")
    assert split_source("name:test") == ("name", "test")
    # an existing path that holds ':' is a path, whatever follows the colon
    assert split_source("odd:name.jsonl") == ("odd:name.jsonl", None)
    # the part before ':' is neither an existing path nor a hub name: no split
    assert split_source("missing.jsonl:test") == ("missing.jsonl:test", None)
    assert split_source("/abs/missing:test") == ("/abs/missing:test", None)
    assert split_source("./dd/x:test") == ("./dd/x:test", None)
    # a suffix that cannot be a split name (URLs, drive letters) is not one
    assert split_source("dd:a/b") == ("dd:a/b", None)
    assert split_source("https://host/x.jsonl") == ("https://host/x.jsonl", None)
    assert split_source("C:\\data\\p.jsonl") == ("C:\\data\\p.jsonl", None)
    assert split_source("dd") == ("dd", None)


def test_choose_split():
    assert choose_split(["train", "validation", "test"], ["test", "validation"], "f") == "test"
    assert choose_split(["train", "validation"], ["test", "validation"], "f") == "validation"
    with pytest.raises(DataError) as info:
        choose_split(["train", "extra"], ["test", "validation"], "f")
    assert str(info.value) == "f: no split 'test' or 'validation'; this folder has train, extra"
    with pytest.raises(DataError) as info:
        choose_split(["a"], ["test", "validation", "test_prefs"], "f")
    assert str(info.value) == "f: no split 'test', 'validation' or 'test_prefs'; this folder has a"


# ------------------------------------------------------------------ eval split on local sources


def test_eval_split_defaults_to_test_then_validation_in_a_datasets_folder(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}"} for i in range(9)]
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:5]), "validation": datasets.Dataset.from_list(rows[5:7]),
                          "test": datasets.Dataset.from_list(rows[7:])}).save_to_disk(str(folder))
    report = LoadReport()
    assert [e.prompt for e in load_prompts(str(folder), ("test", "validation"), report=report)] == ["p7", "p8"]
    assert (report.split, report.rows) == ("test", 2)
    assert [e.prompt for e in load_prompts(f"{folder}:validation", ("test", "validation"))] == ["p5", "p6"]


def test_eval_split_in_a_folder_of_split_files(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"prompt": f"t{i}"}) + "\n" for i in range(4)))
    (tmp_path / "test.jsonl").write_text(json.dumps({"prompt": "held"}) + "\n")
    report = LoadReport()
    assert [e.prompt for e in load_prompts(str(tmp_path), ("test", "validation"), report=report)] == ["held"]
    assert report.split == "test"
    assert [e.prompt for e in load_prompts(f"{tmp_path}:train")] == ["t0", "t1", "t2", "t3"]


def test_no_eval_split_names_what_exists(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "t"}) + "\n")
    (tmp_path / "dev.jsonl").write_text(json.dumps({"prompt": "d"}) + "\n")
    with pytest.raises(DataError) as info:
        load_prompts(str(tmp_path), ("test", "validation"))
    assert str(info.value) == f"{tmp_path}: no split 'test' or 'validation'; this folder has dev, train"


def test_a_split_named_on_a_single_file_is_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a"}) + "\n")
    assert [e.prompt for e in load_prompts(str(path), ("test", "validation"))] == ["a"]  # defaults: no splits
    with pytest.raises(DataError) as info:
        load_prompts(f"{path}:test")
    assert str(info.value) == (f"{path}: no split 'test': a single file has no splits (only a JSON object of "
                               "lists has); drop the ':SPLIT' suffix")


def test_json_object_of_splits(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"train": [{"prompt": "a"}], "validation": [{"prompt": "v"}]}))
    assert [e.prompt for e in load_prompts(str(path), ("test", "validation"))] == ["v"]
    assert [e.prompt for e in load_prompts(f"{path}:train")] == ["a"]


# ------------------------------------------------------------------ ultrafeedback_binarized


def test_ultrafeedback_rows_parse_with_the_prompt_from_the_shared_prefix(uf_folder):
    report = LoadReport()
    pairs = load_preference(str(uf_folder), ("train", "train_prefs"), report=report)
    assert (report.split, report.rows) == ("train_prefs", 4)
    first = pairs[0]
    assert first.prompt == [user("How do I make tea number 0?")]
    assert first.chosen == [bot("Boil water, steep 0 minutes.")]
    assert first.rejected == [bot("Use cold water.")]
    assert first.margin is None  # scores become a margin only when asked
    assert first.extra["score_chosen"] == 8.0 and first.extra["prompt_id"] == "id0"
    evals = load_preference(str(uf_folder), ("test", "validation", "test_prefs"))
    assert [p.prompt[0]["content"] for p in evals] == ["How do I make tea number 100?", "How do I make tea number 101?"]
    assert [e.kind for e in load_sft(str(uf_folder), ("train", "train_sft"))] == ["messages"] * 3
    assert [e.prompt for e in load_prompts(f"{uf_folder}:test_gen")] == ["p100"]


def test_ultrafeedback_scores_as_margin(uf_folder):
    pairs = load_preference(f"{uf_folder}:train_prefs", margin_from_scores=True)
    assert [p.margin for p in pairs] == [2.5, 3.5, 4.5, 5.5]


def test_ultrafeedback_parquet_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "uf" / "data"
    data.mkdir(parents=True)
    rows = uf_rows("train_prefs", 5)
    pq.write_table(pa.Table.from_pylist(rows[:3]), data / "train_prefs-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:]), data / "train_prefs-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(uf_rows("test_prefs", 2)), data / "test_prefs-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(uf_rows("train_sft", 1)), data / "train_sft-00000-of-00001.parquet")
    report = LoadReport()
    pairs = load_preference(str(tmp_path / "uf"), ("train", "train_prefs"), report=report)
    assert [p.extra["prompt_id"] for p in pairs] == ["id0", "id1", "id2", "id3", "id4"]
    assert pairs[3].where == f"{data / 'train_prefs-00001-of-00002.parquet'}: record 1"
    assert (report.split, report.rows) == ("train_prefs", 5)
    evals = load_preference(str(tmp_path / "uf"), ("test", "validation", "test_prefs"))
    assert [p.extra["prompt_id"] for p in evals] == ["id100", "id101"]
    with pytest.raises(DataError) as info:
        load_preference(str(tmp_path / "uf"), ("test", "validation"))
    assert str(info.value) == (f"{tmp_path / 'uf'}: no split 'test' or 'validation'; this folder has "
                               "test_prefs, train_prefs, train_sft")


# ------------------------------------------------------------------ what the trainers read


def test_trainer_data_and_eval_data_from_one_folder(uf_folder):
    from types import SimpleNamespace

    from rlhfkit.train.rm import RMConfig
    from rlhfkit.train.loop import load_data, note_data

    cfg = RMConfig(model="m", data=str(uf_folder), eval_data=str(uf_folder), output_dir="o", margin_from_scores=True)
    pairs, evals, reports = load_data(cfg, load_preference, "prefs", margin_from_scores=True)
    assert (len(pairs), len(evals)) == (4, 2)
    assert [p.margin for p in evals] == [102.5, 103.5]
    run = SimpleNamespace(print=(printed := []).append, notes={})
    note_data(run, reports)
    assert printed == [f"data: {uf_folder} split 'train_prefs': 4 rows", f"eval_data: {uf_folder} split 'test_prefs': 2 rows"]
    assert run.notes == {"data_split": "train_prefs", "eval_split": "test_prefs", "bad_records": 0,
                         "bad_record_examples": []}
    cfg.eval_split = "train_prefs"  # the same rows: said out loud
    _, evals, reports = load_data(cfg, load_preference, "prefs")
    run.notes.clear(), printed.clear()
    note_data(run, reports)
    assert len(evals) == 4 and printed[-1].startswith("warning: eval_data reads the same rows as data")
    cfg.data, cfg.eval_data, cfg.eval_split = f"{uf_folder}:test_prefs", f"{uf_folder}:train_prefs", "ignored"
    pairs, evals, _ = load_data(cfg, load_preference, "prefs")
    assert (len(pairs), len(evals)) == (2, 4)  # SOURCE:SPLIT wins over the fields
    cfg.data, cfg.data_split = str(uf_folder), "train_gen"
    assert [p.prompt for p in load_data(cfg, load_prompts, "gen", with_eval=False)[0]] == ["p0", "p1", "p2"]


def test_config_fields_are_checked():
    from rlhfkit.config import ConfigError
    from rlhfkit.config_yaml import from_mapping
    from rlhfkit.train.rm import RMConfig

    base = {"model": "m", "data": "d", "output_dir": "o"}
    assert from_mapping(RMConfig, base, "x.yaml").on_bad_record == "skip"
    with pytest.raises(ConfigError) as info:
        from_mapping(RMConfig, {**base, "on_bad_record": "ignore"}, "x.yaml")
    assert str(info.value) == "x.yaml: field 'on_bad_record': 'ignore' is not one of skip, error"
    with pytest.raises(ConfigError) as info:
        from_mapping(RMConfig, {**base, "data_split": ""}, "x.yaml")
    assert str(info.value) == "x.yaml: field 'data_split' must not be empty (default: train)"


def test_hub_split_choice_asks_which_splits_exist(monkeypatch):
    """No network here: the hub calls are stand-ins, so this checks the choosing, not the hub."""
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda source: ["train_prefs", "test_prefs"])
    monkeypatch.setattr(datasets, "load_dataset", lambda source, split: calls.append((source, split)) or
                        datasets.Dataset.from_list(uf_rows(split, 1)))
    report = LoadReport()
    pairs = load_preference("HuggingFaceH4/ultrafeedback_binarized", ("test", "validation", "test_prefs"), report=report)
    assert calls == [("HuggingFaceH4/ultrafeedback_binarized", "test_prefs")] and report.split == "test_prefs"
    assert pairs[0].where == "HuggingFaceH4/ultrafeedback_binarized (split 'test_prefs'): record 1"
    with pytest.raises(DataError) as info:
        load_preference("org/name", ("test", "validation"))
    assert str(info.value) == "org/name: no split 'test' or 'validation'; this dataset has train_prefs, test_prefs"
    load_preference("org/name:train_prefs", ("test", "validation"))  # a named split is loaded without asking
    assert calls[-1] == ("org/name", "train_prefs")
