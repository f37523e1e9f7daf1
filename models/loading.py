"""Loading targets, drafts and tokenizers from a Hugging Face hub id or a local folder,
hashing their files for the trace's run.json, and building a tiny random pair for tests.

Nothing is downloaded unless the user named a hub id. A ``twin:SHAPE`` id (``twin:qwen3-8b``)
is a cost twin built in memory from the shipped fixture pair (``models.twin``). A name is a local path when it
exists, or when it is written like one (absolute, starting with ``.`` or ``~``, or with
more than one ``/``); it must then exist. Otherwise it is a hub id ``owner/name``.
"""
from __future__ import annotations

import functools
import inspect
import os
import re
from pathlib import Path

import torch

from specreplay.models import twin
from specreplay.models.checkpoint import CheckpointError
from specreplay.models.draft import DFlashDraftModel
from specreplay.models.draft_config import DraftConfig, DraftConfigError, build_target_layer_ids
from specreplay.errors import CLIError
from specreplay.traces.io import file_digest

__all__ = ["ModelLoadError", "build_tiny_pair", "file_hashes", "load_draft", "load_target",
           "load_tokenizer", "resolve_folder"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ModelLoadError(CLIError):
    """A model, draft or tokenizer cannot be loaded; the message says what was looked for
    and how to supply it."""


def _is_local(name: str) -> bool:
    return (os.path.exists(os.path.expanduser(name)) or name.startswith((".", "/", "~"))
            or name.count("/") > 1 or "\\" in name or not _HUB_ID.match(name))


def _offline_hint(name: str) -> str:
    return (f"download it on a connected machine with `huggingface-cli download {name} "
            f"--local-dir DIR`, copy DIR here and pass its path")


def resolve_folder(id_or_path: str, what: str, allow_patterns: list[str] | None = None) -> Path:
    """The local folder holding ``id_or_path``: the path itself, or the hub snapshot
    (taken from the local Hugging Face cache when there, else downloaded)."""
    name = str(id_or_path)
    if _is_local(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(
                f"no {what} folder at {folder}; pass a folder holding config.json and the "
                f"weights, or a hub id like owner/name.")
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=allow_patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(name, allow_patterns=allow_patterns))
    except Exception as e:
        raise ModelLoadError(
            f"could not fetch the {what} {name!r} from the Hugging Face hub "
            f"({type(e).__name__}); {_offline_hint(name)}.") from None


def _torch_dtype(dtype):
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16.")
    return value


@functools.lru_cache(maxsize=None)
def _cache_name(model_type: type) -> str:
    params = inspect.signature(model_type.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """The keyword that hands a KV cache to ``model``'s forward: transformers 5.24 renamed
    ``past_key_values`` to ``cache`` (the old name still works there but warns on every
    forward), while the oldest transformers we support knows only the old name; the
    model's own signature says which one it takes."""
    return {_cache_name(type(model)): cache}


def load_target(id_or_path, dtype="auto", attn=None, device=None):
    """Any Hugging Face causal LM, in eval mode. ``dtype``: "auto" (the checkpoint's),
    a torch dtype or its name; ``attn``: an attn_implementation ("sdpa", "eager",
    "flash_attention_2", ...) or None for the transformers default; ``device``: where
    to put it (default CPU)."""
    from transformers import AutoModelForCausalLM

    name = str(id_or_path)
    if twin.is_twin_id(name):
        return twin.build_target(name, device=device or "cpu", dtype=_torch_dtype(dtype), attn=attn)
    source = str(resolve_folder(name, "target model")) if _is_local(name) else name
    kwargs = {"dtype": _torch_dtype(dtype)}
    if attn is not None:
        kwargs["attn_implementation"] = attn
    try:
        model = _from_cache_then_hub(AutoModelForCausalLM, source, local=_is_local(name), **kwargs)
    except OSError as e:
        if _is_local(name):
            raise ModelLoadError(
                f"the folder {source} does not hold a loadable causal LM ({_first_line(e)}); "
                f"pass a folder with config.json and its weights.") from None
        raise ModelLoadError(
            f"could not load the target {name!r} from the hub or the local cache "
            f"({_first_line(e)}); {_offline_hint(name)}.") from None
    except (ValueError, ImportError) as e:
        raise ModelLoadError(f"could not load the target {name!r}: {_first_line(e)}") from None
    if device is not None:
        model.to(device)
    return model.eval()


def _from_cache_then_hub(auto_class, source: str, local: bool, **kwargs):
    """``auto_class.from_pretrained``; for a hub id the local cache is tried first, so a
    cached model loads without touching the network."""
    if not local:
        try:
            return auto_class.from_pretrained(source, local_files_only=True, **kwargs)
        except OSError:
            pass
    return auto_class.from_pretrained(source, **kwargs)


def load_draft(id_or_path, target, dtype=None, device=None) -> DFlashDraftModel:
    """A DFlash draft (z-lab format), checked against and bound to ``target``.
    ``dtype``/``device`` default to the target's (the draft computes with the target's
    embedding and LM head, so they must agree)."""
    name = str(id_or_path)
    if twin.is_twin_id(name):
        return _twin_draft(name, target, dtype, device)
    folder = resolve_folder(name, "draft model", allow_patterns=["*.json", "*.safetensors"])
    embed = target.get_input_embeddings().weight
    try:
        draft = DFlashDraftModel.from_pretrained(
            folder, dtype=embed.dtype if dtype is None else _torch_dtype(dtype),
            device=embed.device if device is None else device)
    except (DraftConfigError, CheckpointError) as e:
        raise ModelLoadError(f"cannot load the draft {name!r}: {e}") from None
    check_pair(target, draft.config, name)
    return draft.bind_target(target)


def _twin_draft(name: str, target, dtype, device) -> DFlashDraftModel:
    """The twin draft of ``name``, which needs the twin target of the same shape (built
    in memory, or loaded from a folder ``specreplay twin`` wrote)."""
    shape = twin.shape_of(name)
    built = getattr(target.config, "specreplay_twin", None) or {}
    if built.get("shape") != shape.name:
        have = f"the {built['shape']} twin" if built.get("shape") else "not a twin"
        raise ModelLoadError(
            f"the draft {name!r} needs the target twin:{shape.name}, but the target is {have}; "
            f"pass --target twin:{shape.name} (or a folder written by specreplay twin --shape "
            f"{shape.name}).")
    plan = getattr(target, "twin_plan", None) or twin.plan_twin(shape)
    draft = twin.build_draft(shape, target, plan=plan)
    if dtype is not None or device is not None:
        draft.to(device=device, dtype=_torch_dtype(dtype))
    return draft


def check_pair(target, config: DraftConfig, draft_name: str = "draft") -> None:
    """Raise ModelLoadError unless the draft fits the target: equal hidden sizes, tapped
    layers that exist, a mask token inside the target's vocabulary."""
    tcfg = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    t_hidden, t_layers = tcfg.hidden_size, tcfg.num_hidden_layers
    rows = target.get_input_embeddings().weight.shape[0]
    if config.hidden_size != t_hidden:
        raise ModelLoadError(
            f"the draft {draft_name!r} has hidden size {config.hidden_size} but the target has "
            f"{t_hidden}; use the draft trained for this target.")
    bad = [i for i in config.target_layer_ids if not 0 <= i < t_layers]
    if bad:
        raise ModelLoadError(
            f"the draft {draft_name!r} reads target layers {config.target_layer_ids} but the "
            f"target has only {t_layers} layers (0..{t_layers - 1}); use the draft trained "
            f"for this target.")
    if not 0 <= config.mask_token_id < rows:
        raise ModelLoadError(
            f"the draft {draft_name!r} uses mask token {config.mask_token_id}, outside the "
            f"target's {rows}-row embedding; use the draft trained for this target.")


def load_tokenizer(id_or_path):
    """The tokenizer stored with a model (hub id or local folder)."""
    from transformers import AutoTokenizer

    name = str(id_or_path)
    if twin.is_twin_id(name):
        twin.shape_of(name)
        name = str(twin.fixture_dirs()[0])
    source = str(resolve_folder(name, "tokenizer")) if _is_local(name) else name
    try:
        return _from_cache_then_hub(AutoTokenizer, source, local=_is_local(name))
    except (OSError, ValueError) as e:
        hint = "pass a folder holding tokenizer.json or tokenizer_config.json" if _is_local(name) \
            else _offline_hint(name)
        raise ModelLoadError(f"could not load a tokenizer from {name!r} ({_first_line(e)}); {hint}.") from None


def file_hashes(path) -> dict[str, str]:
    """{relative file name: sha256 hex} for every file of a model folder or of a hub
    id's snapshot in the local cache (never downloads). Files in the Hugging Face cache
    whose blob is named by its sha256 (large LFS files) are not re-read."""
    name = str(path)
    if twin.is_twin_id(name):
        # a twin is a function of the fixture pair and its shape (named by the id)
        twin.shape_of(name)
        return {f"{part.name}/{rel}": digest for part in twin.fixture_dirs()
                for rel, digest in file_hashes(part).items()}
    if _is_local(name):
        folder = resolve_folder(name, "model")
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(name, local_files_only=True))
        except Exception:
            raise ModelLoadError(
                f"the hub model {name!r} is not in the local Hugging Face cache, so its files "
                f"cannot be hashed; load it first or pass its local folder.") from None
    hashes = {}
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder)
        if not file.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        blob = file.resolve().name
        hashes[rel.as_posix()] = blob if file.is_symlink() and _HEX64.match(blob) else file_digest(file)
    return hashes




def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0].rstrip(".") if text else type(e).__name__


def tiny_draft_config(target_config, draft_layers: int = 2, block_size: int = 8,
                      mask_token_id: int | None = None) -> DraftConfig:
    """A draft config matching a (tiny) Qwen3 target config: same hidden size, heads and
    RoPE; ``target_layer_ids`` from ``build_target_layer_ids``; the mask token is the last
    vocabulary row unless given."""
    L = target_config.num_hidden_layers
    vocab = target_config.vocab_size
    return DraftConfig.from_dict({
        "hidden_size": target_config.hidden_size,
        "intermediate_size": target_config.intermediate_size,
        "num_hidden_layers": draft_layers,
        "num_attention_heads": target_config.num_attention_heads,
        "num_key_value_heads": target_config.num_key_value_heads,
        "head_dim": target_config.head_dim,
        "vocab_size": vocab,
        "rms_norm_eps": target_config.rms_norm_eps,
        "max_position_embeddings": target_config.max_position_embeddings,
        "rope_parameters": dict(target_config.rope_parameters),
        "num_target_layers": L,
        "dtype": "float32",
        "dflash_config": {
            "mask_token_id": vocab - 1 if mask_token_id is None else mask_token_id,
            "target_layer_ids": build_target_layer_ids(L, draft_layers),
            "block_size": block_size,
        },
    })


def build_tiny_pair(seed: int = 0, vocab: int = 96, hidden: int = 64, target_layers: int = 6,
                    draft_layers: int = 2, heads: int = 4, kv_heads: int = 2, head_dim: int = 16,
                    intermediate: int = 128, block_size: int = 8, std: float = 0.1,
                    attn: str = "sdpa"):
    """A tiny random (target, draft) pair for tests: a float32 CPU ``Qwen3ForCausalLM``
    (untied LM head, RoPE theta 10000) and a matching bound ``DFlashDraftModel`` (mask
    token = vocab - 1, ``target_layer_ids`` = ``build_target_layer_ids(target_layers,
    draft_layers)``, i.e. [1, 3] by default). Weights are normal(0, ``std``) (norms 1),
    drawn from ``seed`` without touching the global RNG. Both are in eval mode. Takes
    well under a second at the defaults."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tcfg = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=target_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False, initializer_range=std, attn_implementation=attn,
        dtype="float32")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        target = Qwen3ForCausalLM(tcfg).float().eval()
        draft = DFlashDraftModel(tiny_draft_config(tcfg, draft_layers, block_size))
        draft.init_weights(std)
    return target, draft.eval().bind_target(target)
