"""Tree verification over draft ranks: several continuations verified in one target
pass, packed as a trie with an ancestor-only mask."""
from __future__ import annotations

import itertools
from typing import Any

from specreplay.policies.base import CycleOutcome, DraftView, Path, Policy, VerifyPlan, trie_nodes
from specreplay.policies.spec import register


def parse_rank_paths(text: str) -> tuple[Path, ...]:
    """Read an explicit tree: paths separated by ``|``, each path the draft ranks at
    offsets 1, 2, ... separated by dots. ``0.0.0|1|0.1`` is the top-1 chain to offset 3,
    the rank-1 token at offset 1, and rank 1 at offset 2 after the top-1 at offset 1."""
    paths = []
    for part in text.split("|"):
        items = [s.strip() for s in part.strip().split(".")]
        if not all(s.isdigit() for s in items):
            raise ValueError(f"tree path {part.strip()!r} must be draft ranks separated by "
                             "dots, e.g. paths=0.0.0|1|0.1")
        paths.append(tuple(int(s) for s in items))
    return tuple(dict.fromkeys(paths))


def format_rank_paths(paths: tuple[Path, ...]) -> str:
    return "|".join(".".join(map(str, p)) for p in paths)


def kary_paths(topk: int, depth: int, length: int) -> tuple[Path, ...]:
    """Leaves of the trie of every rank path of length ``depth`` with ranks < topk,
    in lexicographic order; the all-top-1 path continues to ``length`` offsets."""
    depth = min(depth, length)
    leaves = [tuple(p) for p in itertools.product(range(topk), repeat=depth)]
    leaves[0] = (0,) * length  # the first leaf is the top-1 path: continue it
    return tuple(leaves)


def fit_paths(paths: tuple[Path, ...], length: int, k: int) -> tuple[Path, ...]:
    """Cut every path to the block's ``length`` offsets and at the first rank the draft
    did not keep (>= k); drop what becomes empty, a duplicate, or a prefix of another
    path (the trie holds it already)."""
    cut_paths: dict[Path, None] = {}
    for p in paths:
        p = p[:length]
        cut = next((i for i, r in enumerate(p) if r >= k), len(p))
        if p[:cut]:
            cut_paths[p[:cut]] = None
    inner = {p[:d] for p in cut_paths for d in range(1, len(p))}
    return tuple(p for p in cut_paths if p not in inner) or ((),)


@register
class Tree(Policy):
    """Verify a tree of draft-rank paths in one target pass.

    Default: the k-ary trie of every rank path of length <= ``depth`` with each rank
    < ``topk``, plus the top-1 chain continued to the block's last offset (so the tree
    never verifies less than the plain chain). With ``paths`` set (``0.0.0|1|0.1``:
    paths joined by ``|``, ranks along a path joined by dots) exactly those paths are
    verified, cut to the block length; topk and depth are then unused. Ranks the draft
    did not keep in its top-k end a path there.
    """
    name = "tree"
    role = "verify"
    params = {"topk": 2, "depth": 5, "paths": ""}
    help = ("topk: ranks tried at each tree offset\n"
            "depth: offsets 1..depth branch; the top-1 chain continues to the block's end\n"
            "paths: an explicit tree instead, e.g. 0.0.0|1|0.1 (ranks per path, dot-separated)")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        k = self.kw
        self.require_at_least(1, "topk")
        self.require_at_least(0, "depth")
        self.explicit: tuple[Path, ...] = ()
        if k["paths"]:
            self.explicit = parse_rank_paths(k["paths"])
            k["paths"] = format_rank_paths(self.explicit)  # canonical text
        self.last_nodes = 0
        self._plans: dict[tuple[int, int], tuple[VerifyPlan, int]] = {}

    def reset(self, sample: int) -> None:
        self.last_nodes = 0

    def tree_paths(self, block_size: int, k: int) -> tuple[Path, ...]:
        """The rank paths verified for a block of this size whose draft kept top-k."""
        length = block_size - 1
        if self.explicit:
            return fit_paths(self.explicit, length, k)
        return fit_paths(kary_paths(self.kw["topk"], self.kw["depth"], length), length, k)

    def plan_verify(self, view: DraftView) -> VerifyPlan:
        key = (view.block_size, view.k)
        if key not in self._plans:  # the tree depends only on these two
            paths = self.tree_paths(*key)
            self._plans[key] = VerifyPlan("tree", paths), len(trie_nodes(paths))
        plan, self.last_nodes = self._plans[key]
        return plan

    def observe(self, outcome: CycleOutcome) -> None:
        if outcome.block_size <= 1:
            self.last_nodes = 0

    def state(self) -> dict[str, Any]:
        return {"tree_nodes": self.last_nodes}

    def max_rank(self) -> int:
        if self.explicit:
            return max((max(p) for p in self.explicit if p), default=0)
        return self.kw["topk"] - 1
