"""Reading traces and latency profiles.

    from specreplay.traces.reader import Trace
    trace = Trace.open("traces/samples/humaneval-fixed16")
    trace.run["live_policy"]          # run.json as a dict
    trace.cycles.to_pandas()          # any table as a pyarrow.Table
    groups = trace.oracle_arrays()    # {(block_size, probe): OracleArrays} for replay

Every way a trace can be unreadable (missing files, truncated or corrupted Parquet, a
missing or mistyped column, a schema version this specreplay does not read, no samples,
a value outside what its column allows) raises a ``TraceError`` that names the file,
table, column (and row and value) and says what is allowed. Tables are read lazily,
memory-mapped, and validated against ``traces.schema`` and the value rules of
``traces.validate`` on first use; page checksums, where the writer stored them, are
verified. ``Trace.open(path, collect=[])`` collects the problems into that list instead
of raising at the first (for `specreplay trace check`).

A trace whose files were all checked once carries ``checked.json`` (written by
`specreplay trace compact`, which reads every table through these rules first): the
SHA-256 of each file it checked and of the rules themselves. A table whose files, and
the run.json and samples files its rules consult, still hold exactly those bytes is
read without checking its values again (the same bytes give the same verdict), and a
column read only to be checked (the draft's log-probabilities) is then not decoded at
all. Any other byte, any other rules, or `trace check` (which lists every problem):
every rule runs, as for a trace without the stamp.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from specreplay.traces.identity import differences, setup_identity
from specreplay.traces.io import TraceError, file_digest, table_files
from specreplay.traces.schema import PROFILE_OPTIONAL, PROFILE_SCHEMA, SCHEMA_VERSION, SCHEMAS, TABLES
from specreplay.traces import validate
from specreplay.traces.writer import read_json

# The oldest trace schema this version still reads.
OLDEST_SCHEMA_VERSION = 1
# Tables every trace has; the others appear with the options that record them.
REQUIRED_TABLES = ("samples", "cycles")
# Present while `specreplay trace compact` swaps part directories for single files.
COMPACT_MARKER = "compacting.json"
# The digests of files whose values were checked (see the module docstring).
CHECKED_STAMP = "checked.json"

_HINTS = {
    "oracle": "run `specreplay oracle DIR` to add it",
    "oracle_target": "run `specreplay oracle DIR` to add it",
    "cycle_logits": "record with --top-k-logits K > 0 to keep it",
}


def check_version(meta: dict[str, Any], path: Path) -> int:
    """Return the schema version of a run.json/profile.json, or raise a TraceError when
    this specreplay cannot read it."""
    from specreplay import __version__
    version = meta.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise TraceError(f"{path} has no integer schema_version (found {version!r}): it was "
                         "not written by specreplay")
    writer = meta.get("tool_version", "unknown")
    if version > SCHEMA_VERSION:
        raise TraceError(f"{path} was written by specreplay {writer} with schema {version}; "
                         f"this is specreplay {__version__} reading schema {SCHEMA_VERSION}: "
                         "upgrade specreplay to read it")
    if version < OLDEST_SCHEMA_VERSION:
        raise TraceError(f"{path} was written by specreplay {writer} with schema {version}; "
                         f"this is specreplay {__version__}, which reads schemas "
                         f"{OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}: re-record it, or read it "
                         f"with specreplay {writer}")
    return version


def read_parquet(path: Path, schema: pa.Schema, table: str, project: bool = False,
                 optional: pa.Schema | None = None) -> pa.Table:
    """Read one Parquet file (memory-mapped) and check it has every column of ``schema``
    with the right type; returns exactly those columns, plus the columns of ``optional``
    the file has (type-checked alike). ``project``: decode only the columns of
    ``schema`` (a schema of some of a table's columns reads just those)."""
    try:
        # checksums are verified where the writer stored them (traces.io writes them)
        t = None
        if project:
            try:
                t = pq.read_table(path, memory_map=True, page_checksum_verification=True, use_threads=False,
                                  columns=schema.names)
            except (pa.ArrowInvalid, KeyError):
                pass  # a column missing: read them all, and say which below
        if t is None:
            t = pq.read_table(path, memory_map=True, page_checksum_verification=True, use_threads=False)
        names = t.schema.names  # decodes the footer's column names
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        why = " ".join(str(e).split())  # Arrow's messages span lines; ours is one
        raise TraceError(f"{path} (table {table}) is truncated or not Parquet, or damaged ({why}); "
                         "re-record that sample, or delete the file and resume the "
                         "recording") from None
    extra = [f for f in (optional or []) if f.name in names]
    for field in [*schema, *extra]:
        if field.name not in names:
            raise TraceError(f"{path} (table {table}) has no column {field.name!r} "
                             f"({field.type}); the file does not follow trace schema "
                             f"{SCHEMA_VERSION}")
        found = t.schema.field(field.name).type
        if found != field.type:
            raise TraceError(f"{path} (table {table}): column {field.name!r} is {found}, "
                             f"expected {field.type}")
    out = pa.schema([*schema, *extra])
    return pa.Table.from_arrays([t.column(n) for n in out.names], schema=out)


# The oracle's key columns, read with any of its list columns (rows are grouped and
# their values checked by them).
ORACLE_KEYS = ("sample", "start", "block_size", "probe", "prev_offset")
ORACLE_LISTS = ("true_rank", "draft_ids", "draft_logprobs")


@dataclass(eq=False)
class OracleArrays:
    """One (block size, probe) group of the oracle as dense arrays, rows sorted by
    (sample, start, prev_offset). ``true_rank[r, i-1]`` is the rank code at offset i;
    ``draft_ids[r, i-1, j]`` / ``draft_logprobs[r, i-1, j]`` the draft's rank-j token."""
    block_size: int
    probe: str
    k: int
    sample: np.ndarray          # int32 [n]
    start: np.ndarray           # int32 [n]
    prev_offset: np.ndarray     # int16 [n]
    true_rank: np.ndarray | None       # int8 [n, b-1]
    draft_ids: np.ndarray | None       # int32 [n, b-1, k]
    draft_logprobs: np.ndarray | None  # float32 (or float16, as stored) [n, b-1, k]
    # (None: a column not read, see ``Trace.oracle_arrays``)

    def __len__(self) -> int:
        return int(self.sample.shape[0])

    @cached_property
    def index(self) -> np.ndarray:
        """Row lookup: ``index[sample, start, prev_offset]`` is the row number, or -1 where
        the oracle has no row. Shape [max sample+1, max start+1, max prev_offset+1]."""
        shape = (int(self.sample.max(initial=-1)) + 1, int(self.start.max(initial=-1)) + 1,
                 int(self.prev_offset.max(initial=0)) + 1)
        idx = np.full(shape, -1, dtype=np.int64)
        idx[self.sample, self.start, self.prev_offset] = np.arange(len(self), dtype=np.int64)
        return idx


@dataclass(eq=False)
class TargetArrays:
    """The oracle_target table as dense arrays, rows sorted by (sample, position)."""
    k: int
    sample: np.ndarray          # int32 [n]
    position: np.ndarray        # int32 [n]
    target_ids: np.ndarray      # int32 [n, k]
    target_logprobs: np.ndarray  # float32 [n, k]


def _fixed_width(col: pa.ChunkedArray, width: int, what: str) -> np.ndarray:
    """A list column whose rows all hold ``width`` values, as a [n, width] array."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        raise TraceError(f"{what}: row {int(bad[0])} holds {int(lengths[bad[0]])} values, "
                         f"expected {width} ({bad.size} rows wrong)")
    values = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
    return values.reshape(n, width)


def report_problems(problems: list, collect: list | None, where: Path) -> None:
    """Raise the first value problem as a TraceError, or add them all to ``collect``."""
    if not problems:
        return
    if collect is not None:
        collect.extend(problems)
        return
    n = len(problems) - 1
    more = (f" ({n} more problem{'s' if n > 1 else ''}: `specreplay trace check {where}` lists "
            "them)") if n else ""
    raise TraceError(f"{problems[0]}{more}")


_RULES_DIGEST: list[str] = []


def rules_digest() -> str:
    """SHA-256 of the code that decides what a trace may hold (the value rules, the
    schema and this reader): a stamp made under other rules is not trusted."""
    if not _RULES_DIGEST:
        h = hashlib.sha256()
        from specreplay.traces import schema
        for mod in (validate, schema):
            h.update(Path(mod.__file__).read_bytes())
        h.update(Path(__file__).read_bytes())
        _RULES_DIGEST.append(h.hexdigest())
    return _RULES_DIGEST[0]


def write_checked_stamp(trace_dir: str | Path) -> dict[str, str]:
    """Check every table of a trace (all value rules, as the reader applies them; a
    problem raises) and write ``checked.json``: the digest of each file checked, of
    run.json and of the rules, and facts read from those bytes (the oracle's agreement
    with the live draft, ``traces.check.oracle_live_agreement``), so that a replay need
    not decode the draft's token ids at load. Returns the file digests."""
    trace_dir = Path(trace_dir)
    stamp = trace_dir / CHECKED_STAMP
    stamp.unlink(missing_ok=True)  # the check below must not trust an older stamp
    trace = Trace.open(trace_dir)
    files = {"run.json": file_digest(trace_dir / "run.json")}
    for name in TABLES:
        paths = table_files(trace_dir, name)
        if not paths:
            continue
        trace.table(name, cache=False)
        for f in paths:
            files[f.relative_to(trace_dir).as_posix()] = file_digest(f)
    facts = {}
    if trace.has_table("oracle"):
        # what replay reads the draft's token ids for at load (traces.check's rule)
        from specreplay.traces.check import oracle_live_agreement
        facts["oracle_agreement"] = [int(x) for x in oracle_live_agreement(trace)]
    from specreplay.traces.io import write_json
    write_json(stamp, {"rules": rules_digest(), "files": files, "facts": facts})
    return files


_VALUE_RULES = {  # (table, file, trace) -> problems
    "samples": lambda t, f, tr: validate.check_samples(t, f),
    "cycles": lambda t, f, tr: validate.check_cycles(t, f, tr._sample_info()),
    "cycle_logits": lambda t, f, tr: validate.check_cycle_logits(t, f),
    "oracle": lambda t, f, tr: validate.check_oracle(t, f, validate.run_top_k(tr.run)),
    "oracle_target": lambda t, f, tr: validate.check_oracle_target(t, f, validate.run_top_k(tr.run)),
}


class Trace:
    """A trace directory opened for reading; see the module docstring."""

    def __init__(self, path: Path, run: dict[str, Any], collect: list | None = None):
        self.dir = Path(path)
        self.run = run
        self._tables: dict[str, pa.Table] = {}
        # None: raise at the first value problem; a list: collect them there
        self.collect = collect
        self._digests: dict[str, str] = {}  # file (relative) -> SHA-256, as read

    @classmethod
    def open(cls, path: str | Path, collect: list | None = None) -> "Trace":
        """Open and minimally validate a trace: run.json readable, of a supported schema
        version and with valid values, the samples and cycles tables present, at least
        one sample, the samples table's values valid. With ``collect`` (a list), value
        problems are appended there instead of raised."""
        path = Path(path)
        if not path.exists():
            raise TraceError(f"trace directory {path} does not exist")
        if not path.is_dir():
            raise TraceError(f"{path} is a file; a trace is a directory holding run.json and "
                             "table folders")
        run = read_json(path / "run.json")
        check_version(run, path / "run.json")
        if (path / COMPACT_MARKER).exists():
            raise TraceError(f"compaction of {path} was interrupted; run `specreplay trace "
                             f"compact {path}` again to finish it")
        trace = cls(path, run, collect)
        report_problems(validate.check_run(run, path / "run.json", bool(table_files(path, "oracle"))),
                        collect, path)
        if not table_files(path, "samples"):
            raise TraceError(f"trace {path} holds no samples: the recording finished none "
                             "(continue it with `specreplay record ... --resume`)")
        for name in REQUIRED_TABLES:
            if not table_files(path, name):
                raise TraceError(f"trace {path} is missing table {name} ({name}/part-*.parquet "
                                 f"or {name}.parquet)")
        if trace.samples.num_rows == 0:
            raise TraceError(f"trace {path} holds no samples: its samples table is empty")
        return trace

    # -- checked files
    @cached_property
    def _stamp(self) -> dict[str, str] | None:
        """The files ``checked.json`` vouches for (relative path -> digest), or None:
        no stamp, one made under other rules, or a reader that collects every problem."""
        path = self.dir / CHECKED_STAMP
        if self.collect is not None or not path.is_file():
            return None
        try:
            stamp = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(stamp, dict) or stamp.get("rules") != rules_digest():
            return None
        files = stamp.get("files")
        if not isinstance(files, dict):
            return None
        facts = stamp.get("facts")
        self._facts = facts if isinstance(facts, dict) else {}
        return files

    def checked_fact(self, name: str, tables: tuple[str, ...]) -> Any:
        """A fact ``write_checked_stamp`` read from this trace's bytes (None: no stamp,
        no such fact, or one of ``tables`` changed since)."""
        if self._stamp is None or not all(self.values_checked(t) for t in tables):
            return None
        return self._facts.get(name)

    def _unchanged(self, path: Path) -> bool:
        """Whether a file holds the bytes the stamp vouches for."""
        rel = path.relative_to(self.dir).as_posix()
        want = self._stamp.get(rel)
        if want is None:
            return False
        if rel not in self._digests:
            self._digests[rel] = file_digest(path)
        return self._digests[rel] == want

    def values_checked(self, name: str) -> bool:
        """Whether table ``name``'s values were checked before and its files (and the
        run.json and samples files its rules consult) hold the same bytes since: its
        value rules need not run again (module docstring)."""
        if self._stamp is None:
            return False
        files = [self.dir / "run.json", *table_files(self.dir, name),
                 *table_files(self.dir, "samples")]
        return all(self._unchanged(f) for f in files)

    # -- tables
    def has_table(self, name: str) -> bool:
        return bool(table_files(self.dir, name))

    def table(self, name: str, cache: bool = True, columns: tuple[str, ...] | None = None) -> pa.Table:
        """All parts of a table concatenated, validated against the schema and the value
        rules (traces.validate). ``cache=False``: read it without keeping it (a caller that converts it to its
        own arrays at once, so the decoded table does not linger beside them).
        ``columns``: decode only these (the oracle's keys plus some of its list
        columns; the value rules check what is read); such a read is never cached."""
        if name not in SCHEMAS:
            raise TraceError(f"unknown trace table {name!r}; tables: {', '.join(TABLES)}")
        if name in self._tables:
            return self._tables[name] if columns is None else self._tables[name].select(list(columns))
        schema = SCHEMAS[name]
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in schema.names if c in columns])
            cache = False
        files = table_files(self.dir, name)
        if not files:
            hint = _HINTS.get(name, "re-record the trace")
            raise TraceError(f"trace {self.dir} has no {name} table: {hint}")
        checked = self.values_checked(name)
        parts = []
        for f in files:
            part = read_parquet(f, schema, name, project=columns is not None)
            if not checked:
                report_problems(_VALUE_RULES[name](part, f, self), self.collect, self.dir)
            parts.append(part)
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        if name == "samples" and not checked:
            where = files[0] if len(files) == 1 else self.dir / "samples"
            report_problems(validate.check_sample_ids(table, where), self.collect, self.dir)
        if name == "oracle" and not checked and "_coverage_checked" not in self.__dict__:
            where = files[0] if len(files) == 1 else self.dir / "oracle"
            info = self._sample_info()
            orphans = tuple(s for s in (validate.orphan_sample(f, info) for f in files)
                            if s is not None)
            report_problems(validate.check_oracle_coverage(table, info.out_len, self.run,
                                                           where, orphans),
                            self.collect, self.dir)
            self._coverage_checked = True  # the keys read the same at every later read
        if cache:
            self._tables[name] = table
        return table

    def _sample_info(self) -> "validate.SampleInfo":
        if "_info" not in self.__dict__:
            self._info = validate.sample_info(self.samples, self.run)
        return self._info

    def _output_lengths(self) -> np.ndarray:
        """len(S) by sample id (0 where no sample has that id)."""
        return np.maximum(self._sample_info().out_len, 0)

    @property
    def samples(self) -> pa.Table:
        return self.table("samples")

    @property
    def cycles(self) -> pa.Table:
        return self.table("cycles")

    @property
    def cycle_logits(self) -> pa.Table:
        return self.table("cycle_logits")

    @property
    def oracle(self) -> pa.Table:
        return self.table("oracle")

    @property
    def oracle_target(self) -> pa.Table:
        return self.table("oracle_target")

    def outputs(self) -> dict[int, np.ndarray]:
        """Output token ids S of every sample, by sample id."""
        t = self.samples
        return {int(s): np.asarray(o, dtype=np.int32)
                for s, o in zip(t.column("sample").to_pylist(), t.column("output_ids").to_pylist())}

    def bytes_on_disk(self) -> int:
        """Size of every file in the trace directory."""
        return sum(f.stat().st_size for f in self.dir.rglob("*") if f.is_file())

    @property
    def oracle_top_k(self) -> int | None:
        oracle = self.run.get("oracle")
        return int(oracle["top_k"]) if isinstance(oracle, dict) and oracle.get("top_k") else None

    # -- fast columnar access for replay
    def oracle_arrays(self, logprob_dtype=np.float32, keep_table: bool = True,
                      columns: tuple[str, ...] = ORACLE_LISTS) -> dict[tuple[int, str], OracleArrays]:
        """The oracle as dense numpy arrays per (block size, probe) group, built with
        vectorised Arrow/numpy operations (no per-row Python). ``logprob_dtype``
        np.float16 keeps the stored values as stored (half the memory, no rounding);
        ``keep_table=False`` does not keep the decoded Arrow table (``table``).
        ``columns``: the list columns to decode (the others are None in the result):
        the keys are always read, and groups and row order are the same at every read."""
        unknown = set(columns) - set(ORACLE_LISTS)
        if unknown:
            raise ValueError(f"oracle list columns are {', '.join(ORACLE_LISTS)}, not {sorted(unknown)}")
        columns = tuple(columns)
        projected = columns != ORACLE_LISTS
        t = self.table("oracle", cache=keep_table and not projected,
                       columns=ORACLE_KEYS + columns if projected else None)
        if t.num_rows == 0:
            return {}
        blocks = t.column("block_size").to_numpy()
        probes = t.column("probe").combine_chunks().dictionary_encode()
        codes = probes.indices.to_numpy(zero_copy_only=False)
        names = probes.dictionary.to_pylist()
        key = blocks.astype(np.int64) * len(names) + codes
        out = {}
        for k in np.unique(key):
            b, code = divmod(int(k), len(names))
            mask = key == k
            rows = np.flatnonzero(mask)
            lo, n = int(rows[0]), len(rows)
            # a group stored contiguously (a compacted oracle) is a slice, not a copy
            g = t.slice(lo, n) if int(rows[-1]) - lo + 1 == n else t.filter(pa.array(mask))
            out[(int(b), names[code])] = self._oracle_group(g, int(b), names[code], logprob_dtype)
        return out

    def _oracle_group(self, g: pa.Table, b: int, probe: str,
                      logprob_dtype=np.float32) -> OracleArrays:
        what = f"{self.dir} table oracle (block size {b}, probe {probe!r})"
        if b < 2:
            raise TraceError(f"{what}: block size must be >= 2 (an oracle row needs a drafted offset)")
        n = g.num_rows
        names = g.column_names
        if self.oracle_top_k:
            k = self.oracle_top_k
        else:
            wide = next((c for c in ("draft_ids", "draft_logprobs") if c in names), None)
            first = g.column(wide)[0] if wide else None
            k = len(first) // (b - 1) if first is not None and first.is_valid else 0
        if k < 1:
            raise TraceError(f"{what}: cannot tell the oracle top-k; run.json oracle.top_k is missing")
        rank = _fixed_width(g.column("true_rank"), b - 1, f"{what}, column true_rank") \
            if "true_rank" in names else None
        ids = _fixed_width(g.column("draft_ids"), (b - 1) * k, f"{what}, column draft_ids") \
            if "draft_ids" in names else None
        lps = _fixed_width(g.column("draft_logprobs"), (b - 1) * k, f"{what}, column draft_logprobs") \
            if "draft_logprobs" in names else None
        sample = g.column("sample").to_numpy().astype(np.int32)
        start = g.column("start").to_numpy().astype(np.int32)
        prev = g.column("prev_offset").to_numpy().astype(np.int16)
        sort_key = (sample.astype(np.int64) << 40) | (start.astype(np.int64) << 16) | prev
        if (np.diff(sort_key) < 0).any():  # recorded order is usually sorted already
            order = np.argsort(sort_key, kind="stable")
            sample, start, prev, rank, ids, lps = (None if a is None else a[order]
                                                   for a in (sample, start, prev, rank, ids, lps))
        return OracleArrays(
            block_size=b, probe=probe, k=k, sample=sample, start=start, prev_offset=prev,
            true_rank=None if rank is None else rank.astype(np.int8, copy=False),
            draft_ids=None if ids is None else ids.reshape(n, b - 1, k).astype(np.int32, copy=False),
            draft_logprobs=None if lps is None else
            lps.reshape(n, b - 1, k).astype(logprob_dtype, copy=False))

    def target_arrays(self) -> TargetArrays:
        """The oracle_target table as dense arrays (for Monte Carlo acceptance)."""
        t = self.oracle_target
        first = t.column("target_ids")[0] if t.num_rows else None
        k = self.oracle_top_k or (len(first) if first is not None and first.is_valid else 1)
        what = f"{self.dir} table oracle_target"
        ids = _fixed_width(t.column("target_ids"), k, f"{what}, column target_ids")
        lps = _fixed_width(t.column("target_logprobs"), k, f"{what}, column target_logprobs")
        sample = t.column("sample").to_numpy()
        pos = t.column("position").to_numpy()
        order = np.lexsort((pos, sample))
        return TargetArrays(k=k, sample=sample[order].astype(np.int32),
                            position=pos[order].astype(np.int32),
                            target_ids=ids[order].astype(np.int32),
                            target_logprobs=lps[order].astype(np.float32))

    # -- profile
    def profile(self) -> "Profile | None":
        """The latency profile recorded with this trace, if any."""
        if (self.dir / "profile.parquet").exists() or (self.dir / "profile.json").exists():
            return Profile.open(self.dir, self.collect)
        return None


class Profile:
    """A latency profile: ``profile.parquet`` (traces.schema.PROFILE_SCHEMA) and
    ``profile.json`` (the setup it was measured on)."""

    def __init__(self, path: Path, meta: dict[str, Any], table: pa.Table):
        self.dir = Path(path)
        self.meta = meta
        self.table = table

    @classmethod
    def open(cls, path: str | Path, collect: list | None = None) -> "Profile":
        """Open a profile directory; its rows' values are validated (traces.validate),
        problems raised, or appended to ``collect`` when given."""
        path = Path(path)
        if not path.is_dir():
            raise TraceError(f"profile directory {path} does not exist")
        meta = read_json(path / "profile.json", kind="profile")
        check_version(meta, path / "profile.json")
        pfile = path / "profile.parquet"
        if not pfile.exists():
            raise TraceError(f"{pfile} is missing: measure one with `specreplay profile`")
        table = read_parquet(pfile, PROFILE_SCHEMA, "profile", optional=PROFILE_OPTIONAL)
        if table.num_rows == 0:
            raise TraceError(f"{pfile} holds no measurements")
        report_problems(validate.check_profile(table, pfile), collect, path)
        return cls(path, meta, table)

    @property
    def setup(self) -> dict[str, Any]:
        """The hardware and models the profile was measured on."""
        return setup_identity(self.meta)


def check_profile_matches(trace: Trace, profile: Profile,
                          allow_other_setup: bool = False) -> list[str]:
    """Compare the setup a profile was measured on with the one a trace was recorded
    on. Returns the differences (empty: same setup). Differences are an error unless the
    caller pairs them explicitly with ``allow_other_setup``."""
    diffs = differences(setup_identity(trace.run), profile.setup)
    if diffs and not allow_other_setup:
        raise TraceError(f"profile {profile.dir} was measured on another setup than trace "
                         f"{trace.dir} ({'; '.join(diffs[:4])}); pass "
                         "--profile-from-other-setup to pair them anyway (the prediction is "
                         "then labelled with the profile's setup)")
    return diffs


__all__ = ["Trace", "Profile", "OracleArrays", "TargetArrays", "TraceError",
           "check_profile_matches", "check_version", "OLDEST_SCHEMA_VERSION"]
