"""Rows from the files a user downloads: jsonl, json, parquet, and ``datasets`` folders.

Each row comes with where it was: ``file:N`` with N the line (jsonl) or the 1-based row
(a JSON array, parquet, a ``save_to_disk`` folder). A line that is not JSON comes back as a
:class:`DataError` in place of the row, so one bad line never stops a file.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from reflectioncoder.data.schema import DataError
from reflectioncoder.errors import UserError, not_utf8

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
# Files of a `datasets` folder or hub snapshot that describe the data rather than hold it.
_METADATA = {"dataset_info.json", "dataset_dict.json", "state.json", "dataset_infos.json"}

Row = tuple[str, "dict | DataError"]


def _open_text(path: Path, errors: str = "strict"):
    # utf-8-sig: a byte-order mark (some Windows editors write one) is not part of the data
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors=errors)
    return path.open(encoding="utf-8-sig", errors=errors)


def read_jsonl(path: Path) -> Iterator[Row]:
    """One row per non-blank line; ``datasets``' ``to_json`` writes this (lines=True).
    Read as bytes and decoded per line, so a line that is not UTF-8 is one bad row."""
    with gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            source = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield source, DataError(source, "<text>", not_utf8(e))
                continue
            if not line.strip():
                continue
            try:
                yield source, json.loads(line)
            except json.JSONDecodeError as e:
                yield source, DataError(source, "<json>", f"invalid JSON: {e.msg} (col {e.colno})")


def read_json(path: Path) -> Iterator[Row]:
    """A ``.json`` file: a JSON array of rows, jsonl (as ``to_json`` writes by default), or
    one pretty-printed object (one row)."""
    try:
        yield from _read_json(path)
    except UnicodeDecodeError as e:  # the whole document is unreadable: the file's one error
        source = f"{path}:1"
        yield source, DataError(source, "<text>", not_utf8(e, of="the file"))


def _read_json(path: Path) -> Iterator[Row]:
    with _open_text(path, errors="replace") as f:  # only to tell the shape
        head = f.read(4096).lstrip()
        f.seek(0)
        first = f.readline()
    if not head.startswith("["):
        if _is_json(first) or not head.startswith("{"):
            yield from read_jsonl(path)
            return
        # one object over several lines (pretty-printed): one row, or the file's error
        with _open_text(path) as f:
            try:
                yield f"{path}:1", json.load(f)
            except json.JSONDecodeError as e:
                yield (
                    f"{path}:{e.lineno}",
                    DataError(f"{path}:{e.lineno}", "<json>", f"invalid JSON: {e.msg}"),
                )
        return
    with _open_text(path) as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as e:  # the file's one error, reported like a bad row
            source = f"{path}:{e.lineno}"
            yield source, DataError(source, "<json>", f"invalid JSON: {e.msg}")
            return
    for i, row in enumerate(rows, start=1):
        yield f"{path}:{i}", row


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def read_parquet(path: Path) -> Iterator[Row]:
    """Streamed in record batches (a hub parquet shard can be large)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"not a readable parquet file ({e})", file=path, field="--in") from e
    n = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield f"{path}:{n}", row


def read_saved_dataset(folder: Path) -> Iterator[Row]:
    """A ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder, via ``datasets``;
    a DatasetDict gives its ``train`` split (all splits in name order if it has none)."""
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(folder))
    if isinstance(data, DatasetDict):
        splits = ["train"] if "train" in data else sorted(data)
        for split in splits:
            for i, row in enumerate(data[split], start=1):
                yield f"{folder}/{split}:{i}", row
        return
    for i, row in enumerate(data, start=1):
        yield f"{folder}:{i}", row


def is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def data_files(folder: Path) -> list[Path]:
    """The data files under a folder (a hub snapshot), sorted, metadata files left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name.endswith(DATA_SUFFIXES)
        and p.name not in _METADATA
        and not p.name.endswith((".manifest.json", ".progress.jsonl"))  # ours, not data
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def expand_input(path: str | Path) -> list[tuple[str, Path]]:
    """(reader, path) pairs that one ``--in`` names: a file, a ``save_to_disk`` folder, or a
    folder of data files."""
    path = Path(path)
    if path.is_dir():
        if is_saved_dataset(path):
            return [("save_to_disk", path)]
        files = data_files(path)
        if not files:
            raise FileNotFoundError(f"--in: no {'/'.join(DATA_SUFFIXES)} files under {path}")
        return [(reader_for(f), f) for f in files]
    if not path.is_file():
        raise FileNotFoundError(f"--in: {path} not found")
    return [(reader_for(path), path)]


def reader_for(path: Path) -> str:
    name = path.name
    for suffix, reader in ((".parquet", "parquet"), (".json", "json"), (".json.gz", "json")):
        if name.endswith(suffix):
            return reader
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    raise ValueError(f"--in: {path}: unknown file type (expected {', '.join(DATA_SUFFIXES)})")


def read_rows(reader: str, path: Path) -> Iterator[Row]:
    readers = {
        "jsonl": read_jsonl,
        "json": read_json,
        "parquet": read_parquet,
        "save_to_disk": read_saved_dataset,
    }
    if not path.name.endswith(".gz"):
        return readers[reader](path)
    return _gzip_errors_named(readers[reader](path), path)


def _gzip_errors_named(rows: Iterator[Row], path: Path) -> Iterator[Row]:
    """gzip's own errors (`Not a gzipped file (b'xx')`, a file cut short) name no file."""
    try:
        yield from rows
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UserError(f"not a readable gzip file ({e})", file=path, field="--in") from e
