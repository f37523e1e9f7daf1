"""Reading and writing weights in the Hugging Face safetensors layout: one
``model.safetensors``, or shards ``model-0000i-of-0000n.safetensors`` listed in
``model.safetensors.index.json``."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class CheckpointError(ValueError):
    """A weights folder is missing files or a size string cannot be read."""


def parse_size(size: int | str) -> int:
    """Bytes in a size given as an int or a string like ``"15MB"`` (10**6) or ``"16MiB"``
    (2**20), the units transformers uses."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if not m:
        raise CheckpointError(f"cannot read the size {size!r}; write it like 15MB or 16MiB.")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").upper()])


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding a checkpoint's weights, in index order."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    single = folder / SINGLE_FILE
    if single.exists():
        return [single]
    raise CheckpointError(
        f"no {SINGLE_FILE} or {INDEX_FILE} in {folder}; point to a folder holding the "
        f"checkpoint's weights.")


def read_state_dict(folder: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder (single file or shards), in their stored dtype."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        if not path.exists():
            raise CheckpointError(f"the shard {path.name} listed in {INDEX_FILE} is missing from {folder}.")
        state.update(load_file(str(path), device=str(device)))
    return state


def write_state_dict(folder: Path, state: dict[str, torch.Tensor], max_shard_size: int | str) -> list[Path]:
    """Write ``state`` into ``folder`` in shards of at most ``max_shard_size`` bytes (a
    tensor larger than that gets a shard of its own); one shard is written as
    ``model.safetensors`` with no index. Weight files left from an earlier save are removed
    so the folder never mixes two checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and sizes[-1] + nbytes > limit:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = tensor.detach().contiguous().cpu()
        sizes[-1] += nbytes
    for old in list(folder.glob("model*.safetensors")) + [folder / INDEX_FILE]:
        if old.exists():
            os.remove(old)
    if len(shards) == 1:
        path = folder / SINGLE_FILE
        save_file(shards[0], str(path), metadata={"format": "pt"})
        return [path]
    paths = []
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        path = folder / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        paths.append(path)
        weight_map.update({name: path.name for name in shard})
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return paths
