"""The DFlash draft's configuration, read from and written to the z-lab ``config.json``.

The z-lab format is a Qwen3 config plus DFlash keys: ``dflash_config`` {``mask_token_id``,
``target_layer_ids``, ``block_size``} and, in older checkpoints, top-level ``block_size``
and ``num_target_layers``. A DFlash key is looked up in ``dflash_config`` first, then at
the top level, then falls back to its default.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


class DraftConfigError(ValueError):
    """A draft config.json lacks a required key or holds a value this model cannot run."""


def build_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """The target layers a draft reads when its config names none: ``num_draft_layers``
    ids evenly spaced from layer 1 to layer L-3 (``round(1 + i*(L-4)/(n-1))``), or the
    middle layer ``[L // 2]`` for a one-layer draft."""
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    span = num_target_layers - 4
    return [round(1 + i * span / (num_draft_layers - 1)) for i in range(num_draft_layers)]


# RoPE kinds whose frequencies are fixed at construction time (dynamic kinds rescale
# with the sequence length and are not used by DFlash drafts).
STATIC_ROPE_TYPES = ("default", "linear", "yarn", "llama3", "longrope")


@dataclass
class DraftConfig:
    """Everything the draft needs to build itself; ``raw`` keeps the original config.json
    so that keys this model does not use survive a load/save round trip."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    mask_token_id: int
    target_layer_ids: list[int]
    num_target_layers: int | None = None
    block_size: int = 16
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    max_position_embeddings: int = 40960
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 1e6})
    layer_types: list[str] | None = None
    sliding_window: int | None = None
    is_causal: bool | None = None
    input_embedding_scale: float = 1.0
    output_multiplier: float = 1.0
    final_logit_softcapping: float | None = None
    dtype: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.layer_types is None:
            self.layer_types = ["full_attention"] * self.num_hidden_layers
        if len(self.layer_types) != self.num_hidden_layers:
            raise DraftConfigError(
                f"layer_types lists {len(self.layer_types)} layers but num_hidden_layers is "
                f"{self.num_hidden_layers}; make them agree in config.json.")
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise DraftConfigError(
                "config.json has sliding_attention layers but no sliding_window; set sliding_window.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise DraftConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}).")
        rope_type = self.rope_parameters.get("rope_type", "default")
        if rope_type not in STATIC_ROPE_TYPES:
            raise DraftConfigError(
                f"RoPE type {rope_type!r} is not supported by the draft; use one of "
                f"{', '.join(STATIC_ROPE_TYPES)}.")

    @property
    def num_context_features(self) -> int:
        """Width of the raw context features: one target hidden state per tapped layer."""
        return len(self.target_layer_ids) * self.hidden_size

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DraftConfig":
        """Parse a z-lab config.json dict (old or new layout)."""
        arch = d.get("architectures") or []
        if "DFlash2DraftModel" in arch:
            raise DraftConfigError(
                "this is a DFlash 2 checkpoint (architectures: DFlash2DraftModel), which this "
                "draft model does not run; use a DFlash (1) checkpoint.")
        dflash = d.get("dflash_config") or {}

        def dflash_value(name: str, default: Any = None) -> Any:
            return dflash.get(name, d.get(name, default))

        try:
            hidden = int(d["hidden_size"])
            heads = int(d["num_attention_heads"])
            layers = int(d["num_hidden_layers"])
            base = dict(
                hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]),
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or hidden // heads),
                vocab_size=int(d["vocab_size"]),
            )
        except KeyError as e:
            raise DraftConfigError(f"draft config.json lacks the key {e.args[0]!r}.") from None
        mask_token_id = dflash_value("mask_token_id")
        if mask_token_id is None:
            raise DraftConfigError(
                "draft config.json has no mask_token_id (expected in dflash_config); add it.")
        num_target_layers = d.get("num_target_layers")
        layer_ids = dflash_value("target_layer_ids")
        if layer_ids is None:
            if num_target_layers is None:
                raise DraftConfigError(
                    "draft config.json names neither dflash_config.target_layer_ids nor "
                    "num_target_layers; add one of them.")
            layer_ids = build_target_layer_ids(int(num_target_layers), layers)
        softcap = dflash_value("final_logit_softcapping")
        sliding = d.get("sliding_window")
        if d.get("use_sliding_window") is False and "layer_types" not in d:
            sliding = None  # Qwen3 ignores sliding_window unless use_sliding_window is set
        return cls(
            **base,
            mask_token_id=int(mask_token_id),
            target_layer_ids=[int(i) for i in layer_ids],
            num_target_layers=None if num_target_layers is None else int(num_target_layers),
            block_size=int(dflash_value("block_size", 16)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            attention_bias=bool(d.get("attention_bias", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 40960)),
            rope_parameters=_rope_parameters(d),
            layer_types=d.get("layer_types"),
            sliding_window=None if sliding is None else int(sliding),
            is_causal=d.get("is_causal"),
            input_embedding_scale=float(dflash_value("input_embedding_scale", 1.0)),
            output_multiplier=float(dflash_value("output_multiplier", 1.0)),
            final_logit_softcapping=None if softcap is None else float(softcap),
            dtype=d.get("dtype") or d.get("torch_dtype"),
            raw=copy.deepcopy(d),
        )

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict in the z-lab layout (DFlash keys in ``dflash_config``, with
        ``block_size`` also at the top level for older readers); unknown original keys
        are kept."""
        d = copy.deepcopy(self.raw)
        d.update(
            architectures=["DFlashDraftModel"],
            model_type=d.get("model_type", "qwen3"),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            vocab_size=self.vocab_size,
            rms_norm_eps=self.rms_norm_eps,
            attention_bias=self.attention_bias,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters=copy.deepcopy(self.rope_parameters),
            layer_types=list(self.layer_types),
            sliding_window=self.sliding_window,
            hidden_act="silu",
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            block_size=self.block_size,
        )
        d.pop("rope_theta", None)
        d.pop("rope_scaling", None)
        if self.num_target_layers is not None:
            d["num_target_layers"] = self.num_target_layers
        if self.is_causal is not None:
            d["is_causal"] = self.is_causal
        if self.dtype is not None:
            d["dtype"] = self.dtype
            d.pop("torch_dtype", None)
        dflash = dict(d.get("dflash_config") or {})
        dflash.update(mask_token_id=self.mask_token_id,
                      target_layer_ids=list(self.target_layer_ids),
                      block_size=self.block_size)
        for name, default in (("input_embedding_scale", 1.0), ("output_multiplier", 1.0),
                              ("final_logit_softcapping", None)):
            value = getattr(self, name)
            if value != default:
                dflash[name] = value
        d["dflash_config"] = dflash
        return d


def _rope_parameters(d: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings from either layout: transformers 5 ``rope_parameters`` or the older
    top-level ``rope_theta`` plus optional ``rope_scaling``."""
    if d.get("rope_parameters"):
        params = dict(d["rope_parameters"])
    else:
        params = dict(d.get("rope_scaling") or {})
        if "type" in params and "rope_type" not in params:
            params["rope_type"] = params.pop("type")
        params["rope_theta"] = d.get("rope_theta", 10000.0)
    params.setdefault("rope_type", "default")
    params.setdefault("rope_theta", d.get("rope_theta", 10000.0))
    return params
