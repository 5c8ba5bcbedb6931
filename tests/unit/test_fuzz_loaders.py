"""Fuzzing every data loader with hypothesis beyond JSONL (tests/unit/test_data_validation.py fuzzes
that): JSON, CSV, gzipped JSONL, Parquet bytes, and the annotation server's task import. Whatever
the bytes, a loader returns valid examples or raises DataError with one line that starts with the
file's name; nothing else escapes. Bounded: max_examples 60-100 each, no deadline."""

import gzip
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfkit.annotate.records import TaskRecord, read_tasks
from rlhfkit.data import DataError, load_preference, load_prompts, load_sft
from rlhfkit.data.formats import PreferenceExample, PromptExample, SFTExample

LOADERS = ((load_preference, PreferenceExample), (load_sft, SFTExample), (load_prompts, PromptExample))
KEYS = ["prompt", "chosen", "rejected", "margin", "completion", "messages", "text", "id", "response_a",
        "response_b", "gold", "draft", "metadata"]
# text with control characters, lone surrogates, huge runs and the odd NUL
_nasty = st.text(max_size=12) | st.sampled_from(["\x00", "\u202e", "\ud800", "a" * 20000, "\r\n", "\x1b[31m", "é"])
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | _nasty
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_nasty, inner, max_size=3), max_leaves=6)
_records = st.dictionaries(st.sampled_from(KEYS), _values, max_size=5)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8 bytes


def _check(path: Path) -> None:
    for loader, kind in LOADERS:
        try:
            examples = loader(str(path))
        except DataError as e:
            msg = str(e)
            assert "\n" not in msg and msg.startswith(str(path)), msg
            continue
        assert examples and all(isinstance(ex, kind) for ex in examples)
        assert all(ex.where.startswith(f"{path}") for ex in examples)


def _run(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"fuzz{suffix}"
        path.write_bytes(content)
        _check(path)


_json_docs = (st.lists(_records, max_size=4) | st.fixed_dictionaries({"train": st.lists(_records, max_size=3)})
              | _values).map(lambda v: json.dumps(v))


@settings(max_examples=100, **SETTINGS)
@given(doc=_json_docs.map(_encode) | st.binary(max_size=80))
def test_fuzz_json_files(doc):
    _run(doc, ".json")


_cells = _nasty | st.sampled_from(['"', '""', ",", "\n", "a,b", '"x\ny"'])
_csv = st.tuples(st.lists(st.sampled_from(KEYS) | _nasty, min_size=1, max_size=4, unique=True),
                 st.lists(st.lists(_cells, max_size=5), max_size=4)).map(
    lambda t: "\n".join([",".join(t[0]), *(",".join(row) for row in t[1])]))


@settings(max_examples=100, **SETTINGS)
@given(doc=_csv.map(_encode) | st.binary(max_size=80))
def test_fuzz_csv_files(doc):
    _run(doc, ".csv")


@settings(max_examples=60, **SETTINGS)
@given(lines=st.lists(_records.map(json.dumps) | _nasty, max_size=4), truncate=st.integers(0, 40))
def test_fuzz_gzipped_jsonl_including_truncated_archives(lines, truncate):
    data = gzip.compress(_encode("\n".join(lines)))
    _run(data[:len(data) - truncate] if truncate else data, ".jsonl.gz")


@settings(max_examples=60, **SETTINGS)
@given(body=st.binary(max_size=200))
def test_fuzz_parquet_bytes(body):
    _run(b"PAR1" + body + b"PAR1", ".parquet")


@settings(max_examples=100, **SETTINGS)
@given(lines=st.lists(_records.map(json.dumps) | _nasty, max_size=4), kind=st.sampled_from(["pair", "demonstration"]))
def test_fuzz_annotation_task_import(lines, kind):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tasks.jsonl"
        path.write_bytes(_encode("\n".join(lines)))
        try:
            tasks = read_tasks(str(path), kind)
        except DataError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
            return
        assert tasks and all(isinstance(t, TaskRecord) and t.kind == kind for t in tasks)
