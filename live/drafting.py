"""The draft step, shared by the live loop and the oracle pass.

Both compute a drafted block's proposals the same way: ``topk_logprobs`` turns draft
logits into the top-k ids and float16-rounded log-probabilities a trace stores (and a
policy sees), and ``refine_block`` / ``merge_refined`` decide what a refinement pass
redrafts. The live loop runs the draft with its KV cache (``draft_block``, or the
graph backend's static-cache pass, live/backend.py); the oracle
runs many blocks at once with ``forward_blocks``; with equal inputs the numbers agree.
"""
from __future__ import annotations

import numpy as np
import torch

from specreplay.policies.base import DraftView


def block_input(anchor: int, block_size: int, mask_token_id: int,
                seeds: tuple[tuple[int, int], ...] = ()) -> list[int]:
    """The draft's input block: the anchor, then the mask token at offsets 1..b-1, with
    each (offset, token) seed written in place of the mask at its offset."""
    ids = [int(anchor)] + [int(mask_token_id)] * (block_size - 1)
    for offset, token in seeds:
        if not 1 <= offset < block_size:
            raise ValueError(f"seed offset {offset} lies outside a block of size {block_size}")
        ids[offset] = int(token)
    return ids


class LazyRng:
    """``np.random.default_rng(seed)``, seeded the first time a policy draws from it. A
    view carries one every cycle so that sampled decisions match the replay's, but few
    policies draw: seeding it up front cost 65-120 us of host time a cycle on an H200
    host (14 us on a laptop), time the device waits through between cycles."""
    __slots__ = ("_seed", "_gen")

    def __init__(self, seed) -> None:
        self._seed, self._gen = seed, None

    def __getattr__(self, name: str):
        # only reached for names the slots do not hold: the Generator's own (a private or
        # special name, e.g. copy's lookups on an unset object, is not forwarded)
        if name.startswith("_"):
            raise AttributeError(name)
        if self._gen is None:
            self._gen = np.random.default_rng(self._seed)
        return getattr(self._gen, name)


def topk_on_device(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_logprobs`` without the copy to the host: top-k ids (int32) and rounded
    log-probabilities (float32), on the logits' device."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    vals, ids = torch.topk(logits, k, dim=-1)
    return ids.to(torch.int32), (vals - lse).to(torch.float16).to(torch.float32)


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of logits [n, V] -> top-k ids (int32 [n, k]) and log-softmax values rounded
    to float16 and back to float32 ([n, k]), exactly as traces store them."""
    ids, lps = topk_on_device(logits, k)
    return ids.cpu().numpy(), lps.cpu().numpy()


def refine_block(anchor: int, ids: np.ndarray, logprobs: np.ndarray, only_below: float,
                 mask_token_id: int, feed: str = "mask") -> tuple[list[int], np.ndarray]:
    """Input of one refinement pass: offsets whose top-1 probability (from the stored,
    rounded log-probabilities) is at least ``only_below`` keep their top-1 token as a
    seed; the others are redrafted, holding the mask token (``feed="mask"``) or their
    previous top-1 token (``feed="previous"``). Returns the block ids and the bool mask
    of redrafted offsets 1..b-1."""
    redraft = np.exp(logprobs[:, 0].astype(np.float64)) < only_below
    top1 = ids[:, 0].astype(np.int64)
    if feed == "previous":
        body = top1
    elif feed == "mask":
        body = np.where(redraft, int(mask_token_id), top1)
    else:
        raise ValueError(f"refinement input must be mask or previous, got {feed!r}")
    return [int(anchor)] + body.tolist(), redraft


def merge_refined(old: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray],
                  redraft: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k after a refinement pass: redrafted offsets take the new pass's proposals,
    confident ones keep the old."""
    ids = np.where(redraft[:, None], new[0], old[0])
    lps = np.where(redraft[:, None], new[1], old[1])
    return ids, lps


def draft_block(draft, cache, block_ids: list[int], context: torch.Tensor | None,
                cached: int, context_len: int) -> torch.Tensor:
    """One draft pass with the draft's KV cache. ``context`` holds the raw target
    features [1, T_new, n*H] of the tokens committed since the last pass (positions
    ``cached`` .. ``context_len``-1) or None; the block sits at positions context_len..
    Returns the logits [b-1, V] (float32) of offsets 1..b-1."""
    device = draft.fc.weight.device
    b = len(block_ids)
    ids = torch.tensor([block_ids], dtype=torch.long, device=device)
    positions = torch.arange(cached, context_len + b, device=device)[None]
    hidden = draft(ids, context, positions, past_key_values=cache)
    return draft.logits(hidden[0, 1:]).float()


def cycle_proposals(draft_pass, mask_token_id: int, anchor: int, block_size: int, seeds, context,
                    cached: int, context_len: int, k: int, refine_steps: int = 0,
                    refine_only_below: float = 1.0, refine_input: str = "mask",
                    topk=None) -> tuple[torch.Tensor, np.ndarray, np.ndarray, int]:
    """Draft one live block, then up to ``refine_steps`` refinement passes over the
    same cached context (no new context rows). ``draft_pass(block_ids, context, cached,
    context_len)`` is one draft pass with the request's cache (``draft_block`` or a live
    backend's). ``refine_input``: what a redrafted offset holds (``refine_block``).
    ``topk``: ``topk_logprobs`` or a backend's equal ``view_topk``. Returns the final
    logits [b-1, V], the top-k ids and rounded log-probs, and the passes run."""
    topk_logprobs_ = topk or topk_logprobs
    mask = mask_token_id
    logits = draft_pass(block_input(anchor, block_size, mask, seeds), context, cached, context_len)
    ids, lps = topk_logprobs_(logits, k)
    passes = 1
    for _ in range(refine_steps):
        block, redraft = refine_block(anchor, ids, lps, refine_only_below, mask, refine_input)
        if not redraft.any():
            break
        new_logits = draft_pass(block, None, context_len, context_len)
        new = topk_logprobs_(new_logits, k)
        ids, lps = merge_refined((ids, lps), new, redraft)
        sel = torch.as_tensor(redraft, device=logits.device)
        logits = torch.where(sel[:, None], new_logits, logits)
        passes += 1
    return logits, ids, lps, passes


class DeviceDraftView(DraftView):
    """A DraftView whose top-k still sit on the device, as one int32 tensor [b-1, 2k]
    (ids, then the rounded log-probabilities' float32 bits). The host arrays are fetched
    (one copy, one wait for the device) the first time anything reads them, or handed in
    by ``take`` from a copy the loop makes anyway, so a policy that plans without looking
    at the proposal (a fixed chain) lets the cycle wait for the device once, not twice."""

    def __init__(self, sample: int, start: int, block_size: int, packed: torch.Tensor, k: int, rng):
        object.__setattr__(self, "_packed", packed)
        object.__setattr__(self, "_k", int(k))
        object.__setattr__(self, "_host", None)
        super().__init__(sample, start, block_size, None, None, rng)

    # the dataclass fields ids/logprobs, read through the host copy
    ids = property(lambda self: self._fetch()[0], lambda self, value: None)
    logprobs = property(lambda self: self._fetch()[1], lambda self, value: None)

    @property
    def k(self) -> int:
        return self._k

    @property
    def fetched(self) -> bool:
        return self._host is not None

    @property
    def packed(self) -> torch.Tensor | None:
        """The device rows, until the host copy is made (None after)."""
        return self._packed

    def _fetch(self):
        if self._host is None:
            self.take(self._packed.cpu().numpy())
        return self._host

    def take(self, host: np.ndarray) -> None:
        """The packed rows as host memory (a copy of ``packed``)."""
        k = self._k
        host = np.ascontiguousarray(host, dtype=np.int32).reshape(-1, 2 * k)
        object.__setattr__(self, "_host", (host[:, :k].copy(), host[:, k:].copy().view(np.float32)))
        object.__setattr__(self, "_packed", None)  # the device copy is not needed any more


def pack_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``topk_on_device`` of logits [n, V] packed as ``DeviceDraftView`` holds it."""
    ids, lps = topk_on_device(logits, k)
    return torch.cat((ids, lps.view(torch.int32)), dim=1)
