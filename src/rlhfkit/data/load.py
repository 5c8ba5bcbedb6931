"""Read raw records (dicts) from local files, `datasets` folders or the hub.

Each record comes with a `Location` so that later validation can name the file
and line (JSONL, CSV) or record number (JSON arrays, Parquet, `datasets`).
Everything that can go wrong with the input raises `DataError`, one line long.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import DataError

FILE_TYPES = (".jsonl", ".ndjson", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")
# Suffixes that mark `source` as a file path: a missing file with one of these is
# reported as missing instead of being looked up on the Hugging Face hub.
_PATH_SUFFIXES = {".jsonl", ".ndjson", ".json", ".gz", ".parquet", ".pq", ".csv", ".tsv",
                  ".txt", ".arrow", ".zip", ".xz", ".bz2", ".zst", ".yaml", ".yml"}
_BOM = b"\xef\xbb\xbf"
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
# The hub's Parquet layout: data/<split>-00000-of-00002.parquet
_SHARD = re.compile(r"(?P<split>.+)-\d{5}-of-\d{5}\.parquet")


@dataclass(frozen=True)
class Location:
    """Where a record came from: a 1-based line number or record number in `file`."""

    file: str
    index: int
    unit: str = "line"

    def __str__(self) -> str:
        if self.unit == "record":
            return f"{self.file}: record {self.index}"
        return f"{self.file}:{self.index}"


def read_records(source: str, split: str | Sequence[str] = "train",
                 keep_bad: bool = False) -> list[tuple[Location, dict]]:
    """All records of `source` as (location, dict) pairs; never empty.

    `source` is a .jsonl/.jsonl.gz/.json/.parquet/.csv file, a folder written by
    `datasets` `save_to_disk` (a DatasetDict gives its `split`), a folder holding
    `<split>.<ext>` files or hub-style `data/<split>-00000-of-00001.parquet` shards,
    or else a hub dataset name for `datasets.load_dataset`; `SOURCE:SPLIT` names
    the split (see `split_source`). `split` may be a list of names to try in order.
    With `keep_bad`, a line that is not a JSON object (or a JSON-list element that
    is not one) comes back as (location, DataError) in its place instead of raising.
    """
    return open_records(source, split, keep_bad)[0]


def open_records(source: str, split: str | Sequence[str] = "train",
                 keep_bad: bool = False) -> tuple[list[tuple[Location, dict]], str | None]:
    """(records, the split read, or None for a source without splits); see `read_records`."""
    source, named = split_source(source)
    splits = (named,) if named else ((split,) if isinstance(split, str) else tuple(split))
    path = Path(source).expanduser()
    if path.is_dir():
        records, chosen = _read_folder(path, source, splits, keep_bad)
    elif path.is_file():
        records, chosen = _read_file(path, source, splits, keep_bad)
        if named and chosen is None:
            raise DataError(f"no split '{named}': a single file has no splits (only a JSON object of "
                            "lists has); drop the ':SPLIT' suffix", source)
    elif _looks_like_path(source):
        raise DataError("no such file", source)
    else:
        records, chosen = _read_hub(source, splits)
    if not records:
        raise DataError("empty: no records", source)
    return records, chosen


def split_source(source: str) -> tuple[str, str | None]:
    """('path', 'split') from 'path:split', else (source, None).

    The suffix is a split only when `source` itself is no existing path, the part
    before the last ':' is an existing path or a hub name (`name`, `org/name`), and
    the suffix looks like a split name (so 'C:\\x', URLs and 'a:b/c' stay whole).
    """
    base, colon, split = source.rpartition(":")
    if not colon or not base or not _SPLIT_NAME.fullmatch(split) or Path(source).expanduser().exists():
        return source, None
    if Path(base).expanduser().exists() or (_HUB_NAME.fullmatch(base) and not _looks_like_path(base)):
        return base, split
    return source, None


def choose_split(available: Sequence[str], wanted: Sequence[str], name: str, what: str = "folder") -> str:
    """The first of `wanted` that `available` has, else a DataError naming what there is."""
    for split in wanted:
        if split in available:
            return split
    quoted = [f"'{s}'" for s in wanted]
    names = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    raise DataError(f"no split {names}; this {what} has {', '.join(available) or 'none'}", name)


def _looks_like_path(source: str) -> bool:
    # Hub ids are 'name' or 'org/name'; anything else shaped like a path is one.
    return (source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1
            or Path(source).suffix.lower() in _PATH_SUFFIXES)


def _file_type(path: Path) -> str | None:
    name = path.name.lower()
    return next((t for t in sorted(FILE_TYPES, key=len, reverse=True) if name.endswith(t)), None)


def _read_file(path: Path, name: str, splits: Sequence[str], keep_bad: bool = False):
    """(records, split): only a JSON object of lists has splits."""
    kind = _file_type(path)
    if kind is None:
        raise DataError(f"unsupported file type '{path.suffix}'; expected one of "
                        f"{', '.join(FILE_TYPES)} or a `datasets` folder", name)
    if kind == ".parquet":
        return _read_parquet(path, name), None
    data = _read_bytes(path, name, gz=kind.endswith(".gz"))
    if kind == ".csv":
        return _read_csv(data, name), None
    if kind in (".json", ".json.gz"):
        return _read_json(data, name, splits, keep_bad)
    return _read_jsonl(data, name, keep_bad), None


def _read_bytes(path: Path, name: str, gz: bool) -> bytes:
    try:
        if gz:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"not a valid gzip file ({e})", name) from e
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror or e}", name) from e


def _decode_line(raw: bytes, name: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"invalid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})",
                        name, lineno) from e


def _parse_json(text: str, name: str, lineno: int | None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        # In a whole-file JSON document json's own line number is the file's line.
        line = lineno if lineno is not None else e.lineno
        raise DataError(f"invalid JSON: {e.msg} at column {e.colno}", name, line) from e
    except RecursionError as e:
        raise DataError("invalid JSON: nested too deeply", name, lineno) from e
    except ValueError as e:  # e.g. integers beyond Python's digit limit
        raise DataError(f"invalid JSON: {str(e).splitlines()[0][:120]}", name, lineno) from e


def _read_jsonl(data: bytes, name: str, keep_bad: bool = False) -> list[tuple[Location, dict]]:
    records = []
    # Split bytes on b"\n" (not str.splitlines): JSON strings may legally hold
    # U+2028 etc., and decoding per line lets a UTF-8 error name its line.
    for lineno, raw in enumerate(data.removeprefix(_BOM).split(b"\n"), start=1):
        try:
            text = _decode_line(raw, name, lineno)
            if not text.strip():
                continue
            value = _parse_json(text, name, lineno)
            if not isinstance(value, dict):
                raise DataError(f"expected a JSON object, got {json_type(value)}", name, lineno)
        except DataError as e:  # one unreadable line of a dump: the caller decides
            if not keep_bad:
                raise
            value = e
        records.append((Location(name, lineno), value))
    return records


def _read_json(data: bytes, name: str, splits: Sequence[str], keep_bad: bool = False):
    data = data.removeprefix(_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"invalid UTF-8 (byte {data[e.start]:#04x})", name, lineno) from e
    if not text.strip():
        raise DataError("empty: no records", name)
    value = _parse_json(text, name, None)
    rows, split = _json_rows(value, name, splits)
    records = []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            row = DataError(f"expected a JSON object, got {json_type(row)}", name, i, unit="record")
            if not keep_bad:
                raise row
        records.append((Location(name, i, "record"), row))
    return records, split


def _json_rows(value, name: str, splits: Sequence[str]) -> tuple[list, str | None]:
    if isinstance(value, list):
        return value, None
    if isinstance(value, dict):
        for key in (*splits, "data"):
            if isinstance(value.get(key), list):
                return value[key], (key if key in splits else None)
    keys = " or ".join(f"'{k}'" for k in ("data", *splits))
    raise DataError(f"expected a JSON list of objects, or an object with a list under "
                    f"{keys}; got {json_type(value)}", name)


def _read_csv(data: bytes, name: str) -> list[tuple[Location, dict]]:
    lines = data.removeprefix(_BOM).split(b"\n")
    text = "\n".join(_decode_line(raw, name, i) for i, raw in enumerate(lines, start=1))
    # Long documents exceed csv's default 128 KiB field limit; raise it to the
    # largest value a C long holds on every platform.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # strict: an unclosed or stray quote is an error, not a silently merged cell.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, records, start = None, [], 1
    try:
        for row in reader:
            if row:  # csv gives [] for a blank line
                if header is None:
                    header = _csv_header(row, name, start)
                else:
                    records.append((Location(name, start), _csv_row(header, row, name, start)))
            start = reader.line_num + 1  # a quoted cell may span lines
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", name, start) from e
    return records


def _csv_header(row: list[str], name: str, lineno: int) -> list[str]:
    seen = set()
    for column in row:
        if column in seen:
            raise DataError(f"duplicate column '{column}' in the header", name, lineno)
        seen.add(column)
    return row


def _csv_row(header: list[str], row: list[str], name: str, lineno: int) -> dict:
    if len(row) != len(header):
        raise DataError(f"{len(row)} cells but the header has {len(header)} columns", name, lineno)
    return dict(zip(header, row))


def _read_parquet(path: Path, name: str) -> list[tuple[Location, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"cannot read Parquet: {_first_line(e)}", name) from e
    return [(Location(name, i, "record"), row) for i, row in enumerate(rows, start=1)]


def _read_folder(path: Path, name: str, splits: Sequence[str], keep_bad: bool = False):
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _read_saved_dataset(path, name, splits)
    # A folder of plain files, as `datasets.load_dataset(folder)` would accept:
    # <split>.<ext> files, or the hub's Parquet shards (in data/ or the folder itself).
    files: dict[str, list[Path]] = {}
    for ext in FILE_TYPES:  # FILE_TYPES order decides between train.jsonl and train.json
        for f in sorted(path.glob(f"*{ext}")):
            if f.is_file() and _file_type(f) == ext and not _SHARD.fullmatch(f.name):
                files.setdefault(f.name[:-len(ext)], [f])
    shards: dict[str, list[Path]] = {}
    for f in sorted([*path.glob("data/*.parquet"), *path.glob("*.parquet")]):
        match = _SHARD.fullmatch(f.name)
        if match and f.is_file():
            shards.setdefault(match["split"], []).append(f)
    files = {**shards, **files}  # a plain <split>.<ext> file wins over shards of that split
    if not files:
        found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
        raise DataError(f"not a dataset folder: expected one written by `datasets` save_to_disk "
                        f"or a file '{splits[0]}' + one of {', '.join(FILE_TYPES)}; found {found}", name)
    split = choose_split(sorted(files), splits, name)
    records = []
    for f in files[split]:
        records += _read_file(f, str(f), (split,), keep_bad)[0]
    return records, split


def _read_saved_dataset(path: Path, name: str, splits: Sequence[str]):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - any failure here means a broken folder
        raise DataError(f"cannot load `datasets` folder: {_first_line(e)}", name) from e
    split = None
    if isinstance(ds, datasets.DatasetDict):
        split = choose_split(list(ds), splits, name)
        ds, name = ds[split], f"{name} (split '{split}')"
    return [(Location(name, i, "record"), row) for i, row in enumerate(ds.to_list(), start=1)], split


def _read_hub(source: str, splits: Sequence[str]):
    import datasets

    try:
        # One name: load it (the hub says which exist if it is wrong); several: ask which exist.
        split = splits[0] if len(splits) == 1 else choose_split(
            datasets.get_dataset_split_names(source), splits, source, "dataset")
        ds = datasets.load_dataset(source, split=split)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - network, auth and not-found all mean "cannot load"
        raise DataError(f"not a local file or folder, and the hub load failed: "
                        f"{type(e).__name__}: {_first_line(e)}", source) from e
    name = f"{source} (split '{split}')"
    return [(Location(name, i, "record"), dict(row)) for i, row in enumerate(ds, start=1)], split


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def json_type(value) -> str:
    """The JSON name of a Python value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
