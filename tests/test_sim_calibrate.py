"""Calibrated timing: the profile scaled to the trace's plain live cycles. On a SYNTHETIC
trace whose live seconds are the profile's formula times known factors, calibration must
find those factors and then predict the live policy's recorded tokens/s exactly."""
import json

import pytest

from specreplay.sim.replay import measured, replay
from specreplay.traces.io import TraceError
from specreplay.traces.reader import Trace
from specreplay.traces.synthetic import SyntheticCost, make_trace
from specreplay.traces.writer import write_profile

PROFILE = SyntheticCost()
DRAFT_X, VERIFY_X = 2.0, 1.5
# every coefficient scaled, so live = factor * profile at every (q, L)
LIVE = SyntheticCost(
    target_fixed=PROFILE.target_fixed * VERIFY_X, target_per_token=PROFILE.target_per_token * VERIFY_X,
    target_per_token_ctx=PROFILE.target_per_token_ctx * VERIFY_X, tree_factor=PROFILE.tree_factor,
    draft_fixed=PROFILE.draft_fixed * DRAFT_X, draft_per_token=PROFILE.draft_per_token * DRAFT_X,
    draft_per_ctx=PROFILE.draft_per_ctx * DRAFT_X, overhead_s=PROFILE.overhead_s)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = make_trace(tmp_path_factory.mktemp("cal") / "t", output_lengths=(60, 50, 40),
                      block_sizes=(4, 8, 16), live_policy="fixed(b=8)", cost=LIVE, profile=False)
    run = json.loads((path / "run.json").read_text())
    write_profile(path, PROFILE.profile_rows(16 + 60, (4, 8, 16)), run)
    return path


def test_calibration_finds_the_factors_and_reproduces_the_live_run(trace):
    (model,) = replay(trace, ["fixed(b=8)"], bootstrap=0)
    (cal,) = replay(trace, ["fixed(b=8)"], timing="calibrated", bootstrap=0)
    live = measured(Trace.open(trace))
    assert cal.tokens_per_s == pytest.approx(live["tokens_per_s"], rel=1e-9)
    assert model.tokens_per_s > live["tokens_per_s"] * 1.2  # the bare profile is too fast
    assert f"draft x{DRAFT_X:.3f}, verify x{VERIFY_X:.3f}" in cal.cost
    # acceptance does not depend on timing
    assert cal.tau_mean == model.tau_mean


def test_calibrated_scaling_carries_to_other_policies(trace):
    (model,), (cal,) = (replay(trace, ["fixed(b=16)"], timing=t, bootstrap=0) for t in ("model", "calibrated"))
    # every cycle's draft and verify seconds are scaled; the overhead is not
    d, t, o = (sum(model.per_cycle[k]) for k in ("draft_s", "target_s", "overhead_s"))
    d2, t2, o2 = (sum(cal.per_cycle[k]) for k in ("draft_s", "target_s", "overhead_s"))
    assert d2 == pytest.approx(DRAFT_X * d, rel=1e-9)
    assert t2 == pytest.approx(VERIFY_X * t, rel=1e-9)
    assert o2 == pytest.approx(o, rel=1e-12)


def test_calibration_refuses_a_profile_of_another_setup(trace, tmp_path):
    """Live cycles of one setup say nothing about another setup's loop: one sentence."""
    run = json.loads((trace / "run.json").read_text())
    other = dict(run, setup={**run.get("setup", {}), "gpu": "another GPU"})
    write_profile(tmp_path / "other", PROFILE.profile_rows(16 + 60, (4, 8, 16)), other)
    replay(trace, ["fixed(b=8)"], profile=tmp_path / "other", other_setup=True, bootstrap=0)
    with pytest.raises(TraceError, match="own setup"):
        replay(trace, ["fixed(b=8)"], profile=tmp_path / "other", other_setup=True,
               timing="calibrated", bootstrap=0)
