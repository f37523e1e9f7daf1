"""Replay end to end: exact reproduction of the recorded live run, speedups, serving
runs, the Prediction API, and the replay/sweep commands."""
import json

import numpy as np
import pytest

from specreplay.policies import PolicyError
from specreplay.sim.replay import Replayer, replay
from specreplay.sim.sweep import expand_grid
from specreplay.cli import main
from specreplay.traces.reader import Trace
from specreplay.traces.synthetic import leading_zeros, make_trace, random_ranks

KEYS = {"policy", "tokens_per_s", "tpot_s", "tau_mean", "tau_hist", "speedup", "ci_low",
        "ci_high", "fidelity", "replayable", "reason", "cycles", "tokens", "samples"}


@pytest.fixture(scope="module")
def ewma_trace(tmp_path_factory):
    # a scheduler that switches often: probes every 4 cycles over 4|8|16
    return make_trace(tmp_path_factory.mktemp("e") / "t", output_lengths=(300, 240, 170, 260),
                      block_sizes=(4, 8, 16), ranks=random_ranks(0.85, 0.1, seed=5),
                      live_policy="ewma(candidates=4|8|16, probe=4)")


def recorded_cycles(trace):
    t = Trace.open(trace).cycles.sort_by([("sample", "ascending"), ("cycle", "ascending")])
    return {c: t[c].to_numpy() for c in ("sample", "start", "block_size", "accepted", "tau",
                                         "verify_tokens", "cycle_s")}


@pytest.mark.parametrize("timing", ["recorded", "model"])
def test_replaying_the_recorded_ewma_reproduces_the_live_run(ewma_trace, timing):
    rec = recorded_cycles(ewma_trace)
    live = Trace.open(ewma_trace).run["live_policy"]
    (pred,) = replay(ewma_trace, [live], timing=timing, bootstrap=0)
    pc = pred.per_cycle
    assert len(set(rec["block_size"].tolist())) == 3  # the scheduler did switch
    for col in ("sample", "start", "block_size", "accepted", "tau", "verify_tokens"):
        assert np.array_equal(pc[col], rec[col]), col
    if timing == "recorded":
        assert pred.recorded_cycles == len(pc)
        assert np.array_equal(pc["cycle_s"], rec["cycle_s"])  # bit for bit
    else:
        assert pred.recorded_cycles == 0
        assert np.allclose(pc["cycle_s"], rec["cycle_s"], rtol=1e-9)
    decode = Trace.open(ewma_trace).samples.sort_by("sample")["decode_s"].to_numpy()
    tokens = Trace.open(ewma_trace).samples.sort_by("sample")["output_ids"].to_pylist()
    assert pred.tokens_per_s == pytest.approx(sum(map(len, tokens)) / decode.sum(), rel=1e-9)


def test_replaying_a_recorded_fixed_block_run_is_exact(tmp_path):
    trace = make_trace(tmp_path / "t", output_lengths=(90, 64), block_sizes=(8,),
                       ranks=random_ranks(0.7, 0.2, seed=2), live_policy="fixed(b=8)")
    rec = recorded_cycles(trace)
    (pred,) = replay(trace, ["fixed(b=8)"], timing="recorded", bootstrap=0)
    for col in ("start", "accepted", "tau", "cycle_s"):
        assert np.array_equal(pred.per_cycle[col], rec[col]), col


def test_ar_has_speedup_one_and_tau_one(ewma_trace):
    ar, fixed = replay(ewma_trace, ["ar", "fixed(b=8)"], bootstrap=0)
    assert ar.speedup == 1.0
    assert ar.tau_hist == [0, ar.cycles] and ar.tau_mean == 1.0
    assert ar.cycles == ar.tokens - ar.samples  # one token a cycle after the prefill's
    assert fixed.speedup == pytest.approx(ar.tpot_s / fixed.tpot_s)
    assert fixed.speedup > 1


def test_prediction_dict_and_per_cycle_table(ewma_trace):
    (pred,) = replay(ewma_trace, ["ewma(candidates=4|8|16)"], bootstrap=200, seed=1)
    d = pred.to_dict()
    assert KEYS <= set(d) and "per_cycle" not in d
    json.dumps(d)
    assert pred.ci_low < pred.tokens_per_s < pred.ci_high
    assert sum(d["tau_hist"]) == d["cycles"]
    assert d["tau_mean"] == pytest.approx(sum(t * c for t, c in enumerate(d["tau_hist"])) / d["cycles"])
    table = pred.per_cycle.to_arrow()
    assert table.num_rows == pred.cycles
    assert {"sample", "cycle", "start", "block_size", "accepted", "tau", "verify_tokens",
            "draft_s", "target_s", "overhead_s", "cycle_s", "policy_state"} <= set(table.column_names)
    assert "ewma_current" in json.loads(table["policy_state"][0].as_py())
    again = replay(ewma_trace, ["ewma(candidates=4|8|16)"], bootstrap=200, seed=1)[0]
    assert (again.ci_low, again.ci_high) == (pred.ci_low, pred.ci_high)
    assert "per_cycle" in pred.to_dict(per_cycle=True)


@pytest.fixture(scope="module")
def serving_trace(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("s") / "t", output_lengths=(80,) * 16,
                      block_sizes=(8,), ranks=leading_zeros(5), live_policy="fixed(b=8)")


def test_throughput_rises_with_concurrency_under_a_batch_cheap_profile(serving_trace):
    # the synthetic profile's fixed cost per pass dwarfs the per-token cost, so a step of
    # n requests costs far less than n steps: throughput must rise, TPOT grow slowly
    r = Replayer(serving_trace, bootstrap=0)
    single = r.predict("fixed(b=8)")
    runs = [replay(serving_trace, ["fixed(b=8)"], concurrency=c, bootstrap=0)[0]
            for c in (1, 4, 16)]
    thr = [p.serving["throughput_tok_s"] for p in runs]
    assert thr[0] < thr[1] < thr[2]
    assert runs[2].serving["mean_batch"] > 8
    for p in runs:
        s = p.serving
        assert s["requests"] == 16
        assert 0 < s["ttft_s"]["mean"] <= s["e2e_s"]["mean"]
        assert s["ttft_s"]["p50"] <= s["ttft_s"]["p99"]
        assert p.tau_mean == single.tau_mean  # load changes time, never acceptance
    # one request at a time: the decode loop of the single stream plus a prefill each
    assert runs[0].serving["tpot_s"]["mean"] == pytest.approx(single.tpot_s, rel=1e-12)
    assert runs[0].serving["mean_batch"] == 1.0


def test_poisson_arrivals_and_goodput(serving_trace):
    kw = dict(rate=50.0, seed=3, bootstrap=0, slo_ttft_s=1.0, slo_tpot_s=1.0)
    a = replay(serving_trace, ["fixed(b=8)"], **kw)[0]
    b = replay(serving_trace, ["fixed(b=8)"], **kw)[0]
    assert a.serving == b.serving
    s = a.serving
    assert s["slo_attainment"] == 1.0  # SLOs of a second are met by millisecond steps
    assert s["goodput_rps"] == pytest.approx(16 / s["makespan_s"])
    strict = replay(serving_trace, ["fixed(b=8)"], rate=50.0, seed=3, bootstrap=0,
                    slo_tpot_s=1e-9)[0]
    assert strict.serving["goodput_rps"] == 0.0


def test_grid_expansion():
    assert expand_grid("ewma(alpha=0.05|0.1|0.2, probe=8|12)") == [
        f"ewma(alpha={a}, probe={p})" for a in ("0.05", "0.1", "0.2") for p in ("8", "12")]
    assert expand_grid("ewma(candidates=8|16;8|12|16)+gate(min_prob=0.1|0.3)") == [
        "ewma(candidates=8|16)+gate(min_prob=0.1)", "ewma(candidates=8|16)+gate(min_prob=0.3)",
        "ewma(candidates=8|12|16)+gate(min_prob=0.1)",
        "ewma(candidates=8|12|16)+gate(min_prob=0.3)"]
    assert expand_grid("ar") == ["ar"]
    with pytest.raises(PolicyError, match="unknown knob"):
        expand_grid("fixed(bb=4|8)")


def test_replay_command_json(ewma_trace, capsys):
    rc = main(["replay", str(ewma_trace), "--policy", "fixed(b=8)", "--policy", "fixed(b=12)",
               "--json", "--bootstrap", "50"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and [r["policy"] for r in out] == ["fixed(b=8)", "fixed(b=12)"]
    assert KEYS <= set(out[0])
    assert out[1]["replayable"] is False and "record block size 12" in out[1]["reason"]


def test_replay_command_table_and_bad_input(ewma_trace, tmp_path, capsys):
    assert main(["replay", str(ewma_trace), "--policy", "ewma(candidates=4|8|16)",
                 "--concurrency", "4", "--slo-ttft", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "goodput/s" in out and "ewma(candidates=4|8|16)" in out
    assert main(["replay", str(tmp_path / "nope"), "--policy", "ar"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["replay", str(ewma_trace), "--policy", "fixd(b=8)"]) == 2
    assert "unknown policy 'fixd'" in capsys.readouterr().err
    assert main(["replay", str(ewma_trace), "--policy", "ar", "--slo-tpot", "0.1"]) == 2
    assert "serving runs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["replay", str(ewma_trace), "--policy", "ar", "--concurrency", "2", "--rate", "1"])
    assert e.value.code == 2


def test_sweep_command(ewma_trace, capsys):
    rc = main(["sweep", str(ewma_trace), "--grid", "fixed(b=4|8|16)", "--policy", "ar",
               "--json", "--bootstrap", "0"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(out) == 4
    tps = [r["tokens_per_s"] for r in out]
    assert tps == sorted(tps, reverse=True)
    assert {r["policy"] for r in out} == {"fixed(b=4)", "fixed(b=8)", "fixed(b=16)", "ar"}


def test_sweep_in_parallel_processes_matches_one_process(ewma_trace):
    from specreplay.sim.sweep import run_sweep
    specs = expand_grid("ewma(candidates=4|8|16, alpha=0.1|0.3)") + ["fixed(b=8)"]
    kw = {"trace": ewma_trace, "bootstrap": 20, "states": False}
    one = run_sweep(specs, kw, workers=1)
    two = run_sweep(specs, kw, workers=2)
    assert [r["policy"] for r in two] == specs
    assert [r["tokens_per_s"] for r in one] == [r["tokens_per_s"] for r in two]
    assert [r["ci_low"] for r in one] == [r["ci_low"] for r in two]
