"""Single-stream replay of a fixed block size (or plain AR), vectorised.

A fixed-block policy has no state and no choices: the cycle starting at p accepts
``chain_acc`` of the oracle row (p, b), so the next cycle starts at p + tau(p). Computing
tau for every position is one vector operation; following the chain of starts is a walk
over a precomputed "next start" list; the seconds of all visited cycles are one gather
from the cost tables. The result equals the SimPy engine's cycle for cycle (a test
checks it); it is only faster.
"""
from __future__ import annotations

import numpy as np

from specreplay.policies.base import Composite, CycleContext
from specreplay.sim.acceptance import Acceptance
from specreplay.sim.engine import NO_SOURCE, CYCLE_FIELDS, RunLog, Timer
from specreplay.sim.tracedata import TraceData


def fixed_block_size(policy: Composite, data: TraceData) -> int | None:
    """The block size of a stateless fixed-block policy (fixed, ar; no draft-input or
    verify component), or None when the policy needs the engine."""
    if policy.block.name not in ("fixed", "ar") or policy.inputs or policy.verify is not None:
        return None
    ctx = CycleContext(0, 0, 0, 0, 1, data.default_block_size)
    return int(policy.block.choose_block(ctx))


def walk_starts(nxt: list[int], base: np.ndarray) -> np.ndarray:
    """Global indices of the cycle starts: from each sample's position 0, follow nxt
    until the sample's last position (its output is then complete)."""
    out: list[int] = []
    append = out.append
    for s in range(len(base) - 1):
        p, last = int(base[s]), int(base[s + 1]) - 1
        while p < last:
            append(p)
            p = nxt[p]
    return np.asarray(out, dtype=np.int64)


# with at least this many samples, the starts are walked for all samples at once (one
# vector step per cycle index); fewer, and a plain walk over a next-start list is faster
_FRONTIER_SAMPLES = 8


def frontier_starts(base: np.ndarray, row_of: np.ndarray | None, chain_acc: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, tau, missing) of a fixed block size, sorted by global position: every
    sample's chain of cycle starts followed side by side, the k-th cycle of all samples
    in one vector step, reading tau only where a cycle starts. ``row_of`` None: b = 1,
    tau 1 everywhere. A start without an oracle row gets tau 1 and ``missing``."""
    p = base[:-1].astype(np.int64)
    last = base[1:].astype(np.int64) - 1
    live = p < last
    p, last = p[live], last[live]
    out_p, out_tau, out_miss = [], [], []
    while p.size:
        if row_of is None:
            tau = np.ones(p.size, dtype=np.int64)
            miss = np.zeros(p.size, dtype=bool)
        else:
            row = row_of[p]
            miss = row < 0
            # tau may not carry the bonus past S's end
            tau = np.minimum(chain_acc[np.maximum(row, 0)].astype(np.int64) + 1, last - p)
            tau[miss] = 1
        out_p.append(p)
        out_tau.append(tau)
        out_miss.append(miss)
        p = p + tau
        live = p < last
        if not live.all():
            p, last = p[live], last[live]
    if not out_p:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    starts, tau, miss = np.concatenate(out_p), np.concatenate(out_tau), np.concatenate(out_miss)
    order = np.argsort(starts, kind="stable")
    return starts[order], tau[order], miss[order]


def list_starts(base: np.ndarray, row_of: np.ndarray | None, chain_acc: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``frontier_starts`` by another route: tau of every position as one vector
    operation, then a plain walk over the next-start list (cheaper for few, long
    samples, where the frontier would take a vector step per cycle)."""
    n = int(base[-1])
    gpos = np.arange(n, dtype=np.int64)
    sample_of = np.repeat(np.arange(len(base) - 1), np.diff(base))
    room = base[sample_of + 1] - 1 - gpos  # tau may not carry the bonus past S's end
    if row_of is None:
        tau_all = np.ones(n, dtype=np.int64)
        miss_all = np.zeros(n, dtype=bool)
    else:
        miss_all = row_of < 0
        tau_all = np.minimum(chain_acc[np.maximum(row_of, 0)] + 1, np.maximum(room, 1))
        tau_all[miss_all] = 1
    starts = walk_starts((gpos + tau_all).tolist(), base)
    return starts, tau_all[starts].astype(np.int64), miss_all[starts]


def replay_fixed(data: TraceData, acc: Acceptance, timer: Timer, b: int) -> tuple[dict, RunLog]:
    """Per-cycle columns (``CYCLE_FIELDS``) of a fixed block size b in single stream."""
    base = data.base
    g = acc.group(b) if b > 1 else None
    walk = frontier_starts if data.n_samples >= _FRONTIER_SAMPLES else list_starts
    starts, tau, missing = walk(base, None if g is None else g.row_of,
                                None if g is None else g.chain_acc)
    sample = np.searchsorted(base, starts, side="right") - 1
    if missing.any():
        p = int(starts[np.argmax(missing)])
        s = int(sample[np.argmax(missing)])
        acc.row(g, s, p - int(base[s]))  # raises NotReplayable naming the row
    start = starts - base[sample]
    n = len(starts)
    first = np.searchsorted(sample, np.arange(data.n_samples))
    cycle = np.arange(n) - first[sample]
    ctx = data.prompt_len[sample] + start
    cost = timer.cost
    if b > 1:
        draft_s, draft_src = cost.seconds_array("draft", b, ctx, 1)
    else:
        draft_s, draft_src = np.zeros(n), np.full(n, NO_SOURCE, dtype=np.int64)
    target_s, target_src = cost.seconds_array("target", b, ctx, 1)
    overhead_s = np.full(n, cost.overhead("chain" if b > 1 else "ar", b))
    cycle_s = draft_s + target_s + overhead_s
    recorded = np.zeros(n, dtype=bool)
    if timer.recorded is not None:
        rec = timer.recorded.chain_arrays(base, b)[:, starts]
        recorded = ~np.isnan(rec[3])
        if recorded.any():
            draft_s, target_s, overhead_s, cycle_s = (
                np.where(recorded, rec[i], x) for i, x in
                enumerate((draft_s, target_s, overhead_s, cycle_s)))
            draft_src = np.where(recorded, NO_SOURCE, draft_src)
            target_src = np.where(recorded, NO_SOURCE, target_src)
    cols = dict(zip(CYCLE_FIELDS, (
        sample, cycle, start, np.full(n, b), tau - 1, tau, np.full(n, b), draft_s, target_s,
        overhead_s, cycle_s, draft_src, target_src, recorded)))
    log = RunLog(steps=n)
    fin = np.bincount(sample, weights=cycle_s, minlength=data.n_samples)
    log.requests = [(s, 0.0, 0.0, float(fin[s]), int(data.out_len[s]))
                    for s in range(data.n_samples)]
    return cols, log


__all__ = ["fixed_block_size", "frontier_starts", "list_starts", "replay_fixed", "walk_starts"]
