"""Hand-written GPU kernels for the fast engine (Triton), each with the eager function it
replaces as its reference.

``masked_softmax``: the few-row attention's softmax(scale * s + bias) rounded to the model
dtype, in one kernel per call. Eagerly it is three (an add, a softmax, a cast: 9.8 us a
layer on an H200 at q = 1, Qwen3-8B shape), and torch.compile's shape-generic version
splits the reduction into a slower kernel (29-31 us a layer). One program holds one row.
``qk_rope_cache``: a layer's q/k RMSNorm and RoPE, q laid out head-major and k/v written
into their cache rows, in one kernel (see below), against models/fast.py's ``qk_rope``
and the cache's index copies.
``topk_logsumexp``: the top-k ids and log-probabilities of many rows of logits (the
oracle's draft LM head rows) in one read of the logits, against live/drafting.py's
``topk_on_device`` (a float32 copy, a logsumexp and a radix top-k).

Triton is imported on first use, so the module imports anywhere (a CPU build of torch
ships without it).
"""
from __future__ import annotations

import functools

import torch

__all__ = ["masked_softmax", "MAX_COLS", "qk_rope_cache", "rope_cache_fits", "topk_fits", "topk_logsumexp",
           "topk_reads"]

# Keys one program holds in registers; longer rows take the eager reference.
MAX_COLS = 16384


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def softmax_rows(s_ptr, b_ptr, o_ptr, n_cols, bias_rows, scale,
                     HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        inside = cols < n_cols
        x = tl.load(s_ptr + row * n_cols + cols, mask=inside, other=float("-inf")) * scale
        if HAS_BIAS:
            # the bias [R, S] is shared by the KV heads: row r of s reads bias row r % R
            b = tl.load(b_ptr + (row % bias_rows) * n_cols + cols, mask=inside, other=float("-inf"))
            x = x + b.to(tl.float32)
        e = tl.exp(x - tl.max(x, axis=0))
        p = e / tl.sum(e, axis=0)
        tl.store(o_ptr + row * n_cols + cols, p.to(o_ptr.dtype.element_ty), mask=inside)

    return triton, softmax_rows


def masked_softmax(s: torch.Tensor, bias: torch.Tensor | None, scale: float, dtype) -> torch.Tensor:
    """``models.fast.masked_softmax`` in one kernel: s [KV, R, S] float32 scores, bias
    [1, R, S] additive (model dtype) or None; returns softmax(scale * s + bias) over S in
    float32, rounded to ``dtype``. Falls back to the eager reference off the GPU, for
    rows longer than MAX_COLS, or for layouts the kernel does not read."""
    from specreplay.models.fast import masked_softmax as eager
    S = s.shape[-1]
    if (not s.is_cuda or S > MAX_COLS or s.dtype != torch.float32 or not s.is_contiguous()
            or (bias is not None and (not bias.is_contiguous() or bias.shape[-2:] != s.shape[-2:]
                                      or bias.numel() != s.shape[-2] * S))):
        return eager(s, bias, scale, dtype)
    triton, kernel = _kernel()
    out = torch.empty(s.shape, dtype=dtype, device=s.device)
    rows = s.numel() // S
    block = triton.next_power_of_2(S)
    kernel[(rows,)](s, s if bias is None else bias, out, S, s.shape[-2], float(scale),
                    HAS_BIAS=bias is not None, BLOCK=block, num_warps=4 if block <= 2048 else 8)
    return out


# ---- q/k norm, RoPE and the cache write in one kernel ---------------------------------
#
# ``qk_rope_cache``: from a layer's fused q/k/v projection output, the per-head q/k
# RMSNorm (Qwen3; none for Llama), RoPE from the position table, q laid out head-major
# (the [KV, G*q, D] layout the few-row attention reads) and k/v written into their cache
# rows. Eagerly and compiled this is four kernels (norm + RoPE, two index copies, and the
# copy that lays q out by head when q > 1), each a few microseconds on data that fits in
# one; one program per (token, head) does it here. The arithmetic stays in float32 and
# rounds once, to the model dtype, at the end: the eager stages round after the norm,
# after the weight and after each RoPE product, so this kernel is no further from a
# float32 model than they are (tests/test_models_kernels.py holds it to one rounding of
# the exact result).

@functools.cache
def _rope_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def qk_rope_cache_rows(qkv_ptr, nw_ptr, tab_ptr, pos_ptr, row_ptr, q_ptr, k_ptr, v_ptr,
                           n, s_tok, s_kvh, eps, H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr,
                           FIRST: tl.constexpr, HAS_NORM: tl.constexpr):
        t = tl.program_id(0)
        h = tl.program_id(1) + FIRST          # head index in q, k, v order
        dt = q_ptr.dtype.element_ty
        d = tl.arange(0, D)
        src = qkv_ptr + t * s_tok + (h - FIRST) * D
        row = tl.load(row_ptr + t)
        if h < H + KV:
            rolled = (d + D // 2) % D
            x = tl.load(src + d).to(tl.float32)
            xr = tl.load(src + rolled).to(tl.float32)
            if HAS_NORM:
                r = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
                w = tl.load(nw_ptr + h * D + d).to(tl.float32)
                wr = tl.load(nw_ptr + h * D + rolled).to(tl.float32)
                x = x * r * w
                xr = xr * r * wr
            pos = tl.load(pos_ptr + t)
            cos = tl.load(tab_ptr + pos * 2 * D + d).to(tl.float32)
            sin = tl.load(tab_ptr + pos * 2 * D + D + d).to(tl.float32)
            y = (x * cos + xr * sin).to(dt)
            if h < H:
                tl.store(q_ptr + (h * n + t) * D + d, y)
            else:
                tl.store(k_ptr + (h - H) * s_kvh + row * D + d, y)
        else:
            tl.store(v_ptr + (h - H - KV) * s_kvh + row * D + d, tl.load(src + d))

    return qk_rope_cache_rows


def qk_rope_cache(qkv: torch.Tensor, norm: torch.Tensor | None, table: torch.Tensor, positions: torch.Tensor,
                  rows: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, heads: int, kv_heads: int,
                  eps: float, first: int = 0) -> torch.Tensor | None:
    """qkv [n, (heads + 2 kv_heads - first) * D] (q, k, v heads from head ``first`` on:
    0 = all, ``heads`` = k and v only); norm [heads + kv_heads, D] or None; table [P, 2,
    D] (``models.fast.rope_table``); positions, rows [n] int64; k_cache, v_cache
    [1, KV, C, D] views of one layer. Writes k and v into cache rows ``rows`` and returns
    q as [heads, n, D] (None when first = heads). The caller checks ``rope_cache_fits``."""
    n = qkv.shape[0]
    D = table.shape[-1]
    q = None if first >= heads else torch.empty((heads, n, D), dtype=qkv.dtype, device=qkv.device)
    _rope_kernel()[(n, heads + 2 * kv_heads - first)](
        qkv, qkv if norm is None else norm, table, positions, rows, qkv if q is None else q, k_cache, v_cache,
        n, qkv.stride(0), k_cache.stride(1), float(eps), H=heads, KV=kv_heads, D=D, FIRST=first,
        HAS_NORM=norm is not None, num_warps=1)
    return q


def rope_cache_fits(qkv: torch.Tensor, norm, table, k_cache: torch.Tensor) -> bool:
    """Whether ``qk_rope_cache`` reads these layouts (else the eager stages run)."""
    D = table.shape[-1]
    return (qkv.is_cuda and qkv.dim() == 2 and qkv.stride(1) == 1 and D & (D - 1) == 0
            and table.is_contiguous() and table.dtype == qkv.dtype and k_cache.dtype == qkv.dtype
            and k_cache.stride(-1) == 1 and k_cache.stride(-2) == D
            and (norm is None or (norm.is_contiguous() and norm.dtype == qkv.dtype)))


# ---- top-k and logsumexp of logit rows in one read --------------------------------------
#
# ``topk_logsumexp``: the oracle drafts ~10^5 rows a sample of 128 tokens (every start,
# block size and probe), each with the LM head over the whole vocabulary. The reference
# (``topk_on_device``) copies the logits to float32 and reads them again for the
# logsumexp and for a radix top-k: on an H100 with the Qwen3-8B head that took longer
# than the head's matmul. Here one program reads one tile of a row once, in the logits'
# dtype, and keeps the tile's max, its sum of exp(x - max) (float32) and its own top-k;
# the few candidates per row are merged after. The float32 sums add in another order than
# torch.logsumexp's, so a log-probability may differ in its last float32 bits and, once
# in a while, round to the neighbouring float16 step; ids are exact, equal logits going
# to the lower id.

_TILE = 4096


@functools.cache
def _topk_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def topk_lse_tiles(x_ptr, m_ptr, s_ptr, v_ptr, i_ptr, n_cols, stride, n_tiles,
                       K: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        tile = tl.program_id(1)
        lane = tl.arange(0, BLOCK)
        cols = tile * BLOCK + lane
        x = tl.load(x_ptr + row.to(tl.int64) * stride + cols, mask=cols < n_cols,
                    other=float("-inf")).to(tl.float32)
        m = tl.max(x, axis=0)
        out = row * n_tiles + tile
        tl.store(m_ptr + out, m)
        # a tile of -inf logits only (a masked vocabulary's padding) adds nothing
        tl.store(s_ptr + out, tl.where(m == float("-inf"), 0.0, tl.sum(tl.exp(x - m), axis=0)))
        for r in tl.static_range(K):
            i = tl.argmax(x, axis=0, tie_break_left=True)
            tl.store(v_ptr + out * K + r, tl.max(x, axis=0))
            tl.store(i_ptr + out * K + r, tile * BLOCK + i)
            x = tl.where(lane == i, float("-inf"), x)

    return topk_lse_tiles


def topk_reads(device: torch.device, dtype: torch.dtype, vocab: int, k: int) -> bool:
    """Whether ``topk_logsumexp`` reads contiguous logits [n, vocab] of this kind."""
    return (device.type == "cuda" and 1 <= k <= min(16, vocab)
            and dtype in (torch.float32, torch.bfloat16, torch.float16))


def topk_fits(logits: torch.Tensor, k: int) -> bool:
    """Whether ``topk_logsumexp`` reads these logits (else use ``topk_on_device``)."""
    return (logits.dim() == 2 and logits.stride(1) == 1
            and topk_reads(logits.device, logits.dtype, logits.shape[1], k))


def topk_logsumexp(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [n, V] on the GPU -> top-k ids (int32 [n, k], by falling logit) and
    log-softmax values rounded to float16 and back to float32 ([n, k]): the values of
    live/drafting.py's ``topk_on_device`` (see above for its last bits). Equal logits
    come in increasing id, where ``torch.topk`` leaves their order open. A row with fewer
    than k finite logits (none in an LM head) may repeat an id at -inf. The caller checks
    ``topk_fits``."""
    n, V = logits.shape
    tiles = -(-V // _TILE)
    dev = logits.device
    m = torch.empty((n, tiles), dtype=torch.float32, device=dev)
    s = torch.empty_like(m)
    v = torch.empty((n, tiles * k), dtype=torch.float32, device=dev)
    i = torch.empty((n, tiles * k), dtype=torch.int32, device=dev)
    if n:
        with torch.cuda.device(dev):  # Triton launches on the current device
            _topk_kernel()[(n, tiles)](logits, m, s, v, i, V, logits.stride(0), tiles, K=k, BLOCK=_TILE, num_warps=8)
    top = m.amax(-1, keepdim=True)
    lse = top + torch.log((s * torch.exp(m - top)).sum(-1, keepdim=True))
    # a stable sort keeps equal logits in tile order, and each tile gave them lowest id first
    vals, order = torch.sort(v, dim=-1, descending=True, stable=True)
    ids = torch.gather(i, 1, order[:, :k])
    return ids, (vals[:, :k] - lse).to(torch.float16).to(torch.float32)
