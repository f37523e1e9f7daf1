"""Compacting a trace (one Parquet file per table) and merging traces recorded by
several ranks.

Compaction is crash-safe: every new single file is written and fsynced under a name
readers ignore (``<table>.compact.parquet``); then a marker file is written; then each is
renamed over ``<table>.parquet`` and its part directory removed; then the marker goes.
A reader that finds the marker refuses the trace and asks to rerun compaction, which
finishes the swap.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from specreplay.traces.identity import differences, recording_identity
from specreplay.traces.io import PARQUET_COMPACT, TraceError, table_files, write_json, write_parquet
from specreplay.traces.reader import COMPACT_MARKER, Trace, write_checked_stamp
from specreplay.traces.schema import TABLES
from specreplay.traces.writer import now_utc, read_json


def _write_table(path: Path, table: pa.Table) -> None:
    write_parquet(path, table, PARQUET_COMPACT)


def _finish_compaction(trace_dir: Path) -> None:
    """Swap the written single files in and drop the part directories named in the
    marker; safe to repeat after a crash."""
    marker = trace_dir / COMPACT_MARKER
    for name in read_json(marker, kind="compaction").get("tables", []):
        new = trace_dir / f"{name}.compact.parquet"
        if new.exists():
            new.replace(trace_dir / f"{name}.parquet")
        shutil.rmtree(trace_dir / name, ignore_errors=True)
    marker.unlink()


def compact(trace_dir: str | Path) -> list[str]:
    """Rewrite every table of a trace held as parts into one ``<table>.parquet``, then
    check every table and write ``checked.json`` (``write_checked_stamp``). Returns the
    tables rewritten."""
    trace_dir = Path(trace_dir)
    if (trace_dir / COMPACT_MARKER).exists():
        _finish_compaction(trace_dir)
    trace = Trace.open(trace_dir)
    names = [n for n in TABLES if (trace_dir / n).is_dir() and table_files(trace_dir, n)]
    for name in names:
        _write_table(trace_dir / f"{name}.compact.parquet", _sorted(trace.table(name), name))
    if names:
        write_json(trace_dir / COMPACT_MARKER, {"tables": names})
        _finish_compaction(trace_dir)
    for name in TABLES:  # empty part directories left by an oracle pass that wrote nothing
        d = trace_dir / name
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    # every table checked as written, and the stamp that spares later reads the check
    # while the files keep these bytes (traces.reader)
    write_checked_stamp(trace_dir)
    return names


# The oracle is read by (block size, probe) group: stored group after group (each in
# sample, start order), a group is one slice of the file's columns instead of a filter
# that copies every list value (a fifth of a compacted trace's load time).
_ORACLE_ORDER = ("block_size", "probe", "sample", "start", "prev_offset")


def _sorted(table: pa.Table, name: str = "") -> pa.Table:
    """Rows in sample order (then the table's natural order), so readers see the same
    order whether a table is compacted or not; the oracle group by group (readers
    group its rows and sort each group by sample and start)."""
    order = _ORACLE_ORDER if name == "oracle" else (
        "sample", "cycle", "offset", "start", "block_size", "probe", "prev_offset", "position")
    keys = [k for k in order if k in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys])


def merge(out_dir: str | Path, part_dirs: list[str | Path]) -> dict[str, Any]:
    """Join traces recorded by several ranks of one run into ``out_dir`` (absent or
    empty). Samples are renumbered in argument order; the inputs must share the
    recording setup and must not repeat a dataset row. Returns the merged run.json."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TraceError(f"{out_dir} is a file: choose an empty or new directory to merge into")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise TraceError(f"{out_dir} is not empty: choose an empty or new directory to merge into")
    if not part_dirs:
        raise TraceError("merge needs at least one trace to join")
    traces = [Trace.open(p) for p in part_dirs]
    first = traces[0]
    for t in traces[1:]:
        diffs = differences(recording_identity(first.run), recording_identity(t.run))
        if diffs:
            raise TraceError(f"cannot merge {t.dir} with {first.dir}: they were recorded with "
                             f"other settings ({'; '.join(diffs[:4])}); merge only the ranks of "
                             "one recording")
    _check_disjoint(traces)
    offsets = np.cumsum([0] + [t.samples.num_rows for t in traces[:-1]])
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        present = [(t, int(off)) for t, off in zip(traces, offsets) if t.has_table(name)]
        if not present:
            continue
        if len(present) != len(traces) and name in ("oracle", "oracle_target"):
            missing = [str(t.dir) for t in traces if not t.has_table(name)]
            raise TraceError(f"cannot merge: {', '.join(missing)} has no {name} table while the "
                             "others do; run `specreplay oracle` on it first")
        parts = [_renumber(t.table(name), off) for t, off in present]
        _write_table(out_dir / f"{name}.parquet", _sorted(pa.concat_tables(parts), name))
    profile = first.dir / "profile.parquet"
    if profile.exists():
        shutil.copy2(profile, out_dir / "profile.parquet")
        shutil.copy2(first.dir / "profile.json", out_dir / "profile.json")
    run = dict(first.run)
    run["dataset"] = dict(run.get("dataset") or {})
    run["dataset"]["indices"] = [int(i) for t in traces
                                 for i in t.samples.column("dataset_index").to_pylist()]
    run["complete"] = all(bool(t.run.get("complete")) for t in traces)
    run["created"] = now_utc()
    run["merged_from"] = [str(t.dir) for t in traces]
    write_json(out_dir / "run.json", run)  # last: without it the directory is no trace
    return run


def _renumber(table: pa.Table, offset: int) -> pa.Table:
    i = table.column_names.index("sample")
    col = pc.add(table.column("sample"), pa.scalar(offset, pa.int32()))
    return table.set_column(i, table.schema.field(i), col)


def _check_disjoint(traces: list[Trace]) -> None:
    """Two inputs holding the same dataset row mean one shard was given twice."""
    seen: dict[int, Path] = {}
    for t in traces:
        rows = set(t.samples.column("dataset_index").to_pylist())
        repeated = sorted(rows & set(seen))
        if repeated:
            i = repeated[0]
            raise TraceError(f"dataset row {i} is in both {seen[i]} and {t.dir}: give each "
                             "rank's trace once")
        seen.update(dict.fromkeys(rows, t.dir))
