"""The simulator at scale: costs linear in the work, the single-stream direct loop equal
to the SimPy engine for every policy family, cheap loading, sweeps sharing one load.
SYNTHETIC traces."""
import time

import numpy as np
import pytest

from specreplay.sim.replay import Replayer
from specreplay.traces.synthetic import leading_zeros, make_trace


@pytest.fixture(scope="module")
def long_and_short(tmp_path_factory):
    """One 32k-token sample and sixteen 2k-token samples: every cycle accepts 3 of 7
    drafted tokens, so both replay the same 8,192 cycles, at very different contexts."""
    root = tmp_path_factory.mktemp("scale")
    kw = dict(block_sizes=(8,), ranks=leading_zeros(3), live_policy="fixed(b=8)")
    return (make_trace(root / "long", output_lengths=[32768], **kw),
            make_trace(root / "short", output_lengths=[2048] * 16, **kw))


def test_long_contexts_cost_no_more_per_cycle_than_short_ones(long_and_short):
    long, short = long_and_short
    spent = {}
    for name, trace in (("long", long), ("short", short)):
        r = Replayer(trace, bootstrap=0, states=False)
        t0 = time.process_time()
        pred = r.predict("ewma(candidates=8)")  # through the engine: a cost query per cycle
        spent[name] = time.process_time() - t0
        assert pred.cycles == 8192, name
    # generous: a rebuild of the cost table per new context length took minutes here
    assert spent["long"] < 4 * spent["short"] + 1.0, spent


# -- the single-stream direct loop against the SimPy engine, every policy family

from specreplay.sim.engine import Engine, HotPolicy  # noqa: E402
from specreplay.policies import parse_policy  # noqa: E402
from specreplay.traces.synthetic import random_ranks  # noqa: E402

RECYCLE = "recycle(mode=sparse, max=-1, min_margin=-1.0)"
REFINE = "refine(steps=2, only_below=0.5)"
FAMILIES = {
    "fixed": "fixed(b=8)",
    "ar": "ar",
    "ewma": "ewma(candidates=4|8|12, warmup=2, probe=3, streak=1, cooldown=1)",
    "ewma-adl": "ewma(candidates=4|8|12, mode=adl)",
    "breakeven": "breakeven(candidates=4|8|12, probe=3)",
    "gate": "fixed(b=12)+gate(min_prob=0.5)",
    "tree": "fixed(b=8)+tree(topk=3, depth=3)",
    "tree-paths": "fixed(b=8)+tree(paths=0.0.0|1|0.1)",
    "candidates-batch": "fixed(b=8)+candidates(mode=branch_beam, depth=3, topk=2, max=4)",
    "candidates-tree": "fixed(b=8)+candidates(mode=uncertainty_sparse_rank, verify=tree)",
    "candidates-sample": "fixed(b=8)+candidates(mode=sample, max=3)",
    "candidates-adaptive": "fixed(b=8)+candidates(mode=fixed_prefix_rank, prefix=2, adaptive=true)",
    "recycle": f"fixed(b=8)+{RECYCLE}",
    "refine": f"fixed(b=8)+{REFINE}",
    "composed": f"ewma(candidates=4|8|12, probe=3)+{RECYCLE}+gate(min_prob=0.3)",
}


@pytest.fixture(scope="module")
def families_trace(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("families") / "t", output_lengths=(160, 121, 97),
                      block_sizes=(4, 8, 12), ranks=random_ranks(0.75, 0.15, seed=5),
                      top1_prob=lambda s, p, i: 0.3 + 0.6 * ((p * 7 + i * 3) % 10) / 10,
                      probes={RECYCLE: None, REFINE: None},
                      live_policy="ewma(candidates=4|8|12, warmup=2, probe=3, streak=1, cooldown=1)")


@pytest.mark.parametrize("timing", ["model", "recorded", "per-mode"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_direct_loop_equals_the_simpy_engine_cycle_by_cycle(families_trace, family, timing):
    s = Replayer(families_trace, timing="recorded" if timing == "recorded" else "model",
                 bootstrap=0).setting
    if timing == "per-mode":
        # host seconds that differ by host mode (the trace's do not), and by any further
        # argument of the query (a verify size): the hot path's cached figures must be
        # asked exactly what the reference asks
        per_mode = {"ar": 0.75e-4, "chain": 1.25e-4, "gated": 1.75e-4, "tree": 2.5e-4, "batch": 5e-4,
                    "probed": 2.25e-4}
        s.timer.cost.overhead = lambda mode, *rest, **kw: per_mode[mode] * (
            1 + 0.01 * (sum(rest) + sum(kw.values())))
    spec = FAMILIES[family]
    s.acc.check_policy(parse_policy(spec).max_rank(), parse_policy(spec).probes())
    # the reference: SimPy processes running the plain Composite's methods, a fresh
    # context, view and outcome per cycle, every job through the GPU
    ref = Engine(s.data, s.acc, s.timer, spec, direct=False, hot=False).run()
    assert len(ref.cycles) > 60
    # the hot path, driven by the direct loop and by SimPy processes
    for direct in (True, False):
        fast = Engine(s.data, s.acc, s.timer, spec, direct=direct).run()
        # block-size-only policies under a cost model take the chain loop (columns)
        chain_loop = family in CHAIN_FAMILIES and timing != "recorded"
        assert (fast.columns is not None) == chain_loop, direct
        assert_same_cycles(fast, ref, direct)  # every field of every cycle, seconds included
        assert fast.states == ref.states, direct
        assert fast.requests == ref.requests and fast.steps == ref.steps, direct


# the families whose policies only choose block sizes (``Engine.run_chains``)
CHAIN_FAMILIES = ("fixed", "ar", "ewma", "ewma-adl", "breakeven")


def assert_same_cycles(got, ref, what=None) -> None:
    """Every column of every cycle equal, with its dtype, whichever way each run kept
    them (tuples or columns)."""
    a, b = got.table(), ref.table()
    assert list(a) == list(b), what
    for col, want in b.items():
        assert a[col].dtype == want.dtype and np.array_equal(a[col], want), (what, col)


@pytest.mark.parametrize("load", [{"concurrency": 1}, {"concurrency": 3}, {"rate": 40.0}])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hot_serving_equals_the_reference_engine(families_trace, family, load):
    s = Replayer(families_trace, bootstrap=0).setting
    spec = FAMILIES[family]
    ref = Engine(s.data, s.acc, s.timer, spec, hot=False, seed=3, **load).run()
    engine = Engine(s.data, s.acc, s.timer, spec, seed=3, **load)
    fast = engine.run()
    assert len(ref.cycles) > 60
    # a closed loop sharing the GPU: clients resumed by the GPU, not SimPy processes
    assert engine.gpu.driven == (load == {"concurrency": 3})
    # block-size policies take the chain loop (SimPy timeouts with one request in
    # flight), which keeps its cycles as columns
    assert (fast.columns is not None) == (family in CHAIN_FAMILIES)
    assert_same_cycles(fast, ref)
    assert fast.states == ref.states
    assert fast.requests == ref.requests
    assert (fast.steps, fast.batch_sizes) == (ref.steps, ref.batch_sizes)


def _seen(x):
    """A context, outcome or view as plain values: every field as a policy reads it."""
    if x is None:
        return None
    if hasattr(x, "ids"):  # a DraftView
        return (x.sample, x.start, x.block_size, x.ids.tolist(), x.logprobs.tolist())
    return tuple(_seen(v) if k in ("prev_view", "prev_outcome") else v
                 for k, v in ((f, getattr(x, f)) for f in type(x).__dataclass_fields__))


@pytest.mark.parametrize("load", [{}, {"concurrency": 1}, {"concurrency": 3}])
@pytest.mark.parametrize("family", ["ewma", "ewma-adl"])
def test_the_chain_loop_shows_policies_what_the_reference_shows(families_trace, family,
                                                                load, monkeypatch):
    # the chain loop derives context and outcome fields on read: every field of every
    # context a block scheduler is shown, and of every outcome it observes, previous
    # view and outcome included, must be the reference's
    from specreplay.policies.ewma import Ewma
    seen = []
    choose, observe = Ewma.choose_block, Ewma.observe
    monkeypatch.setattr(Ewma, "choose_block", lambda self, ctx: (
        seen.append(("ctx", _seen(ctx))), choose(self, ctx))[1])
    monkeypatch.setattr(Ewma, "observe", lambda self, out: (
        seen.append(("out", _seen(out))), observe(self, out))[1])
    s = Replayer(families_trace, bootstrap=0).setting
    spec = FAMILIES[family]
    Engine(s.data, s.acc, s.timer, spec, direct=False, hot=False, **load).run()
    want, seen[:] = list(seen), []
    fast = Engine(s.data, s.acc, s.timer, spec, **load).run()
    assert fast.columns is not None
    assert len(seen) == len(want) > 120 and seen == want


def test_hot_policy_runs_the_composites_components():
    hot = HotPolicy(parse_policy(f"ewma(candidates=4|8)+{RECYCLE}+gate"))
    # the observers kept are the components' own methods, in component order
    assert [f.__self__.name for f in hot._observers] == ["ewma", "recycle", "gate"]


def test_path_trie_accepts_what_the_path_by_path_rule_accepts():
    from specreplay.sim.acceptance import PathTrie
    rng = np.random.default_rng(0)
    for _ in range(300):
        depth = int(rng.integers(1, 8))
        paths = tuple(dict.fromkeys(
            tuple(int(x) for x in rng.integers(0, 3, size=rng.integers(0, depth + 1)))
            for _ in range(rng.integers(5, 30))))
        truth = [int(x) for x in rng.choice([-1, 0, 0, 0, 1, 2], size=depth)]
        # the rule (sim.acceptance docstring): the longest prefix equal to the true
        # ranks, maximised over the paths; ties go to the first path
        lengths = [next((i for i, (a, b) in enumerate(zip(p, truth)) if a != b),
                        min(len(p), len(truth))) for p in paths]
        want = (max(lengths), lengths.index(max(lengths)))
        assert PathTrie(paths).accepted(truth, 3, depth + 1) == want, (paths, truth)


def test_oracle_agreement_from_the_loaded_arrays_matches_the_checker(families_trace):
    from specreplay.sim.acceptance import Acceptance
    from specreplay.sim.replay import oracle_agreement
    from specreplay.sim.tracedata import load_trace
    data = load_trace(families_trace)
    acc = Acceptance(data)
    clean = oracle_agreement(data.trace, acc)
    assert clean == oracle_agreement(data.trace) and clean.compared > 50
    # one live cycle's oracle row proposing another top-1 token: one fewer agreeing
    cyc = data.trace.cycles
    b, start = int(cyc["block_size"][0].as_py()), int(cyc["start"][0].as_py())
    g = acc.group(b)
    g.ids = g.ids.copy()  # the loaded arrays are read-only views of the file's data
    g.ids[acc.row(g, int(cyc["sample"][0].as_py()), start), 0, 0] += 1
    moved = oracle_agreement(data.trace, acc)
    assert (moved.agreeing, moved.compared) == (clean.agreeing - 1, clean.compared)


# -- cheap loading: the proposal's columns read only when a policy reads them

def test_a_loaded_replayer_holds_only_the_ranks(families_trace):
    r = Replayer(families_trace, bootstrap=0)
    acc = r.setting.acc
    positions = r.setting.data.n_positions
    assert not acc.loaded("draft_ids") and not acc.loaded("draft_logprobs")
    # per group: a rank byte per row and offset, a 4-byte row index per position, and
    # per row a 4-byte position and a 2-byte chain length; nothing else
    bound = sum(len(g.position) * (g.block_size - 1 + 6) + 4 * positions
                for g in acc.groups.values())
    held = sum(g.nbytes() for g in acc.groups.values())
    assert held <= bound, (held, bound)
    # under a fifth of what the ids and log-probabilities (6 bytes per row, offset, rank) hold
    proposal = sum(len(g.position) * (g.block_size - 1) * g.k * 6 for g in acc.groups.values())
    assert held < proposal / 5, (held, proposal)
    r.predict("ewma(candidates=4|8|12)")  # a scheduler of chains reads no proposal
    assert not acc.loaded("draft_ids") and not acc.loaded("draft_logprobs")


@pytest.mark.parametrize("family", ["gate", "candidates-batch", "recycle", "ewma-adl", "refine"])
def test_policies_reading_the_proposal_replay_the_same_from_reloaded_columns(families_trace, family):
    from specreplay.sim.acceptance import Acceptance
    from specreplay.sim.tracedata import load_trace
    spec = FAMILIES[family]
    r = Replayer(families_trace, bootstrap=0)
    lazy = r.predict(spec)
    assert r.setting.acc.loaded("draft_logprobs") or r.setting.acc.loaded("draft_ids")
    # against every column decoded at once by the reader, never dropped
    full = Acceptance(load_trace(families_trace))
    whole = full.data.trace.oracle_arrays(np.float16, keep_table=False)
    for (b, probe, d), g in full.groups.items():
        sel = whole[(b, probe)].prev_offset == d
        g.ids, g.logprobs = whole[(b, probe)].draft_ids[sel], whole[(b, probe)].draft_logprobs[sel]
    s = r.setting
    ref = Engine(s.data, full, s.timer, spec, direct=False, hot=False).run()
    got = Engine(s.data, s.acc, s.timer, spec).run()
    assert_same_cycles(got, ref)
    assert got.states == ref.states
    assert lazy.cycles == len(ref.cycles)


def test_reloaded_columns_are_the_trace_s_columns(families_trace):
    from specreplay.sim.tracedata import load_trace
    from specreplay.sim.acceptance import Acceptance
    data = load_trace(families_trace)
    acc = Acceptance(data)
    first = {k: g.ids.copy() for k, g in acc.groups.items()}
    acc.release("draft_ids")
    assert all(g._ids is None for g in acc.groups.values())
    whole = data.trace.oracle_arrays(np.float16, keep_table=False)
    for (b, probe, d), g in acc.groups.items():
        arr = whole[(b, probe)]
        sel = arr.prev_offset == d
        assert np.array_equal(g.ids, first[(b, probe, d)])  # read again on use
        assert np.array_equal(g.ids, arr.draft_ids[sel])
        assert np.array_equal(g.logprobs.view(np.uint16), arr.draft_logprobs[sel].view(np.uint16))
        assert np.array_equal(g.ranks, arr.true_rank[sel])


# -- the vectorised fixed-block path: both walks of the cycle starts, against the engine

@pytest.fixture(scope="module")
def many_samples(tmp_path_factory):
    """Enough samples for the frontier walk, of lengths from 1 token up."""
    lengths = (2, 3, 4, 17, 64, 5, 130, 41, 9, 77, 2, 200)
    return make_trace(tmp_path_factory.mktemp("many") / "t", output_lengths=lengths,
                      block_sizes=(4, 8), ranks=random_ranks(0.7, 0.2, seed=11),
                      live_policy="fixed(b=8)")


@pytest.mark.parametrize("spec", ["ar", "fixed(b=4)", "fixed(b=8)"])
def test_the_fixed_block_path_equals_the_reference_engine(many_samples, spec):
    from specreplay.sim import fastpath
    from specreplay.sim.replay import _columns
    r = Replayer(many_samples, bootstrap=0)
    s = r.setting
    assert s.data.n_samples >= fastpath._FRONTIER_SAMPLES
    ref = _columns(Engine(s.data, s.acc, s.timer, spec, direct=False, hot=False).run().cycles)
    pred = r.predict(spec)
    for col, want in ref.items():
        assert np.array_equal(pred.per_cycle[col], want), col


def test_the_frontier_walk_equals_the_list_walk(many_samples, monkeypatch):
    from specreplay.sim import fastpath
    from specreplay.sim.acceptance import NotReplayable
    from specreplay.sim.fastpath import frontier_starts, list_starts, replay_fixed
    s = Replayer(many_samples, bootstrap=0).setting
    base, g = s.data.base, s.acc.group(4)
    row_of = g.row_of.copy()
    row_of[base[6] + 9] = -1  # rows missing: tau 1 there, flagged
    row_of[base[11] + 1] = -1
    for args in ((None, None), (g.row_of, g.chain_acc), (row_of, g.chain_acc)):
        a, b = frontier_starts(base, *args), list_starts(base, *args)
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
    assert frontier_starts(base, row_of, g.chain_acc)[2].any()
    g.row_of = row_of
    g.__dict__.pop("_row_list", None)
    for frontier_from in (1, 1000):  # both walks refuse a start without a row
        monkeypatch.setattr(fastpath, "_FRONTIER_SAMPLES", frontier_from)
        with pytest.raises(NotReplayable, match="row missing"):
            replay_fixed(s.data, s.acc, s.timer, 4)
