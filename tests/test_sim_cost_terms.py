"""The cost model's terms are the live cycle's terms: host time per verify mode, batch
verification as the backend runs it (packed tree, or rows plus the KV copy), and a
calibration checked on samples it was not fitted on. SYNTHETIC traces and profiles."""
import numpy as np
import pyarrow as pa
import pytest

from specreplay.sim.cost import CostModel, cycle_overheads
from specreplay.sim.replay import replay
from specreplay.traces.reader import Profile, Trace
from specreplay.traces.synthetic import SyntheticCost, leading_zeros, make_trace

COST = SyntheticCost()
OVER = {"chain": 1e-3, "tree": 3e-3, "batch": 5e-3}


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("terms") / "t", output_lengths=(60, 50, 40, 30),
                      block_sizes=(4, 8), ranks=leading_zeros(3), live_policy="fixed(b=8)",
                      cost=COST)


def with_modes(table: pa.Table, overhead: dict[str, float] | None) -> pa.Table:
    """The profile table with a ``mode`` column (contract C1) and, when given, one
    overhead row per verify mode instead of its own overhead rows."""
    keep = [i for i, k in enumerate(table["kind"].to_pylist()) if k != "overhead"]
    base = table.take(keep)
    cols = {c: base[c].to_pylist() for c in ("kind", "q", "context_len", "batch", "median_s")}
    cols["mode"] = [""] * base.num_rows
    for mode, secs in (overhead or {}).items():
        for c, v in zip(("kind", "q", "context_len", "batch", "median_s", "mode"),
                        ("overhead", 0, 0, 1, secs, mode)):
            cols[c].append(v)
    return pa.table(cols)


def with_host_rows(table: pa.Table, rows: list[tuple[str, int, float]]) -> pa.Table:
    """The profile table with its overhead rows replaced by host rows (mode, verify
    tokens, seconds), as the profiler measures them over the loop's own cycles."""
    keep = [i for i, k in enumerate(table["kind"].to_pylist()) if k != "overhead"]
    base = table.take(keep)
    cols = {c: base[c].to_pylist() for c in ("kind", "q", "context_len", "batch", "median_s")}
    cols["mode"] = [""] * base.num_rows
    for mode, q, secs in rows:
        for c, v in zip(("kind", "q", "context_len", "batch", "median_s", "mode"),
                        ("overhead", q, 16, 1, secs, mode)):
            cols[c].append(v)
    return pa.table(cols)


HOST = [("ar", 1, 0.5e-3), ("chain", 4, 1e-3), ("chain", 8, 2e-3), ("gated", 8, 3e-3),
        ("tree", 7, 4e-3)]


def test_host_time_is_per_host_mode_and_linear_in_verify_tokens(trace):
    m = CostModel(with_host_rows(Profile.open(trace).table, HOST))
    assert m.overhead("chain", 6) == pytest.approx(1.5e-3, rel=1e-12)
    assert m.overhead("chain", 2) == 1e-3                               # the smallest size's
    assert m.overhead("chain", 12) == pytest.approx(3e-3, rel=1e-12)    # the last segment's line
    assert m.overhead("ar", 1) == 0.5e-3 and m.overhead("gated", 5) == 3e-3
    assert m.overhead("tree", 30) == 4e-3
    # a mode without rows takes the chain's curve, and says so
    assert m.overhead("batch", 6) == pytest.approx(1.5e-3, rel=1e-12)
    assert "batch: profile chain overhead rows (no batch rows)" in m.overhead_source
    assert "chain: profile chain overhead rows over verify tokens 4, 8" in m.overhead_source


def test_replay_charges_ar_gated_and_chain_cycles_their_own_host_rows(trace):
    prof = profile_with(trace, with_host_rows(Profile.open(trace).table, HOST))
    want = {"ar": 0.5e-3, "fixed(b=8)": 2e-3, "fixed(b=4)": 1e-3,
            "fixed(b=8)+gate(min_prob=0.2)": 3e-3, "ewma(candidates=4|8)": None}
    for spec, secs in want.items():
        (p,) = replay(trace, [spec], profile=prof)
        over = np.asarray(p.per_cycle["overhead_s"])
        if secs is None:  # a scheduler's cycles: the chain's host time at their block size
            b = np.asarray(p.per_cycle["block_size"])
            secs = np.where(b == 8, 2e-3, 1e-3)
        assert np.allclose(over, secs, rtol=1e-12, atol=0), spec


def profile_with(trace, table: pa.Table, batch_verify: str | None = None) -> Profile:
    p = Profile.open(trace)
    meta = dict(p.meta)
    if batch_verify:
        meta["setup"] = {**(meta.get("setup") or {}), "batch_verify": batch_verify}
    return Profile(p.dir, meta, table)


def test_overhead_per_verify_mode_from_profile_mode_rows(trace):
    m = CostModel(with_modes(Profile.open(trace).table, OVER))
    assert {mode: m.overhead(mode) for mode in OVER} == OVER
    assert "tree: profile tree overhead rows" in m.overhead_source


def test_overhead_fallbacks_chain_rows_then_the_traces_cycles_of_the_mode(trace):
    table = Profile.open(trace).table
    # no mode column: the overhead rows are chain rows and stand in for every mode
    m = CostModel(table, cycle_overheads={"tree": 7e-3, "all": 2e-3})
    assert m.overhead("tree") == m.overhead("chain") == COST.overhead_s
    assert "no tree rows" in m.overhead_source
    # no overhead rows at all: the trace's cycles of that mode, then all its cycles
    m = CostModel(with_modes(table, None), cycle_overheads={"tree": 7e-3, "all": 2e-3})
    assert m.overhead("tree") == 7e-3 and m.overhead("batch") == 2e-3
    assert "live tree cycles" in m.overhead_source
    # an old profile on the trace's own setup: the live cycles come first
    m = CostModel(table, cycle_overheads={"chain": 4e-3, "all": 2e-3}, prefer_cycle_overheads=True)
    assert m.overhead("chain") == 4e-3


def test_cycle_overheads_are_medians_per_verify_mode():
    cycles = pa.table({"overhead_s": [1.0, 3.0, 2.0, 10.0], "verify_mode": ["chain", "chain", "chain", "tree"]})
    assert cycle_overheads(cycles) == {"chain": 2.0, "tree": 10.0, "all": 2.5}


def test_replay_charges_each_cycle_its_verify_modes_host_time(trace):
    prof = profile_with(trace, with_modes(Profile.open(trace).table, OVER))
    specs = ["fixed(b=8)", "fixed(b=8)+tree(topk=2, depth=2)",
             "fixed(b=8)+candidates(mode=fixed_prefix_rank, prefix=2, verify=batch)"]
    for spec, mode in zip(specs, ("chain", "tree", "batch")):
        (p,) = replay(trace, [spec], profile=prof)
        over = np.asarray(p.per_cycle["overhead_s"])
        assert np.all(over == OVER[mode]), spec


def test_packed_batch_verify_costs_a_tree_of_its_verify_tokens(trace):
    table = Profile.open(trace).table
    packed = CostModel(table, setup={"setup": {"batch_verify": "packed"}})
    secs, _ = packed.batch_verify_s(5, 10, 100, 2)
    assert secs == pytest.approx(packed.seconds("tree_verify", 10, 100, 1)[0], rel=1e-12)
    rows = CostModel(table, setup={"setup": {"batch_verify": "rows"}})
    assert rows.batch_verify_s(5, 10, 100, 2)[0] == pytest.approx(COST.target(5, 100, 2), rel=1e-9)
    # and the engine uses it: a batch plan's verify seconds under a packed profile
    prof = profile_with(trace, table, "packed")
    (p,) = replay(trace, ["fixed(b=8)+candidates(mode=fixed_prefix_rank, prefix=2, verify=batch)"], profile=prof,
                  other_setup=True)
    ctx = 16 + np.asarray(p.per_cycle["start"])
    vt = np.asarray(p.per_cycle["verify_tokens"])
    want = [packed.seconds("tree_verify", int(v), int(L), 1)[0] for v, L in zip(vt, ctx)]
    assert np.allclose(p.per_cycle["target_s"], want, rtol=1e-12)


def test_rows_batch_verify_adds_the_kv_copy_fitted_to_batch_cycles(trace):
    m = CostModel(Profile.open(trace).table, setup={"setup": {"batch_verify": "rows"}})
    copy = 2e-9  # seconds per cached token per row
    n = np.array([2, 3, 4, 2, 4])
    q = np.array([4, 4, 3, 5, 2])
    L = np.array([50, 100, 200, 300, 400])
    cycles = pa.table({
        "verify_mode": ["batch"] * 5 + ["chain"], "verify_batch": n.tolist() + [1],
        "verify_tokens": (q * n).tolist() + [8], "context_len": L.tolist() + [60],
        "target_s": [COST.target(int(a), int(b), int(c)) + copy * b * c for a, b, c in zip(q, L, n)]
                    + [COST.target(8, 60)]})
    m.fit_kv_copy(cycles)
    assert m.kv_copy_per_token_row == pytest.approx(copy, rel=1e-6)
    secs, _ = m.batch_verify_s(4, 8, 250, 2)
    assert secs == pytest.approx(COST.target(4, 250, 2) + copy * 250 * 2, rel=1e-6)
    # without batch cycles the copy is left out, and said so
    m2 = CostModel(Profile.open(trace).table)
    m2.fit_kv_copy(cycles.filter(pa.array([False] * 5 + [True])))
    assert m2.kv_copy_s(250, 2) == 0.0 and any("KV copy" in n for n in m2.notes)


def test_calibration_is_fitted_on_half_the_samples_and_checked_on_the_other(trace):
    t = Trace.open(trace)
    cyc = t.cycles
    sample = np.asarray(cyc["sample"])
    # the odd samples ran their verify passes twice as slow as the even ones
    target_s = np.asarray(cyc["target_s"]) * np.where(sample % 2 == 1, 2.0, 1.0)
    cyc = cyc.set_column(cyc.column_names.index("target_s"), "target_s", pa.array(target_s))
    m = CostModel(Profile.open(trace).table)
    factors = m.calibrate(cyc)
    assert factors["target"] == pytest.approx(1.0, rel=1e-9)  # fitted on samples 0 and 2
    check = m.calibration_check
    assert check["fit_samples"] == 2 and check["check_samples"] == 2
    assert check["verify_error"] == pytest.approx(-0.5, rel=1e-9)
    assert check["draft_error"] == pytest.approx(0.0, abs=1e-9)
    assert any(n.startswith("calibration check: fitted on 2 samples") and "verify -50.0 %" in n
               for n in m.notes)


def test_calibration_check_charges_each_cycle_its_own_host_time(trace):
    """The held-out check's cycle seconds take the host time of each cycle's own mode and
    verify size (here the chain at 8 tokens, 2 ms), not one figure for every cycle."""
    cyc = Trace.open(trace).cycles
    cyc = cyc.set_column(cyc.column_names.index("overhead_s"), "overhead_s",
                         pa.array(np.full(cyc.num_rows, 2e-3)))
    m = CostModel(with_host_rows(Profile.open(trace).table, HOST))
    m.calibrate(cyc)
    check = m.calibration_check
    assert check["draft_error"] == pytest.approx(0.0, abs=1e-9)
    assert check["verify_error"] == pytest.approx(0.0, abs=1e-9)
    assert check["cycle_error"] == pytest.approx(0.0, abs=1e-9)


def test_calibrated_replay_prints_its_check(trace):
    (p,) = replay(trace, ["fixed(b=8)"], timing="calibrated")
    assert "calibration check: fitted on 2 samples, on the other 2" in p.cost


@pytest.mark.parametrize("top1, extra", [(0.9, False), (0.3, True)])
def test_refine_is_charged_a_pass_only_where_the_live_loop_runs_one(tmp_path, top1, extra):
    """The live loop skips refinement when every offset's top-1 probability is at least
    only_below: a confident draft costs what the plain policy costs; an unsure one costs
    one draft pass more per cycle (the draft step of the synthetic profile)."""
    key = "refine(steps=2, only_below=0.5)"
    t = make_trace(tmp_path / "t", output_lengths=(60, 50), block_sizes=(8,), ranks=leading_zeros(3),
                   top1_prob=top1, probes={key: None}, live_policy="fixed(b=8)", cost=COST)
    plain, refine = replay(t, ["fixed(b=8)", "fixed(b=8)+refine(steps=2)"])
    assert refine.replayable, refine.reason
    assert refine.tau_mean == pytest.approx(plain.tau_mean)
    if extra:
        assert refine.tpot_s > plain.tpot_s * 1.01
    else:
        assert refine.tpot_s == pytest.approx(plain.tpot_s, rel=1e-9)
