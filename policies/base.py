"""The policy contract shared by the live loop (live/) and the simulator (sim/).

A cycle has two decision points and one observation:

1. ``plan_draft(ctx) -> DraftRequest``: before drafting, the block size b (anchor plus
   b-1 drafted positions; b = 1 means no draft, plain autoregressive) and draft-input
   options (suffix-recycle seeds, refinement).
2. ``plan_verify(view) -> VerifyPlan``: after drafting, what to verify, expressed as
   paths over draft *ranks* (rank 0 = the draft's top-1 token at that offset). A chain
   of length v is the single path (0,)*(v-1); a tree is a set of paths packed as a trie;
   candidate blocks verified as a batch are a set of paths too.
3. ``observe(outcome)``: the accepted length, tau and the seconds the cycle took. Live
   these are measured; in the simulator they come from the cost model. A policy cannot
   tell the two apart.

Everything a policy sees is built from numbers a trace stores (the draft's top-k ids and
float16-rounded log-probabilities), so the same decisions are taken live and in replay.

A spec string names a policy: components joined by ``+``, each ``name(key=value, ...)``,
list values separated by ``|``: ``ewma(candidates=8|12|16)+gate(min_prob=0.2)``.
Components have one role each: "block" (chooses b), "input" (changes the draft's
input: recycling, refinement) or "verify" (chooses what to verify).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

Path = tuple[int, ...]  # draft ranks at offsets 1..len(path)


@dataclass(frozen=True)
class CycleContext:
    """What a policy knows before drafting a cycle."""
    sample: int
    cycle: int                 # 0-based within the request
    start: int                 # output index of the anchor
    context_len: int           # tokens in the target KV cache before the anchor
    remaining: int             # tokens still allowed by max_new_tokens (>= 1)
    default_block_size: int    # the draft's trained block size
    prev_view: "DraftView | None" = None
    prev_outcome: "CycleOutcome | None" = None


@dataclass(frozen=True)
class DraftRequest:
    """Decision point 1. ``seeds`` are (offset, token id) pairs written into the draft's
    input block in place of the mask token; ``probe`` names the oracle probe that
    reproduces this input offline ("" for a plain draft)."""
    block_size: int
    seeds: tuple[tuple[int, int], ...] = ()
    prev_offset: int = 0            # recycling: start - start of the cycle the seeds came from
    refine_steps: int = 0           # extra draft passes after the first (0 = none)
    refine_only_below: float = 1.0  # redraft only offsets whose top-1 prob is below this
    refine_input: str = "mask"      # a redrafted offset holds: "mask" | "previous" (its last token)
    probe: str = ""


@dataclass(frozen=True)
class DraftView:
    """The draft's proposal for one cycle, after any refinement.

    ``ids[i-1, r]`` is the rank-r token at offset i; ``logprobs`` the matching
    log-probabilities (float16-rounded, as stored in traces). ``rng`` is seeded from
    (seed, sample, start) so sampled decisions are the same live and in replay.
    """
    sample: int
    start: int
    block_size: int
    ids: np.ndarray        # int32 [b-1, k]
    logprobs: np.ndarray   # float32 [b-1, k]
    rng: np.random.Generator | None = None

    @property
    def k(self) -> int:
        return int(self.ids.shape[1]) if self.ids.ndim == 2 else 0

    @property
    def tokens(self) -> np.ndarray:
        """Top-1 draft token per offset 1..b-1."""
        return self.ids[:, 0]

    @property
    def probs(self) -> np.ndarray:
        return np.exp(self.logprobs.astype(np.float64))


@dataclass(frozen=True)
class VerifyPlan:
    """Decision point 2. ``mode``: "chain" (one path), "batch" (each path a row of one
    batched forward) or "tree" (paths packed as a trie, one forward with an
    ancestor-only mask)."""
    mode: str
    paths: tuple[Path, ...]

    @staticmethod
    def chain(length: int) -> "VerifyPlan":
        """Verify the anchor and the first ``length - 1`` top-1 drafted tokens."""
        return VerifyPlan("chain", ((0,) * max(0, length - 1),))

    def verify_tokens(self) -> int:
        """Query tokens the target processes (all rows), anchor included."""
        if self.mode == "batch":
            return sum(len(p) + 1 for p in self.paths)
        if self.mode == "tree":
            return len(trie_nodes(self.paths)) + 1
        return len(self.paths[0]) + 1

    def batch(self) -> int:
        return len(self.paths) if self.mode == "batch" else 1

    def max_rank(self) -> int:
        return max((max(p) for p in self.paths if p), default=0)


def trie_nodes(paths: tuple[Path, ...]) -> list[tuple[int, int, int]]:
    """Pack rank paths into a trie. Returns nodes (parent, depth, rank) in creation order;
    parent -1 is the anchor, depth d means offset d. Shared prefixes share nodes."""
    index: dict[Path, int] = {}
    nodes: list[tuple[int, int, int]] = []
    for path in paths:
        for d in range(1, len(path) + 1):
            key = path[:d]
            if key not in index:
                index[key] = len(nodes)
                nodes.append((index[path[:d - 1]] if d > 1 else -1, d, path[d - 1]))
    return nodes


@dataclass(frozen=True)
class CycleOutcome:
    """What happened in a cycle. ``accepted`` counts drafted tokens accepted on the
    chosen path, capped so that accepted + 1 never exceeds the tokens that fit (max
    new tokens, stop token); tau = accepted + 1."""
    sample: int
    cycle: int
    start: int
    block_size: int
    accepted: int
    tau: int
    committed: int
    chosen_path: int
    verify_tokens: int
    draft_s: float
    target_s: float
    overhead_s: float
    cycle_s: float
    l_gen: int = 0  # drafted length up to the first stop token (ADL), else block_size


class Policy:
    """Base class of every policy component. Subclasses set ``name``, ``role`` and
    ``params`` (name -> default) and register with ``@register``."""
    name: ClassVar[str] = ""
    role: ClassVar[str] = ""          # "block" | "input" | "verify"
    params: ClassVar[dict[str, Any]] = {}
    # one line per knob, shown by `specreplay policies`
    help: ClassVar[str] = ""

    def __init__(self, **kwargs: Any) -> None:
        self.kw = {**self.params, **kwargs}

    # -- knob checks for constructors (a ValueError becomes the parser's one sentence)
    def require_at_least(self, minimum: int | float, *names: str) -> None:
        for name in names:
            if self.kw[name] < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {self.kw[name]}")

    def require_fraction(self, *names: str) -> None:
        """Each knob lies in (0, 1] (EWMA weights)."""
        for name in names:
            if not 0.0 < self.kw[name] <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {self.kw[name]}")

    # -- identity
    def spec(self) -> str:
        """Canonical spec string: every knob, defaults included, in declaration order."""
        from specreplay.policies.spec import format_component
        return format_component(self.name, self.kw, self.params)

    def __eq__(self, other: object) -> bool:
        """Components are equal when they are configured alike (same canonical spec);
        their runtime state does not count."""
        return type(other) is type(self) and other.spec() == self.spec()

    def __hash__(self) -> int:
        return hash(self.spec())

    def __repr__(self) -> str:
        return self.spec()

    # -- lifecycle
    def reset(self, sample: int) -> None:
        """Start a new request; state does not carry across requests."""

    # -- role "block"
    def choose_block(self, ctx: CycleContext) -> int:
        raise NotImplementedError

    # -- role "input": adjust a draft request
    def draft_input(self, ctx: CycleContext, req: DraftRequest) -> DraftRequest:
        return req

    # -- role "verify"
    def plan_verify(self, view: DraftView) -> VerifyPlan:
        raise NotImplementedError

    def observe(self, outcome: CycleOutcome) -> None:
        """Called after every cycle with the outcome (measured live, modelled in sim)."""

    def state(self) -> dict[str, Any]:
        """Scalars worth plotting per cycle (stored in cycles.policy_state)."""
        return {}

    # -- what replay needs
    def probes(self) -> tuple[str, ...]:
        """Oracle probe keys this component needs offline."""
        return ()

    def max_rank(self) -> int:
        """Highest draft rank this component may verify (needs oracle top-k > it)."""
        return 0

    def uses_time(self) -> bool:
        """True if decisions depend on observed seconds (replay then depends on the
        cost model, not only on the oracle)."""
        return False

    # a verify component that shortens the chain by the draft's confidence: its cycles
    # are costed with the host time of a gated chain (see ``host_mode``)
    gates: ClassVar[bool] = False


def host_mode(block_size: int, plan_mode: str, gated: bool, probed: bool = False) -> str:
    """The traces.schema HOST_MODES entry of a cycle of ``block_size`` verified as ``plan_mode``, by a
    policy whose verify component gates (``Policy.gates``) or not, from a draft request
    that names a probe input (``DraftRequest.probe``: refined or seeded) or not."""
    if block_size <= 1:
        return "ar"
    if plan_mode == "chain" and gated:
        return "gated"
    if plan_mode == "chain" and probed:
        return "probed"
    return plan_mode


@dataclass
class Composite:
    """A full policy: one block component, input components, one verify component."""
    block: Policy
    inputs: list[Policy] = field(default_factory=list)
    verify: Policy | None = None

    def components(self) -> list[Policy]:
        return [self.block, *self.inputs, *([self.verify] if self.verify else [])]

    def spec(self) -> str:
        return "+".join(c.spec() for c in self.components())

    def reset(self, sample: int) -> None:
        for c in self.components():
            c.reset(sample)

    def plan_draft(self, ctx: CycleContext) -> DraftRequest:
        req = DraftRequest(block_size=int(self.block.choose_block(ctx)))
        if req.block_size > 1:
            for c in self.inputs:
                req = c.draft_input(ctx, req)
        return req

    def plan_verify(self, view: DraftView) -> VerifyPlan:
        if view.block_size <= 1:
            return VerifyPlan.chain(1)
        if self.verify is None:
            return VerifyPlan.chain(view.block_size)
        return self.verify.plan_verify(view)

    def observe(self, outcome: CycleOutcome) -> None:
        for c in self.components():
            c.observe(outcome)

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in self.components():
            out.update(c.state())
        return out

    def probes(self) -> tuple[str, ...]:
        return tuple(p for c in self.components() for p in c.probes())

    def max_rank(self) -> int:
        return max(c.max_rank() for c in self.components())

    def uses_time(self) -> bool:
        return any(c.uses_time() for c in self.components())

    def host_mode(self, block_size: int, plan: VerifyPlan, probed: bool = False) -> str:
        """Which host time a cycle of this policy costs (``host_mode``): the profiler
        labels the cycles it times with this, and the simulator costs cycles by it."""
        return host_mode(block_size, plan.mode, self.verify is not None and self.verify.gates, probed)
