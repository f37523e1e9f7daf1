"""Selective refinement: extra draft passes over the same block that
redraft only the offsets the draft was unsure of."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from specreplay.policies.base import CycleContext, DraftRequest, Policy
from specreplay.policies.spec import register


@register
class Refine(Policy):
    """Draft each block in ``steps`` passes, redrafting only the offsets the draft was
    unsure of. After the first pass, every pass keeps the full context (the draft's KV
    cache) and the offsets whose top-1 probability is at least ``only_below`` as seeds,
    and redrafts the rest. steps=1 is the plain draft.
    The request names the oracle probe that holds the refined output (this
    component's canonical spec)."""
    name = "refine"
    role = "input"
    params = {"steps": 2, "only_below": 1.0}
    help = ("steps: draft passes per block, the first included (1 = plain)\n"
            "only_below: redraft only offsets whose top-1 probability is below this")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.require_at_least(1, "steps")
        if not 0.0 <= self.kw["only_below"] <= 1.0:
            raise ValueError(f"only_below must be in [0, 1], got {self.kw['only_below']}")

    def draft_input(self, ctx: CycleContext, req: DraftRequest) -> DraftRequest:
        if self.kw["steps"] <= 1:
            return req
        return replace(req, refine_steps=self.kw["steps"] - 1,
                       refine_only_below=self.kw["only_below"], probe=self.spec())

    def probes(self) -> tuple[str, ...]:
        return (self.spec(),) if self.kw["steps"] > 1 else ()
