"""Recording a trace one finished sample at a time, crash-safe and resumable.

Every table gets one Parquet part per sample, named after the zero-padded sample id
(``cycles/part-000042.parquet``). Each part is written to a temporary name, fsynced and
renamed; the ``samples`` part goes last, so a sample counts as recorded only once all of
its parts exist. A run killed at any moment leaves whole parts only; ``done_samples()``
on resume drops the parts of the sample that was in flight.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from specreplay.traces.identity import differences, git_dirty, recording_identity
from specreplay.traces.io import (PARQUET_WRITE, TraceError, _fsync_write, table_files,
                                  table_from_rows, write_json, write_parquet, write_part)
from specreplay.traces.schema import PROFILE_OPTIONAL, PROFILE_SCHEMA, SCHEMA_VERSION, SCHEMAS, TABLES

Rows = list[dict[str, Any]] | pa.Table  # dicts keyed by column, or an Arrow table
_PART = re.compile(r"part-(\d+)\.parquet$")


def now_utc() -> str:
    """ISO 8601 UTC timestamp, seconds resolution."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# A tree copied without its own git metadata (a container image, a synced copy of a
# checkout) cannot ask git; whoever copied it states the commit and whether the copy had
# uncommitted changes ("1"/"0") in these variables, and they win over the copy's git.
COMMIT_ENV, DIRTY_ENV = "SPECREPLAY_GIT_COMMIT", "SPECREPLAY_GIT_DIRTY"


def git_commit() -> str | None:
    """The commit of the checkout specreplay runs from (``COMMIT_ENV`` when set), or None
    when there is none (installed package, no git, no commits, or a malformed
    ``COMMIT_ENV``): provenance must never fail a recording."""
    stated = os.environ.get(COMMIT_ENV)
    if stated is not None:
        stated = stated.strip().lower()
        return stated if re.fullmatch(r"[0-9a-f]{40}", stated) else None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else None


def part_name(sample: int) -> str:
    """Part name of a sample: zero-padded so parts sort in sample order."""
    return f"{int(sample):06d}"


def read_json(path: Path, kind: str = "trace") -> dict[str, Any]:
    """Read a JSON object, or raise a TraceError naming the file; ``kind`` names the
    directory it belongs to ("trace", "profile")."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TraceError(f"{path} is missing: this is not a specreplay {kind} "
                         "directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TraceError(f"{path} is not readable JSON ({e}); restore it from the recording "
                         "machine or re-record") from None
    if not isinstance(obj, dict):
        raise TraceError(f"{path} must hold a JSON object, found {type(obj).__name__}")
    return obj


class TraceWriter:
    """Writes a trace directory. ``run_meta`` holds the run.json keys of
    ``traces.schema.RUN_KEYS`` that the caller knows (setup, target, draft, sampling,
    live_policy, dataset, top_k_logits, oracle); the writer adds schema_version,
    tool_version, git_commit, created and complete.

    A non-empty ``trace_dir`` is refused unless ``resume`` is set and it holds a trace
    of the same recording (same models, setup, sampling, live policy, dataset, oracle
    settings).
    """

    def __init__(self, trace_dir: str | Path, run_meta: dict[str, Any], resume: bool = False):
        from specreplay import __version__
        self.dir = Path(trace_dir)
        self._done: set[int] | None = None
        run_path = self.dir / "run.json"
        fresh = {**run_meta, "schema_version": SCHEMA_VERSION, "tool_version": __version__,
                 "git_commit": git_commit(), "git_dirty": git_dirty(), "created": now_utc(),
                 "complete": False}
        if self.dir.exists() and not self.dir.is_dir():
            raise TraceError(f"{self.dir} is a file, not a directory: choose another output path")
        if self.dir.is_dir() and any(self.dir.iterdir()):
            if not resume:
                raise TraceError(f"{self.dir} is not empty: pass --resume to continue the "
                                 "recording there, or choose an empty output directory")
            if not run_path.exists():
                raise TraceError(f"{self.dir} is not empty and has no run.json, so it is not a "
                                 "trace that can be resumed: choose an empty output directory")
            old = read_json(run_path)
            self._check_resumable(old, run_meta)
            fresh["created"] = old.get("created", fresh["created"])
        self.run = fresh
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(run_path, self.run)

    def _check_resumable(self, old: dict[str, Any], run_meta: dict[str, Any]) -> None:
        if old.get("schema_version") != SCHEMA_VERSION:
            raise TraceError(f"cannot resume {self.dir}: it was written with trace schema "
                             f"{old.get('schema_version')!r} and this specreplay writes schema "
                             f"{SCHEMA_VERSION}; record into an empty directory")
        diffs = differences(recording_identity(old), recording_identity(run_meta))
        if diffs:
            raise TraceError(f"cannot resume {self.dir}: it was recorded with other settings "
                             f"({'; '.join(diffs[:4])}); rerun with the original settings or "
                             "choose an empty output directory")

    @classmethod
    def reopen(cls, trace_dir: str | Path) -> "TraceWriter":
        """Open an existing trace to add to it (the separate oracle pass) without
        changing its run metadata."""
        self = cls.__new__(cls)
        self.dir = Path(trace_dir)
        self.run = read_json(self.dir / "run.json")
        self._done = None
        return self

    # -- samples
    def done_samples(self) -> set[int]:
        """Samples whose every part is on disk. Parts of a sample whose ``samples`` part
        is missing (the sample in flight when a run was killed) and leftover temporary
        files are deleted, so that sample is recorded again from scratch."""
        for tmp in self.dir.glob("*/*.tmp"):
            tmp.unlink()
        done: set[int] = set()
        for f in table_files(self.dir, "samples"):
            try:
                col = pq.read_table(f, columns=["sample"]).column("sample")
            except (pa.ArrowException, OSError) as e:
                raise TraceError(f"{f} is unreadable ({e}); delete it to record that sample "
                                 "again") from None
            done.update(int(s) for s in col.to_pylist())
        for name in TABLES:
            if name == "samples":
                continue
            for f in sorted((self.dir / name).glob("part-*.parquet")):
                m = _PART.search(f.name)
                if m and int(m.group(1)) not in done:
                    f.unlink()
        self._done = done
        return set(done)

    def add_sample(self, sample_row: dict[str, Any], cycles: Rows, cycle_logits: Rows,
                   oracle: Rows | None = None, oracle_target: Rows | None = None) -> None:
        """Write one finished sample: its cycles, cycle logits and (when given) oracle
        rows, then its ``samples`` row last. Rows are dicts keyed by column (a missing
        ``sample`` is filled in) or an Arrow table with the schema's columns."""
        sample = int(sample_row["sample"])
        if self._done is None:
            self.done_samples()
        if sample in self._done:
            raise TraceError(f"sample {sample} is already recorded in {self.dir}")
        tables = {"cycles": cycles, "cycle_logits": cycle_logits,
                  "oracle": oracle, "oracle_target": oracle_target}
        for name, rows in tables.items():
            if rows is not None and len(rows):
                self._write_rows(name, sample, rows)
        self._write_rows("samples", sample, [sample_row])
        self._done.add(sample)

    def add_oracle(self, sample: int, oracle_rows: Rows, oracle_target_rows: Rows) -> None:
        """Write (or replace) one sample's oracle and oracle_target rows; used by the
        separate oracle pass over a finished recording."""
        for name, rows in (("oracle", oracle_rows), ("oracle_target", oracle_target_rows)):
            self._drop_from_single(name, int(sample))
            if rows is not None and len(rows):
                self._write_rows(name, int(sample), rows)
            else:
                (self.dir / name / f"part-{part_name(sample)}.parquet").unlink(missing_ok=True)

    def _write_rows(self, name: str, sample: int, rows: list[dict[str, Any]] | pa.Table) -> None:
        """Rows may be dicts or, for bulk writers, an Arrow table with the schema's columns."""
        try:
            if isinstance(rows, pa.Table):
                table = rows.select(SCHEMAS[name].names).cast(SCHEMAS[name])
                ids = set(table.column("sample").to_pylist())
            else:
                for r in rows:
                    r.setdefault("sample", sample)
                ids = {r["sample"] for r in rows}
                table = table_from_rows(name, rows)
        except (pa.ArrowException, KeyError, TypeError, ValueError) as e:
            cols = ", ".join(f.name for f in SCHEMAS[name])
            raise TraceError(f"cannot write table {name} for sample {sample}: {e} "
                             f"(columns: {cols})") from None
        if ids != {sample}:
            raise TraceError(f"the {name} rows given for sample {sample} belong to samples "
                             f"{sorted(ids)}")
        write_part(self.dir, name, table, part_name(sample))

    def _drop_from_single(self, name: str, sample: int) -> None:
        """A compacted ``<table>.parquet`` may hold this sample already: rewrite it
        without the sample so the new part replaces it instead of doubling it."""
        single = self.dir / f"{name}.parquet"
        if not single.exists():
            return
        table = pq.read_table(single)
        keep = pc.not_equal(table.column("sample"), pa.scalar(sample, pa.int32()))
        if pc.all(keep).as_py() is not False:
            return
        kept = table.filter(keep)
        write_parquet(single, kept)

    # -- run.json
    def update_run(self, **updates: Any) -> None:
        """Change run.json keys (e.g. ``oracle`` after the oracle pass)."""
        self.run.update(updates)
        write_json(self.dir / "run.json", self.run)

    def finish(self, complete: bool = True, **run_updates: Any) -> None:
        """Mark the recording finished (``complete``: every requested sample recorded)."""
        self.update_run(**run_updates, complete=bool(complete))


def write_profile(profile_dir: str | Path, rows: list[dict[str, Any]] | pa.Table,
                  meta: dict[str, Any]) -> Path:
    """Write ``profile.parquet`` (traces.schema.PROFILE_SCHEMA) and ``profile.json``
    (setup, target, draft, plus schema_version and created) into ``profile_dir``, which
    may be a trace directory."""
    d = Path(profile_dir)
    d.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([*PROFILE_SCHEMA, *PROFILE_OPTIONAL])
    if isinstance(rows, pa.Table):
        if "mode" not in rows.column_names:
            rows = rows.append_column("mode", pa.array([""] * rows.num_rows, pa.string()))
        table = rows.select(schema.names).cast(schema)
    else:
        table = pa.Table.from_pydict({f.name: [r.get(f.name, "" if f.name == "mode" else None) for r in rows]
                                      for f in schema}, schema=schema)
    _fsync_write(d / "profile.parquet", lambda p: pq.write_table(table, p, **PARQUET_WRITE))
    write_json(d / "profile.json", {"schema_version": SCHEMA_VERSION, "created": now_utc(),
                                    **{k: meta.get(k) for k in ("setup", "target", "draft")}})
    return d


__all__ = ["TraceWriter", "write_profile", "git_commit", "now_utc", "part_name", "read_json"]
