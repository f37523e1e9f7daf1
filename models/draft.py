"""The DFlash block-diffusion draft: a Qwen3-style decoder stack conditioned on the
target's hidden states.

One draft pass proposes a whole block. Block row 0 holds the anchor (the last committed
token), rows 1..b-1 hold the mask token (or seeds); row i sits at absolute position
anchor + i and its output predicts the token there. The target's hidden states of the
committed tokens at ``target_layer_ids`` are concatenated, fused by ``fc`` + ``hidden_norm``
into one vector per token, and injected into every layer as extra keys/values placed
before the block's own (at their absolute positions). Queries come from the block only;
attention inside the block is bidirectional. The draft owns no embedding and no LM head:
it borrows the target's through ``bind_target``.

Shapes: B batch, b block size, T context rows, H hidden size, n tapped target layers.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from specreplay.models.checkpoint import read_state_dict, write_state_dict
from specreplay.models.draft_config import DraftConfig, DraftConfigError, build_target_layer_ids

__all__ = ["ContextKV", "DFlashDraftModel", "DraftConfig", "build_target_layer_ids", "crop_cache", "new_cache"]

# Weights some exports carry that hold nothing (RoPE frequencies are rebuilt from config).
_IGNORED_WEIGHTS = ("rotary_emb.inv_freq",)

# Default memory budget for the attention scores (float32) of one chunk of blocks in
# forward_blocks, and the cap on the rows of one chunk.
_CHUNK_BYTES = 1 << 29
_CHUNK_ROWS = 8192
# Attention kernels the draft may use. cuDNN is left out: it builds a plan for every new
# shape, and the draft's key length changes on every call (measured on an H200: 41 ms
# per live draft pass with it, 5 ms without).
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def new_cache():
    """An empty draft KV cache (a transformers ``DynamicCache``). The draft appends the
    fused context K/V of the tokens passed to each ``forward`` call; block K/V are never
    stored, so its length is the number of context rows seen so far."""
    from transformers import DynamicCache

    return DynamicCache()


def crop_cache(cache, length: int) -> None:
    """Cut a KV cache (draft or target ``DynamicCache``) back to its first ``length`` rows;
    a no-op when it holds no more than that."""
    remove = cache.get_seq_length() - length
    if remove > 0:
        cache.crop(-remove)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as Qwen3 does."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for absolute positions (RoPE, rotate-half convention). The
    frequencies stay float32 on whatever device the positions are on: they are not a
    buffer, so casting the draft to bfloat16 cannot round them."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        self.config = config
        self.inv_freq, self.scaling = _rope_frequencies(config)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B,S] -> cos, sin [B,S,head_dim], computed in float32."""
        if self.inv_freq.device != position_ids.device:
            self.inv_freq = self.inv_freq.to(position_ids.device)
        freqs = position_ids.float()[..., None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


def _rope_frequencies(config: DraftConfig) -> tuple[torch.Tensor, float]:
    params = config.rope_parameters
    if params.get("rope_type", "default") == "default":
        dim = config.head_dim
        base = float(params["rope_theta"])
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
    # Scaled RoPE kinds: reuse transformers' published formulas on an equivalent config.
    from transformers import Qwen3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    qwen = Qwen3Config(**{k: v for k, v in config.to_dict().items() if k != "dflash_config"})
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[params["rope_type"]](qwen, None)
    return inv_freq.float(), float(scaling)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to x [B,heads,S,D] with cos/sin [B,S,D]."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class DraftAttention(nn.Module):
    """Block queries over [context K/V ; block K/V], with q/k RMSNorm, RoPE and GQA."""

    def __init__(self, config: DraftConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        sliding = config.layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = config.sliding_window if sliding else None
        # Checkpoints with sliding layers default to causal attention inside the block
        # there; a top-level is_causal overrides that for every layer.
        self.block_causal = sliding if config.is_causal is None else bool(config.is_causal)

    def project_kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows x [B,S,H] -> k, v [B,kv_heads,S,D] (k normed and rotated)."""
        B, S, _ = x.shape
        k = self.k_norm(self.k_proj(x).view(B, S, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return _rotate(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """x [B,b,H] block rows (normed); prefix_k/v [B,kv_heads,P,D] the context rows the
        block may see; mask broadcastable to [B,heads,b,P+b] (True = visible, or additive
        floats) or None for all visible. Returns [B,b,H]."""
        B, b, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, b, self.num_heads, self.head_dim)).transpose(1, 2)
        q = _rotate(q, cos, sin)
        k, v = self.project_kv(x, cos, sin)
        k = torch.cat((prefix_k.expand(B, -1, -1, -1), k), dim=2)
        v = torch.cat((prefix_v.expand(B, -1, -1, -1), v), dim=2)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        with sdpa_kernel(_SDPA_BACKENDS):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5)
        return self.o_proj(out.transpose(1, 2).reshape(B, b, -1))


    def forward_shared(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       ctx_k: torch.Tensor, ctx_v: torch.Tensor, ctx_mask: torch.Tensor,
                       own_mask: torch.Tensor | None) -> torch.Tensor:
        """Many blocks over ONE shared context, the same math as ``forward`` per block.
        x [c,b,H] (normed) the rows of c blocks; ctx_k/v [1,kv_heads,T,D] the context
        rows 0..T-1 of the sequence, never copied per block; ctx_mask [c,b,T] bool, the
        context rows each block row may see; own_mask [b,b] bool inside a block, or None
        for all visible. The queries of every block are stacked as rows of one matrix
        per key-value head, so the context scores of the whole chunk are one batched
        matmul over the heads, and a block's own rows add a small b x b product.
        Returns [c,b,H]."""
        c, b, _ = x.shape
        kv, g, D = self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim
        q = self.q_norm(self.q_proj(x).view(c, b, self.num_heads, D)).transpose(1, 2)
        q = _rotate(q, cos, sin)                                   # [c, h, b, D]
        k, v = self.project_kv(x, cos, sin)                        # [c, kv, b, D]
        q = q.reshape(c, kv, g * b, D)                             # head h = kv_head * g + j
        scale = D ** -0.5
        rows = q.permute(1, 0, 2, 3).reshape(kv, c * g * b, D)
        s_ctx = _mm32(rows, ctx_k[0].transpose(1, 2)) * scale                  # [kv, c*g*b, T]
        s_own = _mm32(q.reshape(c * kv, g * b, D), k.reshape(c * kv, b, D).transpose(1, 2)) \
            .view(c, kv, g * b, b) * scale                                     # [c, kv, g*b, b]
        T = s_ctx.shape[-1]
        s_ctx = s_ctx.view(kv, c, g, b, T).masked_fill_(~ctx_mask[None, :, None], float("-inf"))
        s_own = s_own.view(c, kv, g, b, b).permute(1, 0, 2, 3, 4)
        if own_mask is not None:
            s_own = s_own.masked_fill(~own_mask, float("-inf"))
        p = torch.softmax(torch.cat((s_ctx, s_own), dim=-1), dim=-1).to(v.dtype)
        p_ctx, p_own = p[..., :T], p[..., T:]
        # both parts of P @ V in float32 and one rounding of their sum, as the live
        # draft's one product over the context and the block's rows rounds once
        out = _mm32(p_ctx.reshape(kv, c * g * b, T), ctx_v[0]).view(kv, c, g, b, D)
        out = out + _mm32(p_own.permute(1, 0, 2, 3, 4).reshape(c * kv, g * b, b), v.reshape(c * kv, b, D)) \
            .view(c, kv, g, b, D).permute(1, 0, 2, 3, 4)
        out = out.to(v.dtype).permute(1, 3, 0, 2, 4).reshape(c, b, kv * g * D)  # [c, b, (kv, g, D)]
        return self.o_proj(out)


class DraftMLP(nn.Module):
    """SwiGLU feed-forward (Qwen3MLP)."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DraftLayer(nn.Module):
    """Pre-norm decoder layer; the context enters only as attention prefix K/V."""

    def __init__(self, config: DraftConfig, layer_idx: int):
        super().__init__()
        self.self_attn = DraftAttention(config, layer_idx)
        self.mlp = DraftMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, prefix_k, prefix_v, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, prefix_k, prefix_v, mask)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_shared(self, x, cos, sin, ctx_k, ctx_v, ctx_mask, own_mask):
        """``forward`` for c blocks over one shared context (``DraftAttention.forward_shared``)."""
        x = x + self.self_attn.forward_shared(self.input_layernorm(x), cos, sin, ctx_k, ctx_v,
                                              ctx_mask, own_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DFlashDraftModel(nn.Module):
    """The DFlash draft (z-lab checkpoint format). Bind a target before running it."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(DraftLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.fc = nn.Linear(config.num_context_features, config.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        # The target's embedding and LM head: borrowed, so kept out of the module tree
        # (not saved, not moved by .to(), not trained).
        self.__dict__["_target_parts"] = None

    # --- shorthands used by the decode loop ---
    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def mask_token_id(self) -> int:
        return self.config.mask_token_id

    @property
    def target_layer_ids(self) -> list[int]:
        return self.config.target_layer_ids

    # --- loading and saving ---
    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None) -> "DFlashDraftModel":
        """Load a z-lab checkpoint (config.json + model.safetensors or shards) from a local
        folder or a hub id (see ``models.loading.resolve_folder``). ``dtype``: a torch
        dtype or its name; None or "auto" keeps the stored dtype. Bind a target next."""
        folder = Path(path)
        if not folder.is_dir():
            from specreplay.models.loading import resolve_folder  # loading imports this module

            folder = resolve_folder(str(path), "draft model", allow_patterns=["*.json", "*.safetensors"])
        config_path = folder / "config.json"
        if not config_path.exists():
            raise DraftConfigError(f"no config.json in {folder}; point to a DFlash draft checkpoint folder.")
        config = DraftConfig.from_dict(json.loads(config_path.read_text()))
        state = read_state_dict(folder)
        if state and all(k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items()}
        for name in _IGNORED_WEIGHTS:
            state.pop(name, None)
        with torch.device("meta"):
            model = cls(config)
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise DraftConfigError(
                f"the weights in {folder} do not fit a DFlash draft of this config "
                f"(missing: {', '.join(missing[:4]) or 'none'}; unexpected: "
                f"{', '.join(unexpected[:4]) or 'none'}); check that it is a DFlash checkpoint.")
        for name, value in model.state_dict().items():
            if state[name].shape != value.shape:
                raise DraftConfigError(
                    f"weight {name} in {folder} has shape {tuple(state[name].shape)} but config.json "
                    f"implies {tuple(value.shape)}; the config and weights do not belong together.")
        model.load_state_dict(state, assign=True)
        model.rotary_emb = RotaryEmbedding(config)
        target_dtype = _as_dtype(dtype)
        model.to(device=device, dtype=target_dtype)
        if target_dtype is not None:
            model.config.dtype = str(target_dtype).removeprefix("torch.")
        return model.eval()

    def save_pretrained(self, path, max_shard_size="15MB") -> None:
        """Write config.json and the weights (``model.safetensors``, or shards plus an
        index when they exceed ``max_shard_size``) in the z-lab layout."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.dtype = str(self.fc.weight.dtype).removeprefix("torch.")
        write_state_dict(folder, self.state_dict(), max_shard_size)
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Random weights: normal(0, std) for every projection, ones for every norm (the
        Qwen3 initialisation)."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, std, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, RMSNorm):
                    module.weight.fill_(1.0)

    # --- the borrowed target parts ---
    def bind_target(self, target) -> "DFlashDraftModel":
        """Share the target's input embeddings and LM head (not owned: never saved, moved
        or trained by the draft). Checks that the hidden sizes agree."""
        embed = target.get_input_embeddings()
        head = getattr(target, "lm_head", None)
        if head is None:
            head = target.get_output_embeddings()
        if embed is None or head is None:
            raise DraftConfigError("the target exposes no input embeddings or LM head to share with the draft.")
        if embed.weight.shape[-1] != self.config.hidden_size:
            raise DraftConfigError(
                f"the target's hidden size is {embed.weight.shape[-1]} but the draft's is "
                f"{self.config.hidden_size}; use the draft trained for this target.")
        self.__dict__["_target_parts"] = (embed, head)
        return self

    def _bound(self):
        parts = self.__dict__["_target_parts"]
        if parts is None:
            raise RuntimeError("the draft has no target bound; call draft.bind_target(target) first.")
        return parts

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Block inputs: the target's raw embedding rows (times input_embedding_scale)."""
        embed, _ = self._bound()
        x = F.embedding(input_ids, embed.weight)
        return x * self.config.input_embedding_scale

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft logits from draft hidden states through the target's LM head (with the
        checkpoint's output multiplier and soft-capping, when it sets them)."""
        _, head = self._bound()
        logits = head(hidden) * self.config.output_multiplier
        cap = self.config.final_logit_softcapping
        if cap is not None and cap > 0:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # --- the passes ---
    def context_features(self, hidden_states) -> torch.Tensor:
        """Raw context features [B,T,n*H]: the target's ``hidden_states[i+1]`` (output of
        decoder layer i; index 0 is the embedding output) for i in target_layer_ids,
        concatenated on the feature axis."""
        return torch.cat([hidden_states[i + 1] for i in self.config.target_layer_ids], dim=-1)

    def fuse(self, context: torch.Tensor) -> torch.Tensor:
        """Raw context features [B,T,n*H] -> fused context [B,T,H] (fc then hidden_norm)."""
        return self.hidden_norm(self.fc(context.to(self.fc.weight.dtype)))

    def forward(self, input_ids, context, position_ids, past_key_values=None,
                attention_mask=None, inputs_embeds=None) -> torch.Tensor:
        """One draft pass over a block. Returns the final hidden states [B,b,H].

        input_ids [B,b]: anchor then mask tokens/seeds (ignored when ``inputs_embeds``
        [B,b,H] is given). context [B,T_new,n*H]: raw features of the tokens committed
        since the last call (None or T_new = 0 when there are none, e.g. a refinement
        pass). position_ids [B,T_new+b]: absolute positions of those context rows, then of
        the block rows. past_key_values: a cache from ``new_cache()`` holding the context
        rows of earlier calls; this call appends the new context rows and never the
        block's, so the caller need not crop it (cropping to the committed length is a
        no-op). attention_mask: optional, broadcastable to [B,heads,b,K] over the K =
        cached + T_new + b keys in that order (bool, True = visible, or additive floats);
        None means every key is visible (plus within-block causality / windows on the
        sliding layers of checkpoints that have them).
        """
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        x = x.to(self.fc.weight.dtype)
        B, b, _ = x.shape
        if context is None:
            context = x.new_zeros(B, 0, self.config.num_context_features)
        ctx = self.fuse(context)
        T_new = ctx.shape[1]
        if position_ids.shape[-1] != T_new + b:
            raise ValueError(
                f"position_ids covers {position_ids.shape[-1]} rows but the pass has {T_new} "
                f"context rows and a block of {b}; pass positions for both.")
        cos, sin = self.rotary_emb(position_ids.expand(B, -1), x.dtype)
        for layer in self.layers:
            attn = layer.self_attn
            k, v = attn.project_kv(ctx, cos[:, :T_new], sin[:, :T_new])
            if past_key_values is not None:
                k, v = past_key_values.update(k, v, attn.layer_idx)
            mask = attention_mask
            if mask is None and (attn.block_causal or attn.sliding_window):
                mask = _relative_mask(b, k.shape[2] + b, attn.block_causal, attn.sliding_window, x.device)
            x = layer(x, cos[:, T_new:], sin[:, T_new:], k, v, mask)
        return self.norm(x)

    def context_kv(self, context: torch.Tensor) -> "ContextKV":
        """Raw context features [1,T,n*H] of absolute positions 0..T-1 -> every layer's
        context K/V, computed once per sequence and shared by every ``forward_blocks``
        call over it (all block sizes, probes and refinement passes of the oracle)."""
        ctx = self.fuse(context)
        T = ctx.shape[1]
        cos, sin = self.rotary_emb(torch.arange(T, device=ctx.device)[None], ctx.dtype)
        return ContextKV([layer.self_attn.project_kv(ctx, cos, sin) for layer in self.layers], T)

    def forward_blocks(self, context, anchors, block_ids, chunk_size: int | None = None) -> torch.Tensor:
        """Many blocks of one sequence in one call (the oracle pass and training).

        context: raw features [1,T,n*H] of absolute positions 0..T-1, or their
        ``context_kv``. anchors [n]: absolute anchor positions (0 <= anchor <= T).
        block_ids [n,b]. Block j attends to context rows [0, anchors[j]) and to its own b
        rows (bidirectionally), its row i at position anchors[j] + i; it equals a
        cache-free ``forward`` with context rows [0, anchors[j]) and position ids
        0..anchors[j]+b-1. Returns hidden [n,b,H].

        The blocks of a chunk form a batch whose queries all read the one copy of the
        context K/V (``DraftAttention.forward_shared``): context K/V are projected once
        per sequence, never copied per block, and no block scores another block's rows.
        ``chunk_size`` blocks per chunk (default: sized so a chunk's attention scores stay
        near 512 MiB, at most 8192 rows). Gradients flow (training).
        """
        kv = context if isinstance(context, ContextKV) else self.context_kv(context)
        # chunk bounds are read on the host: anchors given as a list or CPU tensor cost
        # the GPU no synchronisation, and they go to the GPU from pinned memory (a copy
        # from pageable memory waits for the whole stream, passes queued before it too)
        host = torch.as_tensor(anchors).long().cpu().reshape(-1)
        anchors = to_device(host, torch.long, block_ids.device)
        n, b = block_ids.shape
        T = kv.length
        if n and (int(host.min()) < 0 or int(host.max()) > T):
            raise ValueError(f"anchors must lie in [0, {T}] for {T} context rows.")
        dtype = kv.layers[0][0].dtype if kv.layers else self.fc.weight.dtype
        chunk_size = chunk_size or self._blocks_per_chunk(T, b)
        i = torch.arange(b, device=block_ids.device)
        outputs = []
        for lo in range(0, n, chunk_size):
            a = anchors[lo:lo + chunk_size]
            visible = int(host[lo:lo + chunk_size].max())  # no block here reads a row past this
            positions = a[:, None] + i  # [c, b]
            cos, sin = self.rotary_emb(positions, dtype)
            x = self.embed(block_ids[lo:lo + chunk_size]).to(dtype)
            masks = {}
            for layer, (k, v) in zip(self.layers, kv.layers):
                attn = layer.self_attn
                kind = (attn.block_causal, attn.sliding_window)
                if kind not in masks:
                    masks[kind] = _shared_masks(positions, visible, *kind)
                x = layer.forward_shared(x, cos, sin, k[:, :, :visible], v[:, :, :visible], *masks[kind])
            outputs.append(self.norm(x))
        if not outputs:
            return torch.zeros(0, b, self.config.hidden_size, dtype=dtype, device=block_ids.device)
        return torch.cat(outputs)

    def _blocks_per_chunk(self, T: int, b: int) -> int:
        """Largest c with heads * c*b * (T + b) float32 scores <= the chunk budget."""
        by_memory = int(_CHUNK_BYTES / (4 * self.config.num_attention_heads * b * (T + b)))
        return max(1, min(by_memory, _CHUNK_ROWS // b))


class ContextKV:
    """Per draft layer, the context K/V [1,kv_heads,T,D] of one sequence's rows 0..T-1."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], length: int):
        self.layers, self.length = layers, length


def _mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched a @ b with a float32 result. On a GPU in the inputs' dtype with float32
    accumulation and output (the live draft's attention takes its scores so,
    models/fast.py ``small_attention``): a half-precision result rounded the scores
    first. Elsewhere, and where gradients flow (the mixed-dtype product has none), in
    float32, where float32 inputs give exactly ``torch.matmul``."""
    if a.is_cuda and a.dtype != torch.float32 and not (a.requires_grad or b.requires_grad):
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a.float(), b.float())


def to_device(data, dtype, device: torch.device) -> torch.Tensor:
    """Host data (list, numpy or CPU tensor) as a tensor on ``device`` without a host
    sync: a GPU copy goes through pinned memory, asynchronously (a plain
    ``torch.tensor(..., device=cuda)`` waits for the device to drain its queue, which
    serialises host and device). The live backend and the oracle use it too."""
    t = torch.as_tensor(data, dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _shared_masks(positions: torch.Tensor, visible: int, causal: bool,
                  window: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For blocks whose rows sit at ``positions`` [c,b] (row 0 = the anchor, the first
    position the block does not see as context): the context mask [c,b,visible] (row t
    visible iff t < anchor, and within the sliding window when the layer has one) and
    the mask [b,b] inside a block (None = all visible)."""
    t = torch.arange(visible, device=positions.device)
    ctx = t[None, None, :] < positions[:, :1, None]
    i = torch.arange(positions.shape[1], device=positions.device)
    own = None
    if causal or window:
        own = torch.ones(len(i), len(i), dtype=torch.bool, device=positions.device)
        if causal:
            own &= i[None, :] <= i[:, None]
        if window:
            own &= (i[:, None] - i[None, :]).abs() < window
            ctx = ctx & (positions[:, :, None] - t[None, None, :] < window)
    return ctx, own


def _relative_mask(b: int, keys: int, causal: bool, window: int | None, device) -> torch.Tensor:
    """[1,1,b,keys] visibility for a block whose rows are the last b of ``keys``
    contiguous positions: causal inside the block and/or a sliding window."""
    q = torch.arange(keys - b, keys, device=device)[:, None]
    k = torch.arange(keys, device=device)[None, :]
    visible = torch.ones(b, keys, dtype=torch.bool, device=device)
    if causal:
        visible &= k <= q
    if window:
        visible &= q - k < window
        if not causal:
            visible &= k - q < window
    return visible[None, None]


def _as_dtype(dtype) -> torch.dtype | None:
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise DraftConfigError(f"unknown dtype {dtype!r}; use e.g. float32, bfloat16 or float16.")
    return value
