"""The DFlash draft over a static KV cache, for the fast live engine.

Runs the project's ``DFlashDraftModel`` (its own modules and weights, models/draft.py)
in two steps that each have a fixed shape for a given size, so each can be replayed
from a CUDA graph:

    append_context  fuse the raw target features of newly committed tokens and write
                    their K/V (every layer) into the cache rows given
    block_logits    one pass of a block of b rows over the first ``kv_len`` cache rows
                    (a mask says which are context), float32 logits of rows 1..b-1

The split is exact: in DFlash the context K/V of a layer depend on the fused features
only, never on the block, so computing them before the block pass changes nothing.
"""
from __future__ import annotations

import torch

from specreplay.models.draft import DFlashDraftModel
from specreplay.models.fast import StaticKV

__all__ = ["FastDraft"]


class FastDraft:
    """Static-cache passes of a bound DFlash draft."""

    def __init__(self, draft: DFlashDraftModel):
        self.draft = draft
        cfg = draft.config
        self.layers = list(draft.layers)
        self.kv_heads, self.head_dim = cfg.num_key_value_heads, cfg.head_dim
        self.heads = cfg.num_attention_heads
        self.dtype, self.device = draft.fc.weight.dtype, draft.fc.weight.device
        self.width = cfg.num_context_features
        # all-visible layers take no mask on the exact (eager) path, like models/draft.py
        self.plain = all(not (l.self_attn.block_causal or l.self_attn.sliding_window) for l in self.layers)

    def new_cache(self, capacity: int) -> StaticKV:
        return StaticKV(len(self.layers), self.kv_heads, capacity, self.head_dim, self.dtype, self.device)

    def append_context(self, kv: StaticKV, context: torch.Tensor, positions: torch.Tensor,
                       write_rows: torch.Tensor) -> None:
        """context [1, T, F] raw features at ``positions`` [1, T]; their K/V go to cache
        rows ``write_rows`` [T] of every layer."""
        ctx = self.draft.fuse(context)
        cos, sin = self.draft.rotary_emb(positions, ctx.dtype)
        for i, layer in enumerate(self.layers):
            k, v = layer.self_attn.project_kv(ctx, cos, sin)
            kv.k[i].index_copy_(2, write_rows, k)
            kv.v[i].index_copy_(2, write_rows, v)

    def block_logits(self, kv: StaticKV, block_ids: torch.Tensor, positions: torch.Tensor,
                     mask: torch.Tensor | None, kv_len: int) -> torch.Tensor:
        """block_ids/positions [1, b]; keys = cache rows 0..kv_len-1 then the block's own;
        mask [1, 1, b, kv_len + b] bool or None (all visible). Returns logits [b-1, V]."""
        draft = self.draft
        x = draft.embed(block_ids).to(self.dtype)
        cos, sin = draft.rotary_emb(positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, kv.k[i][:, :, :kv_len], kv.v[i][:, :, :kv_len], mask)
        return draft.logits(draft.norm(x)[0, 1:]).float()

    def block_mask(self, b: int, context_len: int, kv_len: int, device) -> torch.Tensor:
        """[1, 1, b, kv_len + b] visibility of a block at positions context_len.. over cache
        rows 0..kv_len-1 (rows >= context_len are not context) and its own rows, with the
        first layer's causal / sliding-window rules (the draft's layers share them when a
        mask is passed)."""
        attn = self.layers[0].self_attn
        qpos = torch.arange(context_len, context_len + b, device=device)[:, None]
        kpos = torch.cat((torch.arange(kv_len, device=device), qpos[:, 0]))[None]
        visible = torch.ones(b, kv_len + b, dtype=torch.bool, device=device)
        visible[:, :kv_len] = kpos[:, :kv_len] < context_len
        if attn.block_causal:
            visible &= kpos <= qpos
        if attn.sliding_window:
            visible &= (qpos - kpos).abs() < attn.sliding_window
        return visible[None, None]

    def mixed_layers(self) -> bool:
        """True when layers differ in causal/window rules (one mask cannot serve them)."""
        kinds = {(l.self_attn.block_causal, l.self_attn.sliding_window) for l in self.layers}
        return len(kinds) > 1

