"""Acceptance by draft offset, read straight from the oracle (no policy involved)."""
from __future__ import annotations

import numpy as np

from specreplay.traces.schema import RANK_BEYOND_END


def plain_true_ranks(oracle_arrays: dict) -> dict[int, np.ndarray]:
    """The true-token rank arrays [start positions, b-1] of the plain-draft oracle (probe
    ""), by block size, from ``Trace.oracle_arrays()``."""
    return {b: g.true_rank for (b, probe), g in oracle_arrays.items() if probe == "" and b >= 2}


def acceptance_curves(true_ranks: dict[int, np.ndarray]
                      ) -> tuple[dict[int, np.ndarray], dict[int, float], dict[int, int]]:
    """For every block size b (``true_ranks[b]``: [start positions, b-1] rank codes):

    - ``curves[b][i-1]`` = P(accepted >= i) for offset i = 1..b-1: the share of start
      positions whose true-token ranks at offsets 1..i are all 0 (the greedy chain accepts
      them), among the start positions where offset i still lies inside the recorded
      output (rank code RANK_BEYOND_END excluded, so the tail does not read as rejection);
      NaN where no start position reaches offset i;
    - ``mean_tau[b]`` = 1 + mean accepted length over all start positions (as if a cycle
      started at every position; acceptance stops at the end of the output);
    - ``rows[b]`` = start positions behind the numbers.

    Block sizes without rows are left out."""
    curves: dict[int, np.ndarray] = {}
    mean_tau: dict[int, float] = {}
    rows: dict[int, int] = {}
    for b in sorted(true_ranks):
        ranks = np.asarray(true_ranks[b], dtype=np.int64).reshape(-1, b - 1)
        if ranks.shape[0] == 0:
            continue
        accepted_prefix = np.cumprod(ranks == 0, axis=1).astype(bool)
        inside = ranks != RANK_BEYOND_END
        counts = inside.sum(axis=0)
        hits = (accepted_prefix & inside).sum(axis=0)
        curves[b] = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
        mean_tau[b] = float(1 + accepted_prefix.sum(axis=1).mean())
        rows[b] = int(ranks.shape[0])
    return curves, mean_tau, rows
