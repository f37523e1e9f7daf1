"""Serving replays (concurrency, rate): the terms of a batched GPU step, the batched
prefill, and the ``unvalidated`` label on every serving output. Each term test fails
when its term is changed (a sum of verify rows made a max, the batched draft made a
single-row draft, the tree flag of a mixed step dropped). SYNTHETIC traces."""
import json

import numpy as np
import pytest

from specreplay.sim.cli import format_table
from specreplay.sim.engine import Engine, Timer, Work
from specreplay.sim.replay import UNVALIDATED, Replayer, replay
from specreplay.traces.synthetic import SyntheticCost, leading_zeros, make_trace

COST = SyntheticCost()
BATCH = "fixed(b=8)+candidates(mode=fixed_prefix_rank, prefix=2, max=3, verify=batch)"


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Two samples alike in every way: at concurrency 2 their cycles share every step."""
    return make_trace(tmp_path_factory.mktemp("serving") / "t", output_lengths=(64, 64),
                      block_sizes=(4, 8), ranks=leading_zeros(3), live_policy="fixed(b=8)",
                      cost=COST)


def timer_of(trace) -> Timer:
    return Replayer(trace, bootstrap=0).setting.timer


def test_a_step_verifies_the_sum_of_its_cycles_rows(twins):
    t = timer_of(twins)
    works = [Work(0, 0, 8, 100, verify_q=5, verify_rows=3),
             Work(1, 0, 8, 140, verify_q=7, verify_rows=2)]
    t.step(works)
    # rows of every cycle in one pass, padded to the longest row and context
    want = COST.target(7, 140, 5)
    assert works[0].target_s == works[1].target_s == pytest.approx(want, rel=1e-9)


def test_a_step_drafts_its_drafting_cycles_as_one_batch(twins):
    t = timer_of(twins)
    works = [Work(0, 0, 8, 100, passes=1), Work(1, 0, 4, 120, passes=2),
             Work(2, 0, 1, 90)]  # b = 1 drafts nothing
    t.step(works)
    want = 2 * COST.draft(8, 120, 2)  # batch 2, largest block and context, most passes
    assert works[0].draft_s == pytest.approx(want, rel=1e-9)
    assert works[1].draft_s == works[2].draft_s == works[0].draft_s


def test_one_tree_in_a_step_makes_the_batched_verify_tree_masked(twins):
    t = timer_of(twins)
    works = [Work(0, 0, 8, 100, verify_q=8), Work(1, 0, 8, 100, verify_q=6, tree=True)]
    t.step(works)
    assert works[0].target_s == pytest.approx(COST.tree_verify(8, 100, 2), rel=1e-9)
    assert works[0].target_s != pytest.approx(COST.target(8, 100, 2), rel=1e-6)


def test_lock_stepped_requests_share_every_step_through_the_engine(twins):
    (p,) = replay(twins, [BATCH], concurrency=2, bootstrap=0)
    c = p.per_cycle
    ctx = 16 + np.asarray(c["start"])
    q = 8  # the anchor and 7 drafted offsets per row
    rows = np.asarray(c["verify_tokens"]) // q  # candidate rows of each cycle
    assert p.serving["mean_batch"] == 2.0 and (rows >= 2).all()
    assert np.allclose(c["target_s"], [COST.target(q, int(L), 2 * int(r)) for L, r in zip(ctx, rows)],
                       rtol=1e-9)
    assert np.allclose(c["draft_s"], [COST.draft(8, int(L), 2) for L in ctx], rtol=1e-9)


def test_a_batched_prefill_costs_its_tokens_at_the_warm_rate(twins):
    s = Replayer(twins, bootstrap=0).setting
    prefill = np.array([0.64, 0.010])  # sample 0's prefill ran cold
    timer = Timer(s.timer.cost, None, prefill, np.array([16, 16]))
    log = Engine(s.data, s.acc, timer, "fixed(b=8)", concurrency=2).run()
    first = [r[2] for r in log.requests]
    # one step of 32 prompt tokens at sample 1's 0.010 / 16 s per token; the cold
    # 0.64 s row is not in it (the sum of the recorded prefills would be 0.65 s)
    assert first == pytest.approx([0.020, 0.020], rel=1e-12)


@pytest.mark.parametrize("load", [{"concurrency": 2}, {"rate": 50.0}])
def test_every_serving_output_says_unvalidated(twins, load):
    (p,) = replay(twins, ["fixed(b=8)"], bootstrap=0, **load)
    d = p.to_dict()
    assert d["fidelity"].startswith(UNVALIDATED) and d["label"].endswith(", unvalidated")
    assert "unvalidated" in json.dumps(d)
    assert "unvalidated" in format_table([d])
    (single,) = replay(twins, ["fixed(b=8)"], bootstrap=0)
    assert "unvalidated" not in single.fidelity + single.label
