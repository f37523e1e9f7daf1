"""Kendall's rank correlation (tau-b) with its two-sided p-value, in numpy.

The report path needs one statistic from scipy.stats, and importing scipy.stats costs
more than the rest of the report module together; this is the same statistic (tau-b,
ties counted in both variables) and the same p-value scipy's ``kendalltau`` gives with
its default method: exact from the permutation distribution when neither variable has
ties and n <= 33 (or the order is one swap from perfect), otherwise the normal
approximation with the tie-corrected variance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class KendallResult:
    """``tau``: tau-b in [-1, 1]; ``p``: two-sided p-value of "no association";
    ``method``: "exact" or "normal"; ``n``: number of pairs of values."""
    tau: float
    p: float
    method: str
    n: int


def _tie_sums(v: np.ndarray) -> tuple[int, int, int]:
    """Over the groups of equal values (size t): sum t(t-1), t(t-1)(t-2), t(t-1)(2t+5)."""
    _, counts = np.unique(v, return_counts=True)
    t = counts[counts > 1].astype(np.int64)
    return (int((t * (t - 1)).sum()), int((t * (t - 1) * (t - 2)).sum()),
            int((t * (t - 1) * (2 * t + 5)).sum()))


def _exact_p(n: int, discordant: int) -> float:
    """Two-sided p-value from the number of permutations of n items with at most c
    inversions (c = the rarer of discordant and concordant counts), counted exactly
    with integers (Mahonian numbers)."""
    total = n * (n - 1) // 2
    c = min(discordant, total - discordant)
    if 2 * c == total:
        return 1.0
    counts = [1]  # permutations of 1 item, by number of inversions
    for j in range(2, n + 1):
        # adding item j can add 0..j-1 inversions; only counts up to c matter
        width = min(len(counts) + j - 1, c + 1)
        new = [0] * width
        for k, m in enumerate(counts):
            if k >= width:
                break
            for add in range(min(j, width - k)):
                new[k + add] += m
        counts = new
    return min(1.0, 2 * sum(counts[:c + 1]) / math.factorial(n))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> KendallResult | None:
    """Kendall's tau-b of ``x`` against ``y`` and its two-sided p-value; None when there
    are fewer than two pairs or either variable is constant (tau is undefined)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau needs two 1-d sequences of one length, got shapes "
                         f"{x.shape} and {y.shape}")
    n = len(x)
    if n < 2:
        return None
    i, j = np.triu_indices(n, k=1)
    sx, sy = np.sign(x[j] - x[i]), np.sign(y[j] - y[i])
    s = int((sx * sy).sum())                      # concordant - discordant
    discordant = int(((sx * sy) < 0).sum())
    pairs = n * (n - 1) // 2
    xtie, x0, x1 = _tie_sums(x)
    ytie, y0, y1 = _tie_sums(y)
    denom = math.sqrt((pairs - xtie // 2) * (pairs - ytie // 2))
    if denom == 0:
        return None
    tau = max(-1.0, min(1.0, s / denom))
    if xtie == 0 and ytie == 0 and (n <= 33 or min(discordant, pairs - discordant) <= 1):
        return KendallResult(tau, _exact_p(n, discordant), "exact", n)
    m = n * (n - 1)
    var = ((m * (2 * n + 5) - x1 - y1) / 18 + xtie * ytie / (2 * m)
           + (x0 * y0 / (9 * m * (n - 2)) if n > 2 else 0.0))
    z = s / math.sqrt(var)
    return KendallResult(tau, math.erfc(abs(z) / math.sqrt(2)), "normal", n)
