"""Candidate blocks: several whole blocks built from ONE draft pass, verified as a batch
or as a packed tree (as in the research script
``benchmark_candidate_solutions.py``).

Every generator reads only the draft's kept top-k log-probabilities, so the candidates
are the same live and in replay. Substituted tokens do not re-condition later offsets
(the draft ran once), as in the seed. Candidate 0 is always the greedy block; paths are
deduplicated (the top-k ids at one offset are distinct, so distinct rank paths are
distinct token blocks) and capped at the budget.

Scores: the seed ranked alternatives by raw logits; here by log-probabilities. At one
offset the two differ by a constant (the offset's log-sum-exp), so every choice among
tokens of one offset is the same; sums across offsets differ by the sum of those
constants, which only matters where the seed compared candidates that changed
different offsets with equal uncertainty.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from specreplay.policies.base import CycleOutcome, DraftView, Path, Policy, VerifyPlan
from specreplay.policies.spec import register

Scored = list[tuple[Path, float]]


def path_score(lp: np.ndarray, path: Path) -> float:
    """Summed log-probability of a full-length rank path."""
    return float(sum(lp[i, r] for i, r in enumerate(path)))


def top_margin(lp: np.ndarray) -> np.ndarray:
    """Per offset: top-1 minus top-2 probability (top-1 alone when k = 1)."""
    p = np.exp(lp)
    return p[:, 0] - (p[:, 1] if p.shape[1] > 1 else 0.0)


def branch_beam(lp: np.ndarray, depth: int, cap: int, margin: float) -> Scored:
    """Beam search over the ranks at offsets 1..depth (only where the top-1/top-2
    margin <= ``margin`` when margin >= 0), scored by summed log-probs, keeping the best
    ``cap`` at each offset; unselected offsets stay top-1. ``lp`` holds the ranks that
    may be used (its columns = topk)."""
    length, k = lp.shape
    selected = list(range(min(length, depth)))
    if margin >= 0:
        m = top_margin(lp)
        selected = [i for i in selected if m[i] <= margin]
    greedy = (0,) * length
    out: Scored = [(greedy, float(sum(lp[i, 0] for i in selected)))]
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    for i in selected:
        grown = [(ranks + (r,), s + float(lp[i, r])) for ranks, s in beams for r in range(k)]
        grown.sort(key=lambda e: -e[1])  # stable: ties keep the lower ranks first
        beams = grown[:cap]
    for ranks, s in beams:
        path = list(greedy)
        for i, r in zip(selected, ranks):
            path[i] = r
        out.append((tuple(path), s))
    return out


def fixed_prefix_rank(lp: np.ndarray, prefix: int, cap: int) -> Scored:
    """Block positions [0, prefix) stay top-1 (position 0 is the anchor, so offsets
    1..prefix-1); candidate r puts the rank-r token at every later offset."""
    length, k = lp.shape
    keep = min(max(prefix - 1, 0), length)
    paths = [(0,) * keep + (r,) * (length - keep) for r in range(min(cap, k))]
    return [(p, path_score(lp, p)) for p in paths]


def uncertainty_sparse_rank(lp: np.ndarray, prefix: int, positions: int, cap: int,
                            margin: float) -> Scored:
    """Offsets from block position ``prefix`` on, the ``positions`` most uncertain
    (uncertainty = -(top-1 minus top-2 log-prob); only where the probability margin <=
    ``margin`` when margin >= 0); each other candidate changes exactly ONE of them to a
    rank 1..k-1 token, most uncertain offset first, then the likelier alternative."""
    length, k = lp.shape
    greedy = (0,) * length
    total = float(lp[:, 0].sum())
    out: Scored = [(greedy, total)]
    if k < 2:
        return out
    suffix = range(min(max(prefix - 1, 0), length), length)
    unc = lp[:, 1] - lp[:, 0]
    if margin >= 0:
        m = top_margin(lp)
        suffix = [i for i in suffix if m[i] <= margin]
    chosen = sorted(suffix, key=lambda i: (-unc[i], i))[:positions]
    n_alt = min(cap, 1 + len(chosen) * (k - 1)) - 1
    # the seed's composite uncertainty * 1e6 + alternative logit, as an exact sort key
    alts = sorted(((i, r) for i in chosen for r in range(1, k)),
                  key=lambda e: (-unc[e[0]], -lp[e[0], e[1]], e[0], e[1]))[:n_alt]
    for i, r in alts:
        path = list(greedy)
        path[i] = r
        out.append((tuple(path), total - float(lp[i, 0]) + float(lp[i, r])))
    return out


def sampled(lp: np.ndarray, cap: int, temperature: float, rng: np.random.Generator) -> Scored:
    """The greedy block plus ``cap - 1`` blocks drawn offset by offset from the kept
    top-k renormalised at ``temperature`` (duplicates collapse later)."""
    length, k = lp.shape
    greedy = (0,) * length
    out: Scored = [(greedy, path_score(lp, greedy))]
    if cap <= 1 or length == 0:
        return out
    z = lp / temperature
    w = np.exp(z - z.max(axis=1, keepdims=True))
    cdf = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
    u = rng.random((cap - 1, length))
    ranks = np.minimum((u[:, :, None] >= cdf[None, :, :]).sum(axis=2), k - 1)
    for row in ranks:
        p = tuple(int(r) for r in row)
        out.append((p, path_score(lp, p)))
    return out


def dedupe(cands: Scored, cap: int) -> Scored:
    """First occurrence of each path, at most ``cap`` of them."""
    seen: dict[Path, float] = {}
    for path, score in cands:
        if path not in seen:
            seen[path] = score
            if len(seen) == cap:
                break
    return list(seen.items())


def adaptive_budget(cycle: int, prev_ratio: float | None, budgets: tuple[int, ...],
                    thresholds: tuple[float, ...], warmup: int, probe: int, cap: int) -> int:
    """The seed's per-cycle budget: the high budget during warmup, on probe cycles
    (cycle % probe == 0) and with no previous cycle; otherwise by the previous
    cycle's tau/b: >= thresholds[0] -> low, >= thresholds[1] -> mid, else high.
    Never more than ``cap``."""
    low, mid, high = budgets
    if cycle < warmup or (probe > 0 and cycle % probe == 0) or prev_ratio is None:
        budget = high
    elif prev_ratio >= thresholds[0]:
        budget = low
    elif prev_ratio >= thresholds[1]:
        budget = mid
    else:
        budget = high
    return min(budget, cap)


MODES = ("branch_beam", "fixed_prefix_rank", "uncertainty_sparse_rank", "sample")


@register
class Candidates(Policy):
    """Verify up to ``max`` whole candidate blocks (rank paths of length b-1) built from
    one draft pass, as one batched forward (verify=batch) or one packed tree
    (verify=tree). One candidate left (budget 1, or all duplicates) is a plain chain.

    mode=branch_beam: beam over the top-``topk`` ranks at offsets 1..``depth``.
    mode=fixed_prefix_rank: offsets before block position ``prefix`` top-1, rank r after.
    mode=uncertainty_sparse_rank: one rank substitution at one of the
    ``sparse_positions`` most uncertain offsets from block position ``prefix`` on.
    mode=sample: greedy plus blocks sampled from the renormalised top-``topk`` at
    ``temperature`` with ``view.rng`` (ranks are bounded by topk so the needed oracle
    top-k is known in advance; set topk to the trace's top-k to use all it kept).
    ``margin`` >= 0 restricts branching to offsets whose top-1/top-2 probability margin
    is at most it. adaptive=true picks the budget per cycle from ``budgets`` (low|mid|
    high) by the previous cycle's tau/b against ``thresholds`` (high|mid), with the
    high budget during ``adaptive_warmup`` cycles and every ``adaptive_probe`` cycles.
    """
    name = "candidates"
    role = "verify"
    params = {"mode": "branch_beam", "depth": 6, "topk": 2, "max": 4, "margin": -1.0,
              "prefix": 5, "sparse_positions": 4, "temperature": 1.0, "verify": "batch",
              "adaptive": False, "budgets": (1, 4, 8), "thresholds": (0.85, 0.65),
              "adaptive_warmup": 4, "adaptive_probe": 16}
    help = ("mode: branch_beam | fixed_prefix_rank | uncertainty_sparse_rank | sample\n"
            "depth: branch_beam branches at offsets 1..depth\n"
            "topk: ranks each offset may use\n"
            "max: candidate blocks per cycle, the greedy one included\n"
            "margin: if >= 0, branch only where top-1 minus top-2 probability <= margin\n"
            "prefix: rank modes keep block positions [0, prefix) top-1\n"
            "sparse_positions: uncertainty_sparse_rank changes one of this many offsets\n"
            "temperature: sample mode's temperature over the kept top-k\n"
            "verify: batch (one row per candidate) | tree (candidates packed as a trie)\n"
            "adaptive: choose the budget per cycle from the previous cycle's tau/b\n"
            "budgets: low|mid|high budgets of adaptive mode\n"
            "thresholds: tau/b at or above high|mid selects the low|mid budget\n"
            "adaptive_warmup: first cycles at the high budget\n"
            "adaptive_probe: every this many cycles at the high budget (0 = never)")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        k = self.kw
        if k["mode"] not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {k['mode']!r}")
        if k["verify"] not in ("batch", "tree"):
            raise ValueError(f"verify must be batch or tree, got {k['verify']!r}")
        self.require_at_least(1, "topk", "max")
        self.require_at_least(0, "depth", "prefix", "sparse_positions", "adaptive_warmup",
                              "adaptive_probe")
        if k["temperature"] <= 0:
            raise ValueError(f"temperature must be > 0, got {k['temperature']}")
        if len(k["budgets"]) != 3 or min(k["budgets"]) < 1:
            raise ValueError("budgets needs three values >= 1, low|mid|high, e.g. 1|4|8")
        th = k["thresholds"]
        if len(th) != 2 or not 0.0 <= th[1] <= th[0] <= 1.0:
            raise ValueError("thresholds needs two values high|mid in [0, 1] with "
                             "high >= mid, e.g. 0.85|0.65")
        self.reset(0)

    def reset(self, sample: int) -> None:
        self.cycle = 0
        self.prev_ratio: float | None = None
        self.last_budget = 0
        self.last_paths: tuple[Path, ...] = ()
        self.last_scores: tuple[float, ...] = ()
        self.last_chosen = 0

    def budget(self) -> int:
        """Candidates allowed this cycle."""
        k = self.kw
        if not k["adaptive"]:
            return k["max"]
        return adaptive_budget(self.cycle, self.prev_ratio, k["budgets"], k["thresholds"],
                               k["adaptive_warmup"], k["adaptive_probe"], k["max"])

    def generate(self, view: DraftView, budget: int) -> Scored:
        """Deduplicated, capped (path, score) candidates for this draft; the greedy
        block first."""
        k = self.kw
        lp = view.logprobs[:, :min(k["topk"], view.k)].astype(np.float64)
        mode = k["mode"]
        if mode == "branch_beam":
            cands = branch_beam(lp, k["depth"], budget, k["margin"])
        elif mode == "fixed_prefix_rank":
            cands = fixed_prefix_rank(lp, k["prefix"], budget)
        elif mode == "uncertainty_sparse_rank":
            cands = uncertainty_sparse_rank(lp, k["prefix"], k["sparse_positions"], budget,
                                            k["margin"])
        else:
            rng = view.rng if view.rng is not None else np.random.default_rng(
                (view.sample, view.start))
            cands = sampled(lp, budget, k["temperature"], rng)
        return dedupe(cands, budget)

    def plan_verify(self, view: DraftView) -> VerifyPlan:
        self.last_budget = self.budget()
        cands = self.generate(view, self.last_budget)
        self.last_paths = tuple(p for p, _ in cands)
        self.last_scores = tuple(s for _, s in cands)
        if len(self.last_paths) == 1:
            return VerifyPlan.chain(view.block_size)
        return VerifyPlan(self.kw["verify"], self.last_paths)

    def observe(self, outcome: CycleOutcome) -> None:
        self.cycle = outcome.cycle + 1
        self.prev_ratio = outcome.tau / max(outcome.block_size, 1)
        self.last_chosen = outcome.chosen_path

    def state(self) -> dict[str, Any]:
        return {"cand_n": len(self.last_paths), "cand_budget": self.last_budget,
                "cand_chosen": self.last_chosen}

    def max_rank(self) -> int:
        if self.kw["mode"] == "fixed_prefix_rank":
            return min(self.kw["max"], self.kw["topk"]) - 1
        return self.kw["topk"] - 1
