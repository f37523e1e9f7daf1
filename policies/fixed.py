"""Fixed block size, and plain autoregressive decoding."""
from __future__ import annotations

from specreplay.policies.base import CycleContext, Policy
from specreplay.policies.spec import register


@register
class Fixed(Policy):
    """Draft ``b`` positions every cycle (anchor included); b unset = the draft's own."""
    name = "fixed"
    role = "block"
    params = {"b": 0}
    help = "b: block size, anchor included (0 = the draft's trained size)"

    def __init__(self, **kw):
        super().__init__(**kw)
        if self.kw["b"] < 0 or self.kw["b"] == 1:
            raise ValueError(f"b must be >= 2 (or 0 for the draft's size), got {self.kw['b']}; "
                             "use 'ar' for plain decoding")

    def choose_block(self, ctx: CycleContext) -> int:
        return self.kw["b"] or ctx.default_block_size


@register
class AR(Policy):
    """Plain autoregressive decoding through the same loop: no draft, one token a cycle."""
    name = "ar"
    role = "block"
    params = {}

    def choose_block(self, ctx: CycleContext) -> int:
        return 1
