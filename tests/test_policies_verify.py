"""Verify policies on crafted draft views: gate, tree, candidates."""
import math

import numpy as np
import pytest

from specreplay.policies import VerifyPlan, parse_policy, trie_nodes
from specreplay.policies.candidates import adaptive_budget
from test_policies_helpers import outcome, view_from_probs

# Top-1 probabilities 0.9, 0.8, 0.5, 0.15, 0.9, 0.9, 0.9 at offsets 1..7 (b = 8).
GATE_VIEW = view_from_probs([[0.9, 0.05], [0.8, 0.1], [0.5, 0.3], [0.15, 0.1],
                             [0.9, 0.05], [0.9, 0.05], [0.9, 0.05]])


def plan(spec, view):
    return parse_policy(spec).plan_verify(view)


# -- gate

def test_gate_threshold_stops_before_the_first_unsure_offset():
    # offset 4 is the first below 0.2: verify the anchor and offsets 1..3
    p = plan("gate(min_prob=0.2)", GATE_VIEW)
    assert p == VerifyPlan.chain(4) and p.paths == ((0, 0, 0),) and p.verify_tokens() == 4
    assert plan("gate(min_prob=0.1)", GATE_VIEW) == VerifyPlan.chain(8)     # none below
    assert plan("gate(min_prob=0.95)", GATE_VIEW) == VerifyPlan.chain(1)    # offset 1
    assert plan("gate(min_prob=0.95, min_verify=3)", GATE_VIEW) == VerifyPlan.chain(3)


def test_gate_score_keeps_the_prefix_within_the_nlogp_budget():
    # -log p: 0.105, 0.223, 0.693, 1.897, ...; cumulative 0.105, 0.329, 1.022, 2.919
    assert plan("gate(mode=score)", GATE_VIEW) == VerifyPlan.chain(4)       # budget 1.5
    assert plan("gate(mode=score, budget=0.3)", GATE_VIEW) == VerifyPlan.chain(2)
    assert plan("gate(mode=score, budget=0.0)", GATE_VIEW) == VerifyPlan.chain(1)
    assert plan("gate(mode=score, budget=50.0)", GATE_VIEW) == VerifyPlan.chain(8)


def test_gate_score_entropy_metric():
    # offset 1: 0.5/0.5 -> ln 2 = 0.693; offset 2: 0.5/0.25 and 0.25 outside the top-k
    # -> 1.5 ln 2 = 1.040; offset 3: certain -> 0. Cumulative 0.693, 1.733, 1.733.
    view = view_from_probs([[0.5, 0.5], [0.5, 0.25], [1.0, 0.0]])
    assert plan("gate(mode=score, metric=entropy, budget=1.5)", view) == VerifyPlan.chain(2)
    assert plan("gate(mode=score, metric=entropy, budget=1.8)", view) == VerifyPlan.chain(4)
    policy = parse_policy("gate(mode=score, metric=entropy, budget=1.8)")
    policy.plan_verify(view)
    assert policy.state() == {"gate_verify": 4}


# -- tree

def tree_plan(spec, block_size, k=4):
    view = view_from_probs(np.full((block_size - 1, k), 1.0 / k))
    return parse_policy(spec).plan_verify(view)


def test_tree_is_a_kary_trie_plus_the_top1_chain():
    p = tree_plan("tree(topk=2, depth=3)", 6)
    assert p.mode == "tree"
    # 8 leaves of depth 3, the all-zero one continued to offset 5
    assert p.paths[0] == (0, 0, 0, 0, 0)
    assert set(p.paths[1:]) == {(0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1),
                                (1, 1, 0), (1, 1, 1)}
    assert len(trie_nodes(p.paths)) == 2 + 4 + 8 + 2 and p.verify_tokens() == 17
    assert len(trie_nodes(tree_plan("tree", 16).paths)) == 2 + 4 + 8 + 16 + 32 + 10
    assert len(trie_nodes(tree_plan("tree(topk=3, depth=2)", 4).paths)) == 3 + 9 + 1
    assert len(trie_nodes(tree_plan("tree(topk=2, depth=5)", 3).paths)) == 2 + 4
    assert tree_plan("tree(topk=1, depth=4)", 8).paths == ((0,) * 7,)


def test_tree_drops_ranks_the_draft_did_not_keep():
    # the view kept only the top-1: every branch is cut, the chain remains
    assert tree_plan("tree(topk=2, depth=3)", 6, k=1).paths == ((0,) * 5,)
    p = tree_plan("tree(topk=3, depth=1)", 4, k=2)
    assert p.paths == ((0, 0, 0), (1,))


def test_tree_explicit_paths():
    policy = parse_policy("tree(paths=0.0.0|1|0.1)")
    p = policy.plan_verify(view_from_probs(np.full((7, 4), 0.25)))
    assert p.paths == ((0, 0, 0), (1,), (0, 1))
    assert trie_nodes(p.paths) == [(-1, 1, 0), (0, 2, 0), (1, 3, 0), (-1, 1, 1), (0, 2, 1)]
    assert policy.state() == {"tree_nodes": 5} and policy.max_rank() == 1
    # cut to the block: b = 3 has offsets 1..2
    short = policy.plan_verify(view_from_probs(np.full((2, 4), 0.25)))
    assert short.paths == ((0, 0), (1,), (0, 1)) and len(trie_nodes(short.paths)) == 4
    assert parse_policy("tree(paths= 0.10 | 2 )").verify.spec() == "tree(topk=2, depth=5, paths=0.10|2)"
    assert parse_policy("tree(paths=0.10|2)").max_rank() == 10
    assert parse_policy("tree(topk=3)").max_rank() == 2


# -- candidates
# b = 7, k = 3. Cost of swapping the top-1 for the rank-1 token, ln(p1/p0):
# o1 -0.693, o2 -2.89, o3 -0.223, o4 -1.253, o5 -0.0225, o6 -2.079.
CAND_PROBS = [[0.6, 0.3, 0.05], [0.9, 0.05, 0.02], [0.5, 0.4, 0.05], [0.7, 0.2, 0.05],
              [0.45, 0.44, 0.05], [0.8, 0.1, 0.05]]
CAND_VIEW = view_from_probs(CAND_PROBS)
G = (0, 0, 0, 0, 0, 0)


def cand_paths(spec, view=CAND_VIEW):
    return parse_policy(spec).plan_verify(view).paths


def test_branch_beam_keeps_the_likeliest_rank_assignments():
    # the best 4: greedy, swap o5, swap o3, swap both
    assert cand_paths("candidates") == (G, (0, 0, 0, 0, 1, 0), (0, 0, 1, 0, 0, 0),
                                         (0, 0, 1, 0, 1, 0))
    # depth 3: only o1..o3 branch: swap o3 (-0.22), o1 (-0.69), both (-0.92)
    assert cand_paths("candidates(depth=3)") == (G, (0, 0, 1, 0, 0, 0), (1, 0, 0, 0, 0, 0),
                                                  (1, 0, 1, 0, 0, 0))
    # margin: p1 - p2 is 0.1 at o3 and 0.01 at o5, at least 0.3 elsewhere
    assert cand_paths("candidates(margin=0.15)") == cand_paths("candidates")
    p = parse_policy("candidates(margin=0.05, verify=tree)").plan_verify(CAND_VIEW)
    assert p == VerifyPlan("tree", (G, (0, 0, 0, 0, 1, 0)))


def test_fixed_prefix_rank_changes_every_suffix_offset():
    # block positions 0..4 stay top-1 (offsets 1..4); candidate r uses rank r after
    assert cand_paths("candidates(mode=fixed_prefix_rank)") == (G, (0, 0, 0, 0, 1, 1))
    assert cand_paths("candidates(mode=fixed_prefix_rank, topk=3)") == (
        G, (0, 0, 0, 0, 1, 1), (0, 0, 0, 0, 2, 2))
    assert cand_paths("candidates(mode=fixed_prefix_rank, topk=3, prefix=1, max=2)") == (
        G, (1, 1, 1, 1, 1, 1))
    policy = parse_policy("candidates(mode=fixed_prefix_rank, topk=3, prefix=1, max=2)")
    assert policy.max_rank() == 1


def test_uncertainty_sparse_rank_changes_one_uncertain_offset_each():
    # from block position 5: offsets 5 and 6, o5 more uncertain; 1 + 2 * 1 = 3 candidates
    assert cand_paths("candidates(mode=uncertainty_sparse_rank)") == (
        G, (0, 0, 0, 0, 1, 0), (0, 0, 0, 0, 0, 1))
    # all offsets, the 2 most uncertain (o5, o3), ranks 1..2: o5r1, o5r2, o3r1 fill 4
    spec = "candidates(mode=uncertainty_sparse_rank, prefix=1, sparse_positions=2, topk=3)"
    assert cand_paths(spec) == (G, (0, 0, 0, 0, 1, 0), (0, 0, 0, 0, 2, 0), (0, 0, 1, 0, 0, 0))
    policy = parse_policy(spec)
    lp = CAND_VIEW.logprobs.astype(np.float64)
    scores = policy.verify.generate(CAND_VIEW, 4)
    total = lp[:, 0].sum()
    assert scores[3][1] == pytest.approx(total - lp[2, 0] + lp[2, 1])


def test_sample_draws_from_the_renormalised_topk_with_the_view_rng():
    # offsets 1 and 3 are certain; offset 2 is 50/50 between ranks 0 and 1
    probs = [[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]]
    view = view_from_probs(probs, rng=np.random.default_rng(7))
    paths = cand_paths("candidates(mode=sample, max=8)", view)
    # inverse CDF on the same draws: rank 1 at offset 2 when u >= 0.5
    u = np.random.default_rng(7).random((7, 3))
    drawn = [(0, int(x >= 0.5), 0) for x in u[:, 1]]
    assert paths == tuple(dict.fromkeys([(0, 0, 0)] + drawn))
    assert set(paths) == {(0, 0, 0), (0, 1, 0)}
    # a cold temperature makes 0.6 / 0.4 a certainty: only greedy remains -> chain
    cold = view_from_probs([[0.6, 0.4]] * 3, rng=np.random.default_rng(1))
    assert parse_policy("candidates(mode=sample, temperature=0.01, max=8)").plan_verify(
        cold) == VerifyPlan.chain(4)
    # same seed, same candidates
    a = cand_paths("candidates(mode=sample, topk=3)",
                   view_from_probs(CAND_PROBS, rng=np.random.default_rng(3)))
    b = cand_paths("candidates(mode=sample, topk=3)",
                   view_from_probs(CAND_PROBS, rng=np.random.default_rng(3)))
    assert a == b and a[0] == G and max(max(p) for p in a) <= 2


def test_adaptive_budget_rule():
    rule = dict(budgets=(1, 4, 8), thresholds=(0.85, 0.65), warmup=4, probe=16, cap=8)
    assert [adaptive_budget(c, 1.0, **rule) for c in range(4)] == [8, 8, 8, 8]   # warmup
    assert adaptive_budget(5, 0.9, **rule) == 1
    assert adaptive_budget(5, 0.85, **rule) == 1
    assert adaptive_budget(5, 0.7, **rule) == 4
    assert adaptive_budget(5, 0.5, **rule) == 8
    assert adaptive_budget(16, 0.9, **rule) == 8                                 # probe
    assert adaptive_budget(5, 0.5, **{**rule, "cap": 4}) == 4


def test_candidates_adaptive_budget_follows_previous_acceptance():
    policy = parse_policy("candidates(adaptive=true, max=8, adaptive_warmup=1)")
    view = view_from_probs(CAND_PROBS)
    assert len(policy.plan_verify(view).paths) == 8       # warmup: high budget
    assert policy.state()["cand_budget"] == 8
    policy.observe(outcome(0, 7, 7, chosen_path=2))       # tau/b = 1 -> low budget 1
    assert policy.plan_verify(view) == VerifyPlan.chain(7)
    assert policy.state() == {"cand_n": 1, "cand_budget": 1, "cand_chosen": 2}
    policy.observe(outcome(1, 7, 5))                      # 0.71 -> mid budget 4
    assert len(policy.plan_verify(view).paths) == 4
    policy.observe(outcome(2, 7, 1))                      # 0.14 -> high budget 8
    assert len(policy.plan_verify(view).paths) == 8


def test_candidates_are_whole_blocks_and_report_their_ranks():
    p = parse_policy("candidates(verify=tree, max=8)").plan_verify(CAND_VIEW)
    assert p.mode == "tree" and all(len(x) == 6 for x in p.paths)
    assert len(set(p.paths)) == len(p.paths) == 8
    batch = parse_policy("candidates(max=3)").plan_verify(CAND_VIEW)
    assert batch.mode == "batch" and batch.batch() == 3 and batch.verify_tokens() == 21
    assert parse_policy("candidates(topk=3)").max_rank() == 2
    assert math.isfinite(parse_policy("candidates").verify.generate(CAND_VIEW, 4)[1][1])
