"""The shipped sample trace (traces/samples/): a real recording with the fixture pair. It
passes `trace check`, and replaying the policy it was recorded with gives back what was
recorded: every cycle exactly where the oracle agrees with the live draft everywhere (a
float32 recording), and the mean tau within 1 % otherwise."""
from pathlib import Path

import numpy as np
import pytest

from specreplay.sim.replay import replay
from specreplay.traces.check import check_trace

SAMPLES = Path(__file__).resolve().parent.parent / "traces" / "samples"
TRACES = sorted(p for p in SAMPLES.glob("*") if (p / "run.json").exists()) if SAMPLES.exists() else []


@pytest.mark.skipif(not TRACES, reason="no sample trace is shipped yet (traces/samples/)")
@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name)
def test_sample_trace_checks_and_replays_its_live_policy(path):
    report = check_trace(path)
    assert report["ok"], report["problems"]
    assert not report["synthetic"] and report["samples"] >= 10
    assert report["bytes"] < 20 * 1_000_000
    live = report["live_policy"]
    (pred,) = replay(path, [live], timing="recorded", bootstrap=10)
    assert pred.replayable, pred.reason
    from specreplay.traces.reader import Trace
    cycles = Trace.open(path).cycles
    if report.get("oracle_live_agreement") == 1.0:
        for col in ("sample", "start", "block_size", "accepted"):
            assert np.array_equal(np.asarray(pred.per_cycle[col]), cycles.column(col).to_numpy()), col
    else:
        measured = float(np.mean(cycles.column("tau").to_numpy()))
        assert abs(pred.tau_mean - measured) <= 0.01 * measured
