"""Selective refinement: extra draft passes over the same block that
redraft only the offsets the draft was unsure of."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from specreplay.policies.base import CycleContext, DraftRequest, Policy
from specreplay.policies.spec import register

# What a refinement pass writes at a redrafted offset: the mask token (the draft redrafts
# it from scratch, seeing the confident tokens around it) or the previous pass's top-1
# token (the seed scripts' --draft-steps: the draft's own tokens fed back in as input).
INPUTS = ("mask", "previous")


@register
class Refine(Policy):
    """Draft each block in ``steps`` passes, redrafting only the offsets the draft was
    unsure of. After the first pass, every pass keeps the full context (the draft's KV
    cache), keeps the top-1 token of each offset whose top-1 probability is at least
    ``only_below`` in the block as a seed, and redrafts the others: with input=mask
    they go back to the mask token, with input=previous they hold the previous pass's
    top-1 token (every offset then carries a draft token). A pass with nothing below
    ``only_below`` is skipped (the proposal stands). steps=1 is the plain draft; with
    input=mask, only_below=1.0 re-masks every offset and so repeats the first pass.
    The request names the oracle probe that holds the refined output (this
    component's canonical spec; input=mask, the default, is left out of it)."""
    name = "refine"
    role = "input"
    params = {"steps": 2, "only_below": 0.5, "input": ""}
    help = ("steps: draft passes per block, the first included (1 = plain)\n"
            "only_below: redraft only offsets whose top-1 probability is below this\n"
            "input: what a redrafted offset holds: mask (default) | previous (the last pass's token)")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.require_at_least(1, "steps")
        if not 0.0 <= self.kw["only_below"] <= 1.0:
            raise ValueError(f"only_below must be in [0, 1], got {self.kw['only_below']}")
        feed = self.kw["input"] or "mask"
        if feed not in INPUTS:
            raise ValueError(f"input must be mask or previous, got {feed!r}")
        # the default stays out of the canonical spec, so probe keys recorded before the
        # knob existed ("refine(steps=2, only_below=1.0)") still name the same input
        self.kw["input"] = "" if feed == "mask" else feed

    @property
    def feed(self) -> str:
        return self.kw["input"] or "mask"

    def draft_input(self, ctx: CycleContext, req: DraftRequest) -> DraftRequest:
        if self.kw["steps"] <= 1:
            return req
        return replace(req, refine_steps=self.kw["steps"] - 1,
                       refine_only_below=self.kw["only_below"], refine_input=self.feed,
                       probe=self.spec())

    def probes(self) -> tuple[str, ...]:
        return (self.spec(),) if self.kw["steps"] > 1 else ()
