"""The speculative decode loop: one target, one DFlash draft, one policy
(``policies.Composite``), computed by a backend (live/backend.py: ``hf`` = transformers
with a ``DynamicCache``, any causal LM; ``graph`` = the project's compact model over
static caches, CUDA-graph replayed on a GPU). The loop and every policy action are the
same for both; the backend only computes prefill, verify, commit and draft passes.

A request is a prefill followed by cycles; each cycle is five explicit steps:

    plan    policy.plan_draft(CycleContext) -> DraftRequest (block size, seeds, refinement)
    draft   the full requested block (never cut at the tail, so the oracle of that block
            size stays exact), seeds at their offsets, refinement passes over the cached
            context; the DraftView a policy sees (top-k, float16-rounded log-probs)
    verify  policy.plan_verify(view) -> chain | batch | tree, one target pass
    accept  greedy longest prefix, or rejection sampling (live/sampling.py); capped so
            the cycle never runs past max_new_tokens or a stop token
    commit  append tau tokens; cut both KV caches back to the committed length; the
            target features of the committed tokens become the draft's next context

Positions follow traces/schema.py: S[0] comes from prefill, a cycle starting at p has
anchor S[p] and context_len = len(prompt) + p. Block size 1 is plain autoregressive
decoding through the same steps. Each step is timed (CUDA events on a GPU, the host
clock on a CPU) and the policy observes the measured seconds; seconds a backend spends
capturing a CUDA graph are left out of every timed figure. A cycle's seconds run from the
previous cycle's end (the prefill's, for the first) to its own, so the host work between
cycles (the previous cycle's bookkeeping, the policy's observe, the next plan) is in the
host part, and a sample's cycles add up to its decode seconds.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from specreplay.live.backend import backend_for, rows_of
from specreplay.live.drafting import DeviceDraftView, LazyRng, block_input, cycle_proposals
from specreplay.live.sampling import Acceptance, cap_accepted, chain_rejection, greedy_accept, multiround
from specreplay.live.timing import CycleClock, wall_sync
from specreplay.live.verify import Verified
from specreplay.policies.base import Composite, CycleContext, CycleOutcome, DraftView, VerifyPlan, trie_nodes

SAMPLING_MODES = ("rejection", "multiround")


@dataclass
class LoopConfig:
    """Decoding settings of one run. ``oracle_top_k``: k of the DraftView a policy sees
    (the same k the oracle stores). ``top_k_logits``: k kept per position in the
    cycle_logits rows, written only when ``record`` is on. ``sampling`` (temperature >
    0): "rejection" = standard speculative sampling for chains and the exact
    multi-round scheme for plans with several paths; "multiround" = the multi-round
    scheme for every plan (see live/sampling.py)."""
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()
    oracle_top_k: int = 4
    top_k_logits: int = 8
    record: bool = True
    sampling: str = "rejection"

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING_MODES)}, got {self.sampling!r}")
        if self.oracle_top_k < 1 or self.top_k_logits < 1:
            raise ValueError("top-k values must be >= 1")


@dataclass
class SampleResult:
    """One decoded request: the trace rows of traces/schema.py plus the DraftView of
    every cycle (what the policy saw; the oracle test compares against it)."""
    sample: int
    prompt_ids: list[int]
    output_ids: list[int]
    stop_reason: str
    prefill_s: float
    decode_s: float
    cycles: list[dict]
    cycle_logits: object  # the sample's cycle_logits as an Arrow table ([] with recording off)
    views: list[DraftView] = field(default_factory=list)

    def sample_row(self, dataset_index: int, ar_divergence: int | None = None) -> dict:
        return {"sample": self.sample, "dataset_index": int(dataset_index),
                "prompt_ids": list(self.prompt_ids), "output_ids": list(self.output_ids),
                "stop_reason": self.stop_reason, "prefill_s": self.prefill_s,
                "decode_s": self.decode_s, "n_cycles": len(self.cycles),
                "ar_divergence": ar_divergence}


@dataclass
class DecodeState:
    """Everything that changes while one request decodes."""
    sample: int
    prompt_ids: list[int]
    output: list[int]
    target_cache: object
    draft_cache: object
    pending: torch.Tensor | None      # raw features of committed tokens not yet in the draft cache
    draft_cached: int                 # context rows in the draft cache
    gen: torch.Generator | None
    prefill_s: float
    t0: float
    cycle: int = 0
    stop_reason: str = ""
    prev_view: DraftView | None = None
    prev_outcome: CycleOutcome | None = None
    seed_view: DraftView | None = None  # the unseeded proposal of this cycle (recycling's source)
    cycles: list[dict] = field(default_factory=list)
    cycle_logits: object = field(default_factory=list)  # rows, or the sample's Arrow table
    pending_logits: list[tuple] = field(default_factory=list)  # top-k tensors awaiting rows
    views: list[DraftView] = field(default_factory=list)
    generation: int | None = None     # the graph backend's cache generation (one request at a time)
    capture_s: float = 0.0            # graph capture seconds inside this request (not decode time)
    last_end: object = None           # the clock mark where the previous cycle (or the prefill) ended
    captured_at_end: dict | None = None  # the backend's capture seconds at that end (before its recording)
    paused_s: float = 0.0             # the caller's progress display between cycles (not decode time)

    @property
    def start(self) -> int:
        return len(self.output) - 1

    @property
    def context_len(self) -> int:
        return len(self.prompt_ids) + self.start


class Decoder:
    """Runs requests with a (target, draft, policy) triple: ``run(sample, prompt_ids)``,
    or ``begin`` / ``step`` / ``finish`` to drive it cycle by cycle. ``backend``: "hf",
    "graph", None (graph on CUDA for the targets it runs, else hf) or a backend object
    (live/backend.py)."""

    def __init__(self, target, draft, policy: Composite, config: LoopConfig, backend=None):
        self.target, self.draft, self.policy, self.cfg = target, draft, policy, config
        self.backend = backend if hasattr(backend, "draft_pass") else backend_for(backend, target, draft)
        self.device = target.get_input_embeddings().weight.device
        self.stop_ids = frozenset(int(t) for t in config.stop_token_ids)
        self.clock = CycleClock(self.device)
        self._last_state: DecodeState | None = None  # the request the clock last timed
        # a backend that can leave the DraftView's top-k on the device (graph)
        self.device_views = hasattr(self.backend, "view_packed")
        # plain AR never drafts, so it needs no target features
        self.drafts = policy.block.name != "ar"
        if policy.max_rank() >= config.oracle_top_k:
            raise ValueError(f"policy {policy.spec()} verifies draft rank {policy.max_rank()} but "
                             f"the top-k kept is {config.oracle_top_k}; raise the oracle top-k "
                             f"to at least {policy.max_rank() + 1}")

    # ---- one request
    @torch.inference_mode()
    def run(self, sample: int, prompt_ids: list[int], progress=None) -> SampleResult:
        state = self.begin(sample, prompt_ids)
        while True:
            more = self.step(state)
            if progress is not None:
                # a progress display is the caller's work, not the decode's: out of the
                # next cycle's host part and out of the decode seconds alike
                t = time.perf_counter()
                progress(state)
                state.paused_s += time.perf_counter() - t
                self._captured_since_end(state)
                state.last_end = self.clock.mark("resumed")
            if not more:
                return self.finish(state)

    @torch.inference_mode()
    def begin(self, sample: int, prompt_ids: list[int]) -> DecodeState:
        """Prefill: run the prompt, take S[0]."""
        if not prompt_ids:
            raise ValueError(f"sample {sample} has an empty prompt")
        self.policy.reset(sample)
        gen = None
        if self.cfg.temperature > 0:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(_mix(self.cfg.seed, sample))
        t0 = wall_sync(self.device)
        tc, dc = self.backend.start(len(prompt_ids), self.cfg.max_new_tokens)
        logits, feats = self.backend.prefill(tc, prompt_ids, self.drafts)
        first = self._pick(logits, gen)
        t1 = wall_sync(self.device)
        state = DecodeState(sample, list(prompt_ids), [first], tc, dc, feats, 0, gen,
                            prefill_s=t1 - t0, t0=t1, generation=getattr(tc, "generation", None),
                            last_end=self.clock.mark("prefilled"))
        self._last_state = state
        self._check_end(state)
        return state

    @torch.inference_mode()
    def step(self, state: DecodeState) -> bool:
        """Run one cycle; False once the request has ended."""
        if state.stop_reason:
            return False
        if state.generation is not None and state.target_cache.generation != state.generation:
            raise RuntimeError(f"sample {state.sample}: its caches were handed to another request; "
                               f"the graph backend decodes one request at a time")
        captured0 = dict(self.backend.capture_s)
        clock = self.clock
        clock.reset()
        # the time since this request's previous cycle is its own host work only if no
        # other request stepped in between (one decoder serving two states in turn)
        if state.last_end is not None and self._last_state is state:
            clock.put("previous", state.last_end)
            # graphs captured since then (by the previous cycle's recording) lie in this
            # cycle's span, and are taken out of it like its own
            captured0 = state.captured_at_end or captured0
        self._last_state = state
        clock.mark("start")
        p, L = state.start, state.context_len
        anchor = state.output[-1]
        remaining = self.cfg.max_new_tokens - len(state.output)
        ctx = CycleContext(state.sample, state.cycle, p, L, remaining, self.draft.block_size,
                           state.prev_view, state.prev_outcome)
        req = self.policy.plan_draft(ctx)
        b = int(req.block_size)
        if b < 1:
            raise ValueError(f"policy {self.policy.spec()} asked for block size {b}")
        logits, view = self._draft(state, req, b, anchor)
        plan = self.policy.plan_verify(view)
        self._check_plan(plan, b, view.k)
        # a greedy top-1 chain planned without reading the proposal: its tokens go from
        # the draft's top-k to the verify on the device, and they come back with the
        # target's argmax in one copy (one host copy a cycle where there were two; the
        # clock's end-of-cycle event wait then finds nothing left to run)
        on_device = (isinstance(view, DeviceDraftView) and not view.fetched and self._top1_chain(plan))
        if on_device:
            n = len(plan.paths[0])
            tokens, q_rows, extra = [0] * n, None, {"device_tokens": view.packed[:n, 0]}
        else:
            tokens, q_rows = self._plan_tokens(state, plan, view, logits)
            extra = {}
        # the verify span starts where the backend launches the pass (``mark``): building
        # and uploading its inputs is host work, which a device-side chain overlaps with
        # the draft and other cycles do not, and the profile's verify rows leave it out too
        ver = self.backend.verify(state.target_cache, plan.mode, plan.paths, anchor, tokens, L, self.drafts,
                                  mark=lambda: clock.mark("target0"), **extra)
        clock.mark("target1")
        if on_device:
            acc, tokens = self._accept_on_device(ver, view, n)
        else:
            acc = self._accept(state, ver, q_rows)
        path_tokens = [tokens[j] for j in ver.path_nodes(acc.path)]
        acc = cap_accepted(acc, path_tokens, remaining, self.stop_ids)
        self._commit(state, ver, acc, path_tokens, L)
        drafted = [int(t) for t in (self._drafted_tokens(plan, view, tokens, ver) if b > 1 else [])]
        state_json = json.dumps(self.policy.state(), sort_keys=True)
        state.last_end = clock.mark("end")
        clock.sync()
        # a graph captured inside this cycle ran between the phase's marks: not its cost
        cap = {ph: s - captured0.get(ph, 0.0) for ph, s in self.backend.capture_s.items()}
        cap_d, cap_t = cap.get("draft", 0.0), cap.get("target", 0.0)
        state.capture_s += sum(cap.values())
        draft_s = max(0.0, clock.seconds("draft0", "draft1") - cap_d)
        target_s = max(0.0, clock.seconds("target0", "target1") - cap_t)
        # a recording graph captured at the cycle's end is left out like the others; the
        # time since the previous cycle's end is host work no pass overlaps (the device
        # idles after each cycle's wait), so it counts as this cycle's host part
        since = "previous" if "previous" in clock.marks else "start"
        cycle_s = max(draft_s + target_s, clock.seconds(since, "end") - sum(cap.values()))
        overhead_s = max(0.0, cycle_s - draft_s - target_s)
        state.captured_at_end = dict(self.backend.capture_s)
        if self.cfg.record:
            # after the cycle's end: the device runs the recording's kernels while the host
            # does the bookkeeping below and plans the next cycle (the cycle's wait would
            # otherwise wait for them too); their host work is the next cycle's host part
            self._logit_rows(state, ver, acc, b, logits)
        tau = acc.accepted + 1
        outcome = CycleOutcome(state.sample, state.cycle, p, b, acc.accepted, tau, tau, acc.path,
                               plan.verify_tokens(), draft_s, target_s, overhead_s, cycle_s,
                               l_gen=_l_gen(drafted, b, self.stop_ids))
        self.policy.observe(outcome)
        state.cycles.append({
            "sample": state.sample, "cycle": state.cycle, "start": p, "context_len": L,
            "block_size": b, "verify_mode": plan.mode, "verify_tokens": plan.verify_tokens(),
            "verify_batch": plan.batch(), "n_paths": len(plan.paths), "drafted": drafted,
            "accepted": acc.accepted, "tau": tau, "committed": tau, "bonus": acc.bonus,
            "chosen_path": acc.path, "probe": req.probe, "prev_offset": int(req.prev_offset),
            "n_seeds": len(req.seeds), "draft_s": draft_s, "target_s": target_s,
            "overhead_s": overhead_s, "cycle_s": cycle_s, "policy_state": state_json})
        state.views.append(view)
        state.prev_view, state.prev_outcome = state.seed_view, outcome
        state.cycle += 1
        self._check_end(state)
        return not state.stop_reason

    def finish(self, state: DecodeState) -> SampleResult:
        self._captured_since_end(state)  # the last cycle's recording may have captured a graph
        decode_s = wall_sync(self.device) - state.t0 - state.capture_s - state.paused_s
        self._flush_logits(state)
        return SampleResult(state.sample, state.prompt_ids, list(state.output), state.stop_reason,
                            state.prefill_s, decode_s, state.cycles, state.cycle_logits, state.views)

    def _captured_since_end(self, state: DecodeState) -> None:
        """Graphs captured since the last cycle's end (by its recording), when no cycle's
        span will take them out (the sample ends, or the next cycle starts later): out
        of the decode seconds."""
        if state.captured_at_end is not None:
            state.capture_s += sum(self.backend.capture_s.values()) - sum(state.captured_at_end.values())
            state.captured_at_end = None

    # ---- steps
    def _draft(self, state: DecodeState, req, b: int, anchor: int):
        """Draft the full block (b > 1) and build the DraftView; b = 1 drafts nothing."""
        k = self.cfg.oracle_top_k
        rng = LazyRng([self.cfg.seed, state.sample, state.start])
        if b == 1:
            empty = DraftView(state.sample, state.start, 1, np.zeros((0, k), np.int32),
                              np.zeros((0, k), np.float32), rng)
            state.seed_view = empty
            return None, empty
        self.clock.mark("draft0")
        dc = state.draft_cache

        def draft_pass(block_ids, context, cached, context_len):
            return self.backend.draft_pass(dc, block_ids, context, cached, context_len)
        if self.device_views and not req.seeds and not req.refine_steps:
            # one plain pass; its top-k stay on the device until something reads them
            logits = draft_pass(block_input(anchor, b, self.draft.mask_token_id), state.pending,
                                state.draft_cached, state.context_len)
            state.pending, state.draft_cached = None, state.context_len
            view = DeviceDraftView(state.sample, state.start, b, self.backend.view_packed(logits, k), k, rng)
            state.seed_view = view
            self.clock.mark("draft1")
            return logits, view
        logits, ids, lps, _ = cycle_proposals(
            draft_pass, self.draft.mask_token_id, anchor, b, req.seeds, state.pending,
            state.draft_cached, state.context_len, k, req.refine_steps, req.refine_only_below,
            req.refine_input, topk=self.backend.view_topk)
        state.pending, state.draft_cached = None, state.context_len
        view = DraftView(state.sample, state.start, b, ids, lps, rng)
        state.seed_view = view
        if req.seeds:
            # Recycling takes its seeds from the previous cycle's *plain* proposal, so the
            # oracle's recycle probe (seeds from the plain row at p-d) stays exact when
            # seeded cycles follow each other: one more pass over the cached context.
            plain = draft_pass(block_input(anchor, b, self.draft.mask_token_id), None,
                               state.context_len, state.context_len)
            state.seed_view = DraftView(state.sample, state.start, b, *self.backend.view_topk(plain, k), rng)
        self.clock.mark("draft1")
        return logits, view

    def _check_plan(self, plan: VerifyPlan, b: int, k: int) -> None:
        for path in plan.paths:
            if len(path) > b - 1 or any(r < 0 or r >= max(k, 1) for r in path):
                raise ValueError(f"policy {self.policy.spec()} planned path {path} for a block of "
                                 f"size {b} with top-{k} proposals")

    def _plan_tokens(self, state, plan: VerifyPlan, view: DraftView, logits):
        """Token per trie node. Greedy, or multi-round sampling: the rank's top-k id.
        Sampled chains (rejection mode): offset i's token is drawn from the draft's
        softmax(logits_i / T); returns those q rows too."""
        nodes = trie_nodes(plan.paths)
        if self._sampled_chain(plan):
            q = torch.softmax(logits[:len(nodes)] / self.cfg.temperature, dim=-1)
            toks = torch.multinomial(q, 1, generator=state.gen)[:, 0].tolist() if len(nodes) else []
            return [int(t) for t in toks], q
        return [int(view.ids[d - 1, r]) for _, d, r in nodes], None

    def _top1_chain(self, plan: VerifyPlan) -> bool:
        return (self.cfg.temperature <= 0 and plan.mode == "chain" and len(plan.paths) == 1
                and all(r == 0 for r in plan.paths[0]))

    def _accept_on_device(self, ver: Verified, view: DeviceDraftView, n: int):
        """Greedy acceptance of a top-1 chain whose n tokens stayed on the device: the
        target's argmax rows and the view's packed top-k come to the host in one copy,
        which also fills the view and the verified pass's token placeholders."""
        amax = ver.node_logits.argmax(-1).to(torch.int32)
        host = torch.cat((amax, view.packed.flatten())).cpu().numpy()
        view.take(host[n + 1:])
        tokens = [int(t) for t in view.tokens[:n]]
        ver.node_tokens[:] = tokens
        if ver.packed is not None:
            ver.packed.tokens[1:] = tokens
        return greedy_accept([tokens], [host[:n + 1].tolist()]), tokens

    def _sampled_chain(self, plan: VerifyPlan) -> bool:
        return (self.cfg.temperature > 0 and self.cfg.sampling == "rejection"
                and len(plan.paths) == 1 and all(r == 0 for r in plan.paths[0]))

    def _accept(self, state, ver: Verified, q_rows) -> Acceptance:
        if self.cfg.temperature <= 0:
            return greedy_accept(*self._greedy_inputs(ver))
        probs = torch.softmax(ver.node_logits / self.cfg.temperature, dim=-1)
        if q_rows is not None:
            return chain_rejection(ver.node_tokens, probs, q_rows, state.gen)
        return multiround(ver.nodes, ver.node_tokens, probs, ver.paths, state.gen)

    def _greedy_inputs(self, ver: Verified):
        return greedy_inputs(ver)

    def _commit(self, state: DecodeState, ver: Verified, acc: Acceptance, path_tokens, L: int) -> None:
        feats = self.backend.commit(state.target_cache, ver, acc.path, acc.accepted, L)
        state.output.extend(path_tokens[:acc.accepted] + [acc.bonus])
        if self.drafts:
            state.pending = feats if state.pending is None else torch.cat((state.pending, feats), dim=1)

    def _drafted_tokens(self, plan, view, tokens, ver) -> list[int]:
        """The block's drafted tokens at offsets 1..b-1: the sampled chain where one was
        sampled, the top-1 elsewhere."""
        top1 = [int(t) for t in view.tokens]
        if self._sampled_chain(plan):
            top1[:len(tokens)] = tokens
        return top1

    def _logit_rows(self, state, ver: Verified, acc: Acceptance, b: int, draft_logits) -> None:
        """Keep this cycle's top-k along the chosen path, as device tensors: the draft's at
        offsets 1..b-1 and the target's after the anchor and each verified token. They
        become cycle_logits rows once the sample ends (``_flush_logits``), so a cycle pays
        for a few small kernels and no host transfer."""
        k = self.cfg.top_k_logits
        if ver.mode == "batch":
            n = len(ver.paths[acc.path]) + 1
            t_logits = ver.rows[acc.path, :n]
        else:
            rows = [0] + [j + 1 for j in ver.path_nodes(acc.path)]
            t_logits = rows_of(ver.node_logits, rows)
        target = self.backend.record_topk(t_logits, k)
        draft = self.backend.record_topk(draft_logits, k) if draft_logits is not None else None
        state.pending_logits.append((state.cycle, b, target, draft))

    def _flush_logits(self, state) -> None:
        """Turn the kept top-k of every cycle into the sample's cycle_logits table: one
        host transfer per tensor kind and columnar assembly, no per-row Python."""
        if not state.pending_logits:
            return
        import pyarrow as pa

        from specreplay.traces.schema import SCHEMAS
        cycle, offset, t_idx, d_idx = [], [], [], []
        t_parts, d_parts, n_t = [], [], 0
        n_d = 0
        for c, b, target, draft in state.pending_logits:
            n_path = int(target[0].shape[0])
            n_draft = int(draft[0].shape[0]) if draft is not None else 0
            for off in range(b):
                cycle.append(c)
                offset.append(off)
                t_idx.append(n_t + off if off < n_path else -1)
                d_idx.append(n_d + off - 1 if 1 <= off <= n_draft else -1)
            t_parts.append(target)
            n_t += n_path
            if draft is not None:
                d_parts.append(draft)
                n_d += n_draft
        t_idx, d_idx = np.asarray(t_idx), np.asarray(d_idx)

        def columns(parts, idx):
            """(ids, logits, lse) Arrow columns for the rows ``idx`` points at (-1: null)."""
            valid = idx >= 0
            if not parts:
                null = pa.nulls(len(idx))
                return null.cast(pa.list_(pa.int32())), null.cast(pa.list_(pa.float32())), null.cast(pa.float32())
            ids, vals, lse = (torch.cat([p[j] for p in parts]).cpu().numpy() for j in range(3))
            width = ids.shape[1]
            offsets = pa.array(np.concatenate([[0], np.cumsum(np.where(valid, width, 0))]).astype(np.int32))
            mask = pa.array(~valid)
            pick = idx[valid]
            out = [pa.ListArray.from_arrays(offsets, pa.array(ids[pick].astype(np.int32).ravel()), mask=mask),
                   pa.ListArray.from_arrays(offsets, pa.array(vals[pick].astype(np.float32).ravel()), mask=mask)]
            lse_col = np.zeros(len(idx), np.float32)
            lse_col[valid] = lse[pick]
            return out[0], out[1], pa.array(lse_col, mask=~valid)

        t_ids, t_vals, t_lse = columns(t_parts, t_idx)
        d_ids, d_vals, d_lse = columns(d_parts, d_idx)
        n = len(cycle)
        table = pa.Table.from_arrays(
            [pa.array(np.full(n, state.sample, np.int32)), pa.array(np.asarray(cycle, np.int32)),
             pa.array(np.asarray(offset, np.int16)), d_ids, d_vals, d_lse, t_ids, t_vals, t_lse],
            schema=SCHEMAS["cycle_logits"])
        state.cycle_logits = table
        state.pending_logits.clear()

    def _pick(self, logits: torch.Tensor, gen) -> int:
        if self.cfg.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self.cfg.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=gen).item())

    def _check_end(self, state: DecodeState) -> None:
        if state.output[-1] in self.stop_ids:
            state.stop_reason = "eos"
        elif len(state.output) >= self.cfg.max_new_tokens:
            state.stop_reason = "max_new_tokens"


def _l_gen(drafted: list[int], b: int, stop_ids) -> int:
    """Drafted length up to and including the first stop token (ADL's l_gen), else b."""
    for i, t in enumerate(drafted, start=1):
        if t in stop_ids:
            return i + 1
    return b


def _mix(seed: int, sample: int) -> int:
    """A generator seed from (run seed, sample)."""
    return int(np.random.SeedSequence([int(seed), int(sample)]).generate_state(1)[0])


def cache_length(cache) -> int:
    """Rows in a KV cache (0 when empty)."""
    return int(cache.get_seq_length())


__all__ = ["Decoder", "DecodeState", "LoopConfig", "SampleResult", "SAMPLING_MODES", "cache_length"]


def greedy_inputs(ver: "Verified"):
    """Per path: its tokens, and the target argmax after the anchor and each token
    (batch mode: from that path's own row)."""
    if ver.mode == "batch":
        amax = ver.rows.argmax(-1).tolist()
        toks = [[ver.node_tokens[j] for j in ver.path_nodes(i)] for i in range(len(ver.paths))]
        return toks, [amax[i][:len(t) + 1] for i, t in enumerate(toks)]
    amax = ver.node_logits.argmax(-1).tolist()
    toks, amaxes = [], []
    for i in range(len(ver.paths)):
        nodes = ver.path_nodes(i)
        toks.append([ver.node_tokens[j] for j in nodes])
        amaxes.append([amax[0]] + [amax[j + 1] for j in nodes])
    return toks, amaxes
