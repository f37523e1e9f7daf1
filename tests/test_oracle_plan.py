"""`specreplay oracle` on a trace that has an oracle adds to it and never silently drops
what is recorded; --replace drops, records the drop in run.json, and a replay that needs
the dropped data says so. The plan is a pure function (offline); dropping needs no model
(offline, on a copy of the shipped sample); adding needs the models (live, tiny pair)."""
import json
import shutil
from pathlib import Path

import pytest

import specreplay.traces
from specreplay.errors import CLIError
from specreplay.live.oracle_plan import describe_drop, groups, plan_oracle

SAMPLE = Path(specreplay.traces.__file__).parent / "samples" / "humaneval-fixed16"
R = "recycle(mode=sparse, max=-1, min_margin=-1.0)"
F = "refine(steps=2, only_below=1.0)"


def _old(block_sizes=(4, 8, 12, 16), probes=(R,), probe_block_sizes=None, top_k=4):
    meta = {"block_sizes": list(block_sizes), "probes": list(probes), "top_k": top_k}
    if probe_block_sizes is not None:
        meta["probe_block_sizes"] = list(probe_block_sizes)
    return meta


# -- the plan


def test_block_sizes_are_added_and_only_the_new_one_computed():
    plan = plan_oracle(_old(probe_block_sizes=[16]), block_sizes=[4])
    assert plan.block_sizes == (4, 8, 12, 16)  # 4 was there: nothing dropped, nothing new
    assert plan.nothing_to_do
    plan = plan_oracle(_old(probe_block_sizes=[16]), block_sizes=[4, 6])
    assert plan.block_sizes == (4, 6, 8, 12, 16)
    assert plan.compute == {(6, "")}  # probes stay at 16, as recorded
    assert plan.keep == groups((4, 8, 12, 16), (R,), (16,))
    assert plan.dropped is None
    assert plan.run_meta("t")["block_sizes"] == [4, 6, 8, 12, 16]
    assert "dropped" not in plan.run_meta("t")


def test_probes_at_every_block_size_extend_to_new_ones():
    plan = plan_oracle(_old(), block_sizes=[6])  # no probe_block_sizes: probes everywhere
    assert plan.compute == {(6, ""), (6, R)}
    assert plan.probe_block_sizes == (4, 6, 8, 12, 16)


def test_new_probe_is_computed_at_the_probe_block_sizes_only():
    plan = plan_oracle(_old(probe_block_sizes=[8, 16]), probes=[F])
    assert plan.probes == (R, F)
    assert plan.compute == {(8, F), (16, F)}
    assert plan.compute_block_sizes == (8, 16) and plan.compute_probes == (F,)
    assert (8, R) in plan.keep and (4, "") in plan.keep


def test_probe_block_sizes_add_and_must_be_oracle_block_sizes():
    plan = plan_oracle(_old(probe_block_sizes=[16]), probe_block_sizes=[8])
    assert plan.probe_block_sizes == (8, 16) and plan.compute == {(8, R)}
    with pytest.raises(CLIError, match="--probe-block-sizes 6 is not an oracle block size"):
        plan_oracle(_old(probe_block_sizes=[16]), probe_block_sizes=[6])


def test_live_policy_probes_are_always_kept():
    plan = plan_oracle(_old(probes=()), live_probes=[F], probes=[], replace=True)
    assert plan.probes == (F,)


def test_a_larger_top_k_recomputes_everything_and_drops_nothing():
    plan = plan_oracle(_old(probe_block_sizes=[16]), top_k=8)
    assert plan.top_k == 8 and not plan.keep
    assert plan.compute == groups((4, 8, 12, 16), (R,), (16,))
    assert plan.dropped is None


def test_a_smaller_top_k_needs_replace():
    with pytest.raises(CLIError, match="--top-k 2 .* drop the ranks 2 to 3: pass --replace"):
        plan_oracle(_old(), top_k=2)
    plan = plan_oracle(_old(), top_k=2, replace=True)
    assert plan.dropped["top_k_before"] == 4 and not plan.keep


def test_other_models_need_replace():
    with pytest.raises(CLIError, match="cannot be kept: --target X .*pass --replace"):
        plan_oracle(_old(), block_sizes=[6], recompute_all="--target X is not the recorded target")
    plan = plan_oracle(_old(), block_sizes=[6], replace=True, recompute_all="other models")
    assert plan.compute == groups((6,), (R,), (6,)) and not plan.keep


def test_replace_drops_and_records_what_it_dropped():
    old = {**_old(probes=(R, F), probe_block_sizes=[8, 16]),
           "dropped": [{"by": "specreplay oracle --replace", "when": "t0", "block_sizes": [2]}]}
    plan = plan_oracle(old, block_sizes=[4, 8], probes=[R], replace=True)
    assert plan.block_sizes == (4, 8)
    assert plan.probes == (R,) and plan.probe_block_sizes == (8,)
    assert plan.compute == set() and plan.keep == {(4, ""), (8, ""), (8, R)}
    assert plan.dropped == {"block_sizes": [12, 16], "probes": [F], "probe_block_sizes": [],
                            "top_k_before": None}
    meta = plan.run_meta("t1")
    assert meta["dropped"][0]["when"] == "t0"  # the history stays
    assert meta["dropped"][1] == {"by": "specreplay oracle --replace", "when": "t1",
                                  **plan.dropped}
    assert describe_drop(plan.dropped) == "block sizes 12,16; probes " + F


def test_replace_without_a_flag_keeps_that_kind():
    plan = plan_oracle(_old(probe_block_sizes=[16]), block_sizes=[8, 16], replace=True)
    assert plan.probes == (R,) and plan.probe_block_sizes == (16,)
    plan = plan_oracle(_old(probe_block_sizes=[8, 16]), block_sizes=[4, 8], replace=True)
    assert plan.probe_block_sizes == (8,)  # 16 went with its block size
    assert plan.dropped["probe_block_sizes"] == []  # nothing lost at a size still held


def test_no_oracle_yet_computes_everything_asked_for():
    plan = plan_oracle(None, block_sizes=[8, 4], probes=[R], probe_block_sizes=[8])
    assert plan.block_sizes == (4, 8) and plan.top_k == 4
    assert plan.compute == {(4, ""), (8, ""), (8, R)} and not plan.keep
    assert plan_oracle({}).block_sizes == (4, 8, 12, 16)


def test_traces_without_probe_block_sizes_had_probes_everywhere():
    plan = plan_oracle(_old(), probes=[F])
    assert plan.compute == {(b, F) for b in (4, 8, 12, 16)}


# -- dropping on a real trace, offline


def _cli(*argv):
    from specreplay.cli import main
    return main([str(a) for a in argv])


@pytest.fixture
def copy(tmp_path):
    d = tmp_path / "trace"
    shutil.copytree(SAMPLE, d)
    return d


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_block_sizes_already_there_change_nothing(copy, capsys):
    before = _files(copy)
    assert _cli("oracle", copy, "--block-sizes", "4,16") == 0
    assert "nothing to compute" in capsys.readouterr().out
    assert _files(copy) == before


@pytest.mark.slow
def test_replace_drops_block_sizes_and_replay_says_why(copy, capsys):
    from specreplay.sim.replay import replay
    from specreplay.traces.reader import Trace
    assert _cli("oracle", copy, "--block-sizes", "4,8", "--replace") == 0
    out = capsys.readouterr().out
    assert "dropped by --replace" in out and "block sizes 12,16" in out
    assert "the live policy fixed(b=16) drafted block sizes 16" in out
    meta = json.loads((copy / "run.json").read_text())["oracle"]
    assert meta["block_sizes"] == [4, 8] and meta["probe_block_sizes"] == []
    drop = meta["dropped"][-1]  # the shipped sample already records an earlier drop
    assert drop["by"] == "specreplay oracle --replace" and drop["block_sizes"] == [12, 16]
    assert sorted({b for b, _ in Trace.open(copy).oracle_arrays()}) == [4, 8]
    lost, kept, gone_probe = replay(copy, ["fixed(b=16)", "fixed(b=8)",
                                           "fixed(b=16)+recycle(mode=sparse)"], bootstrap=0)
    assert not lost.replayable
    assert lost.reason == ("not replayable from this trace: record block size 16 (the oracle "
                           f"holds 4, 8); specreplay oracle --replace dropped it at {drop['when']}")
    assert "dropped it at" in gone_probe.reason
    (same,) = replay(SAMPLE, ["fixed(b=8)"], bootstrap=0)
    assert kept.replayable and kept.tau_mean == same.tau_mean
    assert kept.tokens_per_s == same.tokens_per_s
    # the command line names the policy and the reason
    assert _cli("replay", copy, "--policy", "fixed(b=16)", "--bootstrap", 0) == 1
    assert "fixed(b=16): not replayable from this trace: record block size 16" in \
        capsys.readouterr().out


# -- adding on a recorded trace, live


@pytest.mark.live
def test_adding_a_block_size_keeps_the_recorded_rows_and_computes_the_new_one(tmp_path):
    pytest.importorskip("torch")
    import numpy as np
    from live_pair import save_pair
    from specreplay.traces.reader import Trace
    root = save_pair(tmp_path / "pair")
    common = ["--target", root / "target", "--draft", root / "draft", "--dataset",
              root / "prompts.jsonl", "--policy", "fixed(b=6)", "--max-samples", 2,
              "--max-new-tokens", 20, "--device", "cpu", "--quiet", "--probes", "refine",
              "--probe-block-sizes", "6"]
    trace, full = tmp_path / "trace", tmp_path / "full"
    assert _cli("record", *common, "--oracle-block-sizes", "4,6", "--out", trace) == 0
    assert _cli("record", *common, "--oracle-block-sizes", "4,6,8", "--out", full) == 0
    before = Trace.open(trace).oracle_arrays()
    assert _cli("oracle", trace, "--block-sizes", "8", "--device", "cpu") == 0
    meta = json.loads((trace / "run.json").read_text())["oracle"]
    assert meta["block_sizes"] == [4, 6, 8] and meta["probe_block_sizes"] == [6]
    assert "dropped" not in meta
    after, want = Trace.open(trace).oracle_arrays(), Trace.open(full).oracle_arrays()
    assert set(after) == set(want) == {(4, ""), (6, ""), (8, ""), (6, meta["probes"][0])}
    for key, arr in after.items():
        ref = before.get(key, want[key])  # recorded rows kept; the new ones as a fresh pass
        for col in ("sample", "start", "true_rank", "draft_ids", "draft_logprobs"):
            np.testing.assert_array_equal(getattr(arr, col), getattr(ref, col), err_msg=f"{key} {col}")
        np.testing.assert_array_equal(arr.true_rank, getattr(want[key], "true_rank"))
    assert Trace.open(trace).oracle_target.num_rows == Trace.open(full).oracle_target.num_rows
