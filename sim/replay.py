"""Predict what policies would have done on a recorded trace.

    from specreplay.sim.replay import replay
    for p in replay("traces/samples/humaneval-fixed16", ["fixed(b=8)", "ewma"]):
        print(p.to_dict())

Metrics (single stream, the live decode loop):

* ``tokens_per_s`` = sum of output tokens / sum of decode seconds over the samples (decode
  = first cycle start to last commit; prefill excluded, as in samples.decode_s).
* ``tpot_s`` = mean over samples of decode seconds / output tokens (the seed scripts'
  avg_tpot_s: per sample, not token-weighted; output tokens = len(S), S[0] included).
* ``tau_mean`` = mean tau over cycles; ``tau_sample_mean`` = mean over samples of each
  sample's mean tau (the seed scripts' "average acceptance length").
* ``tau_hist[t]`` = number of cycles with tau = t (index 0 is always 0).
* ``speedup`` = tpot_s of ``ar`` / tpot_s of the policy, both replayed under the same
  cost model, timing mode and load (under recorded timing, ar's cycles take recorded
  seconds only if the live run was ar; otherwise the cost model's).
* ``ci_low``/``ci_high``: 95 % bootstrap interval of tokens_per_s over prompts (samples
  resampled with replacement, ``bootstrap`` times, seeded).

Serving runs (``concurrency`` or ``rate``) add ``serving``: TTFT, TPOT and end-to-end
seconds per request (mean, p50, p90, p99), ``throughput_tok_s`` (all output tokens /
makespan), ``goodput_rps`` (requests meeting both SLOs per second of makespan) and
``slo_attainment``. There ``tokens_per_s`` is the throughput, ``tpot_s`` the mean
per-request TPOT including queueing, and the CI resamples requests (token-weighted
per-request rate, scaled to the run's throughput).

Recorded timing (``timing="recorded"``) applies where the GPU runs one cycle alone, as
live: single stream and concurrency 1.

``fidelity``: "exact" when acceptance comes straight from a greedy oracle that agrees with
the live run and every cost query interpolated inside the profile's grid; otherwise the
reasons joined by "; ": "approximate (sampling: Monte Carlo, seed N)", "approximate
(oracle = live draft on A % of cycles, N AR divergences; tau +- B)" (see
``tau_error_bound``), "extrapolated cost", "other-setup profile: <setup>". ``label`` is
the one-word class of it: "approximate" (acceptance not exact), else "extrapolated cost"
(a cost from the fitted model or another setup's profile), else "exact".
Serving predictions are also flagged "unvalidated (...)", first, and their label ends in
", unvalidated": no live batched run has been measured against them yet.
``oracle_agreement`` is the measured share of the trace's plain greedy live cycles whose
draft proposals the oracle reproduces, ``ar_divergences`` the trace's samples whose
output left plain AR decoding, ``tau_bound`` the bound on |tau_mean error| they imply.

``Prediction.per_cycle`` (a ``CycleTable``, kept off ``to_dict()`` unless asked) has one
row per replayed cycle, in the order the cycles ran (single stream: by sample, then
cycle), with numpy columns ``sample, cycle, start, block_size, accepted, tau,
verify_tokens, draft_s, target_s, overhead_s, cycle_s, draft_src, target_src,
recorded`` and ``policy_state`` (a JSON object per cycle, built on first access; absent
after ``states=False``); ``to_arrow()`` gives a pyarrow Table. Each row points back to
the oracle row (sample, start, block_size) it was read from and, through
``draft_src``/``target_src`` and ``CostModel.explain``, to the profile rows its seconds
came from (-1: the fitted model; -2: no pass, or recorded seconds when ``recorded``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from specreplay.policies import parse_policy
from specreplay.sim.acceptance import Acceptance, NotReplayable
from specreplay.sim.cost import FITTED, CostModel, MissingCost, RecordedTiming, cycle_overheads
from specreplay.sim.engine import CYCLE_FIELDS, Engine, RunLog, Timer, cycle_columns
from specreplay.sim.fastpath import fixed_block_size, replay_fixed
from specreplay.sim.tracedata import TraceData, load_trace
from specreplay.traces.identity import setup_identity
from specreplay.traces.io import TraceError
from specreplay.traces.reader import Profile, Trace, check_profile_matches

TIMINGS = ("model", "recorded", "calibrated")
# the fidelity flag of every serving prediction (concurrency or rate)
UNVALIDATED = "unvalidated (serving: no live batched run has confirmed it)"


class CycleTable:
    """Per-cycle columns of one replay (see the module docstring)."""

    def __init__(self, cols: dict[str, np.ndarray], states: list[dict] | None,
                 captured: bool = True) -> None:
        self.cols = cols
        self._states = states
        self.captured = captured  # False: replayed with states=False, no policy_state
        self._state_json: list[str] | None = None

    def __len__(self) -> int:
        return int(len(self.cols["sample"]))

    def __getitem__(self, name: str):
        if name == "policy_state":
            if not self.captured:
                raise KeyError("policy_state was not captured: replay with states=True")
            if self._state_json is None:
                n = len(self)
                self._state_json = ([json.dumps(s, sort_keys=True) for s in self._states]
                                    if self._states else ["{}"] * n)
            return self._state_json
        return self.cols[name]

    @property
    def columns(self) -> list[str]:
        return [*CYCLE_FIELDS, "policy_state"] if self.captured else list(CYCLE_FIELDS)

    def to_arrow(self) -> pa.Table:
        return pa.table({c: self[c] for c in self.columns})


@dataclass
class Prediction:
    """One policy's predicted behaviour on one trace (fields: module docstring)."""
    policy: str
    replayable: bool
    reason: str = ""
    canonical: str = ""
    tokens_per_s: float | None = None
    tpot_s: float | None = None
    tau_mean: float | None = None
    tau_sample_mean: float | None = None
    tau_hist: list[int] = field(default_factory=list)
    speedup: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    fidelity: str = ""
    cycles: int = 0
    tokens: int = 0
    samples: int = 0
    timing: str = "model"
    recorded_cycles: int = 0
    cost: str = ""
    profile_rows: list[str] = field(default_factory=list)
    trace: str = ""
    serving: dict[str, Any] | None = None
    label: str = ""
    oracle_agreement: float | None = None
    ar_divergences: int | None = None
    tau_bound: float | None = None
    per_cycle: CycleTable | None = None

    def to_dict(self, per_cycle: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "per_cycle"}
        if per_cycle and self.per_cycle is not None:
            out["per_cycle"] = {c: np.asarray(self.per_cycle[c]).tolist()
                                for c in self.per_cycle.columns}
        return out


@dataclass
class Setting:
    """Everything shared by the policies of one replay call."""
    data: TraceData
    acc: Acceptance
    timer: Timer
    flags: list[str]
    concurrency: int | None
    rate: float | None
    seed: int
    bootstrap: int
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    states: bool = True
    agreement: OracleAgreement | None = None


@dataclass
class OracleAgreement:
    """How far a greedy trace's oracle stands for its live run: ``agreeing`` of
    ``compared`` plain live cycles had top-1 proposals equal to the oracle row at their
    (sample, start, block size) (traces.check.oracle_live_agreement), and ``divergent``
    of ``checked`` samples left plain AR decoding."""
    agreeing: int
    compared: int
    divergent: int
    checked: int

    @property
    def share(self) -> float | None:
        return self.agreeing / self.compared if self.compared else None

    @property
    def exact(self) -> bool:
        return (self.share is None or self.share == 1.0) and self.divergent == 0


# the tables the oracle agreement is read from (besides run.json and samples)
AGREEMENT_TABLES = ("cycles", "oracle")


def stamped_agreement(trace: Trace) -> tuple[int, int] | None:
    """(agreeing, compared) as `trace compact` read them from the trace's unchanged
    bytes (``Trace.checked_fact``), or None."""
    v = trace.checked_fact("oracle_agreement", AGREEMENT_TABLES)
    if isinstance(v, list) and len(v) == 2 and all(type(x) is int and x >= 0 for x in v):
        return v[0], v[1]
    return None


def oracle_agreement(trace: Trace, acc: Acceptance | None = None) -> OracleAgreement:
    """The trace's measured oracle agreement and AR divergences (see OracleAgreement).
    With the trace's ``Acceptance``, the oracle rows are looked up in its arrays
    (the rule of traces.check.oracle_live_agreement) instead of reading the oracle a
    second time; a trace stamped by `trace compact` (traces.reader) carries the figure
    read from its unchanged bytes."""
    stamped = stamped_agreement(trace)
    if stamped is not None:  # read from these very bytes when they were checked
        agreeing, compared = stamped
    elif acc is None:
        from specreplay.traces.check import oracle_live_agreement
        agreeing, compared = oracle_live_agreement(trace)
    else:
        agreeing, compared = _live_agreement(trace, acc)
    div = np.asarray([d for d in trace.samples.column("ar_divergence").to_pylist()
                      if d is not None], dtype=np.int64)  # null: not checked
    return OracleAgreement(int(agreeing), int(compared), int((div >= 0).sum()), int(div.size))


def _live_agreement(trace: Trace, acc: Acceptance) -> tuple[int, int]:
    """(agreeing, compared) plain greedy live cycles whose drafted tokens equal the top-1
    proposals of the oracle row at their (sample, start, block size)."""
    if acc.sampling:
        return 0, 0
    cyc = trace.cycles
    b = cyc.column("block_size").to_numpy().astype(np.int64)
    plain = np.asarray(cyc.column("probe").to_pylist(), dtype=object) == ""
    gpos = acc.data.base[cyc.column("sample").to_numpy().astype(np.int64)] \
        + cyc.column("start").to_numpy().astype(np.int64)
    # the drafted lists as one value array and each row's first index into it
    drafted = cyc.column("drafted").combine_chunks()
    lengths = np.asarray(pc.fill_null(pc.list_value_length(drafted), -1)
                         .to_numpy(zero_copy_only=False), np.int64)
    first = drafted.offsets.to_numpy()[:-1].astype(np.int64)
    values = drafted.values.to_numpy(zero_copy_only=False)
    agree = compared = 0
    for (size, probe, prev), g in acc.groups.items():
        if probe or prev:
            continue
        rows = np.flatnonzero((b == size) & plain)
        if not len(rows):
            continue
        oracle_rows = g.row_of[gpos[rows]]
        have = oracle_rows >= 0
        rows, oracle_rows = rows[have], oracle_rows[have]
        compared += len(rows)
        # a live cycle agrees when its drafted list is the oracle row's top-1 proposals
        whole = lengths[rows] == size - 1
        rows, oracle_rows = rows[whole], oracle_rows[whole]
        if not len(rows):
            continue
        live = values[first[rows][:, None] + np.arange(size - 1)[None, :]]
        agree += int((live == g.ids[oracle_rows, :, 0]).all(axis=1).sum())
    return agree, compared


def tau_error_bound(agreement: OracleAgreement, block_sizes: np.ndarray) -> float | None:
    """Bound on |predicted tau_mean - live tau_mean| of a greedy replay whose cycles had
    ``block_sizes``, given how often the oracle reproduces the live draft.

    Derivation. Greedy acceptance is looked up along the recorded output S: a cycle at
    (sample, start, b) accepts the leading drafted offsets whose oracle top-1 equals S.
    Where the oracle row's top-1 proposals are the ones the live draft makes there, the
    live cycle accepts exactly what the replay reads (same proposals, same S), so its tau
    is exact. Where they differ (kernels of other shapes flip near-tied proposals), the
    live cycle's accepted count can be anything in [0, b - 1], so its tau moves by at
    most b - 1. An AR divergence is a position where the committed token itself depends
    on the verify shape: another policy's live run may commit another token there, which
    moves the one cycle covering it by at most b - 1 as well (the text after it is
    another text of the same kind, whose cycles obey the same per-cycle rule). With
    C replayed cycles of block sizes b_i, a share 1 - a of them disagreeing (the measured
    rate, taken to hold at every position the policy visits) and D divergent samples:

        sum |delta tau_i| <= (1 - a) * sum_i (b_i - 1) + D * (max b - 1)

    and since tau_mean = T / C for the fixed T output tokens, a change of sum delta tau_i
    committed tokens changes the cycle count by about -sum delta / tau_mean and tau_mean
    by about sum delta / C, so

        |delta tau_mean| <= ((1 - a) * sum_i (b_i - 1) + D * (max b - 1)) / C.

    It is a bound on the expected error, not on the worst case (a policy could visit
    only disagreeing positions); None when the trace measured no agreement (sampled or
    no plain greedy cycles with oracle rows) and has no divergence."""
    share = agreement.share
    if share is None and agreement.divergent == 0:
        return None
    b = np.asarray(block_sizes, dtype=np.float64)
    if b.size == 0:
        return 0.0
    slack = np.maximum(b - 1, 0)
    disagree = (1.0 - share) if share is not None else 0.0
    return float((disagree * slack.sum() + agreement.divergent * slack.max()) / b.size)


def cost_model_for(data: TraceData, profile: str | Path | Profile | None,
                   other_setup: bool) -> tuple[CostModel, list[str], bool]:
    """The cost model of a replay, the fidelity flags it brings, and whether it
    describes the trace's own setup."""
    cycles = data.trace.cycles
    from_live = cycle_overheads(cycles) if cycles.num_rows else {}
    if profile is None:
        profile = data.profile()
        if profile is None:
            if cycles.num_rows == 0:
                raise TraceError(f"trace {data.path} has no profile and no live cycles to fit "
                                 "one to; pass --profile DIR")
            return CostModel.from_cycles(cycles, data.prompt_len), [], True
    elif not isinstance(profile, Profile):
        profile = Profile.open(profile)
    diffs = check_profile_matches(data.trace, profile, allow_other_setup=other_setup)
    flags, own = [], not diffs
    label = f"profile {profile.dir}"
    if diffs:
        setup = setup_identity(profile.meta).get("setup") or {}
        desc = ", ".join(f"{k}={v}" for k, v in sorted(setup.items())) if isinstance(setup, dict) \
            else str(setup)
        flags.append(f"other-setup profile: {desc or 'unknown setup'}")
        label += f" (profile from other setup: {desc or 'unknown setup'})"
    try:
        # On the trace's own setup, the host work of a cycle is best known from the live
        # loop itself (policy calls, views, bookkeeping) unless the profile times the
        # loop's host step per verify mode: older profiles' overhead rows time only the
        # acceptance tensor ops, and measured a third of it on a CPU run.
        model = CostModel(profile.table, label=label, setup=profile.meta,
                          cycle_overheads=from_live, prefer_cycle_overheads=own)
    except ValueError as e:
        raise TraceError(f"{profile.dir}/profile.parquet: {e}") from None
    if own and cycles.num_rows:
        model.fit_kv_copy(cycles)
    return model, flags, own


def _bootstrap(tokens: np.ndarray, secs: np.ndarray, n: int, seed: int, scale: float = 1.0):
    if n <= 0 or len(tokens) == 0:
        return None, None
    rng = np.random.default_rng((seed, 0xB007))
    idx = rng.integers(0, len(tokens), size=(n, len(tokens)))
    rates = tokens[idx].sum(axis=1) / np.maximum(secs[idx].sum(axis=1), 1e-300) * scale
    lo, hi = np.percentile(rates, [2.5, 97.5])
    return float(lo), float(hi)


def _serving(log: RunLog, s: Setting) -> dict[str, Any]:
    r = np.asarray(log.requests, dtype=np.float64)
    arrival, first, finish, tokens = r[:, 1], r[:, 2], r[:, 3], r[:, 4]
    ttft, e2e = first - arrival, finish - arrival
    tpot = (finish - first) / tokens
    makespan = float(finish.max() - arrival.min())
    ok = np.ones(len(r), dtype=bool)
    if s.slo_ttft_s is not None:
        ok &= ttft <= s.slo_ttft_s
    if s.slo_tpot_s is not None:
        ok &= tpot <= s.slo_tpot_s

    def stats(x: np.ndarray) -> dict[str, float]:
        p50, p90, p99 = np.percentile(x, [50, 90, 99])
        return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}

    return {"concurrency": s.concurrency, "rate": s.rate, "requests": int(len(r)),
            "ttft_s": stats(ttft), "tpot_s": stats(tpot), "e2e_s": stats(e2e),
            "throughput_tok_s": float(tokens.sum() / makespan) if makespan > 0 else None,
            "goodput_rps": float(ok.sum() / makespan) if makespan > 0 else None,
            "slo_attainment": float(ok.mean()), "slo_ttft_s": s.slo_ttft_s,
            "slo_tpot_s": s.slo_tpot_s, "makespan_s": makespan, "gpu_steps": log.steps,
            "mean_batch": float(np.mean(log.batch_sizes)) if log.batch_sizes else 1.0}


def _summarise(spec: str, canonical: str, cols: dict, log: RunLog, s: Setting) -> Prediction:
    data = s.data
    sample, tau = cols["sample"], cols["tau"]
    decode = np.bincount(sample, weights=cols["cycle_s"], minlength=data.n_samples)
    tokens = data.out_len.astype(np.float64)
    n_cycles = np.bincount(sample, minlength=data.n_samples)
    tau_per_sample = np.bincount(sample, weights=tau, minlength=data.n_samples) / np.maximum(n_cycles, 1)
    srcs = np.concatenate([cols["draft_src"], cols["target_src"]])
    fitted = bool((srcs == FITTED).any())
    flags = list(s.flags)
    cost = s.timer.cost
    if fitted:
        flags.append("extrapolated cost")
    agreement = s.agreement
    bound = None
    if agreement is not None and not s.acc.sampling:
        bound = tau_error_bound(agreement, cols["block_size"])
        if not agreement.exact:
            share = agreement.share
            flags.insert(0, "approximate (" + (f"oracle = live draft on {100 * share:.1f} % of "
                                               f"{agreement.compared} cycles, " if share is not None else "")
                         + f"{agreement.divergent} AR divergence"
                         + ("" if agreement.divergent == 1 else "s")
                         + f" in {agreement.checked} samples; tau +-{bound:.3f})")
    serving = s.concurrency is not None or s.rate is not None
    if serving:
        # no live batched runner exists yet to measure a serving run against
        flags.insert(0, UNVALIDATED)
    if any(f.startswith("approximate") for f in flags):
        label = "approximate"
    elif fitted or any(f.startswith("other-setup") for f in flags):
        label = "extrapolated cost"
    else:
        label = "exact"
    if serving:
        label += ", unvalidated"
    pred = Prediction(
        policy=spec, canonical=canonical, replayable=True,
        tpot_s=float(np.mean(decode / tokens)),
        tokens_per_s=float(tokens.sum() / decode.sum()) if decode.sum() > 0 else None,
        tau_mean=float(tau.mean()) if len(tau) else None,
        tau_sample_mean=float(tau_per_sample.mean()),
        tau_hist=np.bincount(tau.astype(np.int64)).tolist(),
        fidelity="; ".join(flags) or "exact", cycles=int(len(tau)), tokens=int(tokens.sum()),
        samples=data.n_samples, label=label,
        oracle_agreement=agreement.share if agreement is not None else None,
        ar_divergences=agreement.divergent if agreement is not None else None,
        tau_bound=bound,
        timing="recorded" if s.timer.recorded else "calibrated" if cost.scale else "model",
        recorded_cycles=int(np.count_nonzero(cols["recorded"])),
        cost=f"{cost.label}; overhead from {cost.overhead_source}"
             + "".join(f"; {n}" for n in sorted(cost.notes)),
        profile_rows=_explain_sources(cost, cols), trace=str(data.path))
    if tokens.sum() and decode.sum() > 0:
        pred.ci_low, pred.ci_high = _bootstrap(tokens, decode, s.bootstrap, s.seed)
    if s.concurrency is not None or s.rate is not None:
        srv = _serving(log, s)
        pred.serving = srv
        pred.tokens_per_s = srv["throughput_tok_s"]
        pred.tpot_s = srv["tpot_s"]["mean"]
        r = np.asarray(log.requests, dtype=np.float64)
        rate_all = r[:, 4].sum() / (r[:, 3] - r[:, 1]).sum()
        scale = pred.tokens_per_s / rate_all if pred.tokens_per_s else 1.0
        pred.ci_low, pred.ci_high = _bootstrap(r[:, 4], r[:, 3] - r[:, 1], s.bootstrap, s.seed, scale)
    return pred


def _explain_sources(cost: CostModel, cols: dict, limit: int = 12) -> list[str]:
    """The profile rows behind a replay's seconds (the most used first, at most
    ``limit`` lines)."""
    out = []
    for kind_col, kind in (("draft_src", "draft"), ("target_src", "target")):
        src, counts = np.unique(cols[kind_col], return_counts=True)
        for i in np.argsort(-counts):
            if src[i] == -2:
                continue
            out.append(f"{kind} x{int(counts[i])}: {cost.explain(int(src[i]), kind)}")
    return out[:limit]


def _run_policy(spec: str, s: Setting) -> Prediction:
    policy = parse_policy(spec)
    canonical = policy.spec()
    try:
        s.acc.check_policy(policy.max_rank(), policy.probes())
        single_stream = s.concurrency is None and s.rate is None
        b = fixed_block_size(policy, s.data) if single_stream else None
        if b is not None:
            cols, log = replay_fixed(s.data, s.acc, s.timer, b)
            states = None
        else:
            engine = Engine(s.data, s.acc, s.timer, spec, s.concurrency, s.rate, s.seed,
                            record_states=s.states)
            log = engine.run()
            cols = log.table()
            states = log.states
    except (NotReplayable, MissingCost) as e:
        return Prediction(policy=spec, canonical=canonical, replayable=False, reason=str(e),
                          fidelity="not replayable", trace=str(s.data.path))
    pred = _summarise(spec, canonical, cols, log, s)
    # a component whose live execution differs from a plain implementation says so
    pred.fidelity += "".join(f"; {c.name}: {c.label}" for c in policy.components() if getattr(c, "label", ""))
    pred.per_cycle = CycleTable(cols, states, captured=s.states or b is not None)
    return pred


def _columns(cycles: list[tuple]) -> dict[str, np.ndarray]:
    """The engine's per-cycle tuples as numpy columns (``CYCLE_FIELDS``)."""
    return cycle_columns(cycles)


class Replayer:
    """A trace, its cost model and oracle arrays, built once; ``predict`` replays one
    policy, with its speedup against ``ar`` replayed once under the same setting.
    Arguments: see ``replay``."""

    def __init__(self, trace: str | Path | Trace | TraceData,
                 profile: str | Path | Profile | None = None, concurrency: int | None = None,
                 rate: float | None = None, timing: str = "model", seed: int = 0,
                 bootstrap: int = 1000, other_setup: bool = False,
                 slo_ttft_s: float | None = None, slo_tpot_s: float | None = None,
                 states: bool = True) -> None:
        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {', '.join(TIMINGS)}, got {timing!r}")
        if concurrency is not None and rate is not None:
            raise ValueError("give concurrency or rate, not both")
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 requests per second, got {rate}")
        data = trace if isinstance(trace, TraceData) else load_trace(trace)
        self.setting = setting(data, profile, concurrency, rate, timing, seed, bootstrap,
                               other_setup, slo_ttft_s, slo_tpot_s)
        self.setting.states = states
        self._baseline: Prediction | None = None

    @property
    def baseline(self) -> Prediction:
        """``ar`` under the same cost model, timing and load."""
        if self._baseline is None:
            self._baseline = _run_policy("ar", self.setting)
        return self._baseline

    def predict(self, spec: str) -> Prediction:
        pred = _run_policy(spec, self.setting)
        if pred.canonical == "ar" and self._baseline is None and pred.replayable:
            self._baseline = pred
        base = self.baseline
        if pred.replayable and base.replayable and pred.tpot_s:
            pred.speedup = base.tpot_s / pred.tpot_s
        return pred


def replay(trace: str | Path | Trace | TraceData, policies: list[str],
           profile: str | Path | Profile | None = None, concurrency: int | None = None,
           rate: float | None = None, timing: str = "model", seed: int = 0,
           bootstrap: int = 1000, other_setup: bool = False, slo_ttft_s: float | None = None,
           slo_tpot_s: float | None = None, states: bool = True) -> list[Prediction]:
    """Replay each policy spec on a trace; one Prediction per spec, in order, with
    speedups against ``ar`` replayed under the same cost model and load.

    ``profile``: a profile directory (default: the trace's own profile, else a model
    fitted to its live cycles); ``other_setup`` allows a profile measured on another
    setup (labelled). ``concurrency``/``rate``: serving runs (see sim.engine); the SLOs
    (seconds) define goodput. ``timing``: "model" (every cycle from the cost model),
    "recorded" (cycles the live run ran take their recorded seconds) or "calibrated"
    (the cost model scaled to the trace's plain live cycles, see CostModel.calibrate). ``seed`` drives
    Monte Carlo acceptance, Poisson arrivals and the bootstrap. A policy the trace cannot
    replay gets ``replayable=False`` and the reason; a malformed spec raises PolicyError
    before anything runs. ``states=False`` skips capturing the policy's state every cycle
    (``per_cycle['policy_state']``), a quarter of a scheduler's replay time; summaries
    are the same.
    """
    for spec in policies:
        parse_policy(spec)
    r = Replayer(trace, profile, concurrency, rate, timing, seed, bootstrap, other_setup,
                 slo_ttft_s, slo_tpot_s, states)
    return [r.predict(spec) for spec in policies]


def setting(data: TraceData, profile, concurrency, rate, timing, seed, bootstrap, other_setup,
            slo_ttft_s=None, slo_tpot_s=None) -> Setting:
    """Build the shared pieces of a replay (cost model, oracle arrays) once."""
    cost, flags, own = cost_model_for(data, profile, other_setup)
    if timing == "calibrated":
        if not own or data.trace.cycles.num_rows == 0:
            raise TraceError(f"calibrated timing scales the profile to the live cycles of {data.path}, "
                             "so it needs a profile of the trace's own setup and a trace with live "
                             "cycles; use --timing model")
        cost.calibrate(data.trace.cycles)
    # the longest context a cycle of this trace can have: every cost table is built
    # once at that size (grown geometrically past it, e.g. by a prefill's prompt)
    cost.reserve(int((data.prompt_len + data.out_len).max()))
    recorded = RecordedTiming(data.trace.cycles) if timing == "recorded" else None
    # a trace whose files were checked and stamped carries its oracle agreement: the
    # draft's token ids (most of the oracle's bytes) are then read only if a policy asks
    acc = Acceptance(data, seed, ids=stamped_agreement(data.trace) is None)
    if acc.sampling:
        flags.insert(0, f"approximate (sampling: Monte Carlo, seed {seed})")
    prefill = data.prefill_s if own and (data.prefill_s > 0).all() else None
    timer = Timer(cost, recorded, prefill, data.prompt_len)
    agreement = oracle_agreement(data.trace, acc)
    # the draft's token ids served the agreement, its log-probabilities (and the ids)
    # only the reader's value checks: the policies that read the proposal (gating,
    # candidates, recycling, refinement, ADL) read them again from the trace
    acc.release("draft_ids")
    acc.release("draft_logprobs")
    return Setting(data, acc, timer, flags, concurrency, rate, seed, bootstrap,
                   slo_ttft_s, slo_tpot_s, agreement=agreement)


__all__ = ["CycleTable", "OracleAgreement", "Prediction", "Replayer", "replay", "TIMINGS",
           "oracle_agreement", "tau_error_bound"]


def measured(trace: str | Path | Trace, bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    """The same summary as a prediction, computed from a trace's live ``cycles`` and
    ``samples`` tables (what a live run measured): tokens_per_s = sum len(S) / sum of
    cycle seconds, tpot_s = mean over samples of cycle seconds / len(S), tau_mean over
    cycles; ``ci_low``/``ci_high``: the 95 % bootstrap interval of tokens_per_s over the
    samples (each decoded prompt, repeats included, one unit), None without
    ``bootstrap`` resamples. Used by promote so that predicted and measured follow one
    definition."""
    t = trace if isinstance(trace, Trace) else Trace.open(trace)
    cyc = t.cycles
    samples = t.samples
    ids = np.asarray(samples.column("sample").to_numpy(), dtype=np.int64)
    tokens = np.asarray([len(s) for s in samples.column("output_ids").to_pylist()], dtype=np.float64)
    pos = {int(s): i for i, s in enumerate(ids)}
    sample = np.asarray([pos[int(s)] for s in cyc.column("sample").to_numpy()], dtype=np.int64)
    secs = np.asarray(cyc.column("cycle_s").to_numpy(), dtype=np.float64)
    tau = np.asarray(cyc.column("tau").to_numpy(), dtype=np.float64)
    decode = np.bincount(sample, weights=secs, minlength=len(ids))
    return {
        "tokens_per_s": float(tokens.sum() / decode.sum()) if decode.sum() > 0 else None,
        "tpot_s": float(np.mean(decode / tokens)) if len(tokens) else None,
        "tau_mean": float(tau.mean()) if len(tau) else None,
        "cycles": int(len(tau)), "tokens": int(tokens.sum()), "samples": int(len(ids)),
        **dict(zip(("ci_low", "ci_high"), _bootstrap(tokens, decode, bootstrap, seed))),
    }
