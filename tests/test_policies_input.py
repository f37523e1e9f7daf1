"""Draft-input policies: recycle seed offsets and refine request fields."""
from specreplay.policies import DraftRequest, parse_policy
from test_policies_helpers import ctx, outcome, view_from_probs

# The previous cycle started at 10 with b = 8 and ended with tau = 3 (2 accepted plus
# the bonus), so the next cycle starts at 13. Its top-1 token at old offset j is 100*j
# (view_from_probs' ids). Old offset j proposed S[10 + j] = new offset j - 3: offsets
# 4..7 are left over and land on new offsets 1..4. Old offset 3 sat where the bonus
# token now is (the new anchor); the seed script put it at new offset 1.
PREV_PROBS = [[0.9, 0.05], [0.9, 0.05], [0.6, 0.3], [0.9, 0.05], [0.5, 0.45],
              [0.8, 0.1], [0.7, 0.2]]
PREV_VIEW = view_from_probs(PREV_PROBS, start=10)
PREV = outcome(4, 8, 3, start=10)


def request(spec, prev_view=PREV_VIEW, prev=PREV, start=13):
    return parse_policy(spec).plan_draft(ctx(5, start=start, prev_view=prev_view,
                                             prev_outcome=prev))


def test_recycle_dense_places_leftovers_at_their_new_offsets():
    req = request("fixed(b=8)+recycle(mode=dense)")
    assert req.seeds == ((1, 400), (2, 500), (3, 600), (4, 700))
    assert 300 not in dict(req.seeds).values()          # the seed script's off-by-one
    assert req.prev_offset == 3 and req.block_size == 8
    assert req.probe == "recycle(mode=dense, max=-1, min_margin=-1.0)"


def test_recycle_sparse_seeds_only_even_new_offsets():
    req = request("fixed(b=8)+recycle")
    assert req.seeds == ((2, 500), (4, 700))
    assert req.probe == "recycle(mode=sparse, max=-1, min_margin=-1.0)"


def test_recycle_max_and_margin():
    assert request("fixed(b=8)+recycle(mode=dense, max=2)").seeds == ((1, 400), (2, 500))
    assert request("fixed(b=8)+recycle(mode=sparse, max=1)").seeds == ((2, 500),)
    # old top-1 minus top-2 margins at old offsets 4..7: 0.85, 0.05, 0.7, 0.5
    assert request("fixed(b=8)+recycle(mode=dense, min_margin=0.6)").seeds == (
        (1, 400), (3, 600))
    assert request("fixed(b=8)+recycle(mode=dense, min_margin=0.0)").seeds == (
        (1, 400), (2, 500), (3, 600), (4, 700))


def test_recycle_other_shifts():
    # tau = 1: nothing accepted; old offsets 2..7 land on new offsets 1..6
    req = request("fixed(b=8)+recycle(mode=dense)", prev=outcome(4, 8, 1, start=10),
                  start=11)
    assert req.seeds == tuple((j - 1, 100 * j) for j in range(2, 8)) and req.prev_offset == 1
    # tau = 6: only old offset 7 is left, on new offset 1 (odd: sparse seeds nothing)
    prev = outcome(4, 8, 6, start=10)
    assert request("fixed(b=8)+recycle(mode=dense)", prev=prev, start=16).seeds == ((1, 700),)
    plain = request("fixed(b=8)+recycle(mode=sparse)", prev=prev, start=16)
    assert plain == DraftRequest(block_size=8)


def test_recycle_needs_the_same_block_size_and_leftovers():
    assert request("fixed(b=12)+recycle(mode=dense)") == DraftRequest(block_size=12)
    full = outcome(4, 8, 8, start=10)                 # everything accepted
    assert request("fixed(b=8)+recycle(mode=dense)", prev=full, start=18) == \
        DraftRequest(block_size=8)
    assert request("fixed(b=8)+recycle", prev_view=None, prev=None) == \
        DraftRequest(block_size=8)
    policy = parse_policy("fixed(b=8)+recycle(mode=dense)")
    assert policy.probes() == ("recycle(mode=dense, max=-1, min_margin=-1.0)",)
    assert policy.max_rank() == 0 and not policy.uses_time()


def test_recycle_is_skipped_for_autoregressive_cycles():
    assert request("ar+recycle(mode=dense)") == DraftRequest(block_size=1)


def test_refine_request_fields():
    req = parse_policy("fixed(b=16)+refine(steps=3, only_below=0.5)").plan_draft(ctx(0))
    assert req == DraftRequest(block_size=16, refine_steps=2, refine_only_below=0.5,
                               probe="refine(steps=3, only_below=0.5)")
    assert parse_policy("refine").probes() == ("refine(steps=2, only_below=0.5)",)
    assert parse_policy("refine(steps=1)").plan_draft(ctx(0)) == DraftRequest(block_size=16)
    assert parse_policy("refine(steps=1)").probes() == ()

