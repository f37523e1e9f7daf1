"""SYNTHETIC TRACES, FOR TESTS ONLY. Nothing here comes from a model or a GPU.

``make_trace`` builds a schema-valid trace directory from a compact description, with
answers known in advance, so tests can assert exact numbers before (and besides) real
recordings:

- output lengths per sample (random token ids; a sample shorter than the longest ends
  with the end-of-text token, stop reason "eos");
- the oracle for the given block sizes and top-k, whose true-token ranks come from a
  function or array you give (e.g. ``leading_zeros(5)``: rank 0 at offsets 1..5, then
  not in the top-k), with draft ids consistent with those ranks and draft log-probs
  descending with a controllable top-1 probability (for gating tests);
- optional probes (recycling, refinement) with their own ranks;
- a latency profile from ``SyntheticCost`` (a documented multilinear formula);
- live ``cycles`` produced by actually running a policy spec on that oracle with the
  greedy acceptance rule below and the times of the same formula. Replaying the live
  policy from the oracle and the profile must therefore reproduce the cycles exactly.

Acceptance rule (the one every part of specreplay uses). A cycle starts at output
position p (anchor S[p]); a verified rank path accepts its longest prefix equal to the
oracle's true ranks at offsets 1, 2, ...; accepted is the maximum over the verified
paths (ties: the first such path is chosen), then capped at ``len(S) - 1 - p - 1`` so
the bonus token still lies inside S (max_new_tokens, stop token). tau = committed =
accepted + 1; the next cycle starts at p + tau; the sample ends when p = len(S) - 1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from specreplay.policies import CycleContext, CycleOutcome, DraftView, parse_policy
from specreplay.traces.schema import RANK_BEYOND_END, RANK_NOT_IN_TOPK, SCHEMAS
from specreplay.traces.writer import TraceWriter, write_profile

RankFn = Callable[..., Any]


# -- rank descriptions -------------------------------------------------------------

def leading_zeros(n: int, then: int = RANK_NOT_IN_TOPK) -> RankFn:
    """True rank 0 (the draft's top-1 is right) at offsets 1..n, ``then`` after: with
    n = 5 every full-chain cycle at block size >= 7 has tau 6."""
    def rank(sample, start, offset):
        return np.where(np.asarray(offset) <= n, 0, then)
    return rank


def _unit_hash(*parts: Any) -> np.ndarray:
    """Deterministic uniform [0, 1) numbers from integer arrays (splitmix64 mixing)."""
    x = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for part in parts:
            x = (x ^ np.asarray(part, dtype=np.int64).astype(np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
            x = x ^ (x >> np.uint64(29))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def random_ranks(p_top1: float = 0.8, p_top2: float = 0.1, seed: int = 0) -> RankFn:
    """Independent ranks per (sample, start, offset): 0 with probability ``p_top1``, 1
    with ``p_top2``, else not in the top-k. Deterministic in ``seed``."""
    def rank(sample, start, offset):
        u = _unit_hash(seed, sample, start, offset)
        return np.where(u < p_top1, 0, np.where(u < p_top1 + p_top2, 1, RANK_NOT_IN_TOPK))
    return rank


# -- the cost formula --------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticCost:
    """Seconds per forward pass, multilinear in query tokens q, context length L and
    batch B, so that any interpolation that is linear per axis reproduces it exactly
    inside the profile grid:

        target(q, L, B)      = target_fixed + B*q*(target_per_token + target_per_token_ctx*L)
        tree_verify(q, L, B) = tree_factor * target(q, L, B)
        draft(b, L, B)       = draft_fixed + B*(draft_per_token*b + draft_per_ctx*L)
        overhead             = overhead_s   (per cycle; profile row q=0, L=0, B=1)
    """
    target_fixed: float = 2e-3
    target_per_token: float = 2e-5
    target_per_token_ctx: float = 2e-9
    tree_factor: float = 1.1
    draft_fixed: float = 1e-3
    draft_per_token: float = 1e-5
    draft_per_ctx: float = 1e-8
    overhead_s: float = 3e-4

    def target(self, q: int, context_len: int, batch: int = 1) -> float:
        return self.target_fixed + batch * q * (self.target_per_token
                                                + self.target_per_token_ctx * context_len)

    def tree_verify(self, q: int, context_len: int, batch: int = 1) -> float:
        return self.tree_factor * self.target(q, context_len, batch)

    def draft(self, block_size: int, context_len: int, batch: int = 1) -> float:
        return self.draft_fixed + batch * (self.draft_per_token * block_size
                                           + self.draft_per_ctx * context_len)

    def profile_rows(self, max_context: int, block_sizes: tuple[int, ...]) -> list[dict[str, Any]]:
        """The profile table: the formula on a grid of q (1..256, powers of two), L (0 and
        powers of two from 512 up to ``max_context``) and batch (1..32)."""
        qs = [1 << i for i in range(9)]
        ls = [0] + [512 << i for i in range(12) if (512 << i) < 2 * max(max_context, 512)]
        bs = [1, 2, 4, 8, 16, 32]
        dq = sorted({2, 4, 8, 16, 32, *block_sizes})
        rows = []
        for L in ls:
            for B in bs:
                rows += [_prow("target", q, L, B, self.target(q, L, B)) for q in qs]
                rows += [_prow("tree_verify", q, L, B, self.tree_verify(q, L, B)) for q in qs]
                rows += [_prow("draft", b, L, B, self.draft(b, L, B)) for b in dq]
        rows.append(_prow("overhead", 0, 0, 1, self.overhead_s))
        return rows


def _prow(kind: str, q: int, L: int, B: int, t: float) -> dict[str, Any]:
    return {"kind": kind, "q": q, "context_len": L, "batch": B, "median_s": t,
            "p10_s": t, "p90_s": t, "n": 10}


# -- building blocks ---------------------------------------------------------------

def _evaluate(fn: RankFn | np.ndarray, sample: int, n_pos: int, n_off: int,
              extra: tuple = ()) -> np.ndarray:
    """Evaluate a per-(sample, start, offset) description into an [n_pos, n_off] array.
    Functions are called once with broadcast numpy arrays; one that only takes scalars
    is then called per element. Arrays are indexed [sample, start, offset-1]."""
    if not callable(fn):
        arr = np.asarray(fn)
        return np.broadcast_to(arr[sample, :n_pos, :n_off] if arr.ndim == 3 else arr,
                               (n_pos, n_off)).copy()
    start = np.arange(n_pos)[:, None]
    offset = np.arange(1, n_off + 1)[None, :]
    try:
        return np.broadcast_to(np.asarray(fn(sample, start, offset, *extra)), (n_pos, n_off)).copy()
    except (ValueError, TypeError):
        return np.array([[fn(sample, p, i, *extra) for i in range(1, n_off + 1)]
                         for p in range(n_pos)])


def _list_array(values: np.ndarray, width: int, typ: pa.DataType) -> pa.Array:
    """A list column whose rows all hold ``width`` values, from a [n, width] array."""
    n = values.shape[0]
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width, pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), typ))


@dataclass
class _Block:
    """The oracle of one (sample, block size, probe, prev_offset) group, dense."""
    start: np.ndarray     # [n]
    rank: np.ndarray      # int8 [n, b-1]
    ids: np.ndarray       # int32 [n, b-1, k]
    logprobs: np.ndarray  # float16 [n, b-1, k]


def _draft_block(out: np.ndarray, starts: np.ndarray, rank: np.ndarray, top1: np.ndarray,
                 k: int, vocab: int, filler: np.ndarray) -> _Block:
    """Draft top-k ids consistent with the ranks: the true token S[p+i] sits at its rank,
    the other slots hold tokens different from it. Probabilities p_j = p1 * (1-p1)^j are
    descending and sum below 1 (top1-top2 margin = p1^2)."""
    n, w = rank.shape
    pos = starts[:, None] + np.arange(1, w + 1)[None, :]
    inside = pos < len(out)
    rank = np.where(inside, rank, RANK_BEYOND_END).astype(np.int8)
    true = np.where(inside, out[np.minimum(pos, len(out) - 1)], filler[:n, :w])
    j = np.arange(k)[None, None, :]
    r = rank[:, :, None]
    ids = true[:, :, None] + 1 + j - ((r >= 0) & (j > r))
    ids = np.where(j == r, true[:, :, None], ids) % vocab
    p1 = np.clip(top1, 1e-3, 0.999)[:, :, None]
    logprobs = (np.log(p1) + j * np.log1p(-p1)).astype(np.float16)
    return _Block(starts, rank, ids.astype(np.int32), logprobs)


def _oracle_table(sample: int, b: int, probe: str, prev: int, blk: _Block) -> pa.Table:
    n, w = blk.rank.shape
    k = blk.ids.shape[2]
    schema = SCHEMAS["oracle"]
    return pa.Table.from_arrays([
        pa.array(np.full(n, sample, np.int32)), pa.array(blk.start.astype(np.int32)),
        pa.array(np.full(n, b, np.int16)), pa.array([probe] * n, pa.string()),
        pa.array(np.full(n, prev, np.int16)),
        _list_array(blk.rank, w, pa.int8()),
        _list_array(blk.ids.reshape(n, w * k), w * k, pa.int32()),
        _list_array(blk.logprobs.reshape(n, w * k), w * k, pa.float16()),
    ], schema=schema)


def _target_table(sample: int, out: np.ndarray, k: int, vocab: int) -> pa.Table:
    """The target's top-k along S: S[i] first with probability 0.9, then neighbours."""
    n = len(out)
    ids = (out[:, None] + np.arange(k)[None, :]) % vocab
    lps = (np.log(0.9) + np.arange(k) * np.log(0.1)).astype(np.float16)
    return pa.Table.from_arrays([
        pa.array(np.full(n, sample, np.int32)), pa.array(np.arange(n, dtype=np.int32)),
        _list_array(ids.astype(np.int32), k, pa.int32()),
        _list_array(np.broadcast_to(lps, (n, k)), k, pa.float16()),
    ], schema=SCHEMAS["oracle_target"])


def _accept(paths: tuple[tuple[int, ...], ...], rank: np.ndarray) -> tuple[int, int]:
    """Greedy acceptance over rank paths: (accepted, chosen path). A path accepts its
    longest prefix equal to the true ranks; the first path with the longest wins."""
    best, chosen = 0, 0
    for i, path in enumerate(paths):
        n = 0
        while n < len(path) and path[n] == rank[n]:
            n += 1
        if n > best:
            best, chosen = n, i
    return best, chosen


# -- the generator -----------------------------------------------------------------

def make_trace(out_dir: str | Path, *,
               output_lengths: tuple[int, ...] | list[int] = (40, 40, 40),
               block_sizes: tuple[int, ...] = (4, 8, 16),
               top_k: int = 4,
               ranks: RankFn | np.ndarray | None = None,
               block_ranks: dict[int, RankFn | np.ndarray] | None = None,
               top1_prob: float | RankFn | np.ndarray = 0.8,
               probes: dict[str, RankFn | None] | None = None,
               live_policy: str = "fixed(b=8)",
               draft_block_size: int = 16,
               prompt_len: int = 16,
               vocab_size: int = 1000,
               eos_id: int = 1,
               top_k_logits: int | None = None,
               ar_divergence: dict[int, int] | None = None,
               dataset_indices: list[int] | None = None,
               cost: SyntheticCost = SyntheticCost(),
               profile: bool = True,
               seed: int = 0) -> Path:
    """Write a SYNTHETIC trace to ``out_dir`` (which must be empty or absent) and return
    its path.

    output_lengths: len(S) per sample (>= 2). Samples shorter than the longest end with
        ``eos_id`` (stop reason "eos"); max_new_tokens is the longest length.
    block_sizes: the oracle block sizes (each >= 2); the live policy may only choose
        these (or 1, plain decoding).
    top_k: oracle top-k. Ranks must lie in -1..top_k-1.
    ranks: true rank per (sample, start, offset): a function f(sample, start, offset)
        (called once with numpy arrays broadcast over start [n,1] and offset [1,w],
        else per element) or an array [sample, start, offset-1]. Default
        ``random_ranks(seed=seed)``. Offsets past the end of S become RANK_BEYOND_END.
    block_ranks: per block size, a rank description replacing ``ranks`` (the real
        oracle differs by block size: the draft sees how many masks follow).
    top1_prob: the draft's top-1 probability per (sample, start, offset), as a number,
        function or array like ``ranks``; rank j gets p1 * (1-p1)^j.
    probes: probe key -> rank description f(sample, start, offset, prev_offset), or
        None for the plain ranks. Keys starting with "recycle" get rows for every
        prev_offset d in 1..b-1 with d <= start; other probes get prev_offset 0.
    live_policy: the spec run live to produce the cycles table.
    draft_block_size: the draft's trained block size (CycleContext.default_block_size).
    prompt_len: prompt tokens per sample (context_len = prompt_len + start).
    top_k_logits: k kept in cycle_logits (default top_k).
    ar_divergence: sample -> first index where S differed from plain AR (default: none,
        checked, i.e. -1 for every sample).
    dataset_indices: the dataset row of each sample (default 0, 1, ...); give disjoint
        ones to build the "ranks" of one sharded recording.
    cost: the time formula for the profile and the live cycle times.
    profile: write profile.parquet/profile.json into the trace.
    seed: token ids and DraftView rngs (seeded with [seed, sample, start]).
    """
    out_dir = Path(out_dir)
    lengths = [int(n) for n in output_lengths]
    if not lengths or min(lengths) < 2:
        raise ValueError("output_lengths needs at least one sample, each of length >= 2")
    if any(b < 2 for b in block_sizes):
        raise ValueError(f"oracle block sizes must be >= 2, got {block_sizes}")
    block_sizes = tuple(sorted(set(int(b) for b in block_sizes)))
    ranks = ranks if ranks is not None else random_ranks(seed=seed)
    probes = dict(probes or {})
    top_k_logits = top_k if top_k_logits is None else top_k_logits
    policy = parse_policy(live_policy)
    max_len = max(lengths)
    indices = list(range(len(lengths))) if dataset_indices is None else [int(i) for i in dataset_indices]
    if len(indices) != len(lengths):
        raise ValueError("dataset_indices needs one entry per sample")
    rng = np.random.default_rng(seed)
    writer = TraceWriter(out_dir, {
        "synthetic": True,
        "setup": {"device": "synthetic", "gpu": None, "driver": None, "torch": None,
                  "cuda": None, "backend": "synthetic", "dtype": "float32", "attn": None},
        "target": {"id": "synthetic-target", "files": {}},
        "draft": {"id": "synthetic-draft", "files": {}, "block_size": draft_block_size,
                  "mask_token_id": vocab_size - 1},
        "sampling": {"temperature": 0.0, "seed": seed, "max_new_tokens": max_len,
                     "stop_token_ids": [eos_id]},
        "live_policy": policy.spec(),
        "dataset": {"name": "synthetic", "split": None, "indices": indices,
                    "template": None},
        "top_k_logits": top_k_logits,
        "oracle": {"block_sizes": list(block_sizes), "top_k": top_k, "probes": sorted(probes)},
    })
    if profile:
        write_profile(out_dir, cost.profile_rows(prompt_len + max_len, block_sizes), writer.run)
    for s, n in enumerate(lengths):
        out = rng.integers(2, vocab_size - 1, size=n).astype(np.int32)
        if n < max_len:
            out[-1] = eos_id
        oracle = _sample_oracle(s, out, block_sizes, top_k, ranks, block_ranks or {},
                                top1_prob, probes, vocab_size, rng)
        cycles, logits = _run_live(policy, s, out, oracle, max_len, prompt_len,
                                   draft_block_size, top_k_logits, vocab_size, cost, seed)
        prompt = rng.integers(2, vocab_size - 1, size=prompt_len).astype(np.int32)
        writer.add_sample({
            "sample": s, "dataset_index": indices[s], "prompt_ids": prompt.tolist(),
            "output_ids": out.tolist(), "stop_reason": "max_new_tokens" if n == max_len else "eos",
            "prefill_s": cost.target(prompt_len, 0), "decode_s": sum(c["cycle_s"] for c in cycles),
            "n_cycles": len(cycles), "ar_divergence": (ar_divergence or {}).get(s, -1),
        }, cycles, logits,
            pa.concat_tables([_oracle_table(s, b, pr, d, blk) for (b, pr, d), blk in oracle.items()]),
            _target_table(s, out, top_k, vocab_size))
    writer.finish(complete=True)
    return out_dir


def _sample_oracle(s: int, out: np.ndarray, block_sizes: tuple[int, ...], k: int,
                   ranks, block_ranks, top1_prob, probes, vocab: int,
                   rng: np.random.Generator) -> dict[tuple[int, str, int], _Block]:
    """Every oracle group of one sample, keyed (block size, probe, prev_offset)."""
    n = len(out)
    w_max = max(block_sizes) - 1
    filler = rng.integers(2, vocab - 1, size=(n, w_max))
    base = _evaluate(ranks, s, n, w_max)
    top1 = _evaluate(top1_prob, s, n, w_max).astype(np.float64)
    groups: dict[tuple[int, str, int], _Block] = {}
    starts = np.arange(n)
    for b in block_sizes:
        w = b - 1
        plain = _evaluate(block_ranks[b], s, n, w) if b in block_ranks else base[:, :w]
        groups[(b, "", 0)] = _draft_block(out, starts, _checked(plain, k), top1[:, :w], k, vocab, filler)
        for key, fn in probes.items():
            prevs = range(1, b) if key.startswith("recycle") else (0,)
            for d in prevs:
                st = starts[starts >= d]
                r = plain[st] if fn is None else _evaluate(fn, s, n, w, (d,))[st]
                groups[(b, key, d)] = _draft_block(out, st, _checked(r, k), top1[st, :w], k,
                                                   vocab, filler[st])
    return groups


def _checked(rank: np.ndarray, k: int) -> np.ndarray:
    if rank.size and (rank.max() >= k or rank.min() < RANK_BEYOND_END):
        raise ValueError(f"synthetic ranks must lie in {RANK_BEYOND_END}..{k - 1} for top-k {k}, "
                         f"got {int(rank.min())}..{int(rank.max())}")
    return rank


def _run_live(policy, s: int, out: np.ndarray, oracle: dict, max_new_tokens: int,
              prompt_len: int, default_b: int, kl: int, vocab: int, cost: SyntheticCost,
              seed: int) -> tuple[list[dict], list[dict]]:
    """Run the policy over the synthetic oracle: the cycles and cycle_logits rows a live
    recording of it would hold (greedy, times from ``cost``)."""
    n = len(out)
    policy.reset(s)
    cycles: list[dict] = []
    logits: list[dict] = []
    p, c = 0, 0
    view = outcome = None
    while p < n - 1:
        ctx = CycleContext(sample=s, cycle=c, start=p, context_len=prompt_len + p,
                           remaining=max_new_tokens - 1 - p, default_block_size=default_b,
                           prev_view=view, prev_outcome=outcome)
        req = policy.plan_draft(ctx)
        b = req.block_size
        if b > 1:
            key = (b, req.probe, req.prev_offset if req.probe else 0)
            if key not in oracle:
                raise ValueError(f"synthetic trace: the live policy drafted block size {b} with "
                                 f"probe {req.probe!r} (prev_offset {key[2]}), which the oracle "
                                 "lacks; add it to block_sizes / probes")
            blk = oracle[key]
            row = int(np.searchsorted(blk.start, p))
            rank = blk.rank[row]
            view = DraftView(sample=s, start=p, block_size=b, ids=blk.ids[row],
                             logprobs=blk.logprobs[row].astype(np.float32),
                             rng=np.random.default_rng([seed, s, p]))
        else:
            rank = np.zeros(0, np.int8)
            view = DraftView(sample=s, start=p, block_size=1, ids=np.zeros((0, 1), np.int32),
                             logprobs=np.zeros((0, 1), np.float32),
                             rng=np.random.default_rng([seed, s, p]))
        plan = policy.plan_verify(view)
        best, chosen = _accept(plan.paths, rank)
        # the bonus token must still lie inside S: tau <= n - 1 - p
        accepted = min(best, n - 2 - p)
        tau = accepted + 1
        L = prompt_len + p
        draft_s = cost.draft(b, L) if b > 1 else 0.0
        if plan.mode == "tree":
            target_s = cost.tree_verify(plan.verify_tokens(), L)
        elif plan.mode == "batch":
            target_s = cost.target(max(len(x) for x in plan.paths) + 1, L, plan.batch())
        else:
            target_s = cost.target(plan.verify_tokens(), L)
        cycle_s = draft_s + target_s + cost.overhead_s
        outcome = CycleOutcome(sample=s, cycle=c, start=p, block_size=b, accepted=accepted,
                               tau=tau, committed=tau, chosen_path=chosen,
                               verify_tokens=plan.verify_tokens(), draft_s=draft_s,
                               target_s=target_s, overhead_s=cost.overhead_s,
                               cycle_s=cycle_s, l_gen=b)
        policy.observe(outcome)
        cycles.append({
            "sample": s, "cycle": c, "start": p, "context_len": L, "block_size": b,
            "verify_mode": plan.mode, "verify_tokens": plan.verify_tokens(),
            "verify_batch": plan.batch(), "n_paths": len(plan.paths),
            "drafted": view.ids[:, 0].tolist(), "accepted": accepted, "tau": tau,
            "committed": tau, "bonus": int(out[p + tau]), "chosen_path": chosen,
            "probe": req.probe, "prev_offset": req.prev_offset, "n_seeds": len(req.seeds),
            "draft_s": draft_s, "target_s": target_s, "overhead_s": cost.overhead_s,
            "cycle_s": cycle_s, "policy_state": json.dumps(policy.state(), sort_keys=True),
        })
        logits += _cycle_logits(s, c, p, view, plan.paths[chosen], out, kl, vocab)
        p += tau
        c += 1
    return cycles, logits


def _cycle_logits(s: int, c: int, p: int, view: DraftView, path: tuple[int, ...],
                  out: np.ndarray, kl: int, vocab: int) -> list[dict]:
    """Top-kl draft and target logits per offset along the chosen path (log-probs as
    logits, so each log-sum-exp is 0); the target's top-1 is the next token of S."""
    rows = []
    for o in range(view.block_size):
        nxt = int(out[p + o + 1]) if p + o + 1 < len(out) else 0
        verified = o <= len(path)
        row = {"sample": s, "cycle": c, "offset": o, "draft_ids": None, "draft_logits": None,
               "draft_lse": None, "target_ids": None, "target_logits": None, "target_lse": None}
        if o >= 1:
            row.update(draft_ids=view.ids[o - 1, :kl].tolist(),
                       draft_logits=view.logprobs[o - 1, :kl].tolist(), draft_lse=0.0)
        if verified:
            ids = [(nxt + j) % vocab for j in range(kl)]
            row.update(target_ids=ids, target_logits=[float(np.log(0.9)) + j * float(np.log(0.1))
                                                       for j in range(kl)], target_lse=0.0)
        rows.append(row)
    return rows


__all__ = ["make_trace", "SyntheticCost", "leading_zeros", "random_ranks"]
