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
``few_row_attention``: the few-row attention of a decode or verify step (scores, masked
softmax, the weighted sum of V) as one kernel over the keys split across the GPU and a
merge kernel, against models/fast.py's ``small_attention`` (two batched matmuls around
``masked_softmax``).

Triton is imported on first use, so the module imports anywhere (a CPU build of torch
ships without it).
"""
from __future__ import annotations

import contextlib
import functools

import torch

__all__ = ["few_row_attention", "few_rows_fit", "few_rows_layout", "masked_softmax", "MAX_COLS", "qk_rope_cache",
           "rope_cache_fits", "topk_fits", "topk_logsumexp", "topk_reads"]

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


# ---- few-row attention with the keys split across the GPU ----------------------------
#
# ``few_row_attention``: a verify or decode step has G*q = 4..256 query rows per KV head
# and hundreds to thousands of keys. As two batched matmuls around a softmax that is
# three kernels a layer, two of which run few programs over so few rows. Here the keys
# are split into chunks, as many as keep about two programs per multiprocessor busy
# (``_split``); one program per (KV head, chunk, tile of rows) computes its scores
# (float32), the masked softmax's running max and sum and its share of P @ V (flash
# attention's online softmax, P rounded to the model dtype before it weights V, as the
# fused SDPA kernels do), and a second kernel merges the chunks of each row and rounds
# once. The chunks' float32 partial sums are about as large as the scores the matmuls
# write (at the few-thousand-key contexts of a step both fit in L2); what the kernel
# saves is launches and programs idling, not bytes. The reference rounds the normalised
# probabilities instead of the unnormalised ones, so the two differ by about one
# rounding of the output (tests/test_models_kernels.py holds the kernel to the
# reference's own distance from a float64 computation).

_KEY_TILE = 64
_MAX_SPLITS = 64
_MAX_ROWS = 256            # models/fast.py SMALL_ATTENTION_ROWS: longer runs take SDPA
_MAX_KEYS = 1 << 20        # keeps every offset inside int32


@functools.cache
def _attention_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def attend_split(q_ptr, k_ptr, v_ptr, b_ptr, m_ptr, l_ptr, acc_ptr, R, S, s_qh, s_kh, s_vh,
                     scale, HAS_BIAS: tl.constexpr, D: tl.constexpr, TILES: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        h = tl.program_id(0)
        sp = tl.program_id(1)
        rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
        n_splits = tl.num_programs(1)
        d = tl.arange(0, D)
        inside = rows < R
        q = tl.load(q_ptr + h * s_qh + rows[:, None] * D + d[None, :], mask=inside[:, None], other=0.0)
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        # TILES key tiles a chunk (a compile-time count: a few variants per model shape)
        for t in range(TILES):
            cols = (sp * TILES + t) * BLOCK_N + tl.arange(0, BLOCK_N)
            keys = cols < S
            k = tl.load(k_ptr + h * s_kh + cols[:, None] * D + d[None, :], mask=keys[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale
            if HAS_BIAS:
                # the bias [R, S] is shared by the KV heads
                b = tl.load(b_ptr + rows[:, None] * S + cols[None, :], mask=inside[:, None] & keys[None, :],
                            other=0.0)
                s = s + b.to(tl.float32)
            s = tl.where(keys[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            # a row that has seen no visible key yet keeps m = -inf: subtract 0 instead
            base = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - base[:, None])
            alpha = tl.exp(m - base)
            l = l * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + h * s_vh + cols[:, None] * D + d[None, :], mask=keys[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        out = (h * n_splits + sp) * R + rows
        tl.store(m_ptr + out, m, mask=inside)
        tl.store(l_ptr + out, l, mask=inside)
        tl.store(acc_ptr + out[:, None] * D + d[None, :], acc, mask=inside[:, None])

    @triton.jit
    def attend_merge(m_ptr, l_ptr, acc_ptr, o_ptr, R, n_splits, D: tl.constexpr, SPLITS: tl.constexpr):
        h = tl.program_id(0)
        r = tl.program_id(1)
        sp = tl.arange(0, SPLITS)
        used = sp < n_splits
        at = (h * n_splits + sp) * R + r
        m = tl.load(m_ptr + at, mask=used, other=float("-inf"))
        l = tl.load(l_ptr + at, mask=used, other=0.0)
        top = tl.max(m, axis=0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - top))
        d = tl.arange(0, D)
        acc = tl.load(acc_ptr + at[:, None] * D + d[None, :], mask=used[:, None], other=0.0)
        o = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
        tl.store(o_ptr + (h * R + r) * D + d, o.to(o_ptr.dtype.element_ty))

    return triton, attend_split, attend_merge


def few_rows_layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``few_row_attention`` reads these shapes and strides (any device): q
    [KV, R, D] contiguous (D a power of two, at least 16), k and v [KV, S, D] with
    contiguous rows (heads at any stride), bias None or R x S contiguous values (shared
    by the KV heads)."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        return False
    KV, R, D = q.shape
    S = k.shape[1]
    return (D >= 16 and D & (D - 1) == 0 and 0 < R <= _MAX_ROWS and 0 < S <= _MAX_KEYS and q.is_contiguous()
            and tuple(k.shape) == tuple(v.shape) == (KV, S, D)
            and k.stride(2) == 1 and k.stride(1) == D and v.stride(2) == 1 and v.stride(1) == D
            and (bias is None or (bias.is_contiguous() and tuple(bias.shape[-2:]) == (R, S)
                                  and bias.numel() == R * S)))


def few_rows_fit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``few_row_attention`` runs these inputs (else ``small_attention`` does):
    ``few_rows_layout``, on one GPU, in bf16 or fp16 with head size 64 or 128 (the dtypes
    and head sizes its tests cover)."""
    return (q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and k.dtype == q.dtype == v.dtype
            and q.shape[-1] in (64, 128)
            and k.device == q.device == v.device
            and (bias is None or (bias.device == q.device and bias.is_floating_point()))
            and few_rows_layout(q, k, v, bias))


@functools.cache
def _programs(device: torch.device) -> int:
    """Programs that keep the GPU busy: two per multiprocessor (Triton's interpreter: an
    H100's count)."""
    if device.type != "cuda":
        return 2 * 132
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def _split(S: int, KV: int, row_tiles: int, device: torch.device) -> tuple[int, int]:
    """(chunks, key tiles per chunk) for S keys: enough chunks for about two programs
    per multiprocessor, at most ``_MAX_SPLITS``; only the last chunk reaches past S."""
    tiles = -(-S // _KEY_TILE)
    want = -(-_programs(device) // (KV * row_tiles))
    per = -(-tiles // max(1, min(want, _MAX_SPLITS, tiles)))
    return -(-tiles // per), per


def few_row_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                      scale: float) -> torch.Tensor:
    """softmax(scale * q k^T + bias) v for q [KV, R, D] (each KV head's query rows), k, v
    [KV, S, D] (rows contiguous, heads at any stride: views of a cache), bias [1, R, S]
    additive or None; returns [KV, R, D] in q's dtype. The caller checks ``few_rows_fit``.
    A row must see at least one key (every query sees its own)."""
    triton, split, merge = _attention_kernels()
    KV, R, D = q.shape
    S = k.shape[1]
    block_m = min(64, max(16, triton.next_power_of_2(R)))
    row_tiles = -(-R // block_m)
    dev = q.device
    splits, tiles = _split(S, KV, row_tiles, dev)
    m = torch.empty((KV, splits, R), dtype=torch.float32, device=dev)
    l = torch.empty_like(m)
    acc = torch.empty((KV, splits, R, D), dtype=torch.float32, device=dev)
    out = torch.empty((KV, R, D), dtype=q.dtype, device=dev)
    # Triton launches on the current device (a CPU tensor: Triton's interpreter)
    with torch.cuda.device(dev) if q.is_cuda else contextlib.nullcontext():
        split[(KV, splits, row_tiles)](
            q, k, v, q if bias is None else bias, m, l, acc, R, S, q.stride(0), k.stride(0), v.stride(0),
            float(scale), HAS_BIAS=bias is not None, D=D, TILES=tiles, BLOCK_M=block_m,
            BLOCK_N=_KEY_TILE, num_warps=4)
        width = triton.next_power_of_2(splits)
        merge[(KV, R)](m, l, acc, out, R, splits, D=D, SPLITS=width, num_warps=1 if width <= 8 else 4)
    return out
