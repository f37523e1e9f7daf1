"""Builders shared by the policy tests (no tests here): draft views from numpy arrays,
contexts and outcomes, and a loop that drives a block-size policy through a scripted
series of cycles."""
from __future__ import annotations

import numpy as np

from specreplay.policies import CycleContext, CycleOutcome, DraftView


def view_from_probs(probs, start: int = 0, ids=None, rng=None, sample: int = 0) -> DraftView:
    """A DraftView whose offset i (1-based) has top-k probabilities probs[i-1] (rank
    order); ids default to 100*offset + rank. Log-probs are float16-rounded, as stored."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        lp = np.log(p).astype(np.float16).astype(np.float32)
    if ids is None:
        ids = (100 * np.arange(1, len(p) + 1)[:, None] + np.arange(p.shape[1])[None, :])
    return DraftView(sample=sample, start=start, block_size=len(p) + 1,
                     ids=np.asarray(ids, dtype=np.int32), logprobs=lp, rng=rng)


def ctx(cycle: int, start: int = 0, prev_view=None, prev_outcome=None,
        default_block_size: int = 16) -> CycleContext:
    return CycleContext(sample=0, cycle=cycle, start=start, context_len=20 + start,
                        remaining=10_000, default_block_size=default_block_size,
                        prev_view=prev_view, prev_outcome=prev_outcome)


def outcome(cycle: int, block_size: int, tau: int, cycle_s: float = 1.0, start: int = 0,
            chosen_path: int = 0, l_gen: int = 0) -> CycleOutcome:
    return CycleOutcome(sample=0, cycle=cycle, start=start, block_size=block_size,
                        accepted=tau - 1, tau=tau, committed=tau, chosen_path=chosen_path,
                        verify_tokens=block_size, draft_s=0.2 * cycle_s,
                        target_s=0.7 * cycle_s, overhead_s=0.1 * cycle_s, cycle_s=cycle_s,
                        l_gen=l_gen or block_size)


def drive(policy, env, cycles, first_cycle: int = 0) -> list[int]:
    """Run ``cycles`` cycles of a Composite policy; ``env(cycle, b) -> (tau, cycle_s)``.
    Returns the block sizes chosen."""
    chosen = []
    for c in range(first_cycle, first_cycle + cycles):
        b = policy.plan_draft(ctx(c)).block_size
        tau, secs = env(c, b)
        policy.observe(outcome(c, b, tau, secs))
        chosen.append(b)
    return chosen
