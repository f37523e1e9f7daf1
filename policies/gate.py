"""Confidence gating: verify only the drafted prefix the draft is confident about."""
from __future__ import annotations

from typing import Any

import numpy as np

from specreplay.policies.base import CycleOutcome, DraftView, Policy, VerifyPlan
from specreplay.policies.spec import register


def threshold_verify_len(top1_probs: np.ndarray, min_prob: float) -> int:
    """Verify tokens (anchor included) stopping before the first drafted offset whose
    top-1 probability is below ``min_prob``; the whole block when none is."""
    low = np.flatnonzero(top1_probs < min_prob)
    return int(low[0]) + 1 if low.size else len(top1_probs) + 1


def score_verify_len(scores: np.ndarray, budget: float) -> int:
    """Verify tokens = 1 + the longest prefix of offsets whose summed score stays
    within ``budget``."""
    kept = int(np.count_nonzero(np.cumsum(scores) <= budget + 1e-12))
    # cumsum of non-negative scores is non-decreasing, so the count is the prefix
    return kept + 1


def offset_scores(view: DraftView, metric: str) -> np.ndarray:
    """Per drafted offset: -log(top-1 prob) ("nlogp") or the entropy ("entropy") of
    the kept top-k, with the mass outside it counted as one more outcome."""
    lp = view.logprobs.astype(np.float64)
    if metric == "nlogp":
        return np.maximum(-lp[:, 0], 0.0)
    p = np.exp(lp)
    rest = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * lp, 0.0).sum(axis=1)
        ent -= np.where(rest > 0, rest * np.log(np.where(rest > 0, rest, 1.0)), 0.0)
    return ent


@register
class Gate(Policy):
    """Confidence-gated verify length (the SGLang fork's gate, per request).

    mode=threshold: verify up to, not including, the first drafted offset whose top-1
    probability is below ``min_prob`` (verify tokens = that offset; all b if none).
    mode=score: per-offset scores (``metric`` nlogp = -log top-1 prob, or entropy of the
    kept top-k with the rest as one outcome: a lower bound of the full-vocabulary
    entropy the seed used); keep the longest prefix whose cumulative score is within
    ``budget``; verify tokens = kept + 1. Both clamped to [min_verify, b].
    """
    name = "gate"
    role = "verify"
    gates = True
    params = {"min_prob": 0.2, "mode": "threshold", "budget": 1.5, "metric": "nlogp",
              "min_verify": 1}
    help = ("min_prob: threshold mode stops before the first offset with top-1 prob below this\n"
            "mode: threshold | score\n"
            "budget: score mode keeps the longest prefix whose summed score is within this\n"
            "metric: score per offset, nlogp (-log top-1 prob) | entropy\n"
            "min_verify: verify at least this many tokens, anchor included")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        k = self.kw
        if k["mode"] not in ("threshold", "score"):
            raise ValueError(f"mode must be threshold or score, got {k['mode']!r}")
        if k["metric"] not in ("nlogp", "entropy"):
            raise ValueError(f"metric must be nlogp or entropy, got {k['metric']!r}")
        if not 0.0 <= k["min_prob"] <= 1.0:
            raise ValueError(f"min_prob must be in [0, 1], got {k['min_prob']}")
        self.require_at_least(0, "budget")
        self.require_at_least(1, "min_verify")
        self.last_verify = 0

    def reset(self, sample: int) -> None:
        self.last_verify = 0

    def verify_len(self, view: DraftView) -> int:
        """Verify tokens (anchor included) for this draft."""
        if self.kw["mode"] == "threshold":
            n = threshold_verify_len(view.probs[:, 0], self.kw["min_prob"])
        else:
            n = score_verify_len(offset_scores(view, self.kw["metric"]), self.kw["budget"])
        return min(max(n, self.kw["min_verify"]), view.block_size)

    def plan_verify(self, view: DraftView) -> VerifyPlan:
        self.last_verify = self.verify_len(view)
        return VerifyPlan.chain(self.last_verify)

    def observe(self, outcome: CycleOutcome) -> None:
        if outcome.block_size <= 1:
            self.last_verify = 1

    def state(self) -> dict[str, Any]:
        return {"gate_verify": self.last_verify}
