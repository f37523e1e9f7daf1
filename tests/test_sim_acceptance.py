"""Acceptance by oracle lookup: chains, trees, gating, candidates, sampling, and the
'not replayable' answers. Expected values are derived from the synthetic oracles'
ranks by hand (see each test)."""
import json

import numpy as np
import pytest

from specreplay.policies.base import VerifyPlan
from specreplay.sim.acceptance import Acceptance
from specreplay.sim.replay import replay
from specreplay.sim.tracedata import load_trace
from specreplay.traces.io import write_json
from specreplay.traces.reader import Trace
from specreplay.traces.schema import RANK_NOT_IN_TOPK
from specreplay.traces.synthetic import leading_zeros, make_trace

LENGTHS = (60, 47, 33)


def expected_taus(n: int, t: int) -> list[int]:
    """A sample of len(S) = n commits n-1 tokens, t per cycle, the last cycle what is left."""
    full, rest = divmod(n - 1, t)
    return [t] * full + ([rest] if rest else [])


def taus_by_sample(pred) -> dict[int, list[int]]:
    pc = pred.per_cycle
    out: dict[int, list[int]] = {}
    for s, t in zip(pc["sample"].tolist(), pc["tau"].tolist()):
        out.setdefault(s, []).append(t)
    return out


@pytest.fixture(scope="module")
def five_zeros(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("z") / "t", output_lengths=LENGTHS,
                      block_sizes=(2, 3, 4, 5, 6, 7, 8, 16), ranks=leading_zeros(5),
                      live_policy="fixed(b=8)")


def test_rank0_for_five_offsets_gives_tau_6_from_b_6_and_b_below(five_zeros):
    # rank 0 at offsets 1..5, then not in the top-k: a chain of b-1 drafted offsets
    # accepts min(b-1, 5), so tau = min(b, 6); only the last cycle of a sample is cut
    # to the tokens left.
    specs = [f"fixed(b={b})" for b in (2, 3, 4, 5, 6, 7, 8, 16)]
    preds = replay(five_zeros, specs, bootstrap=0)
    for b, pred in zip((2, 3, 4, 5, 6, 7, 8, 16), preds):
        assert pred.replayable and pred.fidelity == "exact"
        t = min(b, 6)
        assert taus_by_sample(pred) == {s: expected_taus(n, t) for s, n in enumerate(LENGTHS)}
        assert pred.per_cycle["accepted"].tolist() == [x - 1 for x in pred.per_cycle["tau"].tolist()]


def test_engine_matches_the_vectorised_fixed_block_path(five_zeros):
    # "+gate(min_prob=0.0)" never gates, so it is fixed(b=8) forced through the engine
    fast, slow = replay(five_zeros, ["fixed(b=8)", "fixed(b=8)+gate(min_prob=0.0)"], bootstrap=0)
    for col in ("sample", "cycle", "start", "block_size", "tau", "verify_tokens", "draft_s",
                "target_s", "overhead_s", "cycle_s"):
        assert np.array_equal(fast.per_cycle[col], slow.per_cycle[col]), col
    assert fast.tokens_per_s == slow.tokens_per_s


def body(pred, col="tau") -> set[int]:
    """Values of a per-cycle column over every cycle but each sample's last (the tail
    cycle is cut to the tokens left)."""
    pc = pred.per_cycle
    last = np.r_[pc["sample"][1:] != pc["sample"][:-1], True]
    return set(np.asarray(pc[col])[~last].tolist())


def ranks_from(table):
    """A rank function from {offset: rank}; offsets not listed are not in the top-k."""
    def rank(sample, start, offset):
        return np.vectorize(lambda o: table.get(int(o), RANK_NOT_IN_TOPK))(offset)
    return rank


@pytest.fixture(scope="module")
def branchy(tmp_path_factory):
    # true ranks: offset 1 -> 1, offsets 2, 3 -> 0, offset 4 -> 1, then not in the top-k
    return make_trace(tmp_path_factory.mktemp("b") / "t", output_lengths=(41, 41),
                      block_sizes=(8,), ranks=ranks_from({1: 1, 2: 0, 3: 0, 4: 1}),
                      live_policy="fixed(b=8)")


def test_tree_acceptance_is_the_deepest_matching_rank_path(branchy):
    chain, kary, explicit = replay(branchy, [
        "fixed(b=8)",                              # rank path 0.0.0... fails at offset 1
        "fixed(b=8)+tree(topk=2, depth=2)",        # leaf 1.0 matches 2 offsets
        "fixed(b=8)+tree(paths=1.0.0.1.0|0.1)",    # 1.0.0.1 matches, then 0 != -1
    ], bootstrap=0)
    assert set(chain.per_cycle["tau"].tolist()) == {1}
    assert body(kary, "tau") == {3}
    assert body(explicit, "tau") == {5}
    # the explicit trie: 5 nodes for 1.0.0.1.0 and 2 for 0.1 (no shared prefix) + the anchor
    assert set(explicit.per_cycle["verify_tokens"].tolist()) == {8}


def test_accepted_picks_the_first_longest_path(branchy):
    acc = Acceptance(load_trace(branchy))
    g = acc.group(8)
    r = acc.row(g, 0, 0)
    plan = VerifyPlan("batch", ((0,) * 7, (1, 1), (1, 0, 0, 0), (1, 0, 0, 1), (1, 0, 0, 1, 0)))
    assert acc.accepted(g, r, plan) == (4, 3)
    assert acc.accepted(g, r, VerifyPlan.chain(8)) == (0, 0)


def test_gating_verifies_only_the_confident_prefix(tmp_path):
    # every offset is right (rank 0), but the draft is confident (top-1 0.9) only at
    # offsets 1..2: gate(min_prob=0.2) verifies anchor + 2 offsets, so tau = 3
    def top1(sample, start, offset):
        return np.where(np.asarray(offset) <= 2, 0.9, 0.1)
    trace = make_trace(tmp_path / "t", output_lengths=(40, 31), block_sizes=(8,),
                       ranks=leading_zeros(20), top1_prob=top1, live_policy="fixed(b=8)")
    full, gated = replay(trace, ["fixed(b=8)", "fixed(b=8)+gate(min_prob=0.2)"], bootstrap=0)
    assert body(full, "tau") == {8}
    assert body(gated, "tau") == {3}
    assert set(gated.per_cycle["verify_tokens"].tolist()) == {3}
    assert json.loads(gated.per_cycle["policy_state"][0]) == {"gate_verify": 3}


def test_candidates_fixed_prefix_rank_in_a_batch(tmp_path):
    # ranks: offsets 1..2 -> 0, offsets 3..5 -> 1, then not in the top-k. The greedy
    # block accepts 2 (tau 3); fixed_prefix_rank(prefix=3) keeps block positions 0..2
    # top-1 and puts rank 1 after: (0, 0, 1, 1, 1, 1, 1) accepts 5 (tau 6). Two rows
    # of 8 query tokens each.
    trace = make_trace(tmp_path / "t", output_lengths=(45, 45), block_sizes=(8,),
                       ranks=ranks_from({1: 0, 2: 0, 3: 1, 4: 1, 5: 1}),
                       live_policy="fixed(b=8)")
    greedy, cands = replay(trace, [
        "fixed(b=8)", "fixed(b=8)+candidates(mode=fixed_prefix_rank, prefix=3, max=2)"],
        bootstrap=0)
    assert body(greedy, "tau") == {3}
    assert body(cands, "tau") == {6}
    assert set(cands.per_cycle["verify_tokens"].tolist()) == {16}


def test_not_replayable_answers_name_what_to_record(five_zeros):
    preds = replay(five_zeros, ["fixed(b=12)", "fixed(b=8)+tree(topk=5, depth=2)",
                                "fixed(b=8)+recycle(mode=sparse)", "fixed(b=8)"], bootstrap=0)
    reasons = [p.reason for p in preds]
    assert reasons[0] == ("not replayable from this trace: record block size 12 (the oracle "
                          "holds 2, 3, 4, 5, 6, 7, 8, 16)")
    assert reasons[1] == ("not replayable from this trace: oracle top-k >= 5 (this trace "
                          "kept top-4)")
    assert reasons[2].startswith("not replayable from this trace: record probe recycle(")
    assert [p.replayable for p in preds] == [False, False, False, True]
    assert all(p.tokens_per_s is None for p in preds[:3])


def test_scheduler_reaching_an_unrecorded_block_size_is_not_replayable(five_zeros):
    # ewma starts at its largest candidate, 12 here, which the oracle lacks
    (pred,) = replay(five_zeros, ["ewma(candidates=8|12)"], bootstrap=0)
    assert not pred.replayable
    assert "record block size 12" in pred.reason


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    trace = make_trace(tmp_path_factory.mktemp("s") / "t", output_lengths=(400,) * 6,
                       block_sizes=(2, 8), ranks=leading_zeros(20), live_policy="fixed(b=8)")
    run = json.loads((trace / "run.json").read_text())
    run["sampling"]["temperature"] = 1.0
    write_json(trace / "run.json", run)
    return trace


def test_monte_carlo_replay_is_deterministic_given_the_seed(sampled):
    a = replay(sampled, ["fixed(b=8)"], seed=7, bootstrap=50)[0]
    b = replay(sampled, ["fixed(b=8)"], seed=7, bootstrap=50)[0]
    c = replay(sampled, ["fixed(b=8)"], seed=8, bootstrap=50)[0]
    assert a.fidelity.startswith("approximate (sampling")
    assert np.array_equal(a.per_cycle["tau"], b.per_cycle["tau"])
    assert (a.tokens_per_s, a.ci_low, a.ci_high) == (b.tokens_per_s, b.ci_low, b.ci_high)
    assert not np.array_equal(a.per_cycle["tau"], c.per_cycle["tau"])


def test_monte_carlo_acceptance_rate_matches_the_distributions(sampled):
    # One drafted offset (b = 2). The draft's rank-j token is the target's rank-j token,
    # q_j = 0.8 * 0.2^j and p_j = 0.9 * 0.1^j (synthetic), so speculative sampling accepts
    # with probability sum_j min(p_j, q_j) = 0.8 + 0.09 + 0.009 + 0.0009 = 0.8999.
    pred = replay(sampled, ["fixed(b=2)"], seed=3, bootstrap=0)[0]
    tau = pred.per_cycle["tau"]
    rate = float(np.mean(tau == 2))
    n = len(tau)
    assert n > 1000
    assert abs(rate - 0.8999) < 4 * np.sqrt(0.9 * 0.1 / n)


def test_sampling_refuses_tree_verification(sampled):
    (pred,) = replay(sampled, ["fixed(b=8)+tree(topk=2, depth=2)"], bootstrap=0)
    assert not pred.replayable
    assert "under sampling" in pred.reason


RECYCLE = "recycle(mode=sparse, max=-1, min_margin=-1.0)"
REFINE = "refine(steps=2, only_below=1.0)"


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    # plain draft: rank 0 at offsets 1..2; with recycled seeds: offsets 1..4; refined:
    # offsets 1..6 (then not in the top-k)
    return make_trace(tmp_path_factory.mktemp("p") / "t", output_lengths=(70, 55),
                      block_sizes=(8,), ranks=leading_zeros(2),
                      probes={RECYCLE: lambda s, p, i, d: np.where(np.asarray(i) <= 4, 0, -1),
                              REFINE: lambda s, p, i, d: np.where(np.asarray(i) <= 6, 0, -1)},
                      live_policy=f"fixed(b=8)+{RECYCLE}")


def test_probes_are_looked_up_by_their_key(probed):
    rec = Trace.open(probed).cycles.sort_by([("sample", "ascending"), ("cycle", "ascending")])
    plain, recycled, refined = replay(probed, ["fixed(b=8)", f"fixed(b=8)+{RECYCLE}",
                                               f"fixed(b=8)+{REFINE}"], bootstrap=0)
    assert body(plain) == {3}
    # the first cycle of a sample has no previous block to recycle: plain draft, tau 3;
    # after a cycle of tau 3 the leftover offsets 4..7 land at new offsets 1..4, and the
    # sparse pattern seeds offsets 2 and 4, so the probe's rows apply: tau 5
    assert recycled.per_cycle["tau"][:3].tolist() == [3, 5, 5]
    assert np.array_equal(recycled.per_cycle["accepted"], rec["accepted"].to_numpy())
    assert body(refined) == {7}
    # a refinement step is one more draft pass: the draft's seconds double
    assert np.allclose(refined.per_cycle["draft_s"], 2 * plain.per_cycle["draft_s"][0],
                       rtol=0.05)
