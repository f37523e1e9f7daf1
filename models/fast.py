"""A compact dense decoder (Qwen3, Llama family) over a preallocated static KV cache,
and the captured-call helper the fast live engine replays.

The model reuses the parameter tensors of an already-loaded Hugging Face target (no copy,
no second load), so anything the loaders return runs here. One forward takes q query
tokens with explicit positions, the cache rows to write their K/V into, and a boolean
mask over the first ``kv_len`` cache rows; it returns float32 logits for every query row
and the draft's context features (the outputs of the tapped decoder layers). Committing
is moving a length; keeping other rows is an index copy inside the cache
(``StaticKV.move_rows``).

Shapes: q query rows, C cache capacity, H hidden, D head dim, V vocabulary, F features.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["FastTarget", "StaticKV", "StepGraph", "unsupported_reason", "SUPPORTED_TYPES"]

# HF model_type values whose decoder this module computes exactly: pre-norm RMSNorm
# blocks, RoPE, GQA attention (q/k RMSNorm for Qwen3), SwiGLU MLP.
SUPPORTED_TYPES = ("qwen3", "llama")


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
    """K/V of every layer in preallocated tensors [1, kv_heads, C, D]; ``length`` rows are
    committed. ``generation`` changes whenever the cache is handed to a new request, so a
    stale holder can tell."""

    def __init__(self, layers: int, kv_heads: int, capacity: int, head_dim: int, dtype, device):
        shape = (1, kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.capacity = capacity
        self.length = 0
        self.generation = 0

    def get_seq_length(self) -> int:
        return self.length

    def move_rows(self, src: torch.Tensor, dst_start: int) -> None:
        """Copy cache rows ``src`` (device index tensor) to rows dst_start, dst_start+1, ...
        in every layer (the gather reads before the write lands)."""
        dst = torch.arange(dst_start, dst_start + src.numel(), device=src.device)
        for k, v in zip(self.k, self.v):
            k.index_copy_(2, dst, k.index_select(2, src))
            v.index_copy_(2, dst, v.index_select(2, src))

    def grow(self, capacity: int) -> None:
        """Enlarge to ``capacity`` rows in place, keeping the rows held (the tensors are
        new, so graphs captured over the old ones must be dropped)."""
        for kv in (self.k, self.v):
            for i, old in enumerate(kv):
                shape = (*old.shape[:2], capacity, old.shape[3])
                kv[i] = torch.zeros(shape, dtype=old.dtype, device=old.device)
                kv[i][:, :, :self.capacity] = old
        self.capacity = capacity


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32, cast back, then scaled (Qwen3/Llama order)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (rotate-half) on x [1, heads, q, D] with cos/sin [1, q, D]."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@dataclass
class _Layer:
    """One decoder layer's parameters (the HF module's own tensors)."""
    attn_norm: torch.Tensor
    q: torch.nn.Linear
    k: torch.nn.Linear
    v: torch.nn.Linear
    o: torch.nn.Linear
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    mlp_norm: torch.Tensor
    gate: torch.nn.Linear
    up: torch.nn.Linear
    down: torch.nn.Linear


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
        self.embed = body.embed_tokens.weight
        self.norm = body.norm.weight
        self.head = hf_model.lm_head
        self.layers = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                layer.input_layernorm.weight, a.q_proj, a.k_proj, a.v_proj, a.o_proj,
                a.q_norm.weight if hasattr(a, "q_norm") else None,
                a.k_norm.weight if hasattr(a, "k_norm") else None,
                layer.post_attention_layernorm.weight, m.gate_proj, m.up_proj, m.down_proj))
        rotary = body.rotary_emb
        self.inv_freq = rotary.inv_freq.float().to(self.embed.device)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.taps = list(tap_layers)
        self.dtype, self.device = self.embed.dtype, self.embed.device
        self.vocab = self.embed.shape[0]
        self.max_positions = getattr(cfg, "max_position_embeddings", None)

    def new_cache(self, capacity: int) -> StaticKV:
        return StaticKV(len(self.layers), self.kv_heads, capacity, self.head_dim, self.dtype, self.device)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [1, q] -> cos, sin [1, q, D] in the model dtype (float32 math)."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rope_scale).to(self.dtype), (emb.sin() * self.rope_scale).to(self.dtype)

    def forward(self, kv: StaticKV, ids: torch.Tensor, positions: torch.Tensor,
                write_rows: torch.Tensor, mask: torch.Tensor, kv_len: int,
                last_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """ids/positions [1, q]; write_rows [q] cache rows receiving the queries' K/V;
        mask [1, 1, q, kv_len] bool (True = visible) over cache rows 0..kv_len-1, which
        must include the written rows. Returns logits [q, V] float32 (only the last
        row's, [1, V], with ``last_logits``: a prefill) and features [q, F]."""
        q_len = ids.shape[1]
        x = F.embedding(ids, self.embed)
        cos, sin = self.rope(positions)
        feats = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = rms_norm(x, layer.attn_norm, self.eps)
            q = layer.q(h).view(1, q_len, self.heads, self.head_dim)
            k = layer.k(h).view(1, q_len, self.kv_heads, self.head_dim)
            v = layer.v(h).view(1, q_len, self.kv_heads, self.head_dim).transpose(1, 2)
            if layer.q_norm is not None:
                q, k = rms_norm(q, layer.q_norm, self.eps), rms_norm(k, layer.k_norm, self.eps)
            q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
            kv.k[i].index_copy_(2, write_rows, k)
            kv.v[i].index_copy_(2, write_rows, v)
            out = F.scaled_dot_product_attention(q, kv.k[i][:, :, :kv_len], kv.v[i][:, :, :kv_len],
                                                 attn_mask=mask, scale=self.head_dim ** -0.5,
                                                 enable_gqa=self.heads != self.kv_heads)
            x = x + layer.o(out.transpose(1, 2).reshape(1, q_len, -1))
            h = rms_norm(x, layer.mlp_norm, self.eps)
            x = x + layer.down(F.silu(layer.gate(h)) * layer.up(h))
            if i in self.taps and i != last:
                feats.append((self.taps.index(i), x))
        x = rms_norm(x, self.norm, self.eps)
        if last in self.taps:
            feats.append((self.taps.index(last), x))
        feats = torch.cat([f for _, f in sorted(feats, key=lambda t: t[0])], dim=-1)
        if last_logits:
            x = x[:, -1:]
        return self.head(x)[0].float(), feats[0]


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
