"""Cost twins: the shipped fixture pair embedded in tensors of a real model's shapes.

A twin has every tensor of a real model (Qwen3-8B and its published DFlash draft, say)
and the function of the fixture pair: its forward passes cost what the real model's
cost, because cost is shape, and it accepts what the fixture pair accepts, because its
logits over the fixture's vocabulary are the fixture's. It is a way to time policies in
the regime users run (an 8B target at batch 1, memory-bound) with real acceptance. It is
not the real model: its text is the fixture's, not Qwen3-8B's.

Construction (exact in real arithmetic; float32 rounding only differs in the order of
the longer sums). Fixture: hidden H, q/kv heads n_q/n_kv (ratio r), intermediate I,
layers L, vocabulary V, RMSNorm epsilon e. Twin: H' > H, n_q'/n_kv' (ratio r'), I', L',
V' >= V, and the same head width D (RoPE and the attention scale depend on it).

Values. Cost is shape, but not only shape: a GPU multiplying exact zeros switches fewer
bits and runs at higher clocks (measured on an H200 with zero padding: a 2 % faster
target pass at q = 1 and 5 % at q = 16 than random weights of the same shape). So every
weight the construction does not pin is random, normal(0, initializer_range) as a fresh
Qwen3 is, drawn on the target device from a seeded generator (a twin is reproducible),
and the zeros are only those the function needs. The rule that decides them: padded
residual dimensions stay exactly zero as long as nothing WRITES a nonzero into them, and
a weight that READS an input known to be an exact zero can hold anything, because
w * 0 = 0 exactly and sums of exact zeros are exact in every float format (the real
terms of a sum are unchanged, only their order may differ). A weight that reads a
nonzero input (a real dimension, or the constant channel c below) must be exact.

1. Residual stream. Every twin residual vector is [a * x, c, 0 ... 0]: the fixture's
   vector x scaled by a power of two a (exact in every float format), a constant
   channel c in dimension H, zeros after. The embedding's real rows are a * E, hold c
   in dimension H and zeros after (the only writes of the embedding); every output
   projection (o_proj, down_proj) is the fixture's times a in its real block, and its
   rows H and beyond are zero wherever its input can be nonzero (steps 3-4), so no
   layer ever writes the constant channel or the padding, and the residual adds keep
   both exact. Padded embedding rows are random: no padded id is ever an input.
2. RMSNorm over the padded width. A twin norm sees (a^2 S + c^2) / H' + e where the
   fixture saw S / H + e (S = sum of x^2). Choosing c^2 = e (a^2 H - H') makes the twin's
   value a^2 (S + e H) / H', proportional to the fixture's for every x, so each norm
   returns the fixture's output once its weights are the fixture's times sqrt(H / H').
   This keeps Qwen3-8B's published epsilon (1e-6) in the config, so the per-head q/k
   norms (width D in both) see the epsilon they were trained with. a is the smallest
   power of two with a^2 H >= 2 H' (c^2 >= e H' > 0: the channel always exists). The
   layer norms (and the draft's ``hidden_norm``) weigh the channel 0 and the padding 1:
   their outputs are [normed x, 0, 0 ... 0], exact zeros from dimension H on, so every
   weight reading a normed vector (q/k/v, gate/up columns H and beyond) is random. Only
   the final norms pass the channel (step 7).
3. Attention. Fixture kv head g is twin kv head g; fixture query head i is twin head
   (i // r) * r' + i % r, which reads twin kv head i // r (needs r <= r'). Every q and k
   row outside the fixture's block is random. The other kv heads (g >= n_kv) have v rows
   zero over the first H input dimensions (random after): their values are exact zeros,
   so every query head of their groups outputs exactly 0 whatever it attends to, and
   its o_proj columns are random. The extra query heads of the real groups (r' - r per
   group) read real values: their o_proj columns are zero, and so are the rows H and
   beyond of the real heads' columns.
4. MLP. An extra unit (beyond I) has gate rows zero over the first H input dimensions
   (random after), so its gate is exactly 0, silu(0) = 0 and the unit outputs
   0 * up = 0 whatever its up row: its up row and its down_proj column are random.
   The real units' down_proj columns are zero in rows H and beyond.
5. Layers. Fixture layer j goes to one twin layer, in order; every other twin layer is
   steps 3-4 with no real heads or units (v rows and gate rows zero over the first H
   input dimensions, everything else random, norms weighing the real dimensions 1), so
   its attention and MLP output exact zeros and its residual passes through unchanged.
   The draft reads target layer outputs (``target_layer_ids``), so the placement is
   chosen around the taps: the fixture draft's m taps are mapped to m of the twin
   draft's n taps, spread evenly (k -> round(k (n - 1) / (m - 1))), each tapped fixture
   layer sits exactly at its twin tap, the fixture layers before it sit just before
   it, the ones after the last tap just after it. The twin tap then reads the fixture's
   tapped output (times a).
6. Draft. The draft reads the target's residual stream and writes its own, so it uses
   the same a and c. Its layers are the fixture draft's (steps 3-4), then extra layers
   (step 5). ``fc`` reads raw tapped residuals [a x, c, 0 ...]: its columns at each tap's
   padding read exact zeros and are random; its columns at each tap's first H + 1
   dimensions hold the fixture's fc blocks at the mapped taps (rows below H), one 1
   that copies the first mapped tap's constant channel into its output's channel, and
   zeros elsewhere (the unmapped taps read real, nonzero residuals). So ``hidden_norm``
   sees [a * fc(x), c, 0 ...] like every other norm (step 2). Block and context rows sit
   at the same positions as the fixture's.
7. Vocabulary. The LM head's real rows are the fixture's head (its embedding, tied in the
   fixture) in the first H columns, zero at the channel, random after (the final norm's
   output is an exact zero there): the final norm returns the fixture's normed vector in
   the first H dimensions, so real logits equal the fixture's. The final norms (target
   and draft) pass the constant channel with weight G = 1e3, and every padded row reads
   it with weight -1e3 (its other columns random): a padded logit is
   -1e6 c sqrt(H') / (a sqrt(S + e H)) (about -3e4 divided by the final hidden RMS, a few
   to a few tens for the fixture) plus the random columns' dot product with the normed
   real dimensions (about 0.02 times that vector's norm, order 1), far below any real
   logit (|logit| < 20 for the fixture), so a padded row never wins and holds no
   probability. No weight exceeds float16's range. A tied twin shape (Qwen3-4B) shares
   one matrix: its real rows are a * E with c at H and zeros after (they are embedding
   rows, step 1), so the final norms' real weights are also divided by a, and every real
   logit of a position moves by one constant c G times the normed channel (softmax,
   argmax and log-probabilities unchanged; raw logits are not).
8. Values that are not shapes come from the fixture: RoPE theta (the frequencies of head
   width D), token ids (eos, pad, the draft's mask token), block size when the fixture's
   is used. None of them changes a kernel's cost.

Zeros left (``zero_shares``): for Qwen3-8B's shape 2.9 % of the target's weights and
4.6 % of the draft's: o_proj columns of the real kv groups and down_proj rows beyond the
fixture's width in the layers that hold the fixture's, the v and gate rows of steps 3-5
over the first H input dimensions, the padding of the fixture's embedding rows and fc's
columns at every tap's real dimensions (zero padding left over 99 %). The small
``test`` shape, half of whose width is the fixture's, keeps more (13 % and 15 %).

Everything is built straight on the requested device and dtype: the modules are created
on the meta device, given storage there, filled (random projections, unit norms), and
the fixture's weights and the required zeros are written into their slices (no disk
round trip).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from specreplay.errors import CLIError

# torch is imported inside the functions that build: the shape registry is read by the
# CLI's --help, which must not import torch

__all__ = ["SHAPES", "TWIN_PREFIX", "TwinError", "TwinPlan", "TwinShape", "build_draft",
           "build_pair", "build_target", "fixture_dirs", "is_twin_id", "parameter_counts",
           "plan_twin", "shape_of", "write_twin", "zero_shares"]

TWIN_PREFIX = "twin:"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Weights of the padded-vocabulary suppression (step 7 of the module docstring).
CHANNEL_GAIN = 1e3
PAD_ROW_WEIGHT = -1e3
# Seeds of the random fill (target, draft): fixed, so every build of a twin on one device
# type holds the same weights (a written twin equals the one built in memory).
TARGET_SEED, DRAFT_SEED = 0, 1


class TwinError(CLIError):
    """A twin cannot be built: unknown shape, or a fixture that does not fit into it."""


@dataclass(frozen=True)
class TwinShape:
    """The real model a twin copies the shapes of: its target config.json entries (a
    Qwen3 config) and its DFlash draft's."""
    name: str
    about: str
    target: dict
    draft: dict


_QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
    "attention_dropout": 0.0, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 12288, "max_position_embeddings": 40960,
    "max_window_layers": 36, "num_attention_heads": 32, "num_hidden_layers": 36,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-6, "sliding_window": None,
    "tie_word_embeddings": False, "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}
_QWEN3_4B = dict(_QWEN3_8B, hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True)
# The published z-lab/Qwen3-{8B,4B}-DFlash-b16 drafts: five layers of the target's width,
# block 16, taps build_target_layer_ids(36, 5).
_DFLASH_B16 = {"num_hidden_layers": 5, "num_attention_heads": 32, "num_key_value_heads": 8,
               "head_dim": 128, "block_size": 16, "target_layer_ids": [1, 9, 17, 25, 33],
               "max_position_embeddings": 40960}

SHAPES: dict[str, TwinShape] = {s.name: s for s in (
    TwinShape("qwen3-8b", "Qwen3-8B and z-lab/Qwen3-8B-DFlash-b16", _QWEN3_8B,
              dict(_DFLASH_B16, hidden_size=4096, intermediate_size=12288)),
    TwinShape("qwen3-4b", "Qwen3-4B and z-lab/Qwen3-4B-DFlash-b16", _QWEN3_4B,
              dict(_DFLASH_B16, hidden_size=2560, intermediate_size=9728)),
    TwinShape("test", "twice the fixture's width and depth, three times its vocabulary "
              "(builds in seconds on a CPU; for checking the construction)",
              dict(_QWEN3_8B, hidden_size=640, intermediate_size=1792, num_hidden_layers=16,
                   max_window_layers=16, num_attention_heads=16, num_key_value_heads=4,
                   vocab_size=24576),
              dict(_DFLASH_B16, hidden_size=640, intermediate_size=1792, num_hidden_layers=6,
                   num_attention_heads=16, num_key_value_heads=4,
                   target_layer_ids=[1, 4, 7, 10, 13])),
)}


def is_twin_id(name) -> bool:
    """True for model ids like ``twin:qwen3-8b``."""
    return str(name).startswith(TWIN_PREFIX)


def shape_of(name: str) -> TwinShape:
    """The registered shape of a twin id (``twin:NAME``) or a bare shape name."""
    key = str(name).removeprefix(TWIN_PREFIX)
    if key not in SHAPES:
        raise TwinError(f"unknown twin shape {key!r}; use one of {', '.join(SHAPES)} "
                        f"(e.g. twin:qwen3-8b).")
    return SHAPES[key]


def fixture_dirs() -> tuple[Path, Path]:
    """The shipped fixture pair's folders (target, draft)."""
    return FIXTURES / "target", FIXTURES / "draft"


@dataclass
class TwinPlan:
    """Where every fixture part goes in a twin (see the module docstring)."""
    shape: TwinShape
    fixture_target: dict
    fixture_draft: dict
    alpha: float
    channel: float
    layer_map: list[int]       # fixture target layer -> twin target layer
    tap_map: list[int]         # fixture draft tap k -> index into the twin's taps
    target_q_heads: list[int] = field(default_factory=list)
    draft_q_heads: list[int] = field(default_factory=list)

    @property
    def H(self) -> int:
        return int(self.fixture_target["hidden_size"])

    @property
    def H2(self) -> int:
        return int(self.shape.target["hidden_size"])

    @property
    def V(self) -> int:
        return int(self.fixture_target["vocab_size"])

    @property
    def norm_scale(self) -> float:
        return math.sqrt(self.H / self.H2)

    @property
    def tied(self) -> bool:
        return bool(self.shape.target.get("tie_word_embeddings"))

    def target_config(self, dtype=None, attn: str | None = None):
        """The twin target's ``Qwen3Config``: the shape's entries, the fixture's RoPE and
        token ids, and a ``specreplay_twin`` entry naming the construction."""
        from transformers import Qwen3Config

        ft = self.fixture_target
        d = {k: v for k, v in self.shape.target.items() if k != "model_type"}
        if attn is not None:
            d["attn_implementation"] = attn
        d.update(rope_parameters=dict(ft.get("rope_parameters") or
                                      {"rope_type": "default", "rope_theta": ft.get("rope_theta", 10000.0)}),
                 bos_token_id=ft.get("bos_token_id"), eos_token_id=ft.get("eos_token_id"),
                 pad_token_id=ft.get("pad_token_id"),
                 layer_types=["full_attention"] * int(d["num_hidden_layers"]),
                 specreplay_twin=self.describe())
        if dtype is not None:
            d["dtype"] = str(dtype).removeprefix("torch.")
        return Qwen3Config(**d)

    def draft_config(self):
        """The twin draft's ``DraftConfig`` (z-lab layout): the shape's entries, the
        fixture draft's RoPE, mask token and block size."""
        from specreplay.models.draft_config import DraftConfig

        fd, sd = self.fixture_draft, self.shape.draft
        return DraftConfig.from_dict({
            "architectures": ["DFlashDraftModel"], "model_type": "qwen3",
            "hidden_size": sd["hidden_size"], "intermediate_size": sd["intermediate_size"],
            "num_hidden_layers": sd["num_hidden_layers"],
            "num_attention_heads": sd["num_attention_heads"],
            "num_key_value_heads": sd["num_key_value_heads"], "head_dim": sd["head_dim"],
            "vocab_size": self.shape.target["vocab_size"],
            "rms_norm_eps": self.shape.target["rms_norm_eps"],
            "max_position_embeddings": sd["max_position_embeddings"],
            "rope_parameters": dict(fd.get("rope_parameters") or
                                    {"rope_type": "default", "rope_theta": fd.get("rope_theta", 10000.0)}),
            "num_target_layers": self.shape.target["num_hidden_layers"],
            "tie_word_embeddings": True,
            "dflash_config": {"mask_token_id": _dflash(fd, "mask_token_id"),
                              "target_layer_ids": list(sd["target_layer_ids"]),
                              "block_size": _dflash(fd, "block_size", 16)},
            "specreplay_twin": self.describe(),
        })

    def describe(self) -> dict:
        return {"shape": self.shape.name, "alpha": self.alpha, "channel": self.channel,
                "layer_map": list(self.layer_map),
                "tap_map": [self.shape.draft["target_layer_ids"][i] for i in self.tap_map]}


def _dflash(d: dict, key: str, default=None):
    return (d.get("dflash_config") or {}).get(key, d.get(key, default))


def _read_config(folder: Path, what: str) -> dict:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise TwinError(f"no config.json in {folder}; pass the fixture {what} folder "
                        f"(models/fixtures/{what}).")
    return json.loads(path.read_text())


def _q_heads(nq: int, nkv: int, nq2: int, nkv2: int, what: str) -> list[int]:
    r, r2 = nq // nkv, nq2 // nkv2
    if nkv > nkv2 or r > r2:
        raise TwinError(f"the fixture {what}'s {nq}/{nkv} query/key-value heads do not fit into "
                        f"the twin's {nq2}/{nkv2}; pick a larger shape.")
    return [(i // r) * r2 + i % r for i in range(nq)]


def plan_twin(shape: TwinShape | str, target_dir=None, draft_dir=None) -> TwinPlan:
    """Check that the fixture pair fits into ``shape`` and decide where each part goes."""
    shape = shape_of(shape) if isinstance(shape, str) else shape
    tdir, ddir = fixture_dirs()
    ft = _read_config(Path(target_dir or tdir), "target")
    fd = _read_config(Path(draft_dir or ddir), "draft")
    st, sd = shape.target, shape.draft
    H, H2 = int(ft["hidden_size"]), int(st["hidden_size"])
    checks = [
        ("hidden size", H, H2, H < H2), ("head width", ft["head_dim"], st["head_dim"], ft["head_dim"] == st["head_dim"]),
        ("intermediate size", ft["intermediate_size"], st["intermediate_size"], ft["intermediate_size"] <= st["intermediate_size"]),
        ("vocabulary", ft["vocab_size"], st["vocab_size"], ft["vocab_size"] <= st["vocab_size"]),
        ("target layers", ft["num_hidden_layers"], st["num_hidden_layers"], ft["num_hidden_layers"] <= st["num_hidden_layers"]),
        ("draft layers", fd["num_hidden_layers"], sd["num_hidden_layers"], fd["num_hidden_layers"] <= sd["num_hidden_layers"]),
        ("draft intermediate size", fd["intermediate_size"], sd["intermediate_size"], fd["intermediate_size"] <= sd["intermediate_size"]),
        ("draft hidden size", fd["hidden_size"], H, fd["hidden_size"] == H),
        ("draft head width", fd.get("head_dim"), sd["head_dim"], fd.get("head_dim") == sd["head_dim"]),
        ("draft RMSNorm epsilon", fd.get("rms_norm_eps"), ft.get("rms_norm_eps"), fd.get("rms_norm_eps") == ft.get("rms_norm_eps")),
    ]
    for what, fixture, twin, ok in checks:
        if not ok:
            raise TwinError(f"the fixture's {what} ({fixture}) does not fit the {shape.name} twin's "
                            f"({twin}); the twin must be at least as large (strictly wider, "
                            f"same head width and epsilon).")
    eps = float(st["rms_norm_eps"])
    if float(ft.get("rms_norm_eps", 1e-6)) != eps:
        raise TwinError(f"the fixture's RMSNorm epsilon {ft.get('rms_norm_eps')} differs from the "
                        f"{shape.name} shape's {eps}; the construction needs them equal.")
    alpha = 1
    while alpha * alpha * H < 2 * H2:
        alpha *= 2
    channel = math.sqrt(eps * (alpha * alpha * H - H2))
    taps, taps2 = list(_dflash(fd, "target_layer_ids")), list(sd["target_layer_ids"])
    m, n = len(taps), len(taps2)
    if m > n:
        raise TwinError(f"the fixture draft reads {m} target layers but the {shape.name} draft has "
                        f"only {n} taps.")
    tap_map = [0] if m == 1 else [round(k * (n - 1) / (m - 1)) for k in range(m)]
    layer_map = _place_layers(int(ft["num_hidden_layers"]), taps, [taps2[i] for i in tap_map],
                              int(st["num_hidden_layers"]), shape.name)
    return TwinPlan(shape, ft, fd, float(alpha), channel, layer_map, tap_map,
                    _q_heads(ft["num_attention_heads"], ft["num_key_value_heads"],
                             st["num_attention_heads"], st["num_key_value_heads"], "target"),
                    _q_heads(fd["num_attention_heads"], fd["num_key_value_heads"],
                             sd["num_attention_heads"], sd["num_key_value_heads"], "draft"))


def _place_layers(L: int, taps: list[int], twin_taps: list[int], L2: int, name: str) -> list[int]:
    """Twin layer of each fixture layer: tapped layers at their twin taps, the layers
    before a tap just before it, the layers after the last tap just after it."""
    where = [-1] * L
    prev = -1
    for t, u in zip(taps, twin_taps):
        for j in range(prev + 1, t + 1):
            where[j] = u - (t - j)
        prev = t
    for j in range(prev + 1, L):
        where[j] = twin_taps[-1] + (j - prev) if taps else j
    if any(b <= a for a, b in zip(where, where[1:])) or where[0] < 0 or where[-1] >= L2:
        raise TwinError(f"the fixture's {L} layers with taps {taps} cannot be placed around the "
                        f"{name} twin's taps {twin_taps} in {L2} layers.")
    return where


# ---- filling the tensors

def _attention(dst, src: dict | None, prefix: str, plan: TwinPlan, q_heads: list[int], nkv: int) -> None:
    """Write one attention block into twin module ``dst`` (random-filled): the fixture's
    (weights under ``prefix``, kv heads ``nkv``) or, with ``src`` None, none (an extra
    layer: nkv = 0). Step 3 of the module docstring."""
    H, D, a = plan.H, int(plan.fixture_target["head_dim"]), plan.alpha
    nkv = nkv if src is not None else 0
    r2 = dst.q_proj.out_features // dst.k_proj.out_features
    # the extra kv heads' values are exact zeros: v rows zero over the real input dims
    dst.v_proj.weight[nkv * D:, :H] = 0
    # the real groups' heads write nothing but the fixture's: zero o_proj columns, then
    # the fixture's block at the real heads
    dst.o_proj.weight[:, :nkv * r2 * D] = 0
    if src is None:
        return
    q, o = src[prefix + "q_proj.weight"], src[prefix + "o_proj.weight"]
    for i, h in enumerate(q_heads):
        dst.q_proj.weight[h * D:(h + 1) * D, :H] = q[i * D:(i + 1) * D]
        dst.o_proj.weight[:H, h * D:(h + 1) * D] = a * o[:, i * D:(i + 1) * D]
    dst.k_proj.weight[:nkv * D, :H] = src[prefix + "k_proj.weight"]
    dst.v_proj.weight[:nkv * D, :H] = src[prefix + "v_proj.weight"]
    dst.q_norm.weight.copy_(src[prefix + "q_norm.weight"])
    dst.k_norm.weight.copy_(src[prefix + "k_norm.weight"])


def _mlp(dst, src: dict | None, prefix: str, plan: TwinPlan) -> None:
    """Step 4: the fixture's units first, every extra unit's gate exactly 0."""
    H = plan.H
    gate = None if src is None else src[prefix + "gate_proj.weight"]
    I = 0 if gate is None else gate.shape[0]
    dst.gate_proj.weight[I:, :H] = 0
    dst.down_proj.weight[H:, :I] = 0
    if gate is None:
        return
    dst.gate_proj.weight[:I, :H] = gate
    dst.up_proj.weight[:I, :H] = src[prefix + "up_proj.weight"]
    dst.down_proj.weight[:H, :I] = plan.alpha * src[prefix + "down_proj.weight"]


def _norm(dst, weight, plan: TwinPlan, channel_weight: float = 0.0) -> None:
    """A twin RMSNorm: the fixture's weights rescaled (step 2; ones for None), the
    constant channel weighed ``channel_weight`` (0 but for the final norms), ones on
    the padding (their inputs are exact zeros)."""
    dst.weight.fill_(1.0)
    if weight is not None:
        dst.weight[:plan.H] = weight * plan.norm_scale
    dst.weight[plan.H] = channel_weight


def _layer(dst, src: dict | None, prefix: str, plan: TwinPlan, q_heads: list[int], nkv: int) -> None:
    """One twin decoder layer: the fixture's layer under ``prefix``, or with ``src``
    None an extra layer that passes its residual through (step 5)."""
    _attention(dst.self_attn, src, prefix + "self_attn.", plan, q_heads, nkv)
    _mlp(dst.mlp, src, prefix + "mlp.", plan)
    for name in ("input_layernorm", "post_attention_layernorm"):
        _norm(getattr(dst, name), None if src is None else src[prefix + name + ".weight"], plan)


def _filled(module, device, dtype, seed: int, std: float) -> None:
    """Give a meta-device module storage on ``device`` in ``dtype``: every matrix
    normal(0, std) from a generator seeded ``seed`` on that device (so a twin is the
    same on every build of one device type), every vector (the norms) ones."""
    import torch

    module.to(dtype=dtype)
    module.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                p.normal_(0.0, std, generator=generator)
            else:
                p.fill_(1.0)


def _fixture_state(folder: Path, device) -> dict:
    from specreplay.models.checkpoint import read_state_dict

    state = read_state_dict(folder, device=device)
    return {k: v.float() for k, v in state.items()}


def build_target(shape, target_dir=None, draft_dir=None, device="cpu", dtype="float32",
                 plan: TwinPlan | None = None, attn: str | None = None,
                 fill_std: float | None = None):
    """The twin target (a ``Qwen3ForCausalLM`` in eval mode) built on ``device`` in
    ``dtype`` from the fixture target (and the fixture draft's taps); ``attn`` an
    attn_implementation or None for the transformers default; ``fill_std`` the spread
    of the random fill (default: the shape's initializer_range; 0 pads with zeros, only
    to measure what values cost: benchmarks/twin_cost.py)."""
    import torch
    from transformers import Qwen3ForCausalLM
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    plan = plan or plan_twin(shape, target_dir, draft_dir)
    dtype = _dtype(dtype)
    device = torch.device(device)
    config = plan.target_config(dtype, attn)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    _filled(model, device, dtype, TARGET_SEED, _init_std(plan, fill_std))
    if plan.tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    # RoPE frequencies are a float32 buffer computed at construction: rebuild them
    model.model.rotary_emb = Qwen3RotaryEmbedding(config).to(device)
    src = _fixture_state(Path(target_dir or fixture_dirs()[0]), device)
    H, V, a = plan.H, plan.V, plan.alpha
    nkv = int(plan.fixture_target["num_key_value_heads"])
    with torch.no_grad():
        embed = src["model.embed_tokens.weight"]
        head = src.get("lm_head.weight", embed)
        E = model.model.embed_tokens.weight
        # real embedding rows write [a x, c, 0 ...] (step 1); padded rows stay random
        E[:V, :H] = a * embed
        E[:V, H] = plan.channel
        E[:V, H + 1:] = 0
        W = model.lm_head.weight
        if W.data_ptr() != E.data_ptr():  # untied: the head has its own real rows
            W[:V, :H] = head
            W[:V, H] = 0
        W[V:, H] = PAD_ROW_WEIGHT
        placed = set(plan.layer_map)
        for j, m in enumerate(plan.layer_map):
            _layer(model.model.layers[m], src, f"model.layers.{j}.", plan, plan.target_q_heads, nkv)
        for m in range(len(model.model.layers)):
            if m not in placed:
                _layer(model.model.layers[m], None, "", plan, [], 0)
        # a tied head reads the a-scaled embedding rows: the final norm divides a out
        _norm(model.model.norm, src["model.norm.weight"] * _head_scale(plan), plan, CHANNEL_GAIN)
    model.generation_config.eos_token_id = plan.fixture_target.get("eos_token_id")
    model.generation_config.pad_token_id = plan.fixture_target.get("pad_token_id")
    model.twin_plan = plan
    return model.eval()


def build_draft(shape, target, draft_dir=None, target_dir=None, plan: TwinPlan | None = None,
                fill_std: float | None = None):
    """The twin draft (a bound ``DFlashDraftModel``), built on the twin ``target``'s
    device and dtype from the fixture draft (``fill_std`` as for ``build_target``)."""
    import torch
    from specreplay.models.draft import DFlashDraftModel, RotaryEmbedding

    plan = plan or getattr(target, "twin_plan", None) or plan_twin(shape, target_dir, draft_dir)
    embed = target.get_input_embeddings().weight
    device, dtype = embed.device, embed.dtype
    config = plan.draft_config()
    config.dtype = str(dtype).removeprefix("torch.")
    with torch.device("meta"):
        draft = DFlashDraftModel(config)
    _filled(draft, device, dtype, DRAFT_SEED, _init_std(plan, fill_std))
    draft.rotary_emb = RotaryEmbedding(config)
    src = _fixture_state(Path(draft_dir or fixture_dirs()[1]), device)
    if src and all(k.startswith("model.") for k in src):
        src = {k[len("model."):]: v for k, v in src.items()}
    H, H2 = plan.H, plan.H2
    L_fix = int(plan.fixture_draft["num_hidden_layers"])
    nkv = int(plan.fixture_draft["num_key_value_heads"])
    with torch.no_grad():
        for j, layer in enumerate(draft.layers):
            _layer(layer, src if j < L_fix else None, f"layers.{j}.", plan, plan.draft_q_heads, nkv)
        fc, W = src["fc.weight"], draft.fc.weight
        # every tap's real dimensions and channel are read exactly; its padding is random
        for slot in range(len(plan.shape.draft["target_layer_ids"])):
            W[:, slot * H2:slot * H2 + H + 1] = 0
        for k, slot in enumerate(plan.tap_map):
            W[:H, slot * H2:slot * H2 + H] = fc[:, k * H:(k + 1) * H]
        # the first mapped tap's constant channel becomes fc's output channel (step 6)
        W[H, plan.tap_map[0] * H2 + H] = 1.0
        _norm(draft.hidden_norm, src["hidden_norm.weight"], plan)
        _norm(draft.norm, src["norm.weight"] * _head_scale(plan), plan, CHANNEL_GAIN)
    return draft.eval().bind_target(target)


def _init_std(plan: TwinPlan, fill_std: float | None = None) -> float:
    if fill_std is not None:
        if not fill_std >= 0:
            raise TwinError(f"the random fill's spread must be >= 0, not {fill_std}.")
        return float(fill_std)
    return float(plan.shape.target.get("initializer_range", 0.02))


def _head_scale(plan: TwinPlan) -> float:
    return 1.0 / plan.alpha if plan.tied else 1.0


def build_pair(shape, device="cpu", dtype="float32", target_dir=None, draft_dir=None,
               fill_std: float | None = None):
    """(twin target, bound twin draft) of ``shape`` from the fixture pair."""
    plan = plan_twin(shape, target_dir, draft_dir)
    target = build_target(shape, target_dir, draft_dir, device, dtype, plan, fill_std=fill_std)
    return target, build_draft(shape, target, draft_dir, target_dir, plan, fill_std=fill_std)


def parameter_counts(shape) -> dict[str, int]:
    """Parameters of a shape's target and draft (the draft without the target's
    embedding and head, which it borrows), counted on the meta device: nothing is
    allocated."""
    import torch
    from transformers import Qwen3ForCausalLM
    from specreplay.models.draft import DFlashDraftModel

    plan = plan_twin(shape)
    with torch.device("meta"):
        target = Qwen3ForCausalLM(plan.target_config())
        draft = DFlashDraftModel(plan.draft_config())
    return {"target": sum(p.numel() for p in target.parameters()),
            "draft": sum(p.numel() for p in draft.parameters())}


def _dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise TwinError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16.")
    return value


def zero_shares(model) -> dict[str, tuple[int, int]]:
    """Exact zeros in a model's parameters by tensor kind (the parameter's module name:
    q_proj, down_proj, embed_tokens, fc, ...; a tied matrix once): kind -> (zeros,
    elements), plus "all". The construction keeps only the zeros its function needs, so
    these are small (module docstring, "Zeros left")."""
    import torch

    shares: dict[str, list[int]] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            parts = name.split(".")
            kind = parts[-2] if len(parts) > 1 else parts[0]
            entry = shares.setdefault(kind, [0, 0])
            entry[0] += int((p == 0).sum())
            entry[1] += p.numel()
    total = [sum(z for z, _ in shares.values()), sum(n for _, n in shares.values())]
    return {**{k: (z, n) for k, (z, n) in sorted(shares.items())}, "all": tuple(total)}


def nbytes(model) -> int:
    """Bytes of a model's parameters."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def write_twin(shape, out, target_dir=None, draft_dir=None, dtype="bfloat16", device="cpu",
               max_shard_size="5GB") -> dict:
    """Build the twin pair and write it under ``out``: ``target/`` (Hugging Face Qwen3
    layout, with the fixture's tokenizer) and ``draft/`` (z-lab layout). Returns what
    was built and how long each part took."""
    import shutil

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TwinError(f"{out} exists and is not empty; pass a new folder to --out.")
    t0 = time.perf_counter()
    target, draft = build_pair(shape, device, dtype, target_dir, draft_dir)
    if target.device.type == "cuda":
        import torch
        torch.cuda.synchronize(target.device)
    build_s = time.perf_counter() - t0
    tdir = Path(target_dir or fixture_dirs()[0])
    target.save_pretrained(out / "target", max_shard_size=max_shard_size)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tdir / name).exists():
            shutil.copy(tdir / name, out / "target" / name)
    draft.save_pretrained(out / "draft", max_shard_size=max_shard_size)
    return {"shape": shape_of(shape).name if isinstance(shape, str) else shape.name,
            "build_s": build_s, "write_s": time.perf_counter() - t0 - build_s,
            "target_params": sum(p.numel() for p in target.parameters()),
            "draft_params": sum(p.numel() for p in draft.parameters()),
            "target_bytes": nbytes(target), "draft_bytes": nbytes(draft),
            "dtype": str(target.dtype).removeprefix("torch.")}
