"""The discrete-event replay: requests as SimPy processes sharing one GPU.

Each request is a process that reads like the live loop it replays::

    prefill (GPU)                                   # serving runs only
    loop until the output is complete:
        plan_draft(ctx)      -> block size, draft input (policy)
        draft lookup         -> the DraftView the draft would have produced (oracle)
        plan_verify(view)    -> rank paths to verify (policy)
        acceptance lookup    -> accepted length (oracle)
        draft + verify (GPU) -> seconds (cost model, or the recorded seconds)
        observe(outcome)     -> the policy updates itself

Policy decisions take no simulated time and cannot depend on the GPU's timing of the
cycle they decide, so a request settles its whole cycle before it asks for the GPU, and
the GPU runs the cycle's draft and verify passes as one step.

Batching rule. The GPU runs one step at a time. A step takes every cycle that is ready
when it starts (a request is ready once it has planned its next cycle); requests that
become ready while a step runs wait for the next one. All requests ready at the same
instant, including those whose previous cycle ended at that instant, share the step. A
step's seconds: one batched draft pass over the cycles that draft (batch = their number,
block size and context padded to the largest), then one batched verify pass (batch =
their verify rows, query tokens and context padded to the largest; tree-masked if any
cycle verifies a tree), then the per-cycle host overhead once. Prefills run in steps of
their own, before waiting cycles, with no decode cycles mixed in; with the trace's own
timing a prefill step costs its prompt tokens at the recorded per-token rate (the median
over the samples after the cold first one, ``Timer.prefill_per_token``), else the target
cost of the longest prompt at the step's batch. Every cycle in a step observes the
step's draft/target/overhead seconds and a cycle time that includes its wait for the GPU.

With one request at a time (single stream) the GPU never queues: each cycle is one
timeout of its own seconds, exactly the live single-stream loop. So single stream needs
no event loop: ``run_direct`` drives the same per-request generator (``request``) with a
plain clock.

The hot path of a replayed cycle lives in ``request`` (and sim.acceptance): one
context and one outcome per request rewritten every cycle (``HotContext``,
``HotOutcome``), cached draft requests and chain plans (``HotPolicy``), views built only
when a verify component reads them, a previous view only when a policy reads it, a
plain chain's (or fixed tree's) seconds read from per-context lists of the cost model,
verify shapes memoised per plan, tries memoised per path set. A policy that only
chooses block sizes (no draft-input or verify component: fixed, ewma, breakeven)
under the cost model takes ``chain_cycles`` instead: ``request``'s plain-chain route
as one generator over the requests; with one request in flight (single stream, or
concurrency 1) it keeps two numbers per cycle and fills in the other columns after
the run (``RunLog.columns``), and in single stream it advances the clock itself. A
closed loop sharing the GPU runs its clients as plain generators that the GPU resumes
when a step ends (``GPU.drive``), in the order SimPy would resume their processes. The policy objects are the ones the live loop runs,
called as ``Composite`` calls them; nothing of their decisions is reimplemented. ``hot=False`` runs ``request_reference`` instead: a fresh
frozen context, view and outcome per cycle and every job through ``Work`` and the GPU,
as plainly as the loop reads above. Tests replay every policy family both ways (the
direct loop, SimPy single stream, closed and open loop serving) and demand the same
cycles, field by field.
"""
from __future__ import annotations

import gc
import itertools
from dataclasses import dataclass, field, fields

import numpy as np
import simpy
from simpy.events import Event

from specreplay.policies import parse_policy
from specreplay.policies.base import (Composite, CycleContext, CycleOutcome, DraftRequest, host_mode,
                                     Policy, VerifyPlan)
from specreplay.sim.acceptance import Acceptance
from specreplay.sim.cost import CostModel, RecordedTiming
from specreplay.sim.tracedata import TraceData

NO_SOURCE = -2  # a pass that did not run (no draft at b = 1), or recorded seconds


_CONTEXT_FIELDS = tuple(f.name for f in fields(CycleContext))
_OUTCOME_FIELDS = tuple(f.name for f in fields(CycleOutcome))


def new_context(*values) -> CycleContext:
    """CycleContext(*values) without the frozen-dataclass __init__, which sets each
    field through object.__setattr__ and costs more than the rest of a replayed cycle's
    bookkeeping. The instance is an ordinary, equal, still-frozen CycleContext."""
    ctx = object.__new__(CycleContext)
    ctx.__dict__.update(zip(_CONTEXT_FIELDS, values))
    return ctx


def new_outcome(*values) -> CycleOutcome:
    """CycleOutcome(*values), built like ``new_context``."""
    out = object.__new__(CycleOutcome)
    out.__dict__.update(zip(_OUTCOME_FIELDS, values))
    return out


class Clock:
    """The time a request reads when no SimPy environment runs it (``run_direct``)."""
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0


_LAZY = object()  # a HotContext's prev_view not built yet


class HotContext(CycleContext):
    """The CycleContext of one request in the hot path: one object per request whose
    fields the engine rewrites before each cycle (a frozen dataclass built per cycle
    costs more than the policy's own decision), and whose ``prev_view`` is built only
    when a policy reads it (recycling does; block schedulers do not). The reference
    engine (``hot=False``) builds a fresh CycleContext per cycle instead; the test that
    compares the two would catch a policy that keeps a context beyond its cycle."""

    @property
    def prev_view(self):  # type: ignore[override]
        d = self.__dict__
        view = d["_pv"]
        if view is _LAZY:
            view = d["_pv"] = d["_engine"].lazy_prev_view(d["sample"], *d["_p"])
        return view


class HotOutcome(CycleOutcome):
    """The CycleOutcome of one request in the hot path, rewritten after each cycle like
    ``HotContext``; ``l_gen`` (ADL's drafted length up to a stop token, which needs the
    draft's token ids) is read from the oracle row only when a policy asks."""

    @property
    def l_gen(self) -> int:  # type: ignore[override]
        d = self.__dict__
        v = d["_lg"]
        if v is None:
            g = d["_g"]
            v = d["_lg"] = d["_engine"].acc.l_gen(g, d["_engine"].stop_ids)[d["_r"]] if g else 1
        return v


class ChainContext(CycleContext):
    """The ``HotContext`` of ``Engine.chain_cycles``: a cycle writes ``cycle`` and
    ``start``; ``context_len`` and ``remaining`` follow from ``start`` and the request,
    and ``prev_view`` from the previous outcome (the same object every cycle, rewritten
    after the choice that reads it), all computed only when a policy asks."""

    @property
    def context_len(self) -> int:  # type: ignore[override]
        d = self.__dict__
        return d["_prompt"] + d["start"]

    @property
    def remaining(self) -> int:  # type: ignore[override]
        d = self.__dict__
        rem = d["_allowed"] - d["start"]
        return rem if rem > 1 else 1

    @property
    def prev_view(self):  # type: ignore[override]
        d = self.__dict__
        prev = d["prev_outcome"]
        if prev is None:
            return None
        o = prev.__dict__
        hit = d["_pv"]  # (the previous cycle, its view): one view per cycle, as live
        if hit is None or hit[0] != o["cycle"]:
            hit = d["_pv"] = (o["cycle"], d["_engine"].lazy_prev_view(
                d["sample"], o["start"], o["block_size"], o["_g"], o["_r"], False))
        return hit[1]


class ChainOutcome(CycleOutcome):
    """The ``HotOutcome`` of ``Engine.chain_cycles`` in single stream: a cycle writes
    ``cycle``, ``start``, ``tau``, ``cycle_s`` and its oracle row; the block size, with
    what it fixes, on a change. The rest is derived when read: accepted and committed
    from tau (a plain chain commits what it accepts plus the bonus), the passes' seconds
    from the cost lists the cycle's seconds came from, ``l_gen`` from the oracle row."""

    @property
    def accepted(self) -> int:  # type: ignore[override]
        return self.__dict__["tau"] - 1

    @property
    def committed(self) -> int:  # type: ignore[override]
        return self.__dict__["tau"]

    @property
    def draft_s(self) -> float:  # type: ignore[override]
        d = self.__dict__
        return d["_c"][3][d["_prompt"] + d["start"]]

    @property
    def target_s(self) -> float:  # type: ignore[override]
        d = self.__dict__
        return d["_c"][4][d["_prompt"] + d["start"]]

    @property
    def overhead_s(self) -> float:  # type: ignore[override]
        return self.__dict__["_c"][5]

    @property
    def l_gen(self) -> int:  # type: ignore[override]
        d = self.__dict__
        g = d["_g"]
        return d["_engine"].acc.l_gen(g, d["_engine"].stop_ids)[d["_r"]] if g else 1


class SharedChainOutcome(ChainOutcome):
    """``ChainOutcome`` on a shared GPU: the passes' seconds are the step's, read from
    the request's ``Work`` (rewritten only once the next cycle has been chosen)."""

    @property
    def draft_s(self) -> float:  # type: ignore[override]
        return self.__dict__["_w"].draft_s

    @property
    def target_s(self) -> float:  # type: ignore[override]
        return self.__dict__["_w"].target_s

    @property
    def overhead_s(self) -> float:  # type: ignore[override]
        return self.__dict__["_w"].overhead_s


class HotPolicy:
    """A Composite whose glue hands out its immutable results cached: the draft
    request of a block size before any input component, the chain plan of a block size.
    Every component method is called exactly as ``Composite`` calls it (block, then the
    inputs in order, then verify; observers in component order), so the decisions are
    the Composite's own; a test replays both and compares them cycle by cycle."""

    def __init__(self, policy: Composite) -> None:
        self.policy = policy
        self.reset, self.state = policy.reset, policy.state
        self._choose = policy.block.choose_block
        self._inputs = [c.draft_input for c in policy.inputs]
        self._verify = policy.verify.plan_verify if policy.verify is not None else None
        self._requests: dict[int, DraftRequest] = {}
        self._chains: dict[int, VerifyPlan] = {}
        # components that keep Policy's no-op observe are skipped
        observers = [c.observe for c in policy.components()
                     if type(c).observe is not Policy.observe]
        if len(observers) == 1:
            self.observe = observers[0]
        else:
            self._observers = observers

    def observe(self, outcome: CycleOutcome) -> None:
        for f in self._observers:
            f(outcome)

    def plan_draft(self, ctx: CycleContext) -> DraftRequest:
        b = int(self._choose(ctx))
        req = self._requests.get(b)
        if req is None:
            req = self._requests[b] = DraftRequest(block_size=b)
        if b > 1:
            for draft_input in self._inputs:
                req = draft_input(ctx, req)
        return req

    def plan_verify(self, view) -> VerifyPlan:
        b = view.block_size
        if b > 1 and self._verify is not None:
            return self._verify(view)
        plan = self._chains.get(b)
        if plan is None:
            plan = self._chains[b] = VerifyPlan.chain(max(b, 1))
        return plan


class Work:
    """One GPU job: a planned cycle, or a prefill. The GPU fills in the seconds."""
    __slots__ = ("sample", "start", "block_size", "context_len", "passes", "verify_q",
                 "verify_rows", "verify_tokens", "tree", "mode", "host_mode", "recorded", "prefill",
                 "draft_s", "target_s", "overhead_s", "step_s", "draft_src", "target_src",
                 "t_start", "owner", "step")

    def __init__(self, sample: int, start: int, block_size: int, context_len: int,
                 passes: int = 1, verify_q: int = 1, verify_rows: int = 1, tree: bool = False,
                 recorded=None, prefill: bool = False, verify_tokens: int = 1) -> None:
        self.sample, self.start, self.block_size = sample, start, block_size
        self.context_len, self.passes = context_len, passes
        self.verify_q, self.verify_rows, self.tree = verify_q, verify_rows, tree
        self.recorded, self.prefill = recorded, prefill
        self.verify_tokens = verify_tokens
        self.mode = "tree" if tree else "chain"
        self.host_mode = self.mode if block_size > 1 else "ar"


class Timer:
    """Seconds of a GPU step, from the cost model or the recorded live cycles."""

    def __init__(self, cost: CostModel, recorded: RecordedTiming | None,
                 prefill_s: np.ndarray | None, prompt_len: np.ndarray) -> None:
        self.cost = cost
        self.recorded = recorded
        self.prefill_s = prefill_s
        self.prompt_len = prompt_len

    def step(self, works: list[Work]) -> None:
        """Fill in the seconds of a step running ``works`` together."""
        if works[0].prefill:
            self._prefill(works)
            return
        if len(works) == 1:
            self.single(works[0])
            return
        # one pass over the step's jobs (a step of 16 cycles runs every few cycles)
        L = drafting = q = passes = rows = verify_q = 0
        tree = False
        hosts = set()
        for w in works:
            if w.context_len > L:
                L = w.context_len
            b = w.block_size
            if b > 1:
                drafting += 1
                if b > q:
                    q = b
                if w.passes > passes:
                    passes = w.passes
            if w.tree:
                tree = True
            rows += w.verify_rows
            if w.verify_q > verify_q:
                verify_q = w.verify_q
            hosts.add((w.host_mode, w.verify_tokens))
        draft_s, draft_src = 0.0, NO_SOURCE
        if drafting:
            draft_s, draft_src = self.cost.seconds("draft", q, L, drafting)
            draft_s *= passes
        kind = "tree_verify" if tree else "target"
        target_s, target_src = self.cost.seconds(kind, verify_q, L, rows)
        overhead = self.cost.overhead
        overhead_s = max(overhead(m, t) for m, t in hosts)
        step_s = draft_s + target_s + overhead_s
        for w in works:
            w.draft_s, w.target_s, w.overhead_s, w.step_s = draft_s, target_s, overhead_s, step_s
            w.draft_src, w.target_src = draft_src, target_src

    def single(self, w: Work) -> None:
        """A step of one job (the same numbers as ``step`` with a batch of one)."""
        if w.prefill:
            self._prefill([w])
            return
        if w.recorded is not None:
            w.draft_s, w.target_s, w.overhead_s, w.step_s = w.recorded
            w.draft_src = w.target_src = NO_SOURCE
            return
        if w.block_size > 1:
            draft_s, w.draft_src = self.cost.seconds("draft", w.block_size, w.context_len, 1)
            draft_s *= w.passes
        else:
            draft_s, w.draft_src = 0.0, NO_SOURCE
        if w.mode == "batch":
            target_s, w.target_src = self.cost.batch_verify_s(w.verify_q, w.verify_tokens,
                                                              w.context_len, w.verify_rows)
        else:
            target_s, w.target_src = self.cost.seconds("tree_verify" if w.tree else "target",
                                                       w.verify_q, w.context_len, w.verify_rows)
        overhead_s = self.cost.overhead(w.host_mode, w.verify_tokens)
        w.draft_s, w.target_s, w.overhead_s = draft_s, target_s, overhead_s
        w.step_s = draft_s + target_s + overhead_s

    def prefill_per_token(self) -> float | None:
        """Seconds per prompt token of the trace's recorded prefills: the median of
        prefill_s / prompt tokens over the samples after the first, whose prefill ran
        cold (sample 0 pays the warm-up: 0.64 s against about 0.011 s on the sample
        trace). None without recorded prefills."""
        if self.prefill_s is None:
            return None
        rate = self.__dict__.get("_per_token")
        if rate is None:
            per = self.prefill_s / np.maximum(self.prompt_len, 1)
            rate = self._per_token = float(np.median(per[1:] if len(per) > 1 else per))
        return rate

    def _prefill(self, works: list[Work]) -> None:
        rate = self.prefill_per_token()
        if rate is not None:
            # a batched prefill runs every prompt token of the batch once: charged per
            # token at the recorded warm rate, not as the sum of the samples' own
            # single-stream prefills (which would carry sample 0's cold start)
            secs = rate * float(sum(int(self.prompt_len[w.sample]) for w in works))
            src = NO_SOURCE
        else:
            q = int(max(self.prompt_len[w.sample] for w in works))
            secs, src = self.cost.seconds("target", q, 0, len(works))
        for w in works:
            w.draft_s, w.target_s, w.overhead_s, w.step_s = 0.0, secs, 0.0, secs
            w.draft_src, w.target_src = NO_SOURCE, src


class GPU:
    """The shared GPU: runs steps of ready work (see the batching rule above).
    ``solo``: only one request is ever in flight, so work never waits.

    Waiting work is kept in two queues, prefills and cycles, each with one shared event
    that fires when the step running that queue's current content ends: a step of 16
    cycles costs one event, not 16.

    Driven (``drive``, the hot closed loop): the clients are generators of work, not
    SimPy processes; when a step ends the GPU resumes the client of each of its jobs
    itself, in the order the jobs were queued, and queues what each asks for next.
    That is what SimPy does with processes waiting on the step's event (it resumes
    them in the order they began to wait, at the step's end, before the next step
    starts), without a process resumption per cycle; a test compares the two."""

    def __init__(self, env: simpy.Environment, timer: Timer, solo: bool) -> None:
        self.env, self.timer, self.solo = env, timer, solo
        self.queues: dict[bool, list[Work]] = {True: [], False: []}   # prefill? -> work
        self.done: dict[bool, Event] = {True: Event(env), False: Event(env)}
        self.busy = False
        self.starting = False
        self.steps = 0
        self.batch_sizes: list[int] = []
        # per step, the seconds and sources every job of it was given (``Timer.step``):
        # draft_s, target_s, overhead_s, draft_src, target_src; a job's ``step`` indexes it
        self.step_secs: list[tuple] = []
        self.driven = False

    def drive(self, clients) -> None:
        """Run ``clients`` (generators of ``Work``, each a closed-loop client's requests
        one after another) on this GPU, each resumed when the step running its last
        job ends; started in order, as SimPy starts processes."""
        self.driven = True
        for client in clients:
            self._resume(client)

    def _resume(self, client) -> None:
        work = next(client, None)
        if work is not None:  # None: the client has no samples left
            work.owner = client
            self.queues[work.prefill].append(work)
            if not self.busy and not self.starting:
                self._schedule_start()

    def submit(self, work: Work) -> Event:
        """The event the submitting request waits for: its work has run."""
        env = self.env
        work.t_start = env.now
        if self.solo:
            self.timer.single(work)
            self.steps += 1
            return env.timeout(work.step_s)
        self.queues[work.prefill].append(work)
        if not self.busy and not self.starting:
            self._schedule_start()
        return self.done[work.prefill]

    def _schedule_start(self) -> None:
        # a zero-delay event: it runs after every request resumed at this instant has
        # submitted, so they all share the step
        self.starting = True
        self.env.timeout(0).callbacks.append(self._start)

    def _start(self, _event: Event) -> None:
        self.starting = False
        kind = True if self.queues[True] else False  # prefills go first
        batch = self.queues[kind]
        if not batch:
            return
        if self.driven:
            self.queues[kind] = []
        else:
            done = self.done[kind]
            self.queues[kind], self.done[kind] = [], Event(self.env)
        now, step = self.env.now, self.steps
        for w in batch:
            w.t_start, w.step = now, step
        self.timer.step(batch)
        w = batch[0]
        self.step_secs.append((w.draft_s, w.target_s, w.overhead_s, w.draft_src, w.target_src))
        self.busy = True
        self.steps += 1
        if not kind:
            self.batch_sizes.append(len(batch))
        if self.driven:
            self.env.timeout(batch[0].step_s).callbacks.append(
                lambda _e, b=batch: self._end_driven(b))
        else:
            self.env.timeout(batch[0].step_s).callbacks.append(lambda _e, d=done: self._end(d))

    def _end(self, done: Event) -> None:
        self.busy = False
        done.succeed()
        self._schedule_start()

    def _end_driven(self, batch: list[Work]) -> None:
        # ``_end``'s order: the next start is scheduled, then the step's clients resume
        # (at this instant, in queue order) and queue their next jobs
        self.busy = False
        self._schedule_start()
        resume = self._resume
        for w in batch:
            resume(w.owner)


@dataclass
class RunLog:
    """What a run produced: one tuple per cycle (``CYCLE_FIELDS``), the policy state per
    cycle, and one tuple per request (``REQUEST_FIELDS``)."""
    cycles: list[tuple] = field(default_factory=list)
    states: list[dict] = field(default_factory=list)
    requests: list[tuple] = field(default_factory=list)
    steps: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    # per-cycle columns (``CYCLE_FIELDS``) where the run wrote them as columns (the
    # chain generator, ``Engine.chain_cycles``) instead of ``cycles``
    columns: dict | None = None

    def table(self) -> dict[str, np.ndarray]:
        """The cycles as numpy columns (``CYCLE_FIELDS``), however the run kept them."""
        return self.columns if self.columns is not None else cycle_columns(self.cycles)


CYCLE_FIELDS = ("sample", "cycle", "start", "block_size", "accepted", "tau", "verify_tokens",
                "draft_s", "target_s", "overhead_s", "cycle_s", "draft_src", "target_src",
                "recorded")
REQUEST_FIELDS = ("sample", "arrival_s", "first_token_s", "finish_s", "tokens")
_INT_FIELDS = frozenset(("sample", "cycle", "start", "block_size", "accepted", "tau",
                         "verify_tokens", "draft_src", "target_src"))


def cycle_columns(cycles: list[tuple]) -> dict[str, np.ndarray]:
    """Per-cycle tuples (``CYCLE_FIELDS``) as numpy columns: int64, float64, and bool
    for ``recorded``."""
    if not cycles:
        return {name: np.zeros(0, dtype=np.int64) for name in CYCLE_FIELDS}
    # one conversion; ints are exact in float64 (fromiter: a third faster than np.array)
    table = np.fromiter(itertools.chain.from_iterable(cycles), dtype=np.float64,
                        count=len(cycles) * len(CYCLE_FIELDS)).reshape(len(cycles), len(CYCLE_FIELDS))
    return {name: (table[:, i].astype(np.int64) if name in _INT_FIELDS else
                   table[:, i].astype(bool) if name == "recorded" else table[:, i].copy())
            for i, name in enumerate(CYCLE_FIELDS)}


class Engine:
    """Replays one policy over a trace's samples.

    ``concurrency``: closed loop, that many requests in flight (each takes the next
    sample when it finishes); ``rate``: Poisson arrivals at that many requests per
    second (seeded), unbounded concurrency; neither: single stream, one sample after
    another, no prefill (the live decode loop). Samples run in trace order.
    """

    def __init__(self, data: TraceData, acceptance: Acceptance, timer: Timer, spec: str,
                 concurrency: int | None = None, rate: float | None = None, seed: int = 0,
                 record_states: bool = True, direct: bool = True, hot: bool = True) -> None:
        self.data, self.acc, self.timer, self.spec = data, acceptance, timer, spec
        self.direct, self.hot = direct, hot
        self.concurrency, self.rate, self.seed = concurrency, rate, seed
        self.serving = concurrency is not None or rate is not None
        self.record_states = record_states
        self.env = simpy.Environment()
        solo = rate is None and (concurrency or 1) == 1
        self.gpu = GPU(self.env, timer, solo)
        self.clock = self.env  # what requests read the time from; run_direct swaps it
        self.log = RunLog()
        self._plain: dict = {}   # block size -> plain oracle group
        self._shapes: dict = {}  # id(plan) -> (plan, verify shape)
        self._plain_rows: dict = {}  # block size -> (plain group, its row_list, chain_list)
        self._chain_costs: dict = {}  # block size -> ``chain_costs``
        self._tree_costs: dict = {}  # id(plan) -> (plan, ``tree_costs``)
        # what ``chain_cycles`` keeps: its cost entries by block size, the samples it ran
        # (in order), their cycle counts, and per cycle start, block size, tau, seconds
        self._chain_log: tuple | None = None
        self._shared_chains: dict = {}  # block size -> ``_chain_entry``, shared GPU
        # shared GPU: per cycle, in the order they ran, (sample, cycle, start, block
        # size, tau, the GPU step that ran it), and apart its seconds (floats and ints
        # apart: each converts to its column at once, an int to a float does not)
        self._shared_chain_log: tuple[list, list] | None = None
        # the longest context a cycle can have: the cost lists are read up to it
        self._L_max = int((data.prompt_len + data.out_len).max()) if data.n_samples else 0
        self.stop_ids = data.stop_token_ids
        self.data_prompt = data.prompt_len.tolist()
        self._out_lens = data.out_len.tolist()

    # -- the request: the story of one sample
    def prefill_job(self, sample: int):
        """A serving request's prefill on the GPU (nothing outside serving runs): its
        seconds on a GPU of its own, else a job for the shared one to batch."""
        if self.serving:
            work = Work(sample, 0, 1, 0, prefill=True)
            if self.gpu.solo:
                self.timer.step([work])
                yield work.step_s
            else:
                yield work

    def request(self, sample: int, policy: "HotPolicy"):
        """The story of one sample, as a generator of the GPU jobs it needs, in the hot
        path. Solo (one request at a time, the GPU never queues) it computes each cycle's
        seconds itself and yields them (a float); the driver advances the clock by that
        much (``run_direct``) or waits that long (a SimPy timeout). Shared, it yields the
        cycle's ``Work`` and is resumed once the GPU step that ran it is over (seconds
        filled in, ``self.clock.now`` past its end).

        Per request, one ``HotContext`` and one ``HotOutcome`` are rewritten every cycle,
        the draft request and chain plan of a block size are the ones ``HotPolicy``
        cached, a view is built only when a verify component reads it, and a plain
        chain's seconds are read from the cost model's per-context lists. Anything else
        (probes, seeds, refinement, trees, batches, recorded seconds) takes the general
        route: ``plan_work`` and ``Timer.single``, as the reference does."""
        clock, acc, data, log = self.clock, self.acc, self.data, self.log
        solo, timer = self.gpu.solo, self.timer
        t_arrival = clock.now
        yield from self.prefill_job(sample)
        t_first = clock.now
        n = int(data.out_len[sample])
        last = n - 1  # S[0] came from prefill; the output is complete once S[n-1] is committed
        prompt = int(data.prompt_len[sample])
        allowed = data.max_new_tokens - 1
        base = acc._base[sample]
        states = log.states if self.record_states else None
        work = Work(sample, 0, 1, prompt)
        rec = timer.recorded if solo else None
        # bound methods and tables as locals: this loop runs once per replayed cycle
        plan_draft, verify, observe = policy.plan_draft, policy._verify, policy.observe
        choose_block, requests = policy._choose, policy._requests
        chains, record = policy._chains, log.cycles.append
        plain_inputs = not policy._inputs
        comp = getattr(policy, "policy", policy)  # a HotPolicy wraps the Composite
        gated = comp.verify is not None and comp.verify.gates
        seeded, probe = False, ""
        make_view, view_seed = acc.view, acc.view_seed
        plan_work, single, accepted_of = self.plan_work, timer.single, acc.accepted
        plain = self._plain_rows
        ctx = object.__new__(HotContext)
        cd = ctx.__dict__
        cd.update(zip(_CONTEXT_FIELDS, (sample, 0, 0, prompt, 1, data.default_block_size,
                                        None, None)))
        cd.update(_pv=None, _engine=self)
        out = object.__new__(HotOutcome)
        od = out.__dict__
        od.update(sample=sample, _engine=self)
        policy.reset(sample)
        start = cycle = 0
        while start < last:
            rem = allowed - start
            cd["cycle"], cd["start"], cd["context_len"] = cycle, start, prompt + start
            cd["remaining"] = rem if rem > 1 else 1
            if plain_inputs:  # HotPolicy.plan_draft without input components, inlined
                b = int(choose_block(ctx))
                req = requests.get(b)
                if req is None:
                    req = requests[b] = DraftRequest(block_size=b)
            else:
                req = plan_draft(ctx)
                b, seeded, probe = req.block_size, bool(req.seeds), req.probe
            if b > 1:
                if probe:
                    group = acc.group(b, req.probe, req.prev_offset)
                    row = acc.row(group, sample, start)
                else:
                    hit = plain.get(b)
                    if hit is None:
                        g = acc.group(b)
                        hit = plain[b] = (g, g.row_list, g.chain_list)
                    group = hit[0]
                    row = hit[1][base + start]
                    if row < 0:
                        acc.row(group, sample, start)  # raises NotReplayable naming the row
            else:
                group, row = None, 0
            view = None
            if verify is not None and b > 1:
                view = make_view(group, row, sample, start)
                plan = verify(view)
                chain = False
            else:
                plan = chains.get(b)
                if plan is None:
                    plan = chains[b] = VerifyPlan.chain(max(b, 1))
                chain = True
            if group is None:
                accepted, chosen = 0, 0
            elif chain and not probe:
                accepted, chosen = hit[2][row], 0  # the full top-1 chain of a plain row
            else:
                accepted, chosen = accepted_of(group, row, plan)
            tau = accepted + 1 if accepted + 1 < last - start else last - start
            if solo:
                costs = None
                if rec is None and (plain_inputs or not (seeded or req.refine_steps)):
                    # one pass of each, as plan_work counts them: no seeds, no refinement
                    if chain:
                        costs = self._chain_costs.get(b) or self.chain_costs(b)
                    elif plan.mode == "tree" and b > 1:
                        memo = self._tree_costs.get(id(plan))
                        costs = memo[1] if memo is not None and memo[0] is plan else \
                            self.tree_costs(plan, b)
                if costs is not None:
                    L = prompt + start
                    draft_s, draft_src = costs[0][L], costs[1][L]
                    target_s, target_src = costs[2][L], costs[3][L]
                    overhead_s = costs[4]
                    cycle_s = draft_s + target_s + overhead_s
                    verify_tokens, recorded = costs[5], False
                else:
                    plan_work(work, start, req, plan, gated)
                    single(work)
                    draft_s, target_s, overhead_s = work.draft_s, work.target_s, work.overhead_s
                    draft_src, target_src = work.draft_src, work.target_src
                    cycle_s, verify_tokens = work.step_s, work.verify_tokens
                    recorded = work.recorded is not None
                yield cycle_s  # the GPU never queues: the cycle takes exactly its step
            else:
                if chain and (plain_inputs or not (seeded or req.refine_steps)):
                    # plan_work of a plain chain (one pass, no recorded seconds when shared)
                    work.start, work.block_size, work.context_len = start, b, prompt + start
                    work.verify_tokens = work.verify_q = b if b > 1 else 1
                    work.verify_rows = work.passes = 1
                    work.tree, work.mode, work.recorded = False, "chain", None
                    work.host_mode = "chain" if b > 1 else "ar"
                else:
                    plan_work(work, start, req, plan, gated)
                t_ready = clock.now
                yield work
                draft_s, target_s, overhead_s = work.draft_s, work.target_s, work.overhead_s
                draft_src, target_src = work.draft_src, work.target_src
                verify_tokens = work.verify_tokens
                recorded = work.recorded is not None
                # wait for the GPU plus the step's own seconds
                cycle_s = (work.t_start - t_ready) + work.step_s
            od["cycle"], od["start"], od["block_size"] = cycle, start, b
            od["accepted"], od["tau"], od["committed"] = tau - 1, tau, tau
            od["chosen_path"], od["verify_tokens"] = chosen, verify_tokens
            od["draft_s"], od["target_s"], od["overhead_s"] = draft_s, target_s, overhead_s
            od["cycle_s"], od["_g"], od["_r"], od["_lg"] = cycle_s, group, row, None
            observe(out)
            record((sample, cycle, start, b, tau - 1, tau, verify_tokens, draft_s, target_s,
                    overhead_s, cycle_s, draft_src, target_src, recorded))
            if states is not None:
                states.append(policy.state())
            # recycling seeds come from the previous cycle's plain proposal (as live)
            if view is not None and not seeded:
                cd["_pv"] = view
            else:
                cd["_pv"], cd["_p"] = _LAZY, (start, b, group, row, seeded)
            cd["prev_outcome"] = out
            start += tau
            cycle += 1
        log.requests.append((sample, t_arrival, t_first, clock.now, n))

    def lazy_prev_view(self, sample: int, start: int, b: int, group, row: int, seeded: bool):
        """A HotContext's prev_view, built on first read: the previous cycle's view, or
        its plain proposal where that cycle was seeded (what recycling takes seeds
        from)."""
        if seeded:
            return self.plain_view(sample, start, b)
        return self.acc.view(group if b > 1 else None, row, sample, start)

    def tree_costs(self, plan: VerifyPlan, b: int) -> tuple:
        """``chain_costs`` of a single-stream tree cycle verifying ``plan`` at block size
        b, kept by the plan's identity (a fixed tree is the same plan every cycle)."""
        cost, L = self.timer.cost, self._L_max
        tokens, q, rows = self.verify_shape(plan)
        dv, ds = cost.seconds_lists("draft", b, 1, L)
        tv, ts = cost.seconds_lists("tree_verify", q, rows, L)
        # the overhead query Timer.single makes for this job (keep the two alike)
        out = (dv, ds, tv, ts, cost.overhead("tree", tokens), tokens)
        if len(self._tree_costs) > 4096:  # plans built per cycle: keep it small
            self._tree_costs.clear()
        self._tree_costs[id(plan)] = (plan, out)  # the plan kept alive: its id stays its own
        return out

    def chain_costs(self, b: int) -> tuple:
        """(draft seconds, draft sources, target seconds, target sources) per context
        length, the overhead and the verify tokens of a single-stream plain chain cycle of
        block size b: what ``Timer.single`` computes for it, read as list items."""
        cost, L = self.timer.cost, self._L_max
        if b > 1:
            dv, ds = cost.seconds_lists("draft", b, 1, L)
        else:
            dv, ds = [0.0] * (L + 1), [NO_SOURCE] * (L + 1)  # b = 1 drafts nothing
        tv, ts = cost.seconds_lists("target", max(b, 1), 1, L)
        # the overhead query Timer.single makes for this job (keep the two alike)
        out = self._chain_costs[b] = (dv, ds, tv, ts, cost.overhead("chain" if b > 1 else "ar", max(b, 1)),
                                      max(b, 1))
        return out

    def request_reference(self, sample: int, policy: "Composite | HotPolicy"):
        """The reference story of one sample (``hot=False``): a fresh context, view and
        outcome per cycle, every job through ``Work`` and the GPU. ``request`` must
        produce the same cycles; a test compares them for every policy family."""
        clock, acc, data, log = self.clock, self.acc, self.data, self.log
        t_arrival = clock.now
        if self.serving:
            yield Work(sample, 0, 1, 0, prefill=True)
        t_first = clock.now
        n = int(data.out_len[sample])
        last = n - 1  # S[0] came from prefill; the output is complete once S[n-1] is committed
        prompt = int(data.prompt_len[sample])
        default_b = data.default_block_size
        allowed = data.max_new_tokens - 1
        states = log.states if self.record_states else None
        work = Work(sample, 0, 1, prompt)
        # bound methods as locals: this loop runs once per replayed cycle
        plan_draft, plan_verify, observe = policy.plan_draft, policy.plan_verify, policy.observe
        draft, plan_work, record = self.draft, self.plan_work, log.cycles.append
        l_gen, stop_ids = acc.l_gen, self.stop_ids
        policy.reset(sample)
        verify = getattr(policy, "policy", policy).verify  # a HotPolicy wraps the Composite
        gated = verify is not None and verify.gates
        start = cycle = 0
        prev_view = prev_outcome = None
        while start < last:
            t_ready = clock.now
            ctx = new_context(sample, cycle, start, prompt + start, max(allowed - start, 1),
                              default_b, prev_view, prev_outcome)
            req = plan_draft(ctx)
            b = req.block_size
            view, group, row = draft(sample, start, req)
            plan = plan_verify(view)
            accepted, chosen = acc.accepted(group, row, plan) if group else (0, 0)
            tau = min(accepted + 1, last - start)  # the bonus token still lies inside S
            plan_work(work, start, req, plan, gated)
            yield work
            # wait for the GPU plus the step's own seconds; single stream: exactly the step
            cycle_s = (work.t_start - t_ready) + work.step_s
            outcome = new_outcome(sample, cycle, start, b, tau - 1, tau, tau, chosen,
                                  work.verify_tokens, work.draft_s, work.target_s,
                                  work.overhead_s, cycle_s,
                                  l_gen(group, stop_ids)[row] if group else 1)
            observe(outcome)
            record((sample, cycle, start, b, tau - 1, tau, work.verify_tokens, work.draft_s,
                    work.target_s, work.overhead_s, cycle_s, work.draft_src, work.target_src,
                    work.recorded is not None))
            if states is not None:
                states.append(policy.state())
            start += tau
            cycle += 1
            # recycling seeds come from the previous cycle's plain proposal (as live)
            prev_view = self.plain_view(sample, work.start, b) if req.seeds else view
            prev_outcome = outcome
        log.requests.append((sample, t_arrival, t_first, clock.now, n))

    def process(self, sample: int, policy):
        """The request as a SimPy process: each job goes to the shared GPU (solo in the
        hot path: a timeout of the seconds the request computed, counted as a step)."""
        if not self.hot:
            submit = self.gpu.submit
            for work in self.request_reference(sample, policy):
                yield submit(work)
            return
        if self.gpu.solo:
            timeout, gpu = self.env.timeout, self.gpu
            for secs in self.request(sample, policy):
                gpu.steps += 1
                yield timeout(secs)
            return
        submit = self.gpu.submit
        for work in (self.chain_cycles((sample,), policy) if self.chain_policy(policy) else
                     self.request(sample, policy)):
            yield submit(work)

    # -- lookups (no policy logic here)
    def draft(self, sample: int, start: int, req: DraftRequest):
        """The view the draft would produce for this request, with its oracle group
        and row (None, 0 for b = 1: nothing is drafted)."""
        acc = self.acc
        b = req.block_size
        if b <= 1:
            return acc.view(None, 0, sample, start), None, 0
        group = acc.group(b, req.probe, req.prev_offset) if req.probe else \
            self._plain.get(b) or self._plain.setdefault(b, acc.group(b))
        row = acc.row(group, sample, start)
        return acc.view(group, row, sample, start), group, row

    def plain_view(self, sample: int, start: int, block_size: int):
        """The unseeded proposal at (sample, start): what a seeded cycle's successor
        takes its recycling seeds from."""
        group = self.acc.group(block_size)
        return self.acc.view(group, self.acc.row(group, sample, start), sample, start)

    def plan_work(self, work: Work, start: int, req: DraftRequest, plan: VerifyPlan,
                  gated: bool = False) -> None:
        """Set a request's GPU job to a planned cycle: its shapes, and its recorded
        seconds if the live run ran this very cycle."""
        paths, mode = plan.paths, plan.mode
        if mode == "chain":
            verify_tokens = work.verify_q = len(paths[0]) + 1
            work.verify_rows = 1
        else:
            verify_tokens, work.verify_q, work.verify_rows = self.verify_shape(plan)
        work.start, work.block_size = start, req.block_size
        work.context_len = self.data_prompt[work.sample] + start
        # a seeded draft also runs the plain pass recycling needs next cycle
        work.passes = 1 + self.refine_passes(work.sample, start, req) + (1 if req.seeds else 0)
        work.tree = mode == "tree"
        work.mode = mode
        work.host_mode = host_mode(req.block_size, mode, gated, bool(req.probe))
        work.verify_tokens = verify_tokens
        # recorded seconds only where the GPU runs this cycle alone, as the live loop did
        rec = self.timer.recorded if self.gpu.solo else None
        work.recorded = None if rec is None else rec.get(
            work.sample, start, req.block_size, mode, verify_tokens, len(paths), req.probe)

    def refine_passes(self, sample: int, start: int, req: DraftRequest) -> int:
        """Refinement passes the live loop runs for this cycle. It stops as soon as no
        offset's top-1 probability is below ``only_below``, so the first pass runs only if
        the plain proposal (the oracle row, in the rounded log-probs the loop compares)
        has such an offset; later passes depend on refined proposals the trace does not
        keep and are charged in full (an upper bound). A seeded block starts from no
        plain row: charged in full too."""
        steps = req.refine_steps
        if not steps or req.seeds:
            return steps
        lps = self.plain_view(sample, start, req.block_size).logprobs
        if len(lps) and (np.exp(lps[:, 0].astype(np.float64)) < req.refine_only_below).any():
            return steps
        return 0

    def verify_shape(self, plan: VerifyPlan) -> tuple[int, int, int]:
        """(verify tokens, query tokens per row, rows) of a tree or batch plan. Policies
        that verify a fixed tree return the same plan object every cycle: its shape
        (a trie build) is computed once per plan, kept by identity."""
        hit = self._shapes.get(id(plan))
        if hit is not None and hit[0] is plan:
            return hit[1]
        paths = plan.paths
        tokens = plan.verify_tokens()
        if plan.mode == "batch":  # rows padded to the longest candidate
            shape = (tokens, max(len(p) for p in paths) + 1, len(paths))
        else:
            shape = (tokens, tokens, 1)
        if len(self._shapes) > 4096:  # plans built per cycle (candidates): keep it small
            self._shapes.clear()
        self._shapes[id(plan)] = (plan, shape)  # the plan kept alive: its id stays its own
        return shape

    # -- running
    def run(self) -> RunLog:
        """Run every request; single stream (no serving) takes ``run_direct`` unless
        the engine was built with ``direct=False``."""
        env, n = self.env, self.data.n_samples
        direct = self.direct and not self.serving
        if direct:
            self.clock = Clock()
        elif self.rate is not None:
            env.process(self.arrivals(n))
        else:
            queue = iter(range(n))
            slots = [self.make_policy() for _ in range(min(self.concurrency or 1, n))]
            if self.hot and not self.gpu.solo:
                self.gpu.drive([self.client(queue, policy) for policy in slots])
            else:
                for policy in slots:
                    env.process(self.slot(queue, policy))
        # The run allocates millions of short-lived objects and keeps every cycle's
        # record: the cyclic collector would rescan that growing log again and again
        # (15-20 % of the run). Nothing here needs it until the run ends.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            if direct:
                self.run_direct()
            else:
                env.run()
        finally:
            if was_enabled:
                gc.enable()
        if self._chain_log is not None:
            self.log.columns = self._chain_columns()
        elif self._shared_chain_log is not None:
            self.log.columns = self._shared_chain_columns()
        self.log.steps = self.gpu.steps
        self.log.batch_sizes = self.gpu.batch_sizes
        return self.log

    def run_direct(self) -> None:
        """Single stream without SimPy: one request after another, each job run at once
        (the GPU never queues, see the module docstring), the clock advanced by the
        job's seconds exactly as SimPy's timeout advances ``env.now``. A policy that only
        chooses block sizes (no draft-input or verify component) under the cost model
        takes ``run_chains``."""
        clock, gpu = self.clock, self.gpu
        policy = self.make_policy()
        if self.chain_policy(policy):
            self.run_chains(policy)
            return
        if not self.hot:
            single = self.timer.single
            for sample in range(self.data.n_samples):
                for work in self.request_reference(sample, policy):
                    work.t_start = clock.now
                    single(work)
                    gpu.steps += 1
                    clock.now += work.step_s
            return
        steps = 0
        for sample in range(self.data.n_samples):
            for secs in self.request(sample, policy):
                steps += 1
                clock.now += secs
        gpu.steps += steps

    def chain_policy(self, policy) -> bool:
        """Whether ``policy`` (a HotPolicy) only chooses block sizes (no draft-input or
        verify component) and its cycles take the cost model's seconds: then a
        request's every cycle verifies the plain chain, which ``chain_cycles`` replays."""
        return self.hot and not policy._inputs and policy._verify is None and \
            self.timer.recorded is None

    def run_chains(self, policy: HotPolicy) -> None:
        """``run_direct`` of a ``chain_policy``: ``chain_cycles`` over all samples with
        ``direct``, so that it advances the clock itself instead of yielding each
        cycle's seconds (one generator resumption per cycle saved)."""
        for _ in self.chain_cycles(range(self.data.n_samples), policy, direct=True):
            pass  # nothing is yielded: the loop runs to the end at the first resumption
        self.gpu.steps += len(self._chain_log[3])

    def chain_cycles(self, samples, policy: HotPolicy, direct: bool = False):
        """The requests of ``samples`` one after another, with a ``chain_policy``:
        ``request``'s plain-chain route as one generator over the requests.

        Solo (single stream, or one request in flight; the GPU never queues) it yields
        each prefill's and cycle's seconds (the driver waits that long in SimPy), or,
        with ``direct`` (no SimPy, ``run_direct``), yields nothing and advances the
        clock itself, exactly as the driver would (``now += seconds`` per cycle). Per
        cycle it keeps the start and block size in ``_chain_log``; the other columns
        are filled in after the run from those, with the same cost lists the loop read
        (``_chain_columns``). Shared (more requests in flight), it yields each cycle's
        ``Work`` to the GPU, as ``request`` does, and records the cycle as ``request``
        records it. The policy objects and the calls made to them are ``request``'s;
        tests compare the two, and the reference, cycle by cycle.

        Per request one ``ChainContext`` and one ``ChainOutcome`` are rewritten each
        cycle; what follows from the rest (context length, remaining tokens, accepted,
        committed, the seconds of the passes) is derived when a policy reads it, so a
        cycle writes only what changes."""
        if self.gpu.solo:
            return self._solo_chain_cycles(samples, policy, direct)
        return self._shared_chain_cycles(samples, policy)

    def _chain_request(self, sample: int, ctx: "ChainContext", out: "ChainOutcome", policy):
        """Reset a request's context and outcome and its policy for ``sample``; returns
        (prompt length, index of S[n-1], the sample's first global position)."""
        prompt, base = self.data_prompt[sample], self.acc._base[sample]
        cd, od = ctx.__dict__, out.__dict__
        cd.clear()
        cd.update(sample=sample, cycle=0, start=0, default_block_size=self.data.default_block_size,
                  prev_outcome=None, _prompt=prompt, _allowed=self.data.max_new_tokens - 1,
                  _pv=None, _engine=self)
        od.clear()
        od.update(sample=sample, chosen_path=0, block_size=None, _prompt=prompt, _engine=self)
        policy.reset(sample)
        return prompt, self._out_lens[sample] - 1, base

    def _solo_chain_cycles(self, samples, policy: HotPolicy, direct: bool):
        """``chain_cycles`` with one request in flight (see there)."""
        acc, log, clock = self.acc, self.log, self.clock
        choose, observe, state = policy._choose, policy.observe, policy.state
        states = log.states if self.record_states else None
        if self._chain_log is None:
            self._chain_log = ({}, [], [], [], [])
        chains, order, counts, starts, blocks = self._chain_log
        put_start, put_b = starts.append, blocks.append
        ctx, out = object.__new__(ChainContext), object.__new__(ChainOutcome)
        cd, od = ctx.__dict__, out.__dict__
        for sample in samples:
            t_arrival = clock.now
            yield from self.prefill_job(sample)
            t_first = now = clock.now  # direct: the clock, kept here until the request ends
            prompt, last, base = self._chain_request(sample, ctx, out, policy)
            ob = None  # the block size od holds
            start = cycle = 0
            while start < last:
                cd["cycle"], cd["start"] = cycle, start
                b = int(choose(ctx))
                if b != ob:  # what a block size fixes, looked up on a change
                    hit = chains.get(b)
                    if hit is None:
                        hit = chains[b] = self._chain_entry(b)
                    group, rows, chain, cycle_secs = hit[0], hit[1], hit[2], hit[7]
                    ob = od["block_size"] = b
                    od["verify_tokens"], od["_g"], od["_c"] = hit[6], group, hit
                if group is not None:
                    row = rows[base + start]
                    if row < 0:
                        acc.row(group, sample, start)  # raises NotReplayable naming the row
                    accepted = chain[row]
                else:
                    row = accepted = 0
                tau = accepted + 1 if accepted + 1 < last - start else last - start
                cycle_s = cycle_secs[prompt + start]
                if direct:
                    now += cycle_s
                else:
                    yield cycle_s  # the GPU never queues: the cycle takes exactly its step
                od["cycle"], od["start"], od["tau"], od["cycle_s"], od["_r"] = \
                    cycle, start, tau, cycle_s, row
                observe(out)
                put_start(start)
                put_b(b)
                if states is not None:
                    states.append(state())
                cd["prev_outcome"] = out
                start += tau
                cycle += 1
            if direct:
                clock.now = now
            order.append(sample)
            counts.append(cycle)
            log.requests.append((sample, t_arrival, t_first, clock.now, last + 1))

    def _shared_chain_cycles(self, samples, policy: HotPolicy):
        """``chain_cycles`` on a GPU shared by several requests (see there)."""
        acc, log, clock = self.acc, self.log, self.clock
        choose, observe, state = policy._choose, policy.observe, policy.state
        states = log.states if self.record_states else None
        if self._shared_chain_log is None:
            self._shared_chain_log = ([], [])
        chains = self._shared_chains
        record, record_s = (x.append for x in self._shared_chain_log)
        ctx, out = object.__new__(ChainContext), object.__new__(SharedChainOutcome)
        cd, od = ctx.__dict__, out.__dict__
        for sample in samples:
            t_arrival = clock.now
            yield from self.prefill_job(sample)
            t_first = clock.now
            prompt, last, base = self._chain_request(sample, ctx, out, policy)
            work = od["_w"] = Work(sample, 0, 1, prompt)
            ob = None  # the block size od and work hold
            start = cycle = 0
            while start < last:
                cd["cycle"], cd["start"] = cycle, start
                b = int(choose(ctx))
                if b != ob:  # plan_work of a plain chain: one pass, no recorded seconds
                    hit = chains.get(b)
                    if hit is None:
                        hit = chains[b] = self._chain_entry(b)
                    group, rows, chain, tokens = hit[0], hit[1], hit[2], hit[6]
                    ob = od["block_size"] = work.block_size = b
                    od["verify_tokens"], od["_g"] = tokens, group
                    work.verify_tokens = work.verify_q = tokens
                    work.verify_rows = work.passes = 1
                    work.tree, work.mode, work.recorded = False, "chain", None
                    work.host_mode = "chain" if b > 1 else "ar"
                if group is not None:
                    row = rows[base + start]
                    if row < 0:
                        acc.row(group, sample, start)  # raises NotReplayable naming the row
                    accepted = chain[row]
                else:
                    row = accepted = 0
                tau = accepted + 1 if accepted + 1 < last - start else last - start
                work.start, work.context_len = start, prompt + start
                t_ready = clock.now
                yield work
                # wait for the GPU plus the step's own seconds
                cycle_s = (work.t_start - t_ready) + work.step_s
                od["cycle"], od["start"], od["tau"], od["cycle_s"], od["_r"] = \
                    cycle, start, tau, cycle_s, row
                observe(out)
                record((sample, cycle, start, b, tau, work.step))
                record_s(cycle_s)
                if states is not None:
                    states.append(state())
                cd["prev_outcome"] = out
                start += tau
                cycle += 1
            log.requests.append((sample, t_arrival, t_first, clock.now, last + 1))

    def _chain_entry(self, b: int) -> tuple:
        """What ``chain_cycles`` reads per cycle of block size b: the plain group (None at
        b = 1), its row and chain lists, ``chain_costs``' seconds lists, overhead and
        verify tokens, and a cycle's seconds per context length (draft + target +
        overhead, added in that order as ``Timer.single`` adds them)."""
        costs = self._chain_costs.get(b) or self.chain_costs(b)
        if b > 1:
            hit = self._plain_rows.get(b)
            if hit is None:
                g = self.acc.group(b)
                hit = self._plain_rows[b] = (g, g.row_list, g.chain_list)
        else:
            hit = (None, None, None)
        n = self._L_max + 1  # the lists hold at least that many (grown past it apiece)
        cycle_secs = (np.asarray(costs[0][:n]) + np.asarray(costs[2][:n]) + costs[4]).tolist()
        return (*hit, costs[0], costs[2], costs[4], costs[5], cycle_secs)

    def _chain_columns(self) -> dict[str, np.ndarray]:
        """``CYCLE_FIELDS`` columns of the cycles ``chain_cycles`` ran: what ``request``
        records for each of them, gathered from the same cost lists."""
        chains, order, counts, starts, blocks = self._chain_log
        n = len(starts)
        counts_a = np.asarray(counts, dtype=np.int64)
        order_a = np.asarray(order, dtype=np.int64)
        sample = np.repeat(order_a, counts_a)
        first = np.concatenate([[0], np.cumsum(counts_a)[:-1]]).astype(np.int64)
        cycle = np.arange(n, dtype=np.int64) - np.repeat(first, counts_a)
        start = np.asarray(starts, dtype=np.int64)
        block = np.asarray(blocks, dtype=np.int64)
        # a request's cycles follow each other (each starts where the last one's tau
        # ended) and its last one ends at S[n-1]: tau is the step to the next start
        ends = np.empty(n, dtype=np.int64)
        ends[:-1] = start[1:]
        ran = counts_a > 0
        ends[(first + counts_a - 1)[ran]] = self.data.out_len.astype(np.int64)[order_a[ran]] - 1
        tau = ends - start
        L = np.asarray(self.data_prompt, dtype=np.int64)[sample] + start
        draft_s, target_s, overhead_s = np.zeros(n), np.zeros(n), np.zeros(n)
        draft_src, target_src = np.zeros(n, np.int64), np.zeros(n, np.int64)
        verify_tokens = np.zeros(n, np.int64)
        cost = self.timer.cost
        for b in chains:
            at = block == b
            Lb = L[at]
            overhead, tokens = self._chain_costs[b][4:]
            # the arrays the loop's cost lists were made of (``chain_costs``' queries)
            if b > 1:
                draft_s[at], draft_src[at] = cost.seconds_array("draft", b, Lb, 1)
            else:
                draft_src[at] = NO_SOURCE
            target_s[at], target_src[at] = cost.seconds_array("target", max(b, 1), Lb, 1)
            overhead_s[at] = overhead
            verify_tokens[at] = tokens
        cycle_s = draft_s + target_s + overhead_s  # the loop's sums (``_chain_entry``)
        return dict(zip(CYCLE_FIELDS, (
            sample, cycle, start, block, tau - 1, tau, verify_tokens, draft_s, target_s,
            overhead_s, cycle_s, draft_src, target_src, np.zeros(n, dtype=bool))))

    def _shared_chain_columns(self) -> dict[str, np.ndarray]:
        """``CYCLE_FIELDS`` columns of the cycles ``chain_cycles`` ran on a shared GPU, in
        the order they ran: what ``request`` records for each of them, the passes'
        seconds and sources those of the step that ran it (``GPU.step_secs``)."""
        cycles, secs = self._shared_chain_log
        n = len(cycles)
        table = np.fromiter(itertools.chain.from_iterable(cycles), dtype=np.int64,
                            count=6 * n).reshape(n, 6)
        sample, cycle, start, block, tau, step = table.T.copy()
        steps = np.asarray(self.gpu.step_secs, dtype=np.float64).reshape(-1, 5)[step]
        verify_tokens = np.zeros(n, np.int64)
        for b, hit in self._shared_chains.items():
            verify_tokens[block == b] = hit[6]
        return dict(zip(CYCLE_FIELDS, (
            sample, cycle, start, block, tau - 1, tau, verify_tokens, steps[:, 0].copy(),
            steps[:, 1].copy(), steps[:, 2].copy(), np.asarray(secs, dtype=np.float64),
            steps[:, 3].astype(np.int64), steps[:, 4].astype(np.int64), np.zeros(n, dtype=bool))))

    def make_policy(self):
        policy = parse_policy(self.spec)
        return HotPolicy(policy) if self.hot else policy

    def slot(self, queue, policy: Composite):
        """Closed loop: a client that sends the next sample as soon as its last one ends.
        In the hot path the client drives the requests itself (``process`` inlined: one
        generator fewer to resume per cycle)."""
        if not self.hot:
            for sample in queue:
                yield from self.process(sample, policy)
            return
        request, gpu = self.request, self.gpu
        if gpu.solo and self.chain_policy(policy):  # the only request in flight
            timeout = self.env.timeout
            for secs in self.chain_cycles(queue, policy):
                gpu.steps += 1
                yield timeout(secs)
            return
        if gpu.solo:
            timeout = self.env.timeout
            for sample in queue:
                for secs in request(sample, policy):
                    gpu.steps += 1
                    yield timeout(secs)
            return
        for sample in queue:  # shared: the driven GPU runs ``client`` instead
            for work in request(sample, policy):
                yield gpu.submit(work)

    def client(self, queue, policy: HotPolicy):
        """Closed loop on a shared GPU, hot path: a client's requests one after another,
        as a generator of their jobs (``GPU.drive`` resumes it when a job has run)."""
        if self.chain_policy(policy):
            return self.chain_cycles(queue, policy)
        return (work for sample in queue for work in self.request(sample, policy))

    def arrivals(self, n: int):
        """Open loop: Poisson arrivals at ``rate`` requests per second, seeded."""
        gaps = np.random.default_rng((self.seed, 0xA881)).exponential(1.0 / self.rate, n)
        for sample in range(n):
            yield self.env.timeout(float(gaps[sample]))
            self.env.process(self.process(sample, self.make_policy()))
