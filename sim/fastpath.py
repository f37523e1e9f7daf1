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


def replay_fixed(data: TraceData, acc: Acceptance, timer: Timer, b: int) -> tuple[dict, RunLog]:
    """Per-cycle columns (``CYCLE_FIELDS``) of a fixed block size b in single stream."""
    base = data.base
    gpos = np.arange(data.n_positions, dtype=np.int64)
    sample_of = np.repeat(np.arange(data.n_samples), data.out_len)
    room = base[sample_of + 1] - 1 - gpos  # tau may not carry the bonus past S's end
    if b <= 1:
        tau_all = np.ones(data.n_positions, dtype=np.int64)
        missing = np.zeros(data.n_positions, dtype=bool)
    else:
        g = acc.group(b)
        row = g.row_of
        missing = row < 0
        tau_all = np.minimum(g.chain_acc[np.maximum(row, 0)] + 1, np.maximum(room, 1))
        tau_all[missing] = 1
    starts = walk_starts((gpos + tau_all).tolist(), base)
    if missing[starts].any():
        p = int(starts[np.argmax(missing[starts])])
        s = int(sample_of[p])
        acc.row(g, s, p - int(base[s]))  # raises NotReplayable naming the row
    sample = sample_of[starts]
    start = starts - base[sample]
    n = len(starts)
    first = np.searchsorted(sample, np.arange(data.n_samples))
    cycle = np.arange(n) - first[sample]
    tau = tau_all[starts]
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


__all__ = ["fixed_block_size", "replay_fixed", "walk_starts"]
