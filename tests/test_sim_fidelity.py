"""Fidelity labels (contract C5): a trace whose oracle does not reproduce its live draft
on every cycle, or whose output left plain AR decoding, makes its predictions
approximate, with the measured agreement and a tau error bound; the bound holds for the
recorded policy on the shipped bf16 trace."""
from pathlib import Path

import numpy as np
import pytest

from specreplay.sim.replay import oracle_agreement, replay, tau_error_bound
from specreplay.traces.check import oracle_live_agreement
from specreplay.traces.reader import Trace
from specreplay.traces.synthetic import leading_zeros, make_trace

SAMPLES = Path(__file__).resolve().parents[1] / "traces" / "samples"
BF16 = SAMPLES / "validation" / "humaneval-fixed16-bf16"
TWIN = SAMPLES / "twin" / "humaneval-fixed16"  # bf16 too: the Qwen3-8B cost twin, graph backend
FP32 = SAMPLES / "humaneval-fixed16"


@pytest.mark.parametrize("trace", [BF16, TWIN], ids=["fixture-bf16", "twin"])
def test_bf16_trace_is_approximate_and_its_bound_holds_for_the_recorded_policy(trace):
    t = Trace.open(trace)
    agree, compared = oracle_live_agreement(t)
    assert 0 < agree < compared  # the trace this test is about: not every cycle agrees
    (p,) = replay(trace, [t.run["live_policy"]])
    assert p.label == "approximate"
    assert p.oracle_agreement == pytest.approx(agree / compared)
    assert p.fidelity.startswith(f"approximate (oracle = live draft on {100 * agree / compared:.1f} %")
    assert f"tau +-{p.tau_bound:.3f}" in p.fidelity
    # the bound is the docstring's formula over the replayed cycles
    b = np.asarray(p.per_cycle["block_size"], dtype=np.float64)
    div = sum(d is not None and d >= 0 for d in t.samples.column("ar_divergence").to_pylist())
    want = ((1 - agree / compared) * (b - 1).sum() + div * (b.max() - 1)) / len(b)
    assert p.tau_bound == pytest.approx(want, rel=1e-12)
    measured_tau = float(np.mean(t.cycles.column("tau").to_numpy()))
    assert abs(p.tau_mean - measured_tau) <= p.tau_bound


def test_a_trace_whose_oracle_agrees_everywhere_keeps_exact_acceptance():
    (p,) = replay(FP32, ["fixed(b=16)"])
    assert p.oracle_agreement == 1.0 and p.ar_divergences == 0
    assert p.tau_bound == 0.0
    assert not p.fidelity.startswith("approximate")


def test_an_ar_divergence_alone_makes_predictions_approximate(tmp_path):
    clean = make_trace(tmp_path / "clean", output_lengths=(40, 30), block_sizes=(4, 8),
                       ranks=leading_zeros(3), live_policy="fixed(b=8)")
    div = make_trace(tmp_path / "div", output_lengths=(40, 30), block_sizes=(4, 8),
                     ranks=leading_zeros(3), live_policy="fixed(b=8)", ar_divergence={1: 12})
    (c,) = replay(clean, ["fixed(b=4)"])
    (d,) = replay(div, ["fixed(b=4)"])
    assert c.label == "exact" and c.tau_bound == 0.0
    assert d.label == "approximate" and "1 AR divergence in 2 samples" in d.fidelity
    assert d.tau_bound == pytest.approx(3 / d.cycles)  # one cycle of block 4 may move by 3
    assert d.tau_mean == c.tau_mean  # the label changes, the prediction does not


def test_bound_formula_edges():
    a = oracle_agreement(Trace.open(BF16))
    assert tau_error_bound(a, np.array([], dtype=np.int64)) == 0.0
    full = type(a)(agreeing=10, compared=10, divergent=0, checked=2)
    assert full.exact and tau_error_bound(full, np.array([8, 8])) == 0.0
    half = type(a)(agreeing=5, compared=10, divergent=0, checked=2)
    assert tau_error_bound(half, np.array([8, 4])) == pytest.approx(0.5 * (7 + 3) / 2)
    unknown = type(a)(agreeing=0, compared=0, divergent=0, checked=0)
    assert tau_error_bound(unknown, np.array([8])) is None
