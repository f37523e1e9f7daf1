"""Acceptance by lookup in the oracle: what a cycle would accept, without a model.

The oracle holds, for every output position p of every sample and every recorded block
size b (and probe), the draft's top-k at offsets 1..b-1 and ``true_rank[i-1]``, the rank
of S[p+i] among them. This module turns it into arrays:

* an index (sample, start, block size, probe, previous offset) -> oracle row, kept as one
  ``row_of`` array over global positions per (block size, probe, previous offset) group;
* per group, the *chain accepted length* of every row (leading offsets of rank 0), the
  fixed-block fast path;
* greedy acceptance of any set of rank paths: the longest prefix of a path equal to
  true_rank, maximised over the paths (a chain, a batch of candidates and a tree are all
  sets of paths; a trie accepts exactly what its best root-to-node path accepts);
* the ``DraftView`` a policy sees, built from the row (float16-rounded log-probabilities as
  float32, ids), identical to what the live loop shows it;
* for sampled traces (temperature > 0), Monte Carlo acceptance along S: at offset i the
  draft's proposal x is drawn from its top-k q (a draw beyond the top-k is rejected) and
  accepted with probability min(1, p(x)/q(x)), p the target's top-k at that position
  from ``oracle_target``. Uniforms are keyed by output position (common random numbers),
  so policies are compared on the same draws; results are labelled approximate.

Data the trace lacks is never guessed: a missing probe, block size or row, or a rank
beyond the oracle's top-k, raises ``NotReplayable`` with the sentence to show the user.
"""
from __future__ import annotations

from array import array

import numpy as np
import pyarrow as pa

from specreplay.policies.base import DraftView, VerifyPlan
from specreplay.sim.tracedata import TraceData
from specreplay.traces.io import TraceError
from specreplay.traces.reader import ORACLE_KEYS
from specreplay.traces.schema import RANK_BEYOND_END

NOT_REPLAYABLE = "not replayable from this trace: "


_CHAINS = [(0,) * n for n in range(256)]  # the rank path of a chain of n drafted offsets


class NotReplayable(Exception):
    """The trace lacks what a policy needs; ``str(e)`` is the full user-facing reason."""

    def __init__(self, what: str) -> None:
        # SimPy re-raises a process's exception as type(e)(*e.args): keep that idempotent
        super().__init__(what if what.startswith(NOT_REPLAYABLE) else NOT_REPLAYABLE + what)


class ReplayView(DraftView):
    """A DraftView built lazily from its oracle row: ``ids`` and ``logprobs`` (stored
    float16, shown float32 as the live loop shows them) are read from the row on first
    use, and ``rng`` is created on first use: most policies read neither, and each
    would cost more than the rest of the cycle. The stream is the one the live loop
    uses: ``np.random.default_rng((seed, sample, start))`` with the trace's sampling
    seed."""

    @property
    def ids(self) -> np.ndarray:  # type: ignore[override]
        d = self.__dict__
        ids = d.get("_ids")
        if ids is None:
            ids = d["_ids"] = d["_g"].ids[d["_r"]]
        return ids

    @property
    def logprobs(self) -> np.ndarray:  # type: ignore[override]
        d = self.__dict__
        lps = d.get("_lps")
        if lps is None:
            lps = d["_lps"] = d["_g"].logprobs[d["_r"]].astype(np.float32)
        return lps

    @property
    def k(self) -> int:  # type: ignore[override]
        g = self.__dict__.get("_g")
        return g.k if g is not None else int(self.ids.shape[1])

    @property
    def rng(self) -> np.random.Generator:  # type: ignore[override]
        gen = self.__dict__.get("_rng")
        if gen is None:
            gen = np.random.default_rng((self.__dict__["_seed"], self.sample, self.start))
            self.__dict__["_rng"] = gen
        return gen


def make_view(sample: int, start: int, block_size: int, group: "OracleGroup", row: int,
              seed: int) -> ReplayView:
    """Build a view of an oracle row without the frozen-dataclass __init__ (it sets
    each field through object.__setattr__, a measurable share of a replayed cycle)."""
    v = object.__new__(ReplayView)
    v.__dict__.update(sample=sample, start=start, block_size=block_size, _g=group, _r=row,
                      _seed=seed)
    return v


def empty_view(sample: int, start: int, ids: np.ndarray, logprobs: np.ndarray,
               seed: int) -> ReplayView:
    """The view of a cycle that drafts nothing (b = 1)."""
    v = object.__new__(ReplayView)
    v.__dict__.update(sample=sample, start=start, block_size=1, _ids=ids, _lps=logprobs,
                      _seed=seed)
    return v


class OracleGroup:
    """All oracle rows of one (block size, probe, previous offset).

    ``ids`` and ``logprobs`` (nine tenths of the oracle's memory) are needed only by
    policies that read the draft's proposal (gating, candidates, recycling, refinement,
    ADL's stop tokens) and, for the ids, by the oracle agreement at load: a replay
    drops them after that (``Acceptance.release``) and reads them from the trace again
    on first use (for every group at once, ``Acceptance.load``). Chains, block-size
    schedulers and trees read only the ranks."""
    __slots__ = ("block_size", "probe", "prev_offset", "row_of", "position", "ranks",
                 "chain_acc", "k", "l_gen", "_ids", "_logprobs", "_acc", "__dict__")

    def __init__(self, block_size: int, probe: str, prev_offset: int, row_of: np.ndarray,
                 position: np.ndarray, ranks: np.ndarray, chain_acc: np.ndarray, k: int,
                 acc: "Acceptance | None" = None, ids: np.ndarray | None = None,
                 logprobs: np.ndarray | None = None) -> None:
        self.block_size, self.probe, self.prev_offset = block_size, probe, prev_offset
        self.row_of = row_of        # int32 [n_positions]: global position -> row, -1 when absent
        self.position = position    # int32 [rows]: global position of each row
        self.ranks = ranks          # int8  [rows, b-1]
        self.chain_acc = chain_acc  # int16 [rows]: accepted length of the full chain (greedy or MC)
        self.k = k
        self.l_gen: list[int] | None = None  # [rows]: drafted length up to a stop token (ADL)
        self._ids, self._logprobs, self._acc = ids, logprobs, acc

    @property
    def ids(self) -> np.ndarray:
        """int32 [rows, b-1, k]: the draft's top-k token ids."""
        if self._ids is None:
            self._acc.load("draft_ids")
        return self._ids

    @ids.setter
    def ids(self, value: np.ndarray) -> None:
        self._ids = value

    @property
    def logprobs(self) -> np.ndarray:
        """float16 [rows, b-1, k], as the trace stores them."""
        if self._logprobs is None:
            self._acc.load("draft_logprobs")
        return self._logprobs

    @logprobs.setter
    def logprobs(self, value: np.ndarray) -> None:
        self._logprobs = value

    def nbytes(self) -> int:
        """Bytes of the arrays this group holds now (lazy columns not yet read count 0)."""
        arrays = (self.row_of, self.position, self.ranks, self.chain_acc, self._ids,
                  self._logprobs)
        return sum(a.nbytes for a in arrays if a is not None) + sum(
            len(a) * a.itemsize for a in (self.__dict__.get("_row_list"),
                                          self.__dict__.get("_chain_list")) if a is not None)

    @property
    def row_list(self) -> array:
        """row_of for scalar reads (one per replayed cycle): reading an array.array
        costs about what a list read costs and far less than a numpy scalar read, and
        it holds 4 bytes per position where a list of ints holds about 36."""
        out = self.__dict__.get("_row_list")
        if out is None:
            out = self.__dict__["_row_list"] = _scalar_array("i", self.row_of)
        return out

    @property
    def chain_list(self) -> array:
        """chain_acc for scalar reads, like ``row_list``."""
        out = self.__dict__.get("_chain_list")
        if out is None:
            out = self.__dict__["_chain_list"] = _scalar_array("i", self.chain_acc)
        return out


def _scalar_array(code: str, values: np.ndarray) -> array:
    out = array(code)
    out.frombytes(np.ascontiguousarray(values, dtype=np.dtype(code)).tobytes())
    return out


class PathTrie:
    """A set of rank paths as a trie, answering ``Acceptance.accepted`` for it: the
    deepest node on the true-rank path is the longest accepted prefix, and the first
    path through that node (lowest index) is the chosen one, as the path-by-path loop
    picks it (ties: the first path with the longest match)."""
    __slots__ = ("children", "first", "max_child", "max_len")

    def __init__(self, paths: tuple) -> None:
        children: list[dict[int, int]] = [{}]
        first, max_child = [0], [-1]
        for i, path in enumerate(paths):
            node = 0
            for rank in path:
                nxt = children[node].get(rank)
                if nxt is None:
                    nxt = len(children)
                    children[node][rank] = nxt
                    children.append({})
                    first.append(i)
                    max_child.append(-1)
                    max_child[node] = max(max_child[node], rank)
                node = nxt
        self.children, self.first, self.max_child = children, first, max_child
        self.max_len = max(len(p) for p in paths)

    def accepted(self, truth: list[int], k: int, block_size: int) -> tuple[int, int]:
        if self.max_len > len(truth):
            raise ValueError(f"verify path of length {self.max_len} exceeds the "
                             f"{len(truth)} drafted offsets of block size {block_size}")
        children, max_child = self.children, self.max_child
        node = depth = 0
        for got in truth:
            if max_child[node] >= k:  # a rank compared here that the oracle did not keep
                raise NotReplayable(f"oracle top-k >= {max_child[node] + 1} (this trace "
                                    f"kept top-{k})")
            nxt = children[node].get(got)
            if nxt is None:
                break
            node = nxt
            depth += 1
        return depth, self.first[node]


def leading_true(mask: np.ndarray) -> np.ndarray:
    """Per row, how many leading entries of a boolean [rows, m] array are True."""
    if mask.shape[1] == 0:
        return np.zeros(mask.shape[0], dtype=np.int64)
    first_false = np.argmin(mask, axis=1)
    return np.where(mask.all(axis=1), mask.shape[1], first_false).astype(np.int64)


def tempered_probs(logprobs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities of the kept top-k at a temperature. At T = 1 they are the stored
    values exactly; otherwise the top-k is renormalised at that temperature (the mass
    outside the top-k is unknown): an approximation, as the fidelity label says."""
    lp = logprobs.astype(np.float64)
    if temperature == 1.0:
        return np.exp(lp)
    z = lp / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Acceptance:
    """The oracle of one trace as lookup arrays. Acceptance is Monte Carlo when the
    trace was sampled (run.json sampling.temperature > 0); ``seed`` drives those draws."""

    def __init__(self, data: TraceData, seed: int = 0, ids: bool = True) -> None:
        self.data = data
        self.seed = int(seed)
        self._read_ids = ids  # read the draft's token ids at load (else on first use)
        # the views' rng stream is the live loop's: seeded by the trace's sampling seed
        self.view_seed = data.sampling_seed
        self._base = data.base.tolist()
        self.temperature = data.temperature
        self.sampling = self.temperature > 0
        self.groups: dict[tuple[int, str, int], OracleGroup] = {}
        self._target = None
        self._uniforms = None
        self._tries: dict[int, tuple[tuple, PathTrie]] = {}
        self._build_groups()
        meta = data.oracle_meta
        self.k = int(meta.get("top_k") or max((g.k for g in self.groups.values()), default=0))
        k = max(self.k, 1)
        self._empty = np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
        self.block_sizes = sorted({b for b, _, _ in self.groups})
        self.probes = sorted({p for _, p, _ in self.groups if p} | set(meta.get("probes") or []))

    # -- building
    def _build_groups(self) -> None:
        data = self.data
        # the ranks and ids (the oracle agreement reads the ids, unless ``ids`` is
        # False; ``release`` drops them), and the decoded Arrow table not kept: the arrays are the oracle's only
        # copy in memory
        lists = ("true_rank", "draft_ids") if self._read_ids else ("true_rank",)
        for (b, probe), arr in data.trace.oracle_arrays(np.float16, keep_table=False,
                                                        columns=lists).items():
            if len(arr) == 0:
                continue
            if (arr.sample >= data.n_samples).any() or \
                    (arr.start >= data.out_len[arr.sample]).any():
                raise TraceError(f"{data.path} (table oracle): rows of block size {b} name "
                                 "positions past the end of their sample's output")
            gpos = data.base[arr.sample] + arr.start.astype(np.int64)
            for d, sel in self._split(arr):
                g = self.groups[(b, probe, d)] = self._group(arr, b, probe, d, gpos[sel], sel)
                if arr.draft_ids is not None:
                    g.ids = arr.draft_ids[sel]
        # the log-probabilities are read now only for the reader's value checks (a
        # trace with a bad value is refused whatever the policy), and dropped: the
        # policies that read them load them on first use. Files checked before and
        # unchanged since (``Trace.values_checked``) need no second check.
        if not data.trace.values_checked("oracle"):
            data.trace.table("oracle", cache=False, columns=ORACLE_KEYS + ("draft_logprobs",))
        # decoding the Parquet file and splitting it by group took several times the
        # arrays' size in Arrow buffers that are free now: hand them back to the OS
        pa.default_memory_pool().release_unused()
        if self.sampling:
            for g in self.groups.values():
                g.chain_acc = self._monte_carlo_chain(g)

    @staticmethod
    def _split(arr) -> list[tuple[int, "slice | np.ndarray"]]:
        """The rows of one (block size, probe) group per previous offset."""
        offsets = np.unique(arr.prev_offset).tolist()
        if len(offsets) == 1:
            return [(int(offsets[0]), slice(None))]
        return [(int(d), np.flatnonzero(arr.prev_offset == d)) for d in offsets]

    def _group(self, arr, b: int, probe: str, d: int, gpos: np.ndarray, sel) -> OracleGroup:
        ranks = arr.true_rank[sel]
        row_of = np.full(self.data.n_positions, -1, dtype=np.int32)
        row_of[gpos] = np.arange(len(gpos), dtype=np.int32)
        return OracleGroup(b, probe, d, row_of, gpos.astype(np.int32), ranks,
                           leading_true(ranks == 0).astype(np.int16), arr.k, acc=self)

    def load(self, column: str) -> None:
        """Read one of the oracle's lazy columns (draft_ids, draft_logprobs) for every
        group, checked like every column the reader reads."""
        attr = {"draft_ids": "_ids", "draft_logprobs": "_logprobs"}[column]
        data = self.data
        for (b, probe), arr in data.trace.oracle_arrays(np.float16, keep_table=False,
                                                        columns=(column,)).items():
            values = getattr(arr, column)
            gpos = data.base[arr.sample] + arr.start.astype(np.int64)
            for d, sel in self._split(arr):
                g = self.groups.get((b, probe, d))
                if g is None:
                    continue
                if not np.array_equal(g.position, gpos[sel]):
                    raise TraceError(f"{data.path} (table oracle) changed while it was open: "
                                     "open the trace again")
                setattr(g, attr, values[sel])
        pa.default_memory_pool().release_unused()

    def release(self, column: str) -> None:
        """Drop a lazy column from memory (read again when next used)."""
        attr = {"draft_ids": "_ids", "draft_logprobs": "_logprobs"}[column]
        for g in self.groups.values():
            setattr(g, attr, None)
        pa.default_memory_pool().release_unused()  # the arrays were Arrow's buffers

    def loaded(self, column: str) -> bool:
        attr = {"draft_ids": "_ids", "draft_logprobs": "_logprobs"}[column]
        return all(getattr(g, attr) is not None for g in self.groups.values())

    # -- sampling
    def _target_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The target's top-k along S as [n_positions, kt] arrays (ids, probs, present)."""
        if self._target is None:
            data = self.data
            if not data.trace.has_table("oracle_target"):
                raise NotReplayable("record the oracle_target table (the target's top-k "
                                    "along S) to replay a sampled trace")
            t = data.trace.target_arrays()
            gpos = data.base[t.sample] + t.position.astype(np.int64)
            tid = np.full((data.n_positions, t.k), -1, dtype=np.int32)
            tp = np.zeros((data.n_positions, t.k), dtype=np.float64)
            present = np.zeros(data.n_positions, dtype=bool)
            tid[gpos] = t.target_ids
            tp[gpos] = tempered_probs(t.target_logprobs, self.temperature)
            present[gpos] = True
            self._target = (tid, tp, present)
        return self._target

    def _monte_carlo_chain(self, g: OracleGroup) -> np.ndarray:
        """Accepted length of the full chain of each row under speculative sampling."""
        tid, tp, present = self._target_arrays()
        if self._uniforms is None:
            rng = np.random.default_rng((self.seed, 0x5EED))
            self._uniforms = rng.random((2, self.data.n_positions))
        n, m, k = g.ids.shape
        if n == 0 or m == 0:
            return np.zeros(n, dtype=np.int64)
        j = g.position[:, None] + np.arange(1, m + 1)[None, :]
        inside = g.ranks != RANK_BEYOND_END
        j = np.where(inside, j, 0)
        q = tempered_probs(g.logprobs, self.temperature)
        u1, u2 = self._uniforms[0][j], self._uniforms[1][j]
        pick = (np.cumsum(q, axis=-1) <= u1[..., None]).sum(axis=-1)
        in_topk = pick < k
        pick = np.minimum(pick, k - 1)
        tok = np.take_along_axis(g.ids, pick[..., None], axis=-1)[..., 0]
        qx = np.take_along_axis(q, pick[..., None], axis=-1)[..., 0]
        hit = tid[j] == tok[..., None]
        px = np.where(hit, tp[j], 0.0).sum(axis=-1)
        ratio = np.minimum(1.0, px / np.maximum(qx, 1e-300))
        accept = inside & present[j] & in_topk & (u2 < ratio)
        return leading_true(accept)

    # -- lookup
    def group(self, block_size: int, probe: str = "", prev_offset: int = 0) -> OracleGroup:
        """The rows of one block size / probe, or NotReplayable naming what to record."""
        g = self.groups.get((block_size, probe, prev_offset))
        if g is not None:
            return g
        if probe and not any(p == probe for _, p, _ in self.groups):
            raise NotReplayable(f"record probe {probe}{self._other_settings(probe)}{self._dropped('probes', probe)}")
        if not any(b == block_size for b, _, _ in self.groups):
            raise NotReplayable(f"record block size {block_size} (the oracle holds "
                                f"{', '.join(map(str, self.block_sizes))})"
                                + self._dropped("block_sizes", block_size))
        where = f" with prev_offset {prev_offset}" if probe else ""
        raise NotReplayable(f"record probe {probe or '(plain draft)'} at block size "
                            f"{block_size}{where}"
                            + (self._dropped("probe_block_sizes", block_size) if probe else ""))

    def _dropped(self, kind: str, value) -> str:
        """', dropped by `specreplay oracle --replace` at <when>' when run.json's
        ``oracle.dropped`` (written by that command) says the trace once held it."""
        for drop in reversed(self.data.oracle_meta.get("dropped") or []):
            if value in (drop.get(kind) or ()):
                return f"; {drop.get('by', 'an oracle pass')} dropped it at {drop.get('when', '?')}"
        return ""

    def _other_settings(self, probe: str) -> str:
        """A missing probe's hint: the probes of the same component the trace does hold
        (a probe is recorded for one setting of its knobs; a changed default, such as
        refine's only_below, needs a new recording)."""
        name = probe.split("(", 1)[0]
        held = [p for p in self.probes if p.split("(", 1)[0] == name]
        if not held:
            return ""
        return (f" (this trace holds {', '.join(held)}, recorded for other settings; "
                f"`specreplay oracle TRACE --probes '{probe}'` records it)")

    def l_gen(self, g: OracleGroup, stop_ids: tuple[int, ...]) -> list[int]:
        """Per row, the drafted length up to the first stop token among the top-1
        proposals (offset of that token + 1), else the block size: the seed scripts'
        l_gen for adaptive draft length."""
        if g.l_gen is None:
            top1 = g.ids[:, :, 0]
            hit = np.isin(top1, np.asarray(stop_ids, dtype=np.int32))
            first = np.argmax(hit, axis=1) + 2 if top1.shape[1] else np.zeros(len(top1), np.int64)
            g.l_gen = np.where(hit.any(axis=1), first, g.block_size).tolist() \
                if top1.shape[1] else [g.block_size] * len(top1)
        return g.l_gen

    def row(self, g: OracleGroup, sample: int, start: int) -> int:
        """The oracle row of (sample, start) in a group, or NotReplayable."""
        r = g.row_list[self._base[sample] + start]
        if r < 0:
            what = f"probe {g.probe}" if g.probe else "the oracle"
            raise NotReplayable(f"record {what} at block size {g.block_size} for sample "
                                f"{sample}, start {start} (row missing)")
        return r

    def view(self, g: OracleGroup | None, r: int, sample: int, start: int) -> ReplayView:
        """What the policy sees after drafting (b = 1: an empty view)."""
        if g is None:
            ids, lps = self._empty
            return empty_view(sample, start, ids, lps, self.view_seed)
        return make_view(sample, start, g.block_size, g, r, self.view_seed)

    def _trie(self, paths: tuple) -> "PathTrie":
        """The trie of a path set, built once per set object: a tree policy verifies the
        same set every cycle, and walking its trie along the true ranks costs the depth
        of the walk instead of a comparison per path."""
        hit = self._tries.get(id(paths))
        if hit is not None and hit[0] is paths:
            return hit[1]
        if len(self._tries) > 4096:  # sets built per cycle (candidates): keep it small
            self._tries.clear()
        trie = PathTrie(paths)
        self._tries[id(paths)] = (paths, trie)  # the set kept alive: its id stays its own
        return trie

    def check_policy(self, max_rank: int, probes: tuple[str, ...]) -> None:
        """Refuse up front what a policy will certainly need and the trace lacks."""
        for p in probes:
            if p not in self.probes:
                raise NotReplayable(f"record probe {p}{self._other_settings(p)}{self._dropped('probes', p)}")
        if max_rank >= self.k:
            cut = [d for d in self.data.oracle_meta.get("dropped") or [] if d.get("top_k_before")]
            why = (f"; {cut[-1].get('by')} cut it from top-{cut[-1]['top_k_before']} at "
                   f"{cut[-1].get('when', '?')}") if cut and cut[-1]["top_k_before"] > max_rank else ""
            raise NotReplayable(f"oracle top-k >= {max_rank + 1} (this trace kept "
                                f"top-{self.k}){why}")

    def accepted(self, g: OracleGroup, r: int, plan: VerifyPlan) -> tuple[int, int]:
        """(accepted drafted tokens, chosen path index) of a verify plan at row r,
        before the cap at the end of S. Ties: the first path with the longest match."""
        paths = plan.paths
        if len(paths) == 1:
            path = paths[0]
            if len(path) < len(_CHAINS) and path == _CHAINS[len(path)]:  # the top-1 chain
                return min(g.chain_list[r], len(path)), 0
        if self.sampling:
            raise NotReplayable(f"verify mode {plan.mode!r} over draft ranks under sampling "
                                "(only chains are replayed by Monte Carlo)")
        truth = g.ranks[r].tolist()
        if len(paths) > 4:
            return self._trie(paths).accepted(truth, self.k, g.block_size)
        best, chosen = -1, 0
        for i, path in enumerate(paths):
            if len(path) > len(truth):
                raise ValueError(f"verify path of length {len(path)} exceeds the "
                                 f"{len(truth)} drafted offsets of block size {g.block_size}")
            n = 0
            for want, got in zip(path, truth):
                if want >= self.k:
                    raise NotReplayable(f"oracle top-k >= {want + 1} (this trace kept "
                                        f"top-{self.k})")
                if want != got:
                    break
                n += 1
            if n > best:
                best, chosen = n, i
        return max(best, 0), chosen
