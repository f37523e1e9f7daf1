"""What an oracle pass over an existing trace computes, keeps and drops; no torch.

The oracle is a set of groups (block size, probe key), "" being the plain draft: every
block size has its plain group, and each probe has a group at every probe block size.
``specreplay oracle`` adds to what a trace holds: a group already recorded is kept as it
is, a new one is computed, and nothing is dropped. Only ``--replace`` makes the given
block sizes / probes / top-k the whole oracle; what that removes is written into run.json
(``oracle.dropped``) so that a later replay of a policy that needed it says why it is gone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from specreplay.errors import CLIError

DEFAULT_BLOCK_SIZES = (4, 8, 12, 16)
DEFAULT_TOP_K = 4
REPLACED_BY = "specreplay oracle --replace"

Group = tuple[int, str]


def groups(block_sizes: Iterable[int], probes: Iterable[str],
           probe_block_sizes: Iterable[int]) -> set[Group]:
    """The (block size, probe) groups of an oracle with these settings."""
    bs, pbs, ps = set(block_sizes), set(probe_block_sizes), list(probes)
    return {(b, "") for b in bs} | {(b, p) for b in bs & pbs for p in ps}


@dataclass(frozen=True)
class OraclePlan:
    """The oracle after the pass (``block_sizes``, ``probes``, ``probe_block_sizes``,
    ``top_k``), the groups to compute now and the recorded ones kept unchanged, and
    ``dropped``: what --replace removes (None when nothing is)."""
    block_sizes: tuple[int, ...]
    probes: tuple[str, ...]
    probe_block_sizes: tuple[int, ...]
    top_k: int
    compute: frozenset[Group]
    keep: frozenset[Group]
    dropped: dict[str, Any] | None = None
    history: tuple[dict[str, Any], ...] = field(default=())

    @property
    def compute_block_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({b for b, _ in self.compute}))

    @property
    def compute_probes(self) -> tuple[str, ...]:
        wanted = {p for _, p in self.compute if p}
        return tuple(p for p in self.probes if p in wanted)

    @property
    def nothing_to_do(self) -> bool:
        return not self.compute and self.dropped is None

    def run_meta(self, when: str) -> dict[str, Any]:
        """run.json's ``oracle`` after the pass; ``when`` stamps a drop."""
        meta: dict[str, Any] = {"block_sizes": list(self.block_sizes), "top_k": self.top_k,
                                "probes": list(self.probes),
                                "probe_block_sizes": list(self.probe_block_sizes)}
        history = list(self.history)
        if self.dropped is not None:
            history.append({"by": REPLACED_BY, "when": when, **self.dropped})
        if history:
            meta["dropped"] = history
        return meta


def plan_oracle(old: dict[str, Any] | None, block_sizes: Iterable[int] | None = None,
                probes: Iterable[str] | None = None, top_k: int | None = None,
                probe_block_sizes: Iterable[int] | None = None, live_probes: Iterable[str] = (),
                replace: bool = False, recompute_all: str | None = None) -> OraclePlan:
    """Plan a pass over a trace whose run.json holds ``old`` as its oracle (None: no
    oracle yet). ``block_sizes``, ``probes``, ``top_k``, ``probe_block_sizes``: what the
    user asked for (None: not given). Without ``replace`` they are added to the recorded
    ones; with it, each one given becomes the whole of its kind. ``live_probes``: the live
    policy's probes, always kept. ``recompute_all``: why the recorded groups cannot be
    kept (other models, another dtype); that needs ``replace``. Refuses, with a CLIError,
    a request that would lose recorded data without ``replace``."""
    old = old or {}
    old_b = tuple(int(b) for b in old.get("block_sizes") or ())
    if not old_b:  # no oracle yet: everything asked for is computed
        b = tuple(sorted(set(block_sizes or DEFAULT_BLOCK_SIZES)))
        p = _ordered([*(probes or ()), *live_probes])
        pb = _probe_sizes(b, probe_block_sizes if probe_block_sizes is not None else b)
        k = int(top_k or DEFAULT_TOP_K)
        return OraclePlan(b, p, pb, k, frozenset(groups(b, p, pb)), frozenset())
    old_p = tuple(old.get("probes") or ())
    # traces from before probe_block_sizes was recorded had probes at every block size
    old_pb = tuple(int(b) for b in old.get("probe_block_sizes") or old_b)
    old_k = int(old.get("top_k") or DEFAULT_TOP_K)
    k = int(top_k or old_k)
    if replace:
        b = tuple(sorted(set(block_sizes))) if block_sizes is not None else old_b
        p = _ordered([*(old_p if probes is None else probes), *live_probes])
        if probe_block_sizes is not None:
            pb = _probe_sizes(b, probe_block_sizes)
        else:
            pb = b if set(old_pb) >= set(old_b) else tuple(x for x in old_pb if x in b)
    else:
        if k < old_k:
            raise CLIError(f"--top-k {k} would keep fewer proposals than the recorded top-{old_k} "
                           f"and drop the ranks {k} to {old_k - 1}: pass --replace to do that, "
                           "or leave --top-k out")
        if recompute_all:
            raise CLIError(f"the recorded oracle cannot be kept: {recompute_all}; pass --replace "
                           "to recompute all of it, or run with the recording's settings")
        b = tuple(sorted(set(old_b) | set(block_sizes or ())))
        p = _ordered([*old_p, *(probes or ()), *live_probes])
        if probe_block_sizes is not None:
            pb = _probe_sizes(b, {*old_pb, *probe_block_sizes})
        elif set(old_pb) >= set(old_b):  # probes at every block size: so at new ones too
            pb = b
        else:
            pb = old_pb
    pb = tuple(sorted(set(pb)))
    new = groups(b, p, pb)
    recorded = groups(old_b, old_p, old_pb)
    if recompute_all or k != old_k:
        # every kept group must hold the same top-k, from the same models
        compute, keep = new, set()
    else:
        compute, keep = new - recorded, new & recorded
    gone = recorded - new
    dropped = None
    if gone or k < old_k:
        dropped = {"block_sizes": sorted(set(old_b) - set(b)),
                   "probes": [x for x in old_p if x not in p],
                   "probe_block_sizes": sorted((set(old_pb) & set(b)) - set(pb)),
                   "top_k_before": old_k if k < old_k else None}
    return OraclePlan(b, p, pb, k, frozenset(compute), frozenset(keep), dropped,
                      tuple(old.get("dropped") or ()))


def _ordered(keys: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(keys))


def _probe_sizes(block_sizes: tuple[int, ...], wanted: Iterable[int]) -> tuple[int, ...]:
    wanted = tuple(sorted(set(int(x) for x in wanted)))
    stray = [x for x in wanted if x not in block_sizes]
    if stray:
        raise CLIError(f"--probe-block-sizes {','.join(map(str, stray))} "
                       f"{'is not an oracle block size' if len(stray) == 1 else 'are not oracle block sizes'} "
                       f"(the oracle will hold {','.join(map(str, block_sizes))}); add "
                       f"{'it' if len(stray) == 1 else 'them'} to --block-sizes")
    return wanted


def describe_drop(dropped: dict[str, Any]) -> str:
    """What a --replace pass removed, as a clause for the user."""
    parts = []
    if dropped.get("block_sizes"):
        parts.append(f"block sizes {','.join(map(str, dropped['block_sizes']))}")
    if dropped.get("probes"):
        parts.append(f"probes {', '.join(dropped['probes'])}")
    if dropped.get("probe_block_sizes"):
        parts.append(f"probe rows at block sizes {','.join(map(str, dropped['probe_block_sizes']))}")
    if dropped.get("top_k_before"):
        parts.append(f"the ranks beyond the new top-k (it was top-{dropped['top_k_before']})")
    return "; ".join(parts) or "nothing"
