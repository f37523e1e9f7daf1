"""The cost model: interpolation inside the profile grid, the fitted model outside it
(flagged), tree and draft costs, provenance, and profiles from another setup."""
import json

import numpy as np
import pytest

from specreplay.sim.cost import FITTED, CostModel
from specreplay.sim.replay import replay
from specreplay.traces.io import TraceError
from specreplay.traces.reader import Profile
from specreplay.traces.synthetic import SyntheticCost, leading_zeros, make_trace
from specreplay.traces.writer import write_profile

COST = SyntheticCost()


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("c") / "t", output_lengths=(50, 40),
                      block_sizes=(4, 8, 16), ranks=leading_zeros(5), live_policy="fixed(b=8)",
                      cost=COST)


def model_of(path) -> CostModel:
    p = Profile.open(path)
    return CostModel(p.table, setup=p.meta)


def test_interpolation_inside_the_grid_reproduces_a_multilinear_cost(trace):
    # the synthetic formula is linear in q and in L separately, and in batch: linear
    # interpolation between grid points (q 1..256, L 0..512, batch 1..32 for this
    # short trace) must give it back exactly, off-grid points too
    m = model_of(trace)
    for q, L, B in ((12, 300, 1), (3, 500, 2), (100, 100, 3), (16, 512, 8)):
        t, src = m.seconds("target", q, L, B)
        assert src != FITTED
        assert t == pytest.approx(COST.target(q, L, B), rel=1e-12)
        tv, _ = m.seconds("tree_verify", q, L, B)
        assert tv == pytest.approx(COST.tree_verify(q, L, B), rel=1e-9)
    d, src = m.seconds("draft", 8, 300, 1)
    assert d == pytest.approx(COST.draft(8, 300), rel=1e-12) and src != FITTED
    assert m.overhead_s == COST.overhead_s


def test_outside_the_grid_the_fitted_model_answers_and_is_flagged(trace):
    m = model_of(trace)
    t, src = m.seconds("target", 600, 100, 1)  # q = 600 > 256, the largest measured
    assert src == FITTED
    # fixed + per token + per token x context represents the synthetic target exactly
    assert t == pytest.approx(COST.target(600, 100, 1), rel=1e-6)
    assert m.explain(FITTED, "target").startswith("fitted target model over profile rows")


def test_explain_names_the_profile_rows_of_a_grid_cell(trace):
    m = model_of(trace)
    _, src = m.seconds("target", 12, 300, 1)
    text = m.explain(src, "target")
    assert "q 8..16" in text and "L 0..512" in text and "batch 1" in text
    p = Profile.open(trace)
    rows = [int(x) for part in text.split("profile rows ")[1].split(", ")
            for x in (part.split("-") if "-" not in part else
                      range(int(part.split("-")[0]), int(part.split("-")[1]) + 1))]
    kinds = p.table["kind"].to_pylist()
    qs, ls = p.table["q"].to_pylist(), p.table["context_len"].to_pylist()
    assert {(kinds[r], qs[r], ls[r]) for r in rows} == {
        ("target", q, L) for q in (8, 16) for L in (0, 512)}


def small_profile(out, trace, setup=None):
    """A profile measured only at q in {1, 8}, L in {0, 512}, batch 1."""
    rows = [{"kind": k, "q": q, "context_len": L, "batch": 1, "median_s": t, "p10_s": t,
             "p90_s": t, "n": 5}
            for q in (1, 8) for L in (0, 512)
            for k, t in (("target", COST.target(q, L)), ("draft", COST.draft(q, L)))]
    meta = json.loads((trace / "run.json").read_text())
    if setup:
        meta["setup"] = {**meta["setup"], **setup}
    write_profile(out, rows, meta)
    return out


def test_a_replay_that_leaves_the_grid_says_extrapolated_cost(trace, tmp_path):
    prof = small_profile(tmp_path / "p", trace)
    inside, outside = replay(trace, ["fixed(b=8)", "fixed(b=16)"], profile=prof, bootstrap=0)
    assert inside.fidelity == "exact"       # q = 8, context 16 + p < 512: inside
    assert outside.fidelity == "extrapolated cost"  # q = 16 > 8
    assert any(r.startswith("target") and "fitted" in r for r in outside.profile_rows)
    assert all("fitted" not in r for r in inside.profile_rows)


def test_profile_from_another_setup_needs_the_flag_and_is_labelled(trace, tmp_path):
    prof = small_profile(tmp_path / "p", trace, setup={"gpu": "H200", "backend": "graphs"})
    with pytest.raises(TraceError, match="--profile-from-other-setup"):
        replay(trace, ["fixed(b=8)"], profile=prof)
    (pred,) = replay(trace, ["fixed(b=8)"], profile=prof, other_setup=True, bootstrap=0)
    assert "other-setup profile:" in pred.fidelity and "gpu=H200" in pred.fidelity
    assert "(profile from other setup: " in pred.cost and "backend=graphs" in pred.cost


def test_without_a_profile_the_model_is_fitted_to_the_live_cycles(trace, tmp_path):
    import shutil
    bare = tmp_path / "bare"
    shutil.copytree(trace, bare)
    (bare / "profile.parquet").unlink()
    (bare / "profile.json").unlink()
    (pred,) = replay(bare, ["fixed(b=8)"], bootstrap=0)
    assert pred.cost.startswith("fitted to the trace's live cycles")
    # every live cycle ran at b = 8, so its own cycle is a measured point: times match
    live = replay(trace, ["fixed(b=8)"], bootstrap=0)[0]
    assert pred.tokens_per_s == pytest.approx(live.tokens_per_s, rel=1e-9)


def test_tree_ratio_and_batch_costs_follow_the_profile(trace):
    m = model_of(trace)
    assert m.tree_ratio(16) == pytest.approx(COST.tree_factor, rel=1e-9)
    one, _ = m.seconds("target", 8, 512, 1)
    eight, _ = m.seconds("target", 8, 512, 8)
    assert eight == pytest.approx(COST.target(8, 512, 8)) and eight < 8 * one
    arr, src = m.seconds_array("target", 8, np.array([0, 512, 700]), 1)
    assert arr.tolist() == pytest.approx([COST.target(8, L) for L in (0, 512, 700)])
