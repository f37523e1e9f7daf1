"""Writing and reading trace directories (format: traces/schema.py)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from specreplay.traces.schema import SCHEMA_VERSION, SCHEMAS, TABLES


# How every trace table is written: zstd, and a CRC32 per data page, so that the reader
# (which verifies page checksums) refuses a flipped byte instead of decoding it.
PARQUET_WRITE = {"compression": "zstd", "write_page_checksum": True}
# A compacted table is written once and read many times (shipped samples, study
# traces): the strongest zstd level. On the sample trace's oracle it is 14 % smaller
# than the default level and 9x slower to write; reading is as fast.
PARQUET_COMPACT = {**PARQUET_WRITE, "compression_level": 19}


def _leaf(t: pa.DataType) -> pa.DataType:
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return t


def parquet_options(schema: pa.Schema, base: dict[str, Any] = PARQUET_WRITE) -> dict[str, Any]:
    """``pq.write_table`` options for a table of ``schema``: ``base``, with the scalar
    columns dictionary-encoded and the list columns (token ids, ranks,
    log-probabilities) plain. Arrow decodes a dictionary-encoded float16 column one
    value at a time, 4-5x slower than the same column written plain (on the oracle that
    was most of a trace's load time), and plain int lists decode about a fifth faster
    too; the oracle file is about a fifth larger."""
    names = [f.name for f in schema if _leaf(f.type) == f.type]
    return {**base, "use_dictionary": names}


def write_parquet(path: Path, table: pa.Table, base: dict[str, Any] = PARQUET_WRITE) -> None:
    """Write one trace table to ``path`` (atomically: temp name, fsync, rename)."""
    options = parquet_options(table.schema, base)
    _fsync_write(path, lambda p: pq.write_table(table, p, **options))


class TraceError(Exception):
    """A trace (or profile) cannot be read or written; the message names the file,
    table, column or version and says what to do."""


def _fsync_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json(path: Path, obj: Any) -> None:
    _fsync_write(Path(path), lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def table_from_rows(name: str, rows: list[dict[str, Any]]) -> pa.Table:
    schema = SCHEMAS[name]
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


def write_part(trace_dir: Path, name: str, table: pa.Table, part: str) -> Path:
    """Write one part file of a table atomically (temp name, fsync, rename)."""
    if table.schema != SCHEMAS[name]:
        table = table.cast(SCHEMAS[name])
    d = Path(trace_dir) / name
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"part-{part}.parquet"
    write_parquet(path, table)
    return path


def table_files(trace_dir: Path, name: str) -> list[Path]:
    """The Parquet files holding a table: ``<name>.parquet`` or ``<name>/part-*.parquet``."""
    trace_dir = Path(trace_dir)
    single = trace_dir / f"{name}.parquet"
    files = [single] if single.exists() else []
    d = trace_dir / name
    if d.is_dir():
        files += sorted(d.glob("part-*.parquet"))
    return files


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex): checked-trace stamps, model file hashes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
