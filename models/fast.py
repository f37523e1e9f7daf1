"""A compact dense decoder (Qwen3, Llama family) over a preallocated static KV cache,
and the captured-call helper the fast live engine replays.

The model computes with the parameters of an already-loaded Hugging Face target: the
q/k/v projections of a layer are concatenated into one matrix and gate/up into another
(one matmul each instead of three and two), and the HF modules' weights are rebound to
row slices of those matrices, so both backends read the same memory and nothing is held
twice. One forward takes q query tokens with explicit positions, the cache rows to write
their K/V into, and a boolean mask over the first ``kv_len`` cache rows; it returns
float32 logits for the query rows asked for and the draft's context features (the
outputs of the tapped decoder layers). Committing is moving a length; keeping other rows
is an index copy inside the cache (``StaticKV.move_rows``).

What keeps a forward short (every op is a kernel launch, and a captured step replays
them all): RoPE cos/sin come from a table indexed by position (one gather per forward,
not per layer); the boolean mask becomes one additive bias per forward; grouped-query
attention folds each KV head's query group into the query-length axis, so attention
reads K/V once per KV head (an explicit mask with ``enable_gqa`` falls back to the
math kernel, which expands K/V per query head), and few query rows on a GPU take two
batched matmuls (or, with ``FEW_ROW_KERNEL``, one kernel whose keys are split over the
GPU) rather than a fused kernel that would leave most of the GPU idle; the residual
adds are fused into the output matmuls (``addmm_``) and the tapped layers' outputs are
copied straight into one preallocated feature buffer. On a GPU the elementwise stages
(RMSNorm, q/k norm + RoPE, SwiGLU) may run compiled, one generated kernel each
(``fused_stages``); where Triton is installed the attention softmax and the q/k norm +
RoPE + cache write run as hand-written kernels, and the whole few-row attention can
(``FEW_ROW_KERNEL``; models/kernels.py, see there).

Shapes: q query rows, C cache capacity, H hidden, D head dim, V vocabulary, F features,
G = query heads per KV head.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from specreplay.models.kernels import few_rows_fit, rope_cache_fits

__all__ = ["FastTarget", "StaticKV", "StepGraph", "unsupported_reason", "SUPPORTED_TYPES",
           "attend", "attention", "attention_bias", "fuse_linears", "rope_table", "small_attention", "EAGER",
           "Stages", "fused_stages", "stages_failed"]

# HF model_type values whose decoder this module computes exactly: pre-norm RMSNorm
# blocks, RoPE, GQA attention (q/k RMSNorm for Qwen3), SwiGLU MLP.
SUPPORTED_TYPES = ("qwen3", "llama")

# Attention kernels, best first. cuDNN is left out: it plans per shape, and the math
# kernel is kept only as the last resort (a CPU, an odd head size).
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

# Query rows per KV head (G x query tokens) up to which attention runs as the few-row
# kernel (models/kernels.py) or batched matmuls (``small_attention``) instead of the
# fused SDPA kernels. Those tile 64 query rows per program, so a decode or verify step
# (G*q = 4..64 rows) runs on one program per KV head, 8 of an H200's 132
# multiprocessors: 29 us per layer over 640 keys (measured, Qwen3-8B shape, bf16), a
# sixth of a whole forward at q = 1; the few-row routes spread the keys over the GPU.
# Prefill and other long query runs keep the fused kernels. (The flash kernel, which
# splits keys, takes no explicit mask.)
SMALL_ATTENTION_ROWS = 256

# Whether captured calls take models/kernels.py's few-row attention (the keys split
# across the GPU, then merged) instead of ``small_attention``'s batched matmuls. Off by
# default: its speed against them is not measured on a GPU yet. benchmarks/live_speed.py
# --compare-few-row-attention times both in one run; --few-row-attention sets this
# (before the first ``fused_stages`` call of the process, which reads it).
FEW_ROW_KERNEL = False

# Rows of the RoPE table built up front when the config names no position limit (it
# grows with the cache beyond that).
_ROPE_ROWS = 8192


def unsupported_reason(target) -> str | None:
    """Why the graph backend cannot run ``target`` (one sentence naming ``--backend hf``),
    or None when it can."""
    cfg = target.config
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return (f"the graph backend runs Qwen3 and Llama-family dense targets, not model type "
                f"{kind!r}; use --backend hf for this target.")
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or []):
        return "the graph backend does not run sliding-window attention layers; use --backend hf for this target."
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"the graph backend runs SwiGLU (silu) MLPs, not {cfg.hidden_act!r}; use --backend hf for this target."
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if str(rope.get("rope_type", "default")).startswith("dynamic"):
        return "the graph backend needs static RoPE frequencies, not dynamic scaling; use --backend hf for this target."
    return None


class StaticKV:
    """K/V of every layer in one preallocated tensor [layers, 2, kv_heads, C, D], seen per
    layer as ``k[i]`` / ``v[i]`` [1, kv_heads, C, D]; ``length`` rows are committed.
    One tensor, so that moving rows (a tree's chosen path, a candidate's row) is one
    gather and one scatter for the whole cache, not two per layer launched from the
    host (144 kernels on a Qwen3-8B shape, in every tree cycle whose accepted path is not
    already laid out in place).
    ``generation`` changes whenever the cache is handed to a new request, so a stale
    holder can tell."""

    def __init__(self, layers: int, kv_heads: int, capacity: int, head_dim: int, dtype, device):
        self.buf = torch.zeros((layers, 2, kv_heads, capacity, head_dim), dtype=dtype, device=device)
        self._views()
        self.capacity = capacity
        self.length = 0
        self.generation = 0

    def _views(self) -> None:
        self.k = [self.buf[i, 0][None] for i in range(self.buf.shape[0])]
        self.v = [self.buf[i, 1][None] for i in range(self.buf.shape[0])]

    def get_seq_length(self) -> int:
        return self.length

    def move_rows(self, src: torch.Tensor, dst_start: int) -> None:
        """Copy cache rows ``src`` (device index tensor) to rows dst_start, dst_start+1, ...
        in every layer (the gather reads before the write lands)."""
        dst = torch.arange(dst_start, dst_start + src.numel(), device=src.device)
        self.buf.index_copy_(3, dst, self.buf.index_select(3, src))

    def grow(self, capacity: int) -> None:
        """Enlarge to ``capacity`` rows in place, keeping the rows held (the tensor is new,
        so graphs captured over the old one must be dropped)."""
        old = self.buf
        shape = (*old.shape[:3], capacity, old.shape[4])
        self.buf = torch.zeros(shape, dtype=old.dtype, device=old.device)
        self.buf[:, :, :, :self.capacity] = old
        self._views()
        self.capacity = capacity


def fuse_linears(mods: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for linears that read the same input: their rows stacked.
    Each module's weight is rebound to its row slice of the stacked tensor (a contiguous
    view), so the modules keep computing what they did and the memory is held once.
    Done once per module set; a second call returns the same tensors."""
    first = mods[0]
    cached = getattr(first, "_fused_with", None)
    if cached is not None and cached[0] == [id(m) for m in mods] and \
            first.weight.data_ptr() == cached[1].data_ptr():
        return cached[1], cached[2]
    # ordinary tensors even when built inside inference mode: the hf backend's modules
    # keep using them
    with torch.inference_mode(False), torch.no_grad():
        weight = torch.cat([m.weight for m in mods])
        has_bias = [m.bias is not None for m in mods]
        bias = torch.cat([m.bias for m in mods]) if all(has_bias) else None
        if any(has_bias) and bias is None:
            bias = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.weight.shape[0])
                              for m in mods])
        start = 0
        for m in mods:
            n = m.weight.shape[0]
            m.weight = torch.nn.Parameter(weight[start:start + n], requires_grad=False)
            if m.bias is not None:
                m.bias = torch.nn.Parameter(bias[start:start + n], requires_grad=False)
            start += n
    first._fused_with = ([id(m) for m in mods], weight, bias)
    return weight, bias


def rope_table(inv_freq: torch.Tensor, scale: float, rows: int, dtype, device) -> torch.Tensor:
    """[rows, 2, D] cos and sign-folded sin per position, rotate-half convention, in the
    model dtype from float32 math (as transformers rounds them). The sin half that
    multiplies the negated upper half carries the minus sign, so RoPE is
    ``x * cos + roll(x, D/2) * sin`` with no negation or concatenation."""
    pos = torch.arange(rows, dtype=torch.float32, device=device)
    freqs = pos[:, None] * inv_freq.float().to(device)[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * scale, emb.sin() * scale
    half = emb.shape[-1] // 2
    sin[:, :half] = -sin[:, :half]
    return torch.stack((cos, sin), dim=1).to(dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x [..., heads, D] with cos/sin broadcastable to it (from ``rope_table``)."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin


def qk_rope(qk: torch.Tensor, norm: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
            eps: float) -> torch.Tensor:
    """The per-head q/k RMSNorm (normalise, then scale in the model dtype: Qwen3's order;
    skipped when ``norm`` is None) and RoPE, on qk [1, q, heads, D]."""
    if norm is not None:
        qk = F.rms_norm(qk, (qk.shape[-1],), None, eps) * norm
    return rope(qk, cos, sin)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def swiglu(gu: torch.Tensor, intermediate: int) -> torch.Tensor:
    """silu(gate) * up of the fused gate/up projection's output."""
    return F.silu(gu[..., :intermediate]) * gu[..., intermediate:]


@dataclass(frozen=True)
class Stages:
    """The stages a forward calls through (``self.stages.qk_rope``...): the plain eager
    functions (``EAGER``), or their compiled versions and hand-written kernels
    (``fused_stages``). ``rope_cache`` (models/kernels.py's ``qk_rope_cache``) is None
    on the eager path: there the layer runs the eager norm + RoPE and the cache's index
    copies, in transformers' rounding order. ``few_rows`` (models/kernels.py's
    ``few_row_attention``) is None there too: few query rows take ``small_attention``."""
    qk_rope: Callable
    swiglu: Callable
    rms_norm: Callable
    softmax: Callable
    name: str
    rope_cache: Callable | None = None
    few_rows: Callable | None = None


# per device: the compiled stages, or why they could not be used (``stages_failed``)
_FUSED: dict[str, "Stages | str"] = {}


def fused_stages(device) -> tuple["Stages", str]:
    """On a GPU, the stages compiled by torch.compile: one generated kernel per stage
    instead of two to seven (0.6-0.8 ms of a Qwen3-8B-shaped forward on an H200,
    measured over these three), shape-generic so one compile
    serves every query length, compiled on first use. Inductor is asked to round every
    intermediate to the model dtype where eager does (``emulate_precision_casts``; on a
    CPU the compiled stages then equal the eager ones bit for bit, checked), so compiled
    and eager compute the same numbers; benchmarks/live_speed.py's check compares the
    captured calls with eager ones on the GPU. Returns (stages, what they are): ``EAGER``
    and the reason on a CPU (the float32 equality tests compare the eager order) or
    after ``stages_failed`` (a caller's first real use could not compile)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return EAGER, "eager elementwise stages (a CPU)"
    key = str(dev)
    if key not in _FUSED:
        opts = {"emulate_precision_casts": True}
        # The attention softmax is not compiled: shape-generic, its one generated kernel
        # took 29-31 us per layer on an H200 (Qwen3-8B shape, bf16, context 512, q = 1 and
        # 16; torch.profiler), a sixth of the whole forward. It runs as the hand-written
        # kernel of models/kernels.py where Triton is installed, eagerly (an add, a
        # softmax and a cast) where it is not.
        softmax, which, rope_cache, few_rows = masked_softmax, "eager softmax", None, None
        if importlib.util.find_spec("triton") is not None:
            from specreplay.models import kernels
            softmax, rope_cache = kernels.masked_softmax, kernels.qk_rope_cache
            which = "Triton softmax and q/k norm + RoPE + cache write"
            if FEW_ROW_KERNEL:
                few_rows = kernels.few_row_attention
                which = "Triton few-row attention, softmax and q/k norm + RoPE + cache write"
        _FUSED[key] = Stages(*(torch.compile(f, dynamic=True, fullgraph=True, options=opts)
                               for f in (qk_rope, swiglu, rms_norm)), softmax,
                             name=f"compiled elementwise stages (torch.compile), {which}",
                             rope_cache=rope_cache, few_rows=few_rows)
    got = _FUSED[key]
    return (EAGER, got) if isinstance(got, str) else (got, got.name)


def stages_failed(device, err: BaseException) -> str:
    """Record that the compiled stages failed on ``device`` (later ``fused_stages`` calls
    return ``EAGER``); returns the reason, one line."""
    why = str(err).splitlines()[0][:160] if str(err) else ""
    reason = f"eager elementwise stages: torch.compile failed ({type(err).__name__}: {why})"
    _FUSED[str(torch.device(device))] = reason
    return reason


def attention_bias(mask: torch.Tensor | None, groups: int, dtype) -> torch.Tensor | None:
    """A boolean mask [1, 1, q, S] (True = visible) as the additive bias [1, 1, G*q, S]
    that ``attention`` takes (its rows repeat per query head of a group), or None."""
    if mask is None:
        return None
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return bias.repeat(1, 1, groups, 1) if groups > 1 else bias


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
              scale: float, stages: "Stages | None" = None) -> torch.Tensor:
    """Grouped-query attention. q [1, n, H, D] query rows; k, v [1, KV, S, D]; bias from
    ``attention_bias`` (or None: all visible). Each KV head's G query heads are laid out
    as G*n query rows of that head, so no kernel expands K/V. Returns [1, n, H*D]."""
    _, n, heads, d = q.shape
    kv_heads = k.shape[1]
    g = heads // kv_heads
    q = q.view(1, n, kv_heads, g, d).permute(0, 2, 3, 1, 4).reshape(1, kv_heads, g * n, d)
    out = attend(q, k, v, bias, scale, stages)
    return out.reshape(1, kv_heads, g, n, d).permute(0, 3, 1, 2, 4).reshape(1, n, heads * d)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float,
           stages: "Stages | None" = None) -> torch.Tensor:
    """``attention`` on q already laid out per KV head, [1, KV, G*n, D] (the [H, n, D]
    head-major order); returns the output in the same layout."""
    if small_route(q.shape[2], q):
        st = stages or EAGER
        q, k, v, bias = q[0], k[0], v[0], None if bias is None else bias[0]
        if st.few_rows is not None and few_rows_fit(q, k, v, bias):
            return st.few_rows(q, k, v, bias, scale)[None]
        return small_attention(q, k, v, bias, scale, st.softmax)[None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def small_route(rows: int, q: torch.Tensor) -> bool:
    """Whether ``attention`` takes ``small_attention`` for ``rows`` query rows per KV head:
    on a GPU up to SMALL_ATTENTION_ROWS (the speed reason is there). On a CPU the SDPA
    kernel stays, so float32 runs keep the hf backend's rounding order (both orders are
    equally close to a float64 reference; a test runs the decoder through this route on a
    CPU too)."""
    return q.is_cuda and rows <= SMALL_ATTENTION_ROWS


def small_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                    scale: float, softmax: Callable | None = None) -> torch.Tensor:
    """Attention of few query rows as two batched matmuls around a float32 softmax.
    q [KV, R, D]; k, v [KV, S, D]; bias [1, R, S] additive or None. The scores and the
    softmax are float32 (as the fused kernels keep them); the probabilities are rounded
    to the model dtype before they weight V (as the fused kernels do too). ``softmax``:
    a ``masked_softmax`` (the stages' one)."""
    if q.is_cuda and q.dtype != torch.float32:
        s = torch.bmm(q, k.transpose(1, 2), out_dtype=torch.float32)
    else:
        s = torch.bmm(q.float(), k.float().transpose(1, 2))
    return torch.bmm((softmax or masked_softmax)(s, bias, scale, v.dtype), v)


def masked_softmax(s: torch.Tensor, bias: torch.Tensor | None, scale: float, dtype) -> torch.Tensor:
    """softmax(scale * s + bias) over the last dimension, in float32, rounded to dtype."""
    s = s * scale if bias is None else torch.add(bias, s, alpha=scale)
    return torch.softmax(s, dim=-1).to(dtype)


EAGER = Stages(qk_rope, swiglu, rms_norm, masked_softmax, "eager elementwise stages")


@dataclass
class _Layer:
    """One decoder layer's fused parameters."""
    attn_norm: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    qk_norm: torch.Tensor | None      # [heads + kv_heads, D]: q_norm rows then k_norm rows
    mlp_norm: torch.Tensor
    w13: torch.Tensor                 # gate rows then up rows
    b13: torch.Tensor | None
    w2: torch.Tensor
    b2: torch.Tensor | None


def _residual(x: torch.Tensor, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """x += h @ w.T (+ b), in place. On a GPU the add happens inside the matmul (addmm_:
    one kernel, one rounding); on a CPU it is a separate add, rounding as transformers
    does, which the float32 equality tests compare against."""
    if x.is_cuda and b is None:
        x.view(-1, x.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), w.t())
    else:
        x.add_(F.linear(h, w, b))


class FastTarget:
    """The target decoder over a StaticKV. ``tap_layers``: decoder layers whose outputs
    are the draft's context features (the last layer's is taken after the final norm,
    as transformers reports its last hidden state)."""

    def __init__(self, hf_model, tap_layers: list[int]):
        reason = unsupported_reason(hf_model)
        if reason:
            raise ValueError(reason)
        cfg = hf_model.config
        body = hf_model.model
        self.eps = cfg.rms_norm_eps
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.hidden = cfg.hidden_size
        self.embed = body.embed_tokens.weight
        self.norm = body.norm.weight
        self.head_w = hf_model.lm_head.weight
        self.head_b = hf_model.lm_head.bias
        self.layers = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            wqkv, bqkv = fuse_linears([a.q_proj, a.k_proj, a.v_proj])
            w13, b13 = fuse_linears([m.gate_proj, m.up_proj])
            qk_norm = None
            if hasattr(a, "q_norm"):
                qk_norm = torch.cat((a.q_norm.weight.detach().expand(self.heads, -1),
                                     a.k_norm.weight.detach().expand(self.kv_heads, -1)))
            self.layers.append(_Layer(
                layer.input_layernorm.weight.detach(), wqkv, bqkv, a.o_proj.weight.detach(),
                _detach(a.o_proj.bias), qk_norm, layer.post_attention_layernorm.weight.detach(),
                w13, b13, m.down_proj.weight.detach(), _detach(m.down_proj.bias)))
        self.intermediate = self.layers[0].w13.shape[0] // 2
        rotary = body.rotary_emb
        self.inv_freq = rotary.inv_freq.float().to(self.embed.device)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.taps = list(tap_layers)
        self.stages = EAGER
        self.dtype, self.device = self.embed.dtype, self.embed.device
        self.vocab = self.embed.shape[0]
        self.max_positions = getattr(cfg, "max_position_embeddings", None)
        self.table = None
        self.ensure_positions(min(self.max_positions or _ROPE_ROWS, 1 << 16))

    def ensure_positions(self, rows: int) -> None:
        """A RoPE table covering positions 0..rows-1 (a larger one is a new tensor, so
        graphs captured over the old one must be dropped: the caches grow with it)."""
        if self.table is None or self.table.shape[0] < rows:
            self.table = rope_table(self.inv_freq, self.rope_scale, rows, self.dtype, self.device)

    def new_cache(self, capacity: int) -> StaticKV:
        self.ensure_positions(capacity)
        return StaticKV(len(self.layers), self.kv_heads, capacity, self.head_dim, self.dtype, self.device)

    def forward(self, kv: StaticKV, ids: torch.Tensor, positions: torch.Tensor,
                write_rows: torch.Tensor, mask: torch.Tensor, kv_len: int,
                last_logits: bool | int = False) -> tuple[torch.Tensor, torch.Tensor]:
        """ids/positions [1, q]; write_rows [q] cache rows receiving the queries' K/V;
        mask [1, 1, q, kv_len] bool (True = visible) over cache rows 0..kv_len-1, which
        must include the written rows. Returns logits [q, V] float32 and features [q, F].
        ``last_logits``: True = only the last row's logits ([1, V], a prefill), n = the
        last n rows' (the LM head runs over those rows only)."""
        with sdpa_kernel(SDPA_BACKENDS):
            return self._forward(kv, ids, positions, write_rows, mask, kv_len, int(last_logits))

    def _forward(self, kv, ids, positions, write_rows, mask, kv_len, last_logits: int):
        n = ids.shape[1]
        H, KV, D = self.heads, self.kv_heads, self.head_dim
        x = F.embedding(ids, self.embed)
        cs = self.table[positions[0]]                       # [q, 2, D]
        cos, sin = cs[None, :, None, 0], cs[None, :, None, 1]
        bias = attention_bias(mask, H // KV, self.dtype)
        feats = torch.empty(1, n, len(self.taps) * self.hidden, dtype=self.dtype, device=x.device)
        last = len(self.layers) - 1
        scale = D ** -0.5
        st = self.stages
        for i, layer in enumerate(self.layers):
            h = st.rms_norm(x, layer.attn_norm, self.eps)
            qkv = F.linear(h, layer.wqkv, layer.bqkv)
            k_i, v_i = kv.k[i], kv.v[i]
            if st.rope_cache is not None and rope_cache_fits(qkv[0], layer.qk_norm, self.table, k_i):
                # one kernel: q comes out head-major, k/v go straight into their cache rows
                qh = st.rope_cache(qkv[0], layer.qk_norm, self.table, positions[0], write_rows,
                                   k_i, v_i, H, KV, self.eps)
                out = attend(qh.view(1, KV, -1, D), k_i[:, :, :kv_len], v_i[:, :, :kv_len], bias, scale, st)
                out = out.reshape(H, n, D).transpose(0, 1).reshape(1, n, H * D)
            else:
                qk = st.qk_rope(qkv[..., :(H + KV) * D].view(1, n, H + KV, D), layer.qk_norm, cos, sin, self.eps)
                v = qkv[..., (H + KV) * D:].view(1, n, KV, D)
                k_i.index_copy_(2, write_rows, qk[:, :, H:].transpose(1, 2))
                v_i.index_copy_(2, write_rows, v.transpose(1, 2))
                out = attention(qk[:, :, :H], k_i[:, :, :kv_len], v_i[:, :, :kv_len], bias, scale, st)
            _residual(x, out, layer.wo, layer.bo)
            h = st.rms_norm(x, layer.mlp_norm, self.eps)
            gu = F.linear(h, layer.w13, layer.b13)
            act = st.swiglu(gu, self.intermediate)
            _residual(x, act, layer.w2, layer.b2)
            if i in self.taps and i != last:
                j = self.taps.index(i)
                feats[..., j * self.hidden:(j + 1) * self.hidden].copy_(x)
        x = F.rms_norm(x, (self.hidden,), self.norm, self.eps)
        if last in self.taps:
            j = self.taps.index(last)
            feats[..., j * self.hidden:(j + 1) * self.hidden].copy_(x)
        if last_logits:
            x = x[:, -last_logits:]
        return F.linear(x[0], self.head_w, self.head_b).float(), feats[0]


def _detach(t):
    return None if t is None else t.detach()


class StepGraph:
    """One step ``fn(*inputs)`` over static input buffers. On a GPU (``capture``) it is
    captured once into a CUDA graph and replayed; elsewhere it simply runs. Callers write
    new values into ``inputs`` in place (``copy_``), call ``run()`` and read the outputs
    it returns (the same tensors on every replay). ``capture_s``: seconds spent capturing."""

    def __init__(self, fn, inputs: tuple, capture: bool, pool=None):
        self.fn, self.inputs = fn, inputs
        self.graph, self.outputs, self.capture_s = None, None, 0.0
        if capture:
            t0 = time.perf_counter()
            torch.cuda.synchronize()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up runs choose kernels and allocate workspaces
                    fn(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.outputs = fn(*inputs)
            torch.cuda.synchronize()
            self.capture_s = time.perf_counter() - t0

    def run(self):
        if self.graph is None:
            return self.fn(*self.inputs)
        self.graph.replay()
        return self.outputs
