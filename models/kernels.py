"""Hand-written GPU kernels for the fast engine (Triton), each with the eager function it
replaces as its reference.

``masked_softmax``: the few-row attention's softmax(scale * s + bias) rounded to the model
dtype, in one kernel per call. Eagerly it is three (an add, a softmax, a cast: 9.8 us a
layer on an H200 at q = 1, Qwen3-8B shape), and torch.compile's shape-generic version
splits the reduction into a slower kernel (29-31 us a layer). One program holds one row.
Triton is imported on first use, so the module imports anywhere (a CPU build of torch
ships without it).
"""
from __future__ import annotations

import functools

import torch

__all__ = ["masked_softmax", "MAX_COLS"]

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
