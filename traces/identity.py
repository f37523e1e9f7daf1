"""What makes two recordings (or a recording and a profile) comparable.

A resumed recording and the ranks of one sharded recording must agree on everything that
changes the numbers they hold: models, hardware, dtype, sampling, the live policy, the
oracle settings. A latency profile only needs the same hardware and models to describe a
trace's timing.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from specreplay.traces.schema import setup_shapes

# run.json keys that must agree for parts of one recording (resume, merge). The dataset
# is compared without its indices: each rank of a sharded run holds other rows.
RECORDING_KEYS = ("setup", "target", "draft", "sampling", "live_policy", "top_k_logits", "oracle")
DATASET_KEYS = ("name", "split", "template")

# The keys of run.json / profile.json that make a latency profile describe a trace.
SETUP_KEYS = ("setup", "target", "draft")


def _model_identity(model: Any) -> Any:
    """A model's id and file hashes; the rest of its entry (block size ...) is setup
    of the recording, not of the hardware."""
    if not isinstance(model, dict):
        return model
    return {"id": model.get("id"), "files": model.get("files") or {}}


def _setup(setup: Any) -> Any:
    """A setup as compared: one written by the graph backend on a GPU before setups named
    their ``shapes`` gets the shapes that backend has always captured at."""
    if isinstance(setup, dict) and "shapes" not in setup and setup_shapes(setup) is not None:
        return {**setup, "shapes": setup_shapes(setup)}
    return setup


def recording_identity(run: dict[str, Any]) -> dict[str, Any]:
    """The part of run.json that two pieces of one recording must share."""
    out = {k: run.get(k) for k in RECORDING_KEYS}
    out["setup"] = _setup(out["setup"])
    dataset = run.get("dataset") or {}
    out["dataset"] = {k: dataset.get(k) for k in DATASET_KEYS} if isinstance(dataset, dict) else dataset
    return out


def setup_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """The hardware and models a trace was recorded on, or a profile measured on (a setup
    from before ``shapes`` pairs with one written after: ``_setup``)."""
    return {"setup": _setup(meta.get("setup")),
            "target": _model_identity(meta.get("target")),
            "draft": _model_identity(meta.get("draft"))}


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Human-readable ``key: A != B`` lines for every leaf where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if a != b:
        return [f"{prefix.rstrip('.')}: {a!r} != {b!r}"]
    return []


def git_dirty(where: str | Path | None = None) -> bool | None:
    """Whether the git checkout holding ``where`` (default: this package) has changes to
    tracked files or untracked files not ignored, i.e. whether the code that wrote a
    recording differs from its ``git_commit``; None when there is no checkout (installed
    package, no git): provenance must never fail a recording. A stated commit
    (``traces.writer.COMMIT_ENV``) comes with its stated dirtiness: ``DIRTY_ENV`` "1" or
    "0", None when not stated."""
    stated = os.environ.get("SPECREPLAY_GIT_COMMIT")
    if where is None and stated is not None:
        if not re.fullmatch(r"[0-9a-f]{40}", stated.strip().lower()):
            return None  # no valid stated commit (git_commit records null): no dirtiness either
        return {"1": True, "0": False}.get(os.environ.get("SPECREPLAY_GIT_DIRTY", "").strip())
    cwd = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal"],
                             cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return bool(out.stdout.strip())
