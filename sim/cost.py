"""The cost model: seconds of a draft pass, a verify pass and the per-cycle overhead.

Built from a latency profile (traces/schema.py PROFILE_SCHEMA): rows of ``kind``
target | tree_verify | draft | overhead, measured over query tokens ``q`` (block size for
the draft), context length ``L`` and ``batch``.

* Inside the measured grid of one batch size: bilinear interpolation, linear in q and
  in L between the neighbouring measured points (profiles are log-spaced grids, so the
  cells are wide; linear keeps every prediction between two measurements).
  Between two measured batch sizes: linear in batch between the two grids.
* Anywhere else (outside the grid, or a cell with an unmeasured corner that carries
  weight): a structured
  model fitted per kind by non-negative least squares,
  ``t = fixed + per_token * (q*batch) + per_token_context * (q*batch*L)``,
  and the query is flagged as extrapolated.
* Tree verification: the chain cost at the same (q, L, batch) times the measured ratio
  tree_verify / target at equal q (interpolated in q). Without tree rows the ratio is 1
  and flagged.
* Overhead (the host part of a cycle: the live loop's own work between its GPU passes),
  per host mode (traces.schema HOST_MODES: ar, chain, gated, tree, batch, probed; named by
  policies.base.host_mode) and verify tokens: the profile's overhead rows of that
  ``mode`` (PROFILE_OPTIONAL; the profiler times them over the loop's own cycles, so
  the policy calls, views and bookkeeping are in them), linear in verify tokens between
  the measured sizes; else its chain rows (a profile without the column reads as chain
  rows at q = 0, one figure for every size); else the median ``overhead_s`` of the
  trace's live cycles of that mode (a gated, probed or ar cycle: of its verify mode), else of
  all its live cycles, else 0 (flagged). On the trace's own setup with a profile that
  has no ``mode`` column (its overhead rows time only the acceptance tensor ops), the
  live cycles come first. The source of each mode is named in ``overhead_source``.
* Batch verification (a plan verifying n candidate rows) is costed as the live backend
  runs it (profile.json setup ``batch_verify``): "packed" (one row of disjoint paths under
  an ancestor-only mask) is a tree_verify of q = verify tokens; "rows" (the hf loop: n
  rows of a batch) is a target pass of n rows of the longest candidate plus the copy of
  the KV cache the loop makes to give each row its own cache (``kv_copy_s``: seconds per
  cached token per row, fitted to the trace's batch cycles, whose target_s includes
  that copy; without batch cycles the copy is left out and a note says so).

* Padded shapes (a captured graph backend: the profile setup's ``shapes``, or a graph
  profile measured on a GPU): a pass is costed at its padded shape, whose time is flat
  between steps: q at its query bucket, the context at the measured context nearest to
  it that attends over the same cache span (``CostModel._padded``); only a span no
  profile point shares is interpolated or extrapolated as above.

Each query also returns a *source*: the id of the grid cell it interpolated in, or -1 for
the fitted model; ``explain(source)`` names the profile rows behind it.

Without a profile, a cost model can be fitted to the trace's own live cycles
(``from_cycles``): their measured seconds become the rows; labelled as such.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.optimize import nnls

from specreplay.traces.schema import HOST_MODES, kv_rows, padded_query, setup_shapes

FITTED = -1


class MissingCost(ValueError):
    """The cost model has no measurement of a kind of pass a replay needs."""
KINDS = ("target", "tree_verify", "draft", "overhead")
VERIFY_MODES = ("chain", "tree", "batch")


@dataclass
class Grid:
    """Measured medians of one (kind, batch) over the q x L grid (NaN = not measured)."""
    q: np.ndarray          # sorted float64
    L: np.ndarray          # sorted float64
    t: np.ndarray          # [len(q), len(L)]
    row: np.ndarray        # int64 [len(q), len(L)] profile row behind each point, -1 none
    cell_base: int = 0     # cell id of (0, 0); cell (i, j) = base + i*len(L) + j


@dataclass
class Surface:
    """One kind: a grid per measured batch size, and the fitted structured model."""
    kind: str
    grids: dict[int, Grid]
    coef: np.ndarray                   # fixed, per token, per token x context
    fit_rows: np.ndarray               # profile rows the fit used
    batches: list[int] = field(default_factory=list)

    def fitted(self, q, L, batch) -> np.ndarray:
        tokens = np.asarray(q, dtype=np.float64) * batch
        return self.coef[0] + self.coef[1] * tokens + self.coef[2] * tokens * np.asarray(L, np.float64)

    def in_grid(self, g: Grid, q: float, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear values and cell ids at one q over many L; NaN / FITTED outside."""
        out = np.full(L.shape, np.nan)
        cell = np.full(L.shape, FITTED, dtype=np.int64)
        if not (g.q[0] <= q <= g.q[-1]) or len(g.L) == 0:
            return out, cell
        i = min(max(bisect.bisect_right(g.q.tolist(), q) - 1, 0), max(len(g.q) - 2, 0))
        i2 = min(i + 1, len(g.q) - 1)
        wq = 0.0 if i2 == i else (q - g.q[i]) / (g.q[i2] - g.q[i])
        inside = (L >= g.L[0]) & (L <= g.L[-1])
        j = np.clip(np.searchsorted(g.L, L, side="right") - 1, 0, max(len(g.L) - 2, 0))
        j2 = np.minimum(j + 1, len(g.L) - 1)
        span = g.L[j2] - g.L[j]
        wl = np.where(span > 0, (L - g.L[j]) / np.where(span > 0, span, 1.0), 0.0)
        lo = _blend(g.t[i, j], g.t[i, j2], wl)
        hi = _blend(g.t[i2, j], g.t[i2, j2], wl)
        val = _blend(lo, hi, np.full(L.shape, wq))
        ok = inside & np.isfinite(val)
        out[ok] = val[ok]
        cell[ok] = g.cell_base + i * len(g.L) + j[ok]
        return out, cell

    def predict(self, q: float, L: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Seconds and sources for one (q, batch) over an array of context lengths."""
        L = np.asarray(L, dtype=np.float64)
        if batch in self.grids:
            val, cell = self.in_grid(self.grids[batch], q, L)
        else:
            k = bisect.bisect_left(self.batches, batch)
            if 0 < k < len(self.batches):
                b0, b1 = self.batches[k - 1], self.batches[k]
                v0, c0 = self.in_grid(self.grids[b0], q, L)
                v1, _ = self.in_grid(self.grids[b1], q, L)
                w = (batch - b0) / (b1 - b0)
                val = v0 * (1 - w) + v1 * w
                cell = np.where(np.isfinite(val), c0, FITTED)
            else:
                val, cell = np.full(L.shape, np.nan), np.full(L.shape, FITTED, dtype=np.int64)
        miss = ~np.isfinite(val)
        if miss.any():
            val = np.where(miss, self.fitted(q, L, batch), val)
            cell = np.where(miss, FITTED, cell)
        return val, cell


@dataclass(frozen=True)
class Shapes:
    """The padded sizes a captured backend runs its passes at (traces/schema.py
    QUERY_BUCKETS): a verify of q rows runs at ``query(q)`` rows and attends over its
    cache rows (context plus padded queries) rounded up to ``kv_quantum``; a draft block
    pass attends over its context rounded up alike (its block size is exact)."""
    buckets: tuple[int, ...]
    kv_quantum: int

    def query(self, kind: str, q: int) -> int:
        return int(q) if kind == "draft" else padded_query(int(q), self.buckets)

    def span(self, kind: str, q_padded: int, L: np.ndarray) -> np.ndarray:
        return kv_rows(np.asarray(L, np.int64) + (0 if kind == "draft" else int(q_padded)),
                       self.kv_quantum)


def shapes_of(meta: dict[str, Any] | None) -> Shapes | None:
    """The ``shapes`` of a profile's setup; for a graph-backend profile measured on a GPU
    before the setup named them, the shapes that backend has always captured at
    (QUERY_BUCKETS, KV_QUANTUM); None where passes ran at their exact sizes (hf, CPU)."""
    given = setup_shapes((meta or {}).get("setup"))
    if given is None:
        return None
    try:
        buckets = tuple(int(b) for b in given["query_buckets"])
        quantum = int(given["kv_quantum"])
    except (TypeError, KeyError, ValueError):
        buckets, quantum = (), 0
    if not buckets or quantum < 1 or any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
        raise ValueError(f"the profile's setup.shapes {given!r} is not a list of increasing positive "
                         f"query_buckets with a positive kv_quantum; re-run specreplay profile")
    return Shapes(buckets, quantum)


def _blend(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """a*(1-w) + b*w, where a corner of weight 0 does not count: a measured point next to
    an unmeasured one (NaN) is still that measurement."""
    return np.where(w <= 0, a, np.where(w >= 1, b, a * (1 - w) + b * w))


def _surface(kind: str, rows: dict[str, np.ndarray], cells: list[tuple[str, int, Grid]]) -> Surface | None:
    sel = np.flatnonzero(rows["kind"] == kind)
    if sel.size == 0:
        return None
    grids: dict[int, Grid] = {}
    for batch in sorted(set(rows["batch"][sel].tolist())):
        idx = sel[rows["batch"][sel] == batch]
        qs = np.unique(rows["q"][idx]).astype(np.float64)
        Ls = np.unique(rows["context_len"][idx]).astype(np.float64)
        t = np.full((len(qs), len(Ls)), np.nan)
        rid = np.full((len(qs), len(Ls)), -1, dtype=np.int64)
        qi = np.searchsorted(qs, rows["q"][idx])
        li = np.searchsorted(Ls, rows["context_len"][idx])
        t[qi, li] = rows["median_s"][idx]
        rid[qi, li] = idx
        base = sum(g.t.size for _, _, g in cells)
        g = Grid(qs, Ls, t, rid, base)
        cells.append((kind, int(batch), g))
        grids[int(batch)] = g
    tokens = rows["q"][sel] * rows["batch"][sel]
    A = np.stack([np.ones(sel.size), tokens, tokens * rows["context_len"][sel]], axis=1)
    # scale columns so nnls is well conditioned, then unscale
    scale = np.maximum(np.abs(A).max(axis=0), 1e-12)
    coef, _ = nnls(A / scale, rows["median_s"][sel])
    return Surface(kind, grids, coef / scale, sel, sorted(grids))


class CostModel:
    """Seconds of each part of a cycle. ``label`` says where the numbers come from
    (printed with every prediction); ``setup`` is the profile's setup (profile.json)."""

    def __init__(self, table: pa.Table, label: str = "profile", setup: dict[str, Any] | None = None,
                 overhead_fallback: float | None = None,
                 cycle_overheads: dict[str, float] | None = None,
                 prefer_cycle_overheads: bool = False, batch_copy_measured: bool = False) -> None:
        cols = {c: table[c].to_numpy(zero_copy_only=False) for c in
                ("kind", "q", "context_len", "batch", "median_s")}
        self.rows = {
            "kind": np.asarray(cols["kind"], dtype=object),
            "q": np.asarray(cols["q"], dtype=np.float64),
            "context_len": np.asarray(cols["context_len"], dtype=np.float64),
            "batch": np.asarray(cols["batch"], dtype=np.float64),
            "median_s": np.asarray(cols["median_s"], dtype=np.float64),
        }
        has_mode = "mode" in table.column_names
        mode = (np.asarray(table["mode"].to_pylist(), dtype=object) if has_mode
                else np.full(table.num_rows, "", dtype=object))
        # contract: an overhead row without a mode (older profiles) times the chain step;
        # the loop's host step is measured per mode only where some overhead row has one
        over = self.rows["kind"] == "overhead"
        mode = np.where(np.equal(mode, None), "", mode)
        has_mode = bool((over & (mode != "")).any())
        self.rows["mode"] = np.where(over & (mode == ""), "chain", mode)
        self.label = label
        self.setup = setup or {}
        self.cells: list[tuple[str, int, Grid]] = []
        self.surfaces = {k: _surface(k, self.rows, self.cells) for k in ("target", "tree_verify", "draft")}
        if self.surfaces["target"] is None:
            raise ValueError("the profile has no 'target' rows; re-run specreplay profile")
        self.notes: set[str] = set()
        cyc = dict(cycle_overheads or {})
        if overhead_fallback is not None:
            cyc.setdefault("all", float(overhead_fallback))
        self._set_overheads(cyc, prefer_cycle_overheads and not has_mode)
        run_setup = self.setup.get("setup") if isinstance(self.setup.get("setup"), dict) else {}
        self.batch_verify = str(run_setup.get("batch_verify") or "rows")
        self.shapes = shapes_of(self.setup)
        # seconds per cached token per extra row of the hf batch verify's KV copy; None:
        # not known (no batch cycles to fit it to), 0 with batch_copy_measured: the rows
        # themselves are live batch cycles and hold the copy already
        self.kv_copy_per_token_row: float | None = 0.0 if batch_copy_measured else None
        self._batch_copy_measured = batch_copy_measured
        self._tables: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._lists: dict[tuple[str, int, int], tuple[list, list]] = {}
        self._L_max = 0
        self.scale: dict[str, float] = {}
        self.calibration_check: dict[str, Any] | None = None

    def _set_overheads(self, cyc: dict[str, float], cycles_first: bool) -> None:
        """Per host mode: a host-time curve over verify tokens and its source, in the
        order the class docstring gives."""
        over = self.rows["kind"] == "overhead"
        med, q, modes = self.rows["median_s"], self.rows["q"], self.rows["mode"]

        def curve(mode: str):
            sel = over & (modes == mode)
            if not sel.any():
                return None
            qs = np.unique(q[sel])
            return qs, np.array([np.median(med[sel & (q == v)]) for v in qs])

        def const(v):
            return None if v is None else (np.zeros(1), np.array([float(v)]))

        measured = {m: curve(m) for m in HOST_MODES}
        self._host: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._host_memo: dict[tuple[str, int], float] = {}
        sources: dict[str, str] = {}
        for mode in HOST_MODES:
            verify = "chain" if mode in ("ar", "gated", "probed") else mode
            options = [
                (const(cyc.get(mode)), f"median overhead_s of the trace's live {mode} cycles"),
                (const(cyc.get(verify)) if verify != mode else None,
                 f"median overhead_s of the trace's live {verify} cycles (no {mode} cycles)"),
                (const(cyc.get("all")), "median overhead_s of all the trace's live cycles"),
            ]
            prof_options = [
                (measured[mode], f"profile {mode} overhead rows"),
                (measured["chain"] if mode != "chain" else None,
                 f"profile chain overhead rows (no {mode} rows)"),
            ]
            chosen = next(((v, src) for v, src in (options + prof_options if cycles_first
                                                    else prof_options + options)
                           if v is not None), None)
            if chosen is None:
                chosen = (const(0.0), "none (no overhead rows, no live cycles)")
                self.notes.add(f"no {mode} overhead measured: 0 s per cycle")
            self._host[mode] = chosen[0]
            qs = chosen[0][0]
            sources[mode] = chosen[1] + (f" over verify tokens {_ranges(qs.astype(int).tolist())}"
                                         if len(qs) > 1 else "")
        self.overhead_s = self.overhead("chain")
        if len(set(sources.values())) == 1:
            self.overhead_source = sources["chain"]
        else:
            self.overhead_source = "; ".join(f"{m}: {src}" for m, src in sources.items())

    def overhead(self, mode: str, verify_tokens: int | None = None) -> float:
        """Host seconds of one cycle of host mode ``mode`` (traces.schema HOST_MODES; an
        unknown mode takes the chain's) verifying ``verify_tokens`` query tokens: linear
        between the measured verify sizes, the nearest one's below the smallest, the
        last segment's line above the largest (never below the largest's seconds);
        None takes the mode's median."""
        key = (mode, -1 if verify_tokens is None else int(verify_tokens))
        hit = self._host_memo.get(key)
        if hit is not None:
            return hit
        qs, secs = self._host.get(mode) or self._host["chain"]
        if verify_tokens is None or len(qs) == 1:
            v = float(np.median(secs))
        elif verify_tokens <= qs[-1]:
            v = float(np.interp(verify_tokens, qs, secs))
        else:
            slope = (secs[-1] - secs[-2]) / (qs[-1] - qs[-2])
            v = float(secs[-1] + max(slope, 0.0) * (verify_tokens - qs[-1]))
            self.notes.add(f"{mode} host time extrapolated past {int(qs[-1])} verify tokens")
        self._host_memo[key] = v
        return v

    def fit_kv_copy(self, cycles: pa.Table) -> None:
        """Fit the hf batch verify's KV copy to the trace's batch cycles: their target_s
        minus the profile's target pass of the same rows, per cached token per row
        (least squares through 0, not below 0). Without batch cycles the copy stays
        unknown and a batch plan is costed without it (noted)."""
        if self.batch_verify != "rows" or self._batch_copy_measured:
            return
        self.notes = {n for n in self.notes if not n.startswith("batch")}
        self.kv_copy_per_token_row = None
        c = {n: np.asarray(cycles[n].to_numpy(zero_copy_only=False)) for n in
             ("verify_mode", "verify_batch", "verify_tokens", "context_len", "target_s")}
        sel = np.flatnonzero((c["verify_mode"] == "batch") & (c["verify_batch"] > 1))
        if sel.size == 0:
            self.notes.add("batch verification's KV copy (the hf loop copies the whole cache "
                           "once per candidate row) not measured: no batch cycles in the "
                           "trace, so batch plans are costed without it")
            return
        n = c["verify_batch"][sel].astype(np.int64)
        q = np.maximum(np.rint(c["verify_tokens"][sel] / n), 1).astype(np.int64)
        L = c["context_len"][sel].astype(np.int64)
        bare = np.array([self.seconds("target", int(qi), int(li), int(ni))[0]
                         for qi, li, ni in zip(q, L, n)])
        x = (L * n).astype(np.float64)
        resid = c["target_s"][sel].astype(np.float64) - bare
        self.kv_copy_per_token_row = max(0.0, float((resid * x).sum() / max((x * x).sum(), 1e-300)))
        self.notes.add(f"batch verification's KV copy fitted to {sel.size} batch cycles: "
                       f"{self.kv_copy_per_token_row * 1e9:.3g} ns per cached token per row")

    def kv_copy_s(self, L: int, rows: int) -> float:
        """Seconds of the hf batch verify's copy of an L-token cache into ``rows`` rows
        (0 when unknown, see ``fit_kv_copy``, or when the backend packs the batch)."""
        if rows <= 1 or self.batch_verify != "rows" or not self.kv_copy_per_token_row:
            return 0.0
        return self.kv_copy_per_token_row * L * rows

    def batch_verify_s(self, q_row: int, verify_tokens: int, L: int, rows: int) -> tuple[float, int]:
        """(seconds, source) of verifying ``rows`` candidate rows of up to ``q_row``
        tokens (``verify_tokens`` in all) the way the backend runs it."""
        if self.batch_verify == "packed":
            return self.seconds("tree_verify", verify_tokens, L, 1)
        secs, src = self.seconds("target", q_row, L, rows)
        return secs + self.kv_copy_s(L, rows), src

    # -- construction
    @classmethod
    def from_cycles(cls, cycles: pa.Table, prompt_len: np.ndarray) -> "CostModel":
        """Fit to the trace's own live cycles (no profile): each cycle's measured
        target_s and draft_s is a row at its (q, context length, batch)."""
        c = {n: cycles[n].to_numpy(zero_copy_only=False) for n in
             ("verify_tokens", "verify_batch", "verify_mode", "block_size", "context_len",
              "draft_s", "target_s", "overhead_s")}
        batch = np.maximum(np.asarray(c["verify_batch"], np.float64), 1)
        q = np.asarray(c["verify_tokens"], np.float64) / batch
        kinds = np.where(np.asarray(c["verify_mode"]) == "tree", "tree_verify", "target")
        drafted = np.asarray(c["block_size"]) > 1
        ctx, target_s = np.asarray(c["context_len"]), np.asarray(c["target_s"])
        if not (kinds == "target").any():
            # a run that only verified trees: its tree passes are the only verify times
            # measured, so they stand in for chain passes of the same width too
            kinds = np.concatenate([kinds, np.full(len(kinds), "target")])
            q, batch = np.concatenate([q, q]), np.concatenate([batch, batch])
            ctx, target_s = np.concatenate([ctx, ctx]), np.concatenate([target_s, target_s])
        table = pa.table({
            "kind": np.concatenate([kinds, np.full(drafted.sum(), "draft")]).tolist(),
            "q": np.concatenate([q, np.asarray(c["block_size"])[drafted]]).astype(np.int32),
            "context_len": np.concatenate([ctx, np.asarray(c["context_len"])[drafted]]).astype(np.int32),
            "batch": np.concatenate([batch, np.ones(drafted.sum())]).astype(np.int32),
            "median_s": np.concatenate([target_s, np.asarray(c["draft_s"])[drafted]]).astype(np.float64),
        })
        return cls(table, label="fitted to the trace's live cycles (no profile)",
                   cycle_overheads=cycle_overheads(cycles), prefer_cycle_overheads=True,
                   batch_copy_measured=True)

    def calibrate(self, cycles: pa.Table) -> dict[str, float]:
        """Scale the profile to the live loop that recorded ``cycles`` on this setup: the
        profile times bare forwards in a tight loop, the live loop also does its own host
        work inside the draft and verify steps and runs whenever the machine is slow. Over
        the plain cycles (chain verify, one row, no probe, no seeds), draft seconds are
        multiplied by sum(measured draft_s) / sum(profile draft) and verify seconds (chain
        and tree) by the same ratio of target_s; the shape over q, L and batch stays the
        profile's.

        The factors are fitted on half the samples (even sample ids) and checked on the
        other half: ``calibration_check`` holds the relative error of the calibrated
        draft, verify and cycle seconds (draft + verify + overhead) summed over the
        held-out plain cycles, and a note prints it with every prediction. A trace of one
        sample is fitted on it and the note says the fit is unchecked. Returns the
        factors (a kind without plain cycles keeps 1)."""
        c = {n: np.asarray(cycles[n].to_numpy(zero_copy_only=False)) for n in
             ("sample", "context_len", "block_size", "verify_mode", "verify_tokens",
              "verify_batch", "probe", "n_seeds", "draft_s", "target_s", "overhead_s")}
        plain = ((c["verify_mode"] == "chain") & (c["verify_batch"] <= 1)
                 & (c["probe"] == "") & (c["n_seeds"] == 0))
        samples = np.unique(c["sample"][plain])
        split = samples.size >= 2
        fit_ids = samples[::2] if split else samples
        fit = plain & np.isin(c["sample"], fit_ids)
        check = plain & ~np.isin(c["sample"], fit_ids)
        self.scale = {}  # the profile's own seconds, unscaled, for the ratios
        self._tables.clear()
        self._lists.clear()

        def profiled(kind: str, q: np.ndarray, L: np.ndarray) -> float:
            return sum(float(self.seconds_array(kind, int(v), L[q == v])[0].sum()) for v in np.unique(q))

        def ratio(kind: str, q: np.ndarray, measured: np.ndarray, L: np.ndarray) -> float:
            base = profiled(kind, q, L)
            return float(measured.sum()) / base if len(q) and base > 0 else 1.0

        def parts(sel: np.ndarray) -> tuple[float, float, float, float]:
            """(profile draft, measured draft, profile verify, measured verify) over sel."""
            d = sel & (c["block_size"] > 1)
            return (profiled("draft", c["block_size"][d], c["context_len"][d]), float(c["draft_s"][d].sum()),
                    profiled("target", c["verify_tokens"][sel], c["context_len"][sel]),
                    float(c["target_s"][sel].sum()))

        drafted = fit & (c["block_size"] > 1)
        factors = {
            "draft": ratio("draft", c["block_size"][drafted], c["draft_s"][drafted], c["context_len"][drafted]),
            "target": ratio("target", c["verify_tokens"][fit], c["target_s"][fit], c["context_len"][fit]),
        }
        if split and check.any():
            pd, md, pv, mv = parts(check)
            over = sum(self.overhead("ar" if b <= 1 else "chain", int(v))
                       for b, v in zip(c["block_size"][check], c["verify_tokens"][check]))
            measured_cycle = md + mv + float(c["overhead_s"][check].sum())
            predicted_cycle = pd * factors["draft"] + pv * factors["target"] + over

            def err(p: float, m: float) -> float | None:
                return (p - m) / m if m > 0 else None

            self.calibration_check = {
                "fit_samples": int(fit_ids.size), "check_samples": int(samples.size - fit_ids.size),
                "check_cycles": int(check.sum()),
                "draft_error": err(pd * factors["draft"], md),
                "verify_error": err(pv * factors["target"], mv),
                "cycle_error": err(predicted_cycle, measured_cycle)}
            k = self.calibration_check

            def pct(v):
                return "n/a" if v is None else f"{100 * v:+.1f} %"

            self.notes.add(f"calibration check: fitted on {k['fit_samples']} samples, on the other "
                           f"{k['check_samples']} ({k['check_cycles']} plain cycles) draft "
                           f"{pct(k['draft_error'])}, verify {pct(k['verify_error'])}, cycle "
                           f"{pct(k['cycle_error'])}")
        else:
            self.calibration_check = None
            self.notes.add("calibration unchecked: fewer than two samples with plain cycles, "
                           "so no held-out half")
        self.scale = {"draft": factors["draft"], "target": factors["target"],
                      "tree_verify": factors["target"]}
        self._tables.clear()
        self._lists.clear()
        if self.kv_copy_per_token_row:
            self.fit_kv_copy(cycles)  # the copy is what the calibrated passes leave over
        self.label += (f", calibrated to {int(fit.sum())} plain live cycles of the trace "
                       f"(draft x{factors['draft']:.3f}, verify x{factors['target']:.3f})")
        return factors

    # -- queries
    def reserve(self, L_max: int) -> None:
        """Size every table to context lengths 0..L_max up front (a replay passes its
        trace's longest context), so that no query has to grow one."""
        self._L_max = max(self._L_max, int(L_max))

    def _table(self, kind: str, q: int, batch: int, L_need: int) -> tuple[np.ndarray, np.ndarray]:
        """Seconds and sources over every context length 0..L_max for one (kind, q, batch),
        computed once, so a replayed cycle's cost is one array read."""
        key = (kind, q, batch)
        hit = self._tables.get(key)
        if hit is not None and hit[0].shape[0] > L_need:
            return hit
        if L_need >= self._L_max:
            # grow geometrically: a replay whose contexts creep up one token a cycle
            # rebuilds each table O(log L) times, not once per new context length
            self._L_max = max(2 * self._L_max, L_need + 1, 4096)
        L = np.arange(self._L_max + 1, dtype=np.float64)
        if kind != "tree_verify" and self.surfaces[kind] is None:
            raise MissingCost(f"no {kind} timing to cost this policy: {self.label} has no "
                              f"'{kind}' rows; pass --profile with a profile that measured "
                              f"{kind} passes")
        q, L = self._padded(kind, q, batch, L)
        if kind == "tree_verify":
            val, src = self._tree(q, L, batch)
        else:
            val, src = self.surfaces[kind].predict(float(q), L, batch)
        out = (np.maximum(val, 0.0) * self.scale.get(kind, 1.0), src)
        self._tables[key] = out
        return out

    def _padded(self, kind: str, q: int, batch: int, L: np.ndarray) -> tuple[int, np.ndarray]:
        """The (q, L) a pass is costed at. With padded shapes (``shapes_of``) a pass costs
        what its padded shape costs, flat between steps: q becomes its bucket, and each
        context length becomes the measured context nearest to it that attends over the
        same cache span, so a query reads a measurement of its own shape instead of a
        line drawn across a step (a tree of 42 nodes costs the 64-row pass, not a blend
        of the 32- and 64-row ones). Context lengths whose span no profile point shares
        keep their value (interpolated, or the fitted model beyond the grid)."""
        if self.shapes is None:
            return q, L
        q = self.shapes.query(kind, q)
        surf = self.surfaces["target" if kind == "tree_verify" else kind]
        grid = surf.grids.get(batch) if surf is not None else None
        if grid is None or len(grid.L) == 0:
            return q, L
        # only contexts measured at this q (both neighbouring q rows, between two): a
        # point the profile skipped (past a position limit) is no measurement to snap to
        k = int(np.searchsorted(grid.q, q))
        if k < len(grid.q) and grid.q[k] == q:
            measured = np.isfinite(grid.t[k])
        elif 0 < k < len(grid.q):
            measured = np.isfinite(grid.t[k - 1]) & np.isfinite(grid.t[k])
        else:
            return q, L  # outside the measured q: the fitted model answers
        contexts = grid.L[measured]
        grid_span = self.shapes.span(kind, q, contexts)
        want = self.shapes.span(kind, q, L)
        out = L.copy()
        for span in np.unique(grid_span):
            members = contexts[grid_span == span]
            sel = want == span
            i = np.clip(np.searchsorted(members, L[sel]), 1, max(len(members) - 1, 1))
            lo, hi = members[i - 1], members[np.minimum(i, len(members) - 1)]
            out[sel] = np.where(np.abs(L[sel] - lo) <= np.abs(hi - L[sel]), lo, hi)
        return q, out

    def _tree(self, q: int, L: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
        chain, src = self.surfaces["target"].predict(float(q), L, batch)
        tree = self.surfaces["tree_verify"]
        if tree is None:  # costed as a chain and flagged: not a measurement of trees
            return chain, np.full(L.shape, FITTED, dtype=np.int64)
        return chain * self.tree_ratio(q), src

    def tree_ratio(self, q: int) -> float:
        """tree_verify / target at equal (q, L, batch), averaged per q, linear in q."""
        tree = self.surfaces["tree_verify"]
        r = self.rows
        ratios: dict[float, list[float]] = {}
        for i in tree.fit_rows:
            chain, _ = self.surfaces["target"].predict(r["q"][i], np.array([r["context_len"][i]]),
                                                       int(r["batch"][i]))
            ratios.setdefault(r["q"][i], []).append(r["median_s"][i] / max(chain[0], 1e-12))
        qs = sorted(ratios)
        return float(np.interp(q, qs, [float(np.mean(ratios[x])) for x in qs]))

    def seconds(self, kind: str, q: int, L: int, batch: int = 1) -> tuple[float, int]:
        """(seconds, source) of one pass; kind is target, tree_verify or draft."""
        key = (kind, q, batch)
        lists = self._lists.get(key)
        if lists is None or L >= len(lists[0]):
            vals, src = self._table(kind, int(q), int(batch), int(L))
            # Python lists: a scalar read from a list is several times cheaper than
            # from a numpy array, and the engine reads one per pass
            lists = self._lists[key] = (vals.tolist(), src.tolist())
        return lists[0][L], lists[1][L]

    def seconds_lists(self, kind: str, q: int, batch: int, L_max: int) -> tuple[list, list]:
        """``seconds`` of one (kind, q, batch) for every context length 0..L_max at
        least, as (seconds list, sources list): a replay loop reads item L of them."""
        self.seconds(kind, q, L_max, batch)  # builds or grows the lists
        return self._lists[(kind, q, batch)]

    def seconds_array(self, kind: str, q: int, L: np.ndarray, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised ``seconds`` for one (kind, q, batch) over many context lengths."""
        L = np.asarray(L, dtype=np.int64)
        vals, src = self._table(kind, int(q), int(batch), int(L.max()) if L.size else 0)
        return vals[L], src[L]

    # -- provenance
    def explain(self, source: int, kind: str = "target") -> str:
        """The profile rows behind a prediction source."""
        if source == FITTED:
            surf = self.surfaces.get(kind)
            rows = surf.fit_rows.tolist() if surf is not None else []
            return f"fitted {kind} model over profile rows {_ranges(rows)}"
        for k, batch, g in self.cells:
            if g.cell_base <= source < g.cell_base + g.t.size:
                i, j = divmod(source - g.cell_base, len(g.L))
                corners = {int(g.row[a, c]) for a in (i, min(i + 1, len(g.q) - 1))
                           for c in (j, min(j + 1, len(g.L) - 1)) if g.row[a, c] >= 0}
                return (f"{k} grid cell q {g.q[i]:g}..{g.q[min(i + 1, len(g.q) - 1)]:g}, "
                        f"L {g.L[j]:g}..{g.L[min(j + 1, len(g.L) - 1)]:g}, batch {batch}: "
                        f"profile rows {_ranges(sorted(corners))}")
        return f"unknown source {source}"


def _ranges(rows: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    if not rows:
        return "(none)"
    out, lo, prev = [], rows[0], rows[0]
    for r in rows[1:] + [None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        out.append(f"{lo}-{prev}" if prev > lo else f"{lo}")
        if r is not None:
            lo = prev = r
    return ", ".join(out)


def cycle_overheads(cycles: pa.Table) -> dict[str, float]:
    """Median live ``overhead_s`` per mode, from a trace's cycles table: "ar" for cycles
    of block size 1, "probed" for chains drafted from a probe input, else their verify
    mode (chain, tree, batch; a recorded cycle does not say whether a gate shortened its
    chain), and over all cycles ("all"); modes without cycles are absent."""
    over = np.asarray(cycles["overhead_s"].to_numpy(zero_copy_only=False), np.float64)
    mode = np.asarray(cycles["verify_mode"].to_pylist(), dtype=object)
    if "probe" in cycles.column_names:
        probe = np.asarray(cycles["probe"].to_pylist(), dtype=object)
        mode = np.where((mode == "chain") & (probe != "") & np.not_equal(probe, None), "probed", mode)
    if "block_size" in cycles.column_names:
        b = np.asarray(cycles["block_size"].to_numpy(zero_copy_only=False))
        mode = np.where(b <= 1, "ar", mode)
    ok = np.isfinite(over)
    out = {m: float(np.median(over[ok & (mode == m)])) for m in ("ar", *VERIFY_MODES, "probed")
           if (ok & (mode == m)).any()}
    if ok.any():
        out["all"] = float(np.median(over[ok]))
    return out


class RecordedTiming:
    """The live run's own seconds, for cycles a replay repeats exactly.

    A replayed cycle whose (sample, start, block size, verify mode, verify tokens,
    verified paths, probe) equals a recorded live cycle takes that cycle's recorded
    draft/target/overhead/cycle seconds; the others fall back to the cost model. Replaying
    the recorded policy this way reproduces the live run exactly, time-dependent
    schedulers included, since they observe the very seconds they observed live.
    """

    def __init__(self, cycles: pa.Table) -> None:
        cols = [cycles[c].to_pylist() for c in
                ("sample", "start", "block_size", "verify_mode", "verify_tokens", "n_paths",
                 "probe", "draft_s", "target_s", "overhead_s", "cycle_s")]
        self.by_key: dict[tuple, tuple[float, float, float, float]] = {}
        for s, p, b, mode, vt, npaths, probe, d, t, o, c in zip(*cols):
            self.by_key[(s, p, b, mode, vt, npaths, probe or "")] = (d, t, o, c)

    def get(self, sample: int, start: int, block_size: int, mode: str, verify_tokens: int,
            n_paths: int, probe: str) -> tuple[float, float, float, float] | None:
        return self.by_key.get((sample, start, block_size, mode, verify_tokens, n_paths, probe))

    def chain_arrays(self, base: np.ndarray, block_size: int) -> np.ndarray:
        """[4, n_positions] seconds (draft, target, overhead, cycle) of recorded plain
        full-chain cycles of one block size by global position; NaN where none."""
        out = np.full((4, int(base[-1])), np.nan)
        for (s, p, b, mode, vt, npaths, probe), secs in self.by_key.items():
            if b == block_size and mode == "chain" and vt == block_size and npaths == 1 \
                    and not probe:
                out[:, base[s] + p] = secs
        return out
