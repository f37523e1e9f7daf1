"""Value rules for every trace table: what a trace may hold, not only which columns.

The schema (``traces.schema``) fixes columns and types; these rules fix the values, so
that a damaged or hand-edited trace is refused instead of replayed into wrong numbers
(a rank past the kept top-k read as an accepted token, a negative or 1e250 time turned
into a throughput). ``traces.reader`` applies them when a table is first read, so every
command refuses an invalid trace with the same sentence `specreplay trace check` prints;
`trace check` lists every problem.

Each rule is checked with vectorised numpy/Arrow operations over a whole file; a broken
rule becomes one ``Problem`` naming the file, table, column, the first offending row
(0-based within that file) and its value, what is allowed, and how many rows break it.

Rules (the limits are module constants):

- run.json: ``top_k_logits`` an integer >= 0; ``sampling.temperature`` a finite number
  >= 0, ``max_new_tokens`` an integer >= 1 or null, ``stop_token_ids`` integers >= 0;
  ``draft.block_size`` an integer >= 1 or null; ``oracle`` null or {``block_sizes``:
  distinct integers >= 2, ``top_k``: 1..MAX_TOP_K, ``probes``: strings,
  ``probe_block_sizes`` (optional): a subset of ``block_sizes``}; set whenever the trace
  holds an oracle table (set without one: the oracle is missing, which the reader says
  when a replay needs it).
- samples: ids 0..n-1, each once; ``output_ids`` at least one token; token ids 0..MAX_TOKEN_ID; ``prefill_s``
  finite, > 0, < MAX_PASS_S; ``decode_s`` finite, < MAX_SAMPLE_S, > 0 (0 only for a
  sample without cycles); ``n_cycles`` >= 0; ``ar_divergence`` null, -1 or a position in S;
  ``stop_reason`` one of STOP_REASONS.
- cycles: ids, starts, context lengths >= 0; ``sample`` one of the samples table,
  ``start`` inside its output, ``context_len`` = len(prompt) + start; ``probe`` "" or
  one of run.json's ``oracle.probes`` (when the run has an oracle); ``block_size`` >= 1;
  ``accepted`` in [0, block_size - 1]; ``tau`` and ``committed`` in [1, block_size];
  ``verify_mode`` one of VERIFY_MODES; ``n_paths`` >= 1; ``verify_batch`` 1 (>= 1 in batch mode);
  ``verify_tokens`` in [1, block_size * max(verify_batch, n_paths)], ``n_paths`` <=
  verify_tokens; ``chosen_path`` in [0, n_paths - 1]; ``prev_offset`` in [0, start]; ``n_seeds`` in
  [0, block_size - 1]; ``drafted``
  holds block_size - 1 token ids 0..MAX_TOKEN_ID; ``bonus`` a token id; ``target_s``, ``overhead_s``,
  ``cycle_s`` finite, > 0, < MAX_PASS_S; ``draft_s`` the same, or 0 for a cycle that
  drafts nothing (block size 1).
- oracle (plain rows and probe rows alike): ids and starts >= 0; ``block_size`` >= 2;
  ``prev_offset`` in [0, start]; ``true_rank`` holds block_size - 1 values, each a rank
  0..top_k-1 or RANK_NOT_IN_TOPK (-1) or RANK_BEYOND_END (-2); ``draft_ids`` and
  ``draft_logprobs`` hold (block_size - 1) * top_k values, ids >= 0, log-probabilities
  <= 0 and not NaN. Across the table: every row names a sample of the samples table,
  starts inside its output, and appears once; its plain block sizes are exactly
  run.json's ``oracle.block_sizes`` and its probes exactly run.json's ``oracle.probes``.
  `trace check` also asks for a plain row at every start 0..len(S)-2 of every sample
  (``oracle_gaps``); the reader does not, since replay names a missing row itself.
- oracle_target: ids and positions >= 0; ``target_ids`` and ``target_logprobs`` hold
  top_k values, ids >= 0, log-probabilities <= 0 and not NaN.
- profile: ``kind`` one of PROFILE_KINDS; ``q`` 1..MAX_TOKENS (overhead rows: 0..MAX_TOKENS,
  0 in profiles without a ``mode`` column); ``context_len`` 0..MAX_TOKENS; ``batch`` >= 1;
  ``median_s``, ``p10_s``, ``p90_s`` finite, > 0, < MAX_PASS_S; ``n`` >= 1; ``mode`` (where
  present) one of HOST_MODES on overhead rows (or empty with q 0) and empty on the others; one row per grid
  point (kind, q, context_len, batch, mode).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from specreplay.traces.schema import HOST_MODES, RANK_BEYOND_END, RANK_NOT_IN_TOPK

# One forward pass, prefill or cycle of a specreplay recording takes milliseconds to
# seconds; an hour is far beyond any real one and catches garbage such as 1e250.
MAX_PASS_S = 3600.0
# A whole sample's decode: long generations on a slow host can take many minutes.
MAX_SAMPLE_S = 86400.0
# Tokens of one context or query: far beyond any model's window, below absurd values.
MAX_TOKENS = 1 << 24
# Token ids: the largest vocabularies hold about a million; beyond 2^24 is no token.
MAX_TOKEN_ID = (1 << 24) - 1
# The oracle stores ranks as int8.
MAX_TOP_K = 127
STOP_REASONS = ("eos", "max_new_tokens")
VERIFY_MODES = ("chain", "batch", "tree")
PROFILE_KINDS = ("target", "tree_verify", "draft", "overhead")


@dataclass(frozen=True)
class Problem:
    """One broken rule: ``file`` and ``table`` where, ``column`` (a run.json key path for
    run.json), the first offending ``row`` (None: not a row), its ``value``, what is
    ``allowed``, the number of rows that break it, and ``where`` (the row's ids)."""
    file: str
    table: str
    column: str
    row: int | None
    value: Any
    allowed: str
    count: int = 1
    where: str = ""

    def __str__(self) -> str:
        if self.row is None:
            at = f"{self.file} (table {self.table}): {self.column}"
        else:
            ids = f", {self.where}" if self.where else ""
            at = f"{self.file} (table {self.table}), column {self.column}, row {self.row}{ids}:"
        more = f" ({self.count} rows break this rule)" if self.count > 1 else ""
        return f"{at} holds {_show(self.value)}; allowed: {self.allowed}{more}"


class _Text(str):
    """A description of a value (shown as is, not quoted)."""


def _show(v: Any) -> str:
    if isinstance(v, _Text):
        return str(v)
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.integer):
        return str(int(v))
    if isinstance(v, str):
        return repr(v)
    return str(v)


class _Checker:
    """Collects the problems of one file; ``where(i)`` names row i's ids."""

    def __init__(self, file: str | Path, table: str, where: Callable[[int], str] | None = None):
        self.file, self.table = str(file), table
        self.where = where or (lambda i: "")
        self.problems: list[Problem] = []

    def rows(self, column: str, bad: np.ndarray, values: np.ndarray, allowed) -> bool:
        """Add a problem when any row of ``bad`` is set; ``allowed`` is a string or a
        function of the first bad row. Returns whether the rule held."""
        if not bad.any():
            return True
        i = int(np.flatnonzero(bad)[0])
        text = allowed(i) if callable(allowed) else allowed
        self.problems.append(Problem(self.file, self.table, column, i, values[i], text,
                                     int(bad.sum()), self.where(i)))
        return False

    def note(self, column: str, value: Any, allowed: str) -> None:
        self.problems.append(Problem(self.file, self.table, column, None, value, allowed))

    # -- columns
    def nulls(self, t: pa.Table, column: str, allowed: str) -> bool:
        col = t.column(column)
        if col.null_count == 0:
            return True
        bad = col.is_null().to_numpy(zero_copy_only=False)
        return self.rows(column, bad, np.full(len(bad), None, dtype=object), allowed)

    def ints(self, t: pa.Table, column: str, lo: int | np.ndarray | None = None,
             hi: int | np.ndarray | None = None, allowed: str | Callable | None = None,
             nullable: bool = False) -> np.ndarray:
        """An integer column as int64 (nulls read as ``lo`` once reported) checked
        against lo <= v <= hi (either may be per row)."""
        col = t.column(column)
        text = allowed or _range_text(lo, hi)
        if col.null_count and not nullable:
            self.nulls(t, column, text if isinstance(text, str) else "a number")
        fill = 0 if lo is None or not np.isscalar(lo) else lo
        v = pc.fill_null(col, fill).to_numpy().astype(np.int64) if col.null_count \
            else col.to_numpy().astype(np.int64)
        bad = np.zeros(len(v), bool)
        if lo is not None:
            bad |= v < lo
        if hi is not None:
            bad |= v > hi
        self.rows(column, bad, v, text)
        return v

    def seconds(self, t: pa.Table, column: str, hi: float, zero_ok: np.ndarray | None = None,
                zero_text: str = "") -> np.ndarray:
        """A seconds column: finite, > 0 (or 0 where ``zero_ok``), < hi."""
        col = t.column(column)
        text = f"a finite number of seconds > 0 and < {hi:g}" + zero_text
        if col.null_count:
            self.nulls(t, column, text)
        v = col.to_numpy(zero_copy_only=False).astype(np.float64)
        null = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else False
        with np.errstate(invalid="ignore"):
            positive = (v > 0) if zero_ok is None else ((v > 0) | (zero_ok & (v == 0)))
            ok = np.isfinite(v) & (v < hi) & positive
        self.rows(column, ~ok & ~null, v, text)
        return v

    def choice(self, t: pa.Table, column: str, allowed: tuple[str, ...], intro: str = "one of ") -> None:
        """A string column whose every value is one of ``allowed`` (checked on the
        dictionary of distinct values, not per row)."""
        enc = t.column(column).combine_chunks().dictionary_encode()
        bad_code = np.array([n not in allowed for n in enc.dictionary.to_pylist()] + [True])
        idx = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        bad = bad_code[idx]  # a null (-1) reads the trailing True
        values = np.asarray(t.column(column).to_pylist(), dtype=object) if bad.any() else bad
        self.rows(column, bad, values, intro + ", ".join(repr(a) for a in allowed if a))

    def list_values(self, t: pa.Table, column: str, length: np.ndarray | int | None,
                    length_text: str | Callable, check: Callable[[np.ndarray], np.ndarray] | None,
                    value_text: str, nullable: bool = False) -> None:
        """A list column: each row holds ``length`` values (per row, or None: any) and
        every value passes ``check`` (a vectorised predicate, True = allowed)."""
        arr = t.column(column).combine_chunks()
        n = len(arr)
        if arr.null_count and not nullable:
            self.nulls(t, column, "a list of values, not null")
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        valid = ~arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.ones(n, bool)
        if length is not None:
            bad = valid & (lengths != length)
            if not self.rows(column, bad, np.array([_Text(f"{k} values") for k in lengths], dtype=object)
                             if bad.any() else lengths, length_text):
                return
        if check is None:
            return
        flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
        if not flat.size:
            return
        with np.errstate(invalid="ignore"):
            ok_flat = check(flat)
        if ok_flat.all():
            return
        bad_flat = ~ok_flat
        offsets = np.concatenate([[0], np.cumsum(lengths * valid)])
        where = np.flatnonzero(bad_flat)
        rows = np.searchsorted(offsets, where, side="right") - 1
        i = int(rows[0])
        self.problems.append(Problem(self.file, self.table, column, i,
                                     _Text(f"{_show(flat[where[0]])} at index {int(where[0] - offsets[i])}"),
                                     value_text, int(len(np.unique(rows))), self.where(i)))


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None and np.isscalar(lo) and np.isscalar(hi):
        return f"an integer from {lo} to {hi}"
    if lo is not None and np.isscalar(lo):
        return f"an integer >= {lo}"
    return "an integer in range"


def _col(t: pa.Table, name: str) -> np.ndarray:
    c = t.column(name)
    return (pc.fill_null(c, -1) if c.null_count else c).to_numpy().astype(np.int64)


# -- tables -----------------------------------------------------------------------

def check_sample_ids(samples: pa.Table, where: str | Path) -> list[Problem]:
    """All parts together: sample ids 0..n-1, each once (replay indexes by them)."""
    ck = _Checker(where, "samples")
    ids = _col(samples, "sample")
    n = len(ids)
    if ck.rows("sample", (ids < 0) | (ids >= n), ids, f"a sample id 0 to {n - 1} (the ids "
               f"of {n} samples number them 0..n-1)"):
        dup = _first_of_each(ids)
        ck.rows("sample", dup, ids, "each sample id once")
    return ck.problems


def check_samples(t: pa.Table, file: str | Path) -> list[Problem]:
    sample = _col(t, "sample")
    ck = _Checker(file, "samples", lambda i: f"sample {sample[i]}")
    ck.ints(t, "sample", 0)
    ck.ints(t, "dataset_index", 0, nullable=True)
    ck.list_values(t, "output_ids", None, "a list of token ids", _token_ok, _TOKEN_TEXT)
    out_len = pc.fill_null(pc.list_value_length(t.column("output_ids")), 0).to_numpy(zero_copy_only=False)
    ck.rows("output_ids", out_len < 1, np.array([_Text(f"{k} tokens") for k in out_len], dtype=object),
            "at least one output token")
    ck.list_values(t, "prompt_ids", None, "a list of token ids", _token_ok, _TOKEN_TEXT)
    ck.choice(t, "stop_reason", STOP_REASONS)
    ck.seconds(t, "prefill_s", MAX_PASS_S)
    n_cycles = ck.ints(t, "n_cycles", 0)
    ck.seconds(t, "decode_s", MAX_SAMPLE_S, zero_ok=n_cycles == 0,
               zero_text=" (0 only for a sample without cycles)")
    ck.ints(t, "ar_divergence", -1, np.maximum(out_len - 1, 0), nullable=True,
            allowed=lambda i: f"-1 (no divergence), an output position 0 to {max(int(out_len[i]) - 1, 0)}, "
                              "or null (not checked)")
    return ck.problems


@dataclass(frozen=True)
class SampleInfo:
    """What the rules of other tables need from the samples table and run.json:
    len(S) and len(prompt) by sample id (-1 where no sample has that id), and the probe
    keys run.json's oracle lists (None: the run has no oracle)."""
    out_len: np.ndarray
    prompt_len: np.ndarray
    probes: tuple[str, ...] | None


def sample_info(samples: pa.Table, run: dict[str, Any]) -> SampleInfo:
    ids = _col(samples, "sample")
    keep = (ids >= 0) & (ids < len(ids))  # valid ids are 0..n-1 (check_sample_ids)
    out = np.full(int(ids[keep].max(initial=-1)) + 1, -1, np.int64)
    prompt = out.copy()
    out[ids[keep]] = pc.fill_null(pc.list_value_length(samples.column("output_ids")), 0).to_numpy(
        zero_copy_only=False)[keep]
    prompt[ids[keep]] = pc.fill_null(pc.list_value_length(samples.column("prompt_ids")), 0).to_numpy(
        zero_copy_only=False)[keep]
    oracle = run.get("oracle")
    probes = oracle.get("probes") if isinstance(oracle, dict) else None
    return SampleInfo(out, prompt, tuple(p for p in probes if isinstance(p, str))
                      if isinstance(probes, list) else None)


def _lookup(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a[idx] with -1 where idx is outside a."""
    inside = (idx >= 0) & (idx < len(a))
    return np.where(inside, a[np.clip(idx, 0, max(len(a) - 1, 0))] if len(a) else -1, -1)


def orphan_sample(file: str | Path, info: SampleInfo) -> int | None:
    """The sample of a part file ``<table>/part-<sample>.parquet`` when the samples table
    does not hold it: the part of the sample in flight when a recording was killed
    (the samples part is written last), readable until ``record --resume`` removes it."""
    m = re.fullmatch(r"part-(\d+)\.parquet", Path(file).name)
    if not m:
        return None
    s = int(m.group(1))
    return s if s >= len(info.out_len) or info.out_len[s] < 0 else None


def check_cycles(t: pa.Table, file: str | Path, info: SampleInfo | None = None) -> list[Problem]:
    sample, cycle = _col(t, "sample"), _col(t, "cycle")
    ck = _Checker(file, "cycles", lambda i: f"sample {sample[i]} cycle {cycle[i]}")
    for name in ("sample", "cycle", "start", "context_len"):
        ck.ints(t, name, 0)
    ck.ints(t, "bonus", 0, MAX_TOKEN_ID, allowed=_TOKEN_TEXT)
    if info is not None:
        # the recorded seconds and cost calibration are keyed by these: a cycle of another
        # sample, or past its output, would time a cycle the live run never ran
        start = _col(t, "start")
        length = _lookup(info.out_len, sample)
        orphan = orphan_sample(file, info)
        if ck.rows("sample", (sample >= 0) & (length < 0) & (sample != orphan), sample,
                   "a sample id of the samples table"):
            ck.rows("start", (length >= 0) & (start >= length), start,
                    lambda i: f"a position inside the sample's output, 0 to {int(length[i]) - 1}")
            expect = _lookup(info.prompt_len, sample) + start
            ck.rows("context_len", (length >= 0) & (start >= 0) & (_col(t, "context_len") != expect),
                    _col(t, "context_len"),
                    lambda i: f"len(prompt) + start = {int(expect[i])}")
            # the output length replay uses must be the one the cycles decoded: each
            # sample's last cycle ends at its last output token
            end = start + _col(t, "committed")
            known = (length >= 0) & (sample >= 0)
            if known.any():
                last = np.full(int(sample[known].max()) + 1, -1, np.int64)
                np.maximum.at(last, sample[known], end[known])
                ends = known & (end == last[np.where(known, sample, 0)])
                ck.rows("start, committed", ends & (end != length - 1),
                        np.array([_Text(f"a last cycle ending at {int(e)}") for e in end], dtype=object)
                        if (ends & (end != length - 1)).any() else end,
                        lambda i: f"the sample's last output position, len(S) - 1 = {int(length[i]) - 1} "
                                  "(the samples table's output_ids and the cycles disagree)")
        if info.probes is not None:
            ck.choice(t, "probe", ("",) + info.probes, "'' (plain draft) or a probe run.json's "
                      "oracle lists: ")
    b = ck.ints(t, "block_size", 1)
    bb = np.maximum(b, 1)
    start = np.maximum(_col(t, "start"), 0)
    ck.ints(t, "prev_offset", 0, start,
            allowed=lambda i: f"0 to start = {int(start[i])} (the previous cycle started at "
                              "start - prev_offset)")
    ck.ints(t, "n_seeds", 0, bb - 1,
            allowed=lambda i: f"0 to block_size - 1 = {int(bb[i]) - 1} (seeds fill drafted positions)")
    ck.ints(t, "accepted", 0, bb - 1,
            allowed=lambda i: f"0 to block_size - 1 = {int(bb[i]) - 1} (drafted tokens accepted)")
    for name in ("tau", "committed"):
        ck.ints(t, name, 1, bb, allowed=lambda i: f"1 to block_size = {int(bb[i])}")
    ck.choice(t, "verify_mode", VERIFY_MODES)
    batch = np.asarray(pc.fill_null(pc.equal(t.column("verify_mode"), "batch"), False).to_numpy(
        zero_copy_only=False), bool)
    vb = np.maximum(ck.ints(t, "verify_batch", 1, np.where(batch, np.iinfo(np.int64).max, 1),
                            allowed="1 (rows of a batch verify pass; 1 unless verify_mode is 'batch')"), 1)
    paths = np.maximum(ck.ints(t, "n_paths", 1), 1)
    # a verify pass holds at most block_size tokens per row or path
    most = bb * np.maximum(vb, paths)
    vt = ck.ints(t, "verify_tokens", 1, most,
                 allowed=lambda i: f"1 to block_size * max(verify_batch, n_paths) = {int(most[i])}")
    ck.ints(t, "n_paths", None, np.maximum(vt, 1), nullable=True,
            allowed=lambda i: f"1 to verify_tokens = {int(max(vt[i], 1))} (each path verifies a token)")
    ck.ints(t, "chosen_path", 0, paths - 1,
            allowed=lambda i: f"0 to n_paths - 1 = {int(paths[i]) - 1}")
    ck.list_values(t, "drafted", bb - 1,
                   lambda i: f"block_size - 1 = {int(bb[i]) - 1} token ids (one per drafted offset)",
                   _token_ok, _TOKEN_TEXT)
    ck.seconds(t, "draft_s", MAX_PASS_S, zero_ok=b == 1,
               zero_text=" (0 only at block size 1, which drafts nothing)")
    for name in ("target_s", "overhead_s", "cycle_s"):
        ck.seconds(t, name, MAX_PASS_S)
    return ck.problems


_TOKEN_TEXT = f"token ids 0 to {MAX_TOKEN_ID}"


def _token_ok(v: np.ndarray) -> np.ndarray:
    if v.dtype.kind == "i":  # one comparison: read as unsigned, a negative id is huge
        return v.view(v.dtype.str.replace("i", "u")) <= MAX_TOKEN_ID
    return (v >= 0) & (v <= MAX_TOKEN_ID)


def _logprob_ok(v: np.ndarray) -> np.ndarray:
    """log-probability <= 0 and not NaN (-inf allowed: probability 0)."""
    if v.dtype == np.float16:  # on the bits: numpy's float16 comparisons are slow
        # +0 is 0x0000; negative numbers down to -inf are 0x8000..0xFC00 (as int16:
        # -32768..-1024); above that NaN
        s = v.view(np.int16)
        ok = s <= -1024
        if not ok.all():
            ok |= s == 0
        return ok
    return v <= 0  # NaN compares False


def _first_of_each(*cols: np.ndarray) -> np.ndarray:
    """Mask of rows whose tuple of (non-negative) column values appeared before."""
    dims = [int(c.max(initial=0)) + 1 for c in cols]
    if all(c.min(initial=0) >= 0 for c in cols) and float(np.prod(dims, dtype=np.float64)) < 2.0 ** 62:
        key = np.ravel_multi_index(cols, dims)
        _, first = np.unique(key, return_index=True)
    else:
        _, first = np.unique(np.stack(cols, axis=1), axis=0, return_index=True)
    dup = np.ones(len(cols[0]), bool)
    dup[first] = False
    return dup


def check_oracle(t: pa.Table, file: str | Path, k: int | None) -> list[Problem]:
    sample, start, b = _col(t, "sample"), _col(t, "start"), _col(t, "block_size")
    probe = t.column("probe")
    ck = _Checker(file, "oracle", lambda i: (f"sample {sample[i]} start {start[i]} block size "
                                            f"{b[i]}" + (f" probe {probe[i].as_py()!r}" if probe[i].as_py() else "")))
    ck.ints(t, "sample", 0)
    start = ck.ints(t, "start", 0)
    b = ck.ints(t, "block_size", 2)
    ck.nulls(t, "probe", "a probe key, or '' for the plain draft")
    ck.ints(t, "prev_offset", 0, np.maximum(start, 0),
            allowed=lambda i: f"0 to start = {int(start[i])} (the previous cycle started at "
                              "start - prev_offset)")
    width = np.maximum(b, 2) - 1
    rank_text = (f"{RANK_BEYOND_END} (past the end of S), {RANK_NOT_IN_TOPK} (not in the top-k) "
                 + (f"or a rank 0 to {k - 1} (the oracle kept top-{k})" if k else "or a rank >= 0"))
    top = k if k else MAX_TOP_K
    # a reader may read the list columns one at a time (keys always included): each is
    # checked when it is read
    present = set(t.column_names)
    if "true_rank" in present:
        ck.list_values(t, "true_rank", width,
                       lambda i: f"block_size - 1 = {int(width[i])} rank codes (one per drafted offset)",
                       lambda v: (v >= RANK_BEYOND_END) & (v < top), rank_text)
    if k and "draft_ids" in present:
        ck.list_values(t, "draft_ids", width * k,
                       lambda i: f"(block_size - 1) * top_k = {int(width[i])} * {k} = {int(width[i]) * k} ids",
                       _token_ok, _TOKEN_TEXT)
    if k and "draft_logprobs" in present:
        ck.list_values(t, "draft_logprobs", width * k,
                       lambda i: f"(block_size - 1) * top_k = {int(width[i])} * {k} = "
                                 f"{int(width[i]) * k} log-probabilities",
                       _logprob_ok, "log-probabilities <= 0 (not NaN)")
    return ck.problems


def check_oracle_target(t: pa.Table, file: str | Path, k: int | None) -> list[Problem]:
    sample, pos = _col(t, "sample"), _col(t, "position")
    ck = _Checker(file, "oracle_target", lambda i: f"sample {sample[i]} position {pos[i]}")
    ck.ints(t, "sample", 0)
    ck.ints(t, "position", 0)
    ck.list_values(t, "target_ids", k, f"top_k = {k} token ids", _token_ok, _TOKEN_TEXT)
    ck.list_values(t, "target_logprobs", k, f"top_k = {k} log-probabilities", _logprob_ok,
                   "log-probabilities <= 0 (not NaN)")
    return ck.problems


def check_cycle_logits(t: pa.Table, file: str | Path) -> list[Problem]:
    sample, cycle = _col(t, "sample"), _col(t, "cycle")
    ck = _Checker(file, "cycle_logits", lambda i: f"sample {sample[i]} cycle {cycle[i]}")
    ck.ints(t, "sample", 0)
    ck.ints(t, "cycle", 0)
    ck.ints(t, "offset", 0)
    return ck.problems


def check_profile(t: pa.Table, file: str | Path) -> list[Problem]:
    kind = np.asarray(t.column("kind").to_pylist(), dtype=object)
    q, L, B = _col(t, "q"), _col(t, "context_len"), _col(t, "batch")
    ck = _Checker(file, "profile", lambda i: f"kind {kind[i]!r} q {q[i]} context_len {L[i]} batch {B[i]}")
    ck.choice(t, "kind", PROFILE_KINDS)
    over = kind == "overhead"
    has_mode = "mode" in t.column_names
    ck.ints(t, "q", np.where(over, 0, 1), np.where(over & (not has_mode), 0, MAX_TOKENS),
            allowed=f"query tokens 1 to {MAX_TOKENS} (block size for draft rows; for overhead "
                    "rows the cycle's verify tokens, or 0 in a profile without a mode column)")
    if has_mode:
        mode = np.asarray(t.column("mode").to_pylist(), dtype=object)
        empty = (mode == "") | np.equal(mode, None)
        ok = np.where(over, np.isin(mode, HOST_MODES) | (empty & (q == 0)), empty)
        ck.rows("mode", ~ok, mode, "one of " + ", ".join(repr(m) for m in HOST_MODES)
                + " on overhead rows (or empty where q is 0: the chain's acceptance step), "
                "empty on the others")
    ck.ints(t, "context_len", 0, MAX_TOKENS)
    ck.ints(t, "batch", 1)
    for name in ("median_s", "p10_s", "p90_s"):
        ck.seconds(t, name, MAX_PASS_S)
    ck.ints(t, "n", 1, allowed="timed repetitions >= 1")
    cols = [kind.astype(str), q, L, B]
    if "mode" in t.column_names:
        cols.append(np.asarray(t.column("mode").to_pylist(), dtype=object).astype(str))
    key = np.rec.fromarrays(cols)
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    dup = np.zeros(t.num_rows, bool)
    if (counts > 1).any():
        seen = np.zeros(t.num_rows, bool)
        seen[first] = True
        dup = ~seen
    ck.rows("kind, q, context_len, batch", dup,
            np.array([_Text(f"grid point ({kind[i]}, {q[i]}, {L[i]}, {B[i]}"
                            + (f", {cols[4][i]!r}" if len(cols) > 4 else "") + ") again")
                      for i in range(len(dup))]
                     if dup.any() else dup, dtype=object),
            "one row per grid point (kind, q, context_len, batch, and mode where present)")
    return ck.problems


# -- run.json ---------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_run(run: dict[str, Any], file: str | Path, has_oracle_table: bool) -> list[Problem]:
    ck = _Checker(file, "run.json")

    def need(key: str, value: Any, ok: bool, allowed: str) -> None:
        if not ok:
            ck.note(f"key {key}", value, allowed)

    v = run.get("top_k_logits")
    need("top_k_logits", v, v is None or (_is_int(v) and v >= 0), "an integer >= 0")
    sampling = run.get("sampling")
    if sampling is not None and not isinstance(sampling, dict):
        need("sampling", sampling, False, "an object {temperature, seed, max_new_tokens, stop_token_ids}")
        sampling = None
    sampling = sampling or {}
    v = sampling.get("temperature")
    need("sampling.temperature", v, v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  and math.isfinite(v) and v >= 0),
         "a finite number >= 0")
    v = sampling.get("max_new_tokens")
    need("sampling.max_new_tokens", v, v is None or (_is_int(v) and v >= 1), "an integer >= 1 or null")
    v = sampling.get("stop_token_ids")
    need("sampling.stop_token_ids", v, v is None or (isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)),
         "a list of token ids >= 0")
    draft = run.get("draft")
    v = draft.get("block_size") if isinstance(draft, dict) else None
    need("draft.block_size", v, v is None or (_is_int(v) and v >= 1), "an integer >= 1 or null")
    oracle = run.get("oracle")
    if oracle is None:
        if has_oracle_table:
            ck.note("key oracle", None, "an object {block_sizes, top_k, probes} since the trace "
                    "holds an oracle table (run `specreplay oracle DIR` again to restore it)")
        return ck.problems
    if not isinstance(oracle, dict):
        need("oracle", oracle, False, "null or an object {block_sizes, top_k, probes}")
        return ck.problems
    sizes = oracle.get("block_sizes")
    need("oracle.block_sizes", sizes, isinstance(sizes, list) and sizes != []
         and all(_is_int(x) and x >= 2 for x in sizes) and len(set(sizes)) == len(sizes),
         "a non-empty list of distinct integers >= 2")
    v = oracle.get("top_k")
    need("oracle.top_k", v, _is_int(v) and 1 <= v <= MAX_TOP_K, f"an integer from 1 to {MAX_TOP_K}")
    v = oracle.get("probes", [])
    need("oracle.probes", v, isinstance(v, list) and all(isinstance(x, str) and x for x in v),
         "a list of probe keys")
    v = oracle.get("probe_block_sizes")
    need("oracle.probe_block_sizes", v, v is None or (isinstance(v, list) and isinstance(sizes, list)
                                                      and all(x in sizes for x in v)),
         f"a subset of oracle.block_sizes {sizes}")
    return ck.problems


def run_top_k(run: dict[str, Any]) -> int | None:
    """run.json's oracle top-k when it is valid, else None."""
    oracle = run.get("oracle")
    v = oracle.get("top_k") if isinstance(oracle, dict) else None
    return v if _is_int(v) and 1 <= v <= MAX_TOP_K else None


# -- across the oracle table ------------------------------------------------------

def check_oracle_coverage(oracle: pa.Table, out_len: np.ndarray, run: dict[str, Any],
                          where: str, orphans: tuple[int, ...] = ()) -> list[Problem]:
    """The whole oracle table (all parts) against the samples and run.json: rows name
    known samples, start inside the output and appear once; the plain block sizes and
    probes are the ones run.json lists. ``out_len[s]`` is len(S) of sample s (0 for a
    missing id). ``orphans``: sample ids of the in-flight sample's parts (``orphan_sample``),
    whose rows are left out."""
    ck = _Checker(where, "oracle")
    meta = run.get("oracle") if isinstance(run.get("oracle"), dict) else {}
    if oracle.num_rows == 0:
        return ck.problems
    if orphans:
        oracle = oracle.filter(pc.invert(pc.is_in(oracle.column("sample"),
                                                  pa.array(orphans, pa.int32()))))
    sample = _col(oracle, "sample")
    start = _col(oracle, "start")
    b = _col(oracle, "block_size")
    prev = _col(oracle, "prev_offset")
    enc = oracle.column("probe").combine_chunks().dictionary_encode()
    names = [n or "" for n in enc.dictionary.to_pylist()]
    code = pc.fill_null(enc.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    length = _lookup(out_len, sample)
    known = length > 0
    ck.rows("sample", ~known, sample, "a sample id of the samples table")
    inside = known & (start >= 0) & (start < length)
    ck.rows("start", known & ~inside, start, "a position inside the sample's output (0 to len(S) - 1)")
    dup = _first_of_each(sample, start, b, code, prev)
    ck.rows("sample, start, block_size, probe, prev_offset", dup,
            np.array([_Text(f"(sample {sample[i]}, start {start[i]}, block size {b[i]}, probe "
                      f"{names[code[i]]!r}, prev_offset {prev[i]}) again") for i in range(len(dup))]
                     if dup.any() else dup, dtype=object),
            "one row per (sample, start, block size, probe, prev_offset)")
    plain_code = names.index("") if "" in names else -1
    plain = code == plain_code
    table_sizes = sorted(set(np.unique(b[plain]).tolist()))
    listed = meta.get("block_sizes") if isinstance(meta.get("block_sizes"), list) else []
    if sorted(listed) != table_sizes:
        ck.note("plain block sizes", table_sizes,
                f"the block sizes run.json lists under oracle.block_sizes, {sorted(listed)} "
                "(an interrupted `specreplay oracle` pass? run it again)")
    table_probes = sorted(n for n in names if n and (code == names.index(n)).any())
    listed_probes = meta.get("probes") if isinstance(meta.get("probes"), list) else []
    if meta.get("probe_block_sizes") == []:  # probes listed, but at no block size
        listed_probes = []
    if sorted(listed_probes) != table_probes:
        ck.note("probes", table_probes, f"the probes run.json lists under oracle.probes, "
                f"{sorted(listed_probes)} (an interrupted `specreplay oracle` pass? run it again)")
    return ck.problems


def oracle_gaps(oracle: pa.Table, out_len: np.ndarray, run: dict[str, Any],
                where: str) -> list[Problem]:
    """Listed block sizes whose plain rows miss a start 0..len(S)-2 of some sample (the
    table's values already valid)."""
    ck = _Checker(where, "oracle")
    meta = run.get("oracle") if isinstance(run.get("oracle"), dict) else {}
    listed = meta.get("block_sizes") if isinstance(meta.get("block_sizes"), list) else []
    sample, start, b = _col(oracle, "sample"), _col(oracle, "start"), _col(oracle, "block_size")
    plain = np.asarray(pc.fill_null(pc.equal(oracle.column("probe"), ""), False).to_numpy(
        zero_copy_only=False), bool)
    need = np.clip(out_len - 1, 0, None)
    ok_rows = plain & (start <= out_len[sample] - 2) & ~_first_of_each(sample, start, b, plain.astype(np.int64))
    for size in sorted(listed):
        have = np.bincount(sample[ok_rows & (b == size)], minlength=len(out_len))[:len(out_len)]
        short = np.flatnonzero(have < need)
        if short.size:
            s = int(short[0])
            ck.note(f"block size {size}", _Text(f"plain rows at {int(have[s])} of the {int(need[s])} "
                    f"starts of sample {s} ({short.size} samples short)"),
                    "a row at every start 0..len(S)-2 of every sample (run `specreplay oracle DIR` "
                    "again)")
    return ck.problems


__all__ = ["oracle_gaps", "Problem", "check_samples", "check_cycles", "check_oracle", "check_oracle_target",
           "check_cycle_logits", "check_profile", "check_run", "check_oracle_coverage",
           "run_top_k", "MAX_PASS_S", "MAX_SAMPLE_S", "MAX_TOP_K"]
