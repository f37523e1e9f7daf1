"""Sweeps: grids of policy knob values, replayed in parallel processes.

Grid syntax: a policy spec where a knob may hold several alternatives. ``|`` separates
alternatives of a one-value knob; a list-valued knob (such as ewma's ``candidates``, where
``|`` already builds the list) takes its alternatives separated by ``;``, which one-value
knobs accept too. Every combination across all knobs of all components is one policy::

    ewma(alpha=0.05|0.1|0.2, probe=8|12)            -> 6 policies
    ewma(candidates=8|16;8|12|16)+gate(min_prob=0.1|0.3) -> 4 policies
"""
from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable

from specreplay.policies import PolicyError, known_policies, parse_policy
from specreplay.policies.spec import split_top

_COMPONENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*(?:\((.*)\))?\s*$", re.S)


def _component_choices(text: str) -> list[str]:
    """All component specs one grid component expands to."""
    m = _COMPONENT.match(text)
    if not m:
        raise PolicyError(f"cannot read grid component {text.strip()!r}: write it as "
                          "name(key=value|value, ...)")
    name, args = m.group(1), m.group(2)
    if not args or not args.strip():
        return [name]
    params = known_policies().get(name, type("_", (), {"params": {}})).params
    keys, options = [], []
    for arg in split_top(args, ","):
        if "=" not in arg:
            raise PolicyError(f"{name}: grid argument {arg.strip()!r} needs the form key=value")
        key, value = (x.strip() for x in arg.split("=", 1))
        list_valued = isinstance(params.get(key), tuple)
        alts = value.split(";") if (list_valued or ";" in value) else value.split("|")
        alts = [a.strip() for a in alts]
        if any(not a for a in alts):
            raise PolicyError(f"{name}: grid knob {key} has an empty alternative")
        keys.append(key)
        options.append(alts)
    return [f"{name}({', '.join(f'{k}={v}' for k, v in zip(keys, combo))})"
            for combo in itertools.product(*options)]


def expand_grid(grid: str) -> list[str]:
    """Every policy spec a grid stands for, each checked by the policy parser."""
    if not grid or not grid.strip():
        raise PolicyError("empty grid; try 'ewma(alpha=0.05|0.1, probe=8|12)'")
    parts = [_component_choices(c) for c in split_top(grid, "+")]
    specs = ["+".join(combo) for combo in itertools.product(*parts)]
    for spec in specs:
        parse_policy(spec)
    return specs


# -- parallel replay: one Replayer, built once in the parent and inherited by forked
# workers (a trace's load, oracle arrays and ar baseline cost more than many replays);
# where processes cannot fork, each worker builds its own
_worker = None


def _init_worker(kwargs: dict[str, Any]) -> None:
    global _worker
    from specreplay.sim.replay import Replayer
    _worker = Replayer(**kwargs)


def _predict(spec: str) -> dict[str, Any]:
    return _worker.predict(spec).to_dict()


def run_sweep(specs: list[str], replay_kwargs: dict[str, Any], workers: int = 1,
              progress: Callable[[int], Any] | None = None) -> list[dict[str, Any]]:
    """Replay every spec (``replay_kwargs``: Replayer arguments) in ``workers``
    processes; returns ``Prediction.to_dict()`` per spec, in the order given.
    ``progress(n)`` is called as results arrive."""
    workers = max(1, min(workers, len(specs), os.cpu_count() or 1))
    if workers == 1:
        _init_worker(replay_kwargs)
        out = []
        for spec in specs:
            out.append(_predict(spec))
            if progress:
                progress(1)
        return out
    results: dict[int, dict[str, Any]] = {}
    if "fork" in multiprocessing.get_all_start_methods():
        _init_worker(replay_kwargs)
        _worker.baseline  # noqa: B018 -- the speedup's ar replay, once, before forking
        # the scalar-read copies of the oracle index every replay reads, built once
        for g in _worker.setting.acc.groups.values():
            g.row_list, g.chain_list  # noqa: B018
        # the parent's objects moved out of the collector's reach: the workers' collections
        # neither scan them nor write their headers (which would copy their pages)
        gc.freeze()
        pool_args: dict[str, Any] = {"mp_context": multiprocessing.get_context("fork")}
    else:
        pool_args = {"initializer": _init_worker, "initargs": (replay_kwargs,)}
    try:
        with ProcessPoolExecutor(workers, **pool_args) as pool:
            futures = {pool.submit(_predict, spec): i for i, spec in enumerate(specs)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                if progress:
                    progress(1)
    finally:
        gc.unfreeze()
    return [results[i] for i in range(len(specs))]
