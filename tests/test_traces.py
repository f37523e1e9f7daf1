"""The trace format: writer round trip, resume after a kill, the reader's columnar
accessor, and the synthetic generator's known answers."""
import json

import numpy as np
import pytest

from specreplay.traces.io import TraceError
from specreplay.traces.reader import Trace
from specreplay.traces.schema import RANK_BEYOND_END, RANK_NOT_IN_TOPK
from specreplay.traces.synthetic import leading_zeros, make_trace
from specreplay.traces.writer import TraceWriter

RUN_META = {
    "setup": {"device": "cpu", "gpu": None, "backend": "hf", "dtype": "float32"},
    "target": {"id": "tiny-target", "files": {"model.safetensors": "ab" * 32}},
    "draft": {"id": "tiny-draft", "files": {}, "block_size": 4, "mask_token_id": 99},
    "sampling": {"temperature": 0.0, "seed": 0, "max_new_tokens": 8, "stop_token_ids": [2]},
    "live_policy": "fixed(b=4)",
    "dataset": {"name": "humaneval", "split": "test", "indices": [0, 1, 2, 3], "template": None},
    "top_k_logits": 2,
    "oracle": {"block_sizes": [4], "top_k": 2, "probes": []},
}


def sample_rows(s: int):
    """One hand-made sample: S = [10, 11, 12, 13, 14, 15, 16] in two block-4 cycles:
    the first accepts 3 (tau 4, commits S[1..4]), the second accepts 1 (tau 2, S[5..6])."""
    out = [10, 11, 12, 13, 14, 15, 16]
    row = {"sample": s, "dataset_index": s, "prompt_ids": [1, 5, 7], "output_ids": out,
           "stop_reason": "max_new_tokens", "prefill_s": 0.01, "decode_s": 0.02,
           "n_cycles": 2, "ar_divergence": -1}
    cyc = [dict(cycle=0, start=0, context_len=3, block_size=4, verify_mode="chain",
                verify_tokens=4, verify_batch=1, n_paths=1, drafted=[11, 12, 13], accepted=3,
                tau=4, committed=4, bonus=14, chosen_path=0, probe="", prev_offset=0,
                n_seeds=0, draft_s=0.001, target_s=0.008, overhead_s=0.001, cycle_s=0.01,
                policy_state="{}"),
           dict(cycle=1, start=4, context_len=7, block_size=4, verify_mode="chain",
                verify_tokens=4, verify_batch=1, n_paths=1, drafted=[15, 99, 98], accepted=1,
                tau=2, committed=2, bonus=16, chosen_path=0, probe="", prev_offset=0,
                n_seeds=0, draft_s=0.001, target_s=0.008, overhead_s=0.001, cycle_s=0.01,
                policy_state="{}")]
    logits = [dict(cycle=0, offset=0, target_ids=[11, 3], target_logits=[0.0, -2.0], target_lse=0.1)]
    oracle = [dict(start=0, block_size=4, probe="", prev_offset=0, true_rank=[0, 0, 0],
                   draft_ids=[11, 1, 12, 1, 13, 1], draft_logprobs=[-0.1, -3.0] * 3)]
    target = [dict(position=i, target_ids=[t, 0], target_logprobs=[-0.1, -5.0])
              for i, t in enumerate(out)]
    return row, cyc, logits, oracle, target


def test_round_trip(tmp_path):
    w = TraceWriter(tmp_path / "t", RUN_META)
    for s in range(2):
        w.add_sample(*sample_rows(s))
    w.finish(complete=True)
    t = Trace.open(tmp_path / "t")
    assert t.run["complete"] is True and t.run["schema_version"] == 1
    assert t.run["live_policy"] == "fixed(b=4)" and t.run["tool_version"] == "0.1.0"
    assert "git_commit" in t.run and t.run["created"].endswith("+00:00")
    assert t.samples.column("sample").to_pylist() == [0, 1]
    assert t.cycles.column("tau").to_pylist() == [4, 2, 4, 2]
    assert t.cycles.column("drafted").to_pylist()[1] == [15, 99, 98]
    assert t.oracle.column("draft_logprobs").to_pylist()[0] == pytest.approx([-0.1, -3.0] * 3, abs=1e-3)
    assert t.has_table("oracle_target") and t.oracle_target.num_rows == 14
    assert t.profile() is None
    assert sorted(p.name for p in (tmp_path / "t" / "cycles").iterdir()) == [
        "part-000000.parquet", "part-000001.parquet"]


def test_resume_after_kill(tmp_path):
    d = tmp_path / "t"
    w = TraceWriter(d, RUN_META)
    for s in range(3):
        w.add_sample(*sample_rows(s))
    # a kill while sample 3 was being written: its cycles and oracle parts exist, its
    # samples part (always written last) does not, and a temp file was left behind
    row, cyc, logits, oracle, target = sample_rows(3)
    w._write_rows("cycles", 3, cyc)
    w._write_rows("oracle", 3, oracle)
    (d / "cycles" / "part-000004.parquet.tmp").write_bytes(b"PAR1 half")
    assert Trace.open(d).cycles.num_rows == 8  # the orphan is visible until resume cleans it

    with pytest.raises(TraceError, match="not empty: pass --resume"):
        TraceWriter(d, RUN_META)
    w2 = TraceWriter(d, RUN_META, resume=True)
    assert w2.done_samples() == {0, 1, 2}
    assert not (d / "cycles" / "part-000003.parquet").exists()
    assert not (d / "oracle" / "part-000003.parquet").exists()
    assert not list(d.glob("*/*.tmp"))
    w2.add_sample(row, cyc, logits, oracle, target)
    w2.finish()
    t = Trace.open(d)
    assert t.samples.column("sample").to_pylist() == [0, 1, 2, 3]
    assert t.cycles.num_rows == 8 and t.run["complete"] is True
    with pytest.raises(TraceError, match="sample 3 is already recorded"):
        w2.add_sample(*sample_rows(3))


def test_resume_refuses_other_setup_and_foreign_dirs(tmp_path):
    d = tmp_path / "t"
    TraceWriter(d, RUN_META).add_sample(*sample_rows(0))
    other = {**RUN_META, "live_policy": "fixed(b=8)"}
    with pytest.raises(TraceError, match=r"cannot resume .*live_policy: 'fixed\(b=4\)' != 'fixed\(b=8\)'"):
        TraceWriter(d, other, resume=True)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    with pytest.raises(TraceError, match="has no run.json, so it is not a trace"):
        TraceWriter(junk, RUN_META, resume=True)


def test_add_oracle_replaces_a_samples_parts(tmp_path):
    d = tmp_path / "t"
    w = TraceWriter(d, {**RUN_META, "oracle": None})
    for s in range(2):
        row, cyc, logits, _, _ = sample_rows(s)
        w.add_sample(row, cyc, logits)
    assert not Trace.open(d).has_table("oracle")
    w = TraceWriter.reopen(d)
    _, _, _, oracle, target = sample_rows(1)
    w.add_oracle(1, oracle, target)
    w.add_oracle(1, oracle, target)  # a second pass replaces, never doubles
    w.update_run(oracle={"block_sizes": [4], "top_k": 2, "probes": []})
    t = Trace.open(d)
    assert t.oracle.column("sample").to_pylist() == [1]
    assert t.run["oracle"]["top_k"] == 2


def test_rows_of_another_sample_are_refused(tmp_path):
    w = TraceWriter(tmp_path / "t", RUN_META)
    row, cyc, logits, oracle, target = sample_rows(0)
    cyc[1]["sample"] = 5
    with pytest.raises(TraceError, match="cycles rows given for sample 0 belong to samples"):
        w.add_sample(row, cyc, logits, oracle, target)


def test_oracle_arrays_are_dense_and_sorted(tmp_path):
    d = make_trace(tmp_path / "t", output_lengths=(12, 9), block_sizes=(4, 6), top_k=3,
                   ranks=leading_zeros(2), probes={"recycle(mode=dense)": None},
                   live_policy="fixed(b=4)")
    groups = Trace.open(d).oracle_arrays()
    assert set(groups) == {(4, ""), (6, ""), (4, "recycle(mode=dense)"), (6, "recycle(mode=dense)")}
    g = groups[(6, "")]
    assert len(g) == 12 + 9 and g.k == 3
    assert g.true_rank.shape == (21, 5) and g.true_rank.dtype == np.int8
    assert g.draft_ids.shape == (21, 5, 3) and g.draft_ids.dtype == np.int32
    assert g.draft_logprobs.dtype == np.float32
    assert list(g.sample[:12]) == [0] * 12 and list(g.start[:12]) == list(range(12))
    # sample 0 has 12 tokens: at start 8, offsets 1..3 lie inside S, offsets 4, 5 past it
    assert g.true_rank[8].tolist() == [0, 0, RANK_NOT_IN_TOPK, RANK_BEYOND_END, RANK_BEYOND_END]
    # rank 0 means the draft's top-1 token is S[start + offset]
    out = Trace.open(d).outputs()[0]
    assert g.draft_ids[8, 0, 0] == out[9] and g.draft_ids[8, 1, 0] == out[10]
    assert out[11] not in g.draft_ids[8, 2]
    assert (np.diff(g.draft_logprobs, axis=2) <= 0).all()  # descending by rank
    # recycle rows: every previous offset d in 1..b-1 with d <= start
    r = groups[(4, "recycle(mode=dense)")]
    assert len(r) == sum(max(0, n - d) for n in (12, 9) for d in (1, 2, 3))
    assert r.index[1, 5, 2] >= 0 and r.start[r.index[1, 5, 2]] == 5
    assert r.index[0, 1, 2] == -1  # a previous cycle cannot start before position 0


def test_synthetic_live_cycles_follow_the_acceptance_rule(tmp_path):
    """rank 0 at offsets 1..5: a full-chain cycle at b = 8 accepts 5 (tau 6), except
    where fewer tokens remain. 40 tokens: starts 0, 6, ..., 36; at 36 only 39 - 36 = 3
    tokens remain, so tau = 3."""
    d = make_trace(tmp_path / "t", output_lengths=(40,), block_sizes=(8,), live_policy="fixed(b=8)",
                   ranks=leading_zeros(5))
    c = Trace.open(d).cycles
    assert c.column("start").to_pylist() == [0, 6, 12, 18, 24, 30, 36]
    assert c.column("tau").to_pylist() == [6] * 6 + [3]
    assert c.column("accepted").to_pylist() == [5] * 6 + [2]


def test_synthetic_ar_and_chain_cycles(tmp_path):
    """Ranks: offset 1 rank 1, offset 2 rank 0, then not in the top-k. AR commits one
    token a cycle; a top-1 chain accepts nothing (offset 1's true token is rank 1)."""
    ranks = lambda s, p, i: np.where(i == 1, 1, np.where(i == 2, 0, -1))
    d = make_trace(tmp_path / "ar", output_lengths=(10,), block_sizes=(4,), live_policy="ar",
                   ranks=ranks)
    c = Trace.open(d).cycles
    assert c.column("tau").to_pylist() == [1] * 9 and c.column("block_size").to_pylist() == [1] * 9
    assert c.column("drafted").to_pylist() == [[]] * 9
    d = make_trace(tmp_path / "chain", output_lengths=(10,), block_sizes=(4,),
                   live_policy="fixed(b=4)", ranks=ranks)
    assert set(Trace.open(d).cycles.column("tau").to_pylist()) == {1}


def test_greedy_acceptance_over_rank_paths():
    """The generator's acceptance: longest prefix equal to the true ranks, max over
    paths, first such path chosen."""
    from specreplay.traces.synthetic import _accept
    true = np.array([1, 0, -1], np.int8)
    assert _accept(((0, 0, 0),), true) == (0, 0)
    assert _accept(((0, 0), (1, 0, 0), (1, 0, 1)), true) == (2, 1)
    assert _accept(((),), true) == (0, 0)


def test_synthetic_top1_prob_and_scalar_rank_functions(tmp_path):
    d = make_trace(tmp_path / "t", output_lengths=(6,), block_sizes=(4,), top_k=2,
                   ranks=lambda s, p, i: 0 if p % 2 == 0 else -1, top1_prob=0.5,
                   live_policy="fixed(b=4)")
    g = Trace.open(d).oracle_arrays()[(4, "")]
    # p1 = 0.5: rank 1 gets 0.5 * 0.5
    assert np.exp(g.draft_logprobs[0, 0]).tolist() == pytest.approx([0.5, 0.25], abs=1e-3)
    assert g.true_rank[1].tolist() == [-1, -1, -1] and g.true_rank[0].tolist() == [0, 0, 0]


def test_run_json_is_written_at_start(tmp_path):
    TraceWriter(tmp_path / "t", RUN_META)
    run = json.loads((tmp_path / "t" / "run.json").read_text())
    assert run["complete"] is False and run["dataset"]["indices"] == [0, 1, 2, 3]
