"""The DFlash draft over a static KV cache, for the fast live engine.

Runs the project's ``DFlashDraftModel`` (its own modules and weights, models/draft.py)
in two steps that each have a fixed shape for a given size, so each can be replayed
from a CUDA graph:

    append_context  fuse the raw target features of newly committed tokens and write
                    their K/V (every layer) into the cache rows given
    block_logits    one pass of a block of b rows over the first ``kv_len`` cache rows
                    (a mask says which are context), float32 logits of rows 1..b-1; the
                    block's own K/V are written to the b rows after those (scratch)

The split is exact: in DFlash the context K/V of a layer depend on the fused features
only, never on the block, so computing them before the block pass changes nothing.

Each layer is computed with models/fast.py's kernels-lean pieces over the draft's own
weights (q/k/v and gate/up fused, the modules rebound to row views so the oracle's
``forward_blocks`` reads the same memory): fused RMSNorm, RoPE from a position table,
grouped-query attention without expanding K/V.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from specreplay.models.draft import DFlashDraftModel
from specreplay.models.fast import (EAGER, SDPA_BACKENDS, StaticKV, attend, attention, attention_bias, fuse_linears,
                                    rope, rope_table)
from specreplay.models.kernels import rope_cache_fits


@dataclass
class _DraftLayer:
    attn_norm: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    kv_rows: int                      # first row of k in wqkv (k then v follow)
    wo: torch.Tensor
    bo: torch.Tensor | None
    qk_norm: torch.Tensor             # [heads + kv_heads, D]
    k_norm: torch.Tensor              # [D]
    mlp_norm: torch.Tensor
    w13: torch.Tensor
    w2: torch.Tensor

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
        self.hidden = cfg.hidden_size
        self.eps = cfg.rms_norm_eps
        self.fast = []
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            wqkv, bqkv = fuse_linears([a.q_proj, a.k_proj, a.v_proj])
            w13, _ = fuse_linears([m.gate_proj, m.up_proj])
            qk_norm = torch.cat((a.q_norm.weight.detach().expand(self.heads, -1),
                                 a.k_norm.weight.detach().expand(self.kv_heads, -1)))
            self.fast.append(_DraftLayer(
                layer.input_layernorm.weight.detach(), wqkv, bqkv, self.heads * self.head_dim,
                a.o_proj.weight.detach(), None if a.o_proj.bias is None else a.o_proj.bias.detach(),
                qk_norm, a.k_norm.weight.detach(), layer.post_attention_layernorm.weight.detach(),
                w13, m.down_proj.weight.detach()))
        self.intermediate = self.fast[0].w13.shape[0] // 2
        self.stages = EAGER
        self.table = None
        self.ensure_positions(4096)

    def ensure_positions(self, rows: int) -> None:
        """A RoPE table covering positions 0..rows-1 (see FastTarget.ensure_positions)."""
        if self.table is None or self.table.shape[0] < rows:
            rot = self.draft.rotary_emb
            self.table = rope_table(rot.inv_freq, float(rot.scaling), rows, self.dtype, self.device)

    def _cos_sin(self, positions: torch.Tensor):
        cs = self.table[positions[0]]
        return cs[None, :, None, 0], cs[None, :, None, 1]

    def new_cache(self, capacity: int) -> StaticKV:
        self.ensure_positions(capacity + 64)
        return StaticKV(len(self.layers), self.kv_heads, capacity, self.head_dim, self.dtype, self.device)

    def append_context(self, kv: StaticKV, context: torch.Tensor, positions: torch.Tensor,
                       write_rows: torch.Tensor) -> None:
        """context [1, T, F] raw features at ``positions`` [1, T]; their K/V go to cache
        rows ``write_rows`` [T] of every layer."""
        ctx = self.draft.fuse(context)
        cos, sin = self._cos_sin(positions)
        T, KV, D = ctx.shape[1], self.kv_heads, self.head_dim
        st = self.stages
        for i, layer in enumerate(self.fast):
            b = None if layer.bqkv is None else layer.bqkv[layer.kv_rows:]
            kv_ = F.linear(ctx, layer.wqkv[layer.kv_rows:], b)
            if st.rope_cache is not None and rope_cache_fits(kv_[0], layer.qk_norm, self.table, kv.k[i]):
                # k and v only (heads from H on): normed, rotated and written in one kernel
                st.rope_cache(kv_[0], layer.qk_norm, self.table, positions[0], write_rows,
                              kv.k[i], kv.v[i], self.heads, KV, self.eps, first=self.heads)
                continue
            k = F.rms_norm(kv_[..., :KV * D].view(1, T, KV, D), (D,), None, self.eps) * layer.k_norm
            k = rope(k, cos, sin)
            kv.k[i].index_copy_(2, write_rows, k.transpose(1, 2))
            kv.v[i].index_copy_(2, write_rows, kv_[..., KV * D:].view(1, T, KV, D).transpose(1, 2))

    def block_logits(self, kv: StaticKV, block_ids: torch.Tensor, positions: torch.Tensor,
                     mask: torch.Tensor | None, kv_len: int) -> torch.Tensor:
        """block_ids/positions [1, b]; keys = cache rows 0..kv_len-1 then the block's own;
        mask [1, 1, b, kv_len + b] bool or None (all visible). Returns logits [b-1, V]."""
        with sdpa_kernel(SDPA_BACKENDS):
            return self._block_logits(kv, block_ids, positions, mask, kv_len)

    def _block_logits(self, kv, block_ids, positions, mask, kv_len):
        draft = self.draft
        H, KV, D = self.heads, self.kv_heads, self.head_dim
        n = block_ids.shape[1]
        x = draft.embed(block_ids).to(self.dtype)
        cos, sin = self._cos_sin(positions)
        bias = attention_bias(mask, H // KV, self.dtype)
        scale = D ** -0.5
        # The block's own K/V go into the cache rows right after the ones it attends
        # over (scratch: rows past the context are not context, and the next append
        # overwrites them), so keys are one slice of the cache, laid out as the mask
        # says, instead of a concatenation that copies every cached row per layer
        # (6.8 us a layer on an H200 at 512 rows). Without room for them, concatenate.
        scratch = kv_len + n <= kv.capacity
        st = self.stages
        own_rows = None
        for i, layer in enumerate(self.fast):
            h = st.rms_norm(x, layer.attn_norm, self.eps)
            qkv = F.linear(h, layer.wqkv, layer.bqkv)
            if scratch and st.rope_cache is not None and rope_cache_fits(qkv[0], layer.qk_norm, self.table, kv.k[i]):
                # one kernel: q head-major, the block's own k/v into its scratch rows
                if own_rows is None:
                    own_rows = torch.arange(kv_len, kv_len + n, device=x.device)
                qh = st.rope_cache(qkv[0], layer.qk_norm, self.table, positions[0], own_rows, kv.k[i], kv.v[i],
                                   H, KV, self.eps)
                out = attend(qh.view(1, KV, -1, D), kv.k[i][:, :, :kv_len + n], kv.v[i][:, :, :kv_len + n],
                             bias, scale, st)
                out = out.reshape(H, n, D).transpose(0, 1).reshape(1, n, H * D)
            else:
                qk = st.qk_rope(qkv[..., :(H + KV) * D].view(1, n, H + KV, D), layer.qk_norm, cos, sin, self.eps)
                k_own = qk[:, :, H:].transpose(1, 2)
                v_own = qkv[..., (H + KV) * D:].view(1, n, KV, D).transpose(1, 2)
                if scratch:
                    kv.k[i][:, :, kv_len:kv_len + n].copy_(k_own)
                    kv.v[i][:, :, kv_len:kv_len + n].copy_(v_own)
                    k, v = kv.k[i][:, :, :kv_len + n], kv.v[i][:, :, :kv_len + n]
                else:
                    k = torch.cat((kv.k[i][:, :, :kv_len], k_own), dim=2)
                    v = torch.cat((kv.v[i][:, :, :kv_len], v_own), dim=2)
                out = attention(qk[:, :, :H], k, v, bias, scale, st)
            x = x + F.linear(out, layer.wo, layer.bo)
            h = self.stages.rms_norm(x, layer.mlp_norm, self.eps)
            gu = F.linear(h, layer.w13)
            x = x + F.linear(self.stages.swiglu(gu, self.intermediate), layer.w2)
        return draft.logits(draft.norm(x)[0, 1:]).float()

    def block_mask(self, b: int, context_len: int, kv_len: int, device) -> torch.Tensor:
        """[1, 1, b, kv_len + b] visibility of a block at positions context_len.. over cache
        rows 0..kv_len-1 (rows >= context_len are not context) and its own rows, with the
        first layer's causal / sliding-window rules (the draft's layers share them when a
        mask is passed): ``host_block_mask`` on ``device``."""
        return torch.from_numpy(self.host_block_mask(b, context_len, kv_len)).to(device)

    def host_block_mask(self, b: int, context_len: int, kv_len: int) -> np.ndarray:
        """``block_mask`` as a numpy array: a captured block pass's mask is built on the
        host every cycle and uploaded with its other inputs (the same rule in torch CPU
        ops took 48 us, in numpy a few)."""
        attn = self.layers[0].self_attn
        qpos = np.arange(context_len, context_len + b)[:, None]
        kpos = np.concatenate((np.arange(kv_len), qpos[:, 0]))[None]
        visible = np.ones((b, kv_len + b), dtype=bool)
        visible[:, :kv_len] = kpos[:, :kv_len] < context_len
        if attn.block_causal:
            visible &= kpos <= qpos
        if attn.sliding_window:
            visible &= np.abs(qpos - kpos) < attn.sliding_window
        return visible[None, None]

    def mixed_layers(self) -> bool:
        """True when layers differ in causal/window rules (one mask cannot serve them)."""
        kinds = {(l.self_attn.block_causal, l.self_attn.sliding_window) for l in self.layers}
        return len(kinds) > 1

