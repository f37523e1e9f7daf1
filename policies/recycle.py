"""Suffix recycling: the previous cycle's rejected draft tokens, seeded
into the next block as hints, at the offsets they belong to."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from specreplay.policies.base import CycleContext, CycleOutcome, DraftRequest, DraftView, Policy
from specreplay.policies.spec import register


def recycle_seeds(prev_view: DraftView, shift: int, block_size: int, mode: str,
                  max_seeds: int, min_margin: float) -> tuple[tuple[int, int], ...]:
    """(new offset, token id) seeds for a cycle that starts ``shift`` (= the previous
    tau) tokens after the previous one, with the same block size.

    The previous cycle's top-1 token at old offset j proposed output S[prev_start + j],
    which is new offset j - shift. Old offsets up to ``shift`` were committed (the last
    of them replaced by the target's bonus token), so only j >= shift + 1 is left over.
    The seed script placed old offset ``shift`` at new offset 1, one position early.

    mode=dense seeds every new offset a leftover lands on; mode=sparse only the even
    new offsets 2, 4, 6, ... (mask, hint, mask, hint after the anchor). ``min_margin`` >=
    0 keeps only leftovers whose old top-1 minus top-2 probability is at least it;
    ``max_seeds`` >= 0 keeps the first that many, by offset.
    """
    if shift < 1:
        return ()
    probs = prev_view.probs
    second = probs[:, 1] if probs.shape[1] > 1 else np.zeros(len(probs))
    seeds = []
    for j in range(shift + 1, prev_view.block_size):
        i = j - shift
        if i >= block_size or (mode == "sparse" and i % 2):
            continue
        if min_margin >= 0 and probs[j - 1, 0] - second[j - 1] < min_margin:
            continue
        seeds.append((i, int(prev_view.ids[j - 1, 0])))
    return tuple(seeds[:max_seeds] if max_seeds >= 0 else seeds)


@register
class Recycle(Policy):
    """Seed the next block with the previous cycle's leftover top-1 draft tokens.

    Only when the previous cycle drafted the same block size (the oracle probe is
    recorded per block size and previous offset); otherwise, or without leftovers, the
    draft is plain. The request names the oracle probe (this component's canonical
    spec) and ``prev_offset`` = the previous tau, the start distance that selects the
    probe row. The leftovers are the previous draft's top-1 tokens, whatever path was
    chosen, because that is what the oracle can reproduce.

    Cost: live, a seeded cycle runs one more draft pass, a plain one over the same cached
    context, so that the next cycle's seeds come from the plain proposal the oracle's
    probe row is built from (this keeps replay exact). Live and predicted times include
    that pass; an implementation that does not need exact replay would skip it.
    """
    name = "recycle"
    role = "input"
    # shown by `specreplay policies`; the short form labels every prediction using it
    note = ("live and predicted times include one extra plain draft pass per seeded cycle, "
            "which the live loop runs so that the recycle probe stays exact")
    label = "+1 plain draft pass per seeded cycle"
    params = {"mode": "sparse", "max": -1, "min_margin": -1.0}
    help = ("mode: sparse (seeds at new offsets 2, 4, 6, ...) | dense (every offset)\n"
            "max: seeds per cycle, first by offset (-1 = unlimited)\n"
            "min_margin: if >= 0, seed only where the old top-1 minus top-2 probability >= it")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        if self.kw["mode"] not in ("sparse", "dense"):
            raise ValueError(f"mode must be sparse or dense, got {self.kw['mode']!r}")
        if self.kw["max"] < -1:
            raise ValueError(f"max must be -1 (unlimited) or >= 0, got {self.kw['max']}")
        self.last_seeds = 0

    def reset(self, sample: int) -> None:
        self.last_seeds = 0

    def draft_input(self, ctx: CycleContext, req: DraftRequest) -> DraftRequest:
        self.last_seeds = 0
        prev, view = ctx.prev_outcome, ctx.prev_view
        if prev is None or view is None or prev.block_size != req.block_size \
                or view.block_size != req.block_size:
            return req
        shift = ctx.start - prev.start
        seeds = recycle_seeds(view, shift, req.block_size, self.kw["mode"], self.kw["max"],
                              self.kw["min_margin"])
        if not seeds:
            return req
        self.last_seeds = len(seeds)
        return replace(req, seeds=seeds, prev_offset=shift, probe=self.spec())

    def observe(self, outcome: CycleOutcome) -> None:
        if outcome.block_size <= 1:
            self.last_seeds = 0

    def state(self) -> dict[str, Any]:
        return {"recycle_seeds": self.last_seeds}

    def probes(self) -> tuple[str, ...]:
        return (self.spec(),)
