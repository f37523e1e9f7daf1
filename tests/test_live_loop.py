"""The decode loop on CPU float32: every policy and action gives exactly plain greedy
output; KV caches are cut back to the committed length; a packed tree gives each node
the logits of its path verified alone."""
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.live

from specreplay.live.loop import Decoder, LoopConfig, cache_length  # noqa: E402
from specreplay.live.verify import verify_nodes  # noqa: E402
from specreplay.models.draft import crop_cache  # noqa: E402
from specreplay.models.loading import cache_kwargs  # noqa: E402
from specreplay.policies import parse_policy, trie_nodes  # noqa: E402
from live_pair import PROMPTS, hf_greedy, tiny_pair  # noqa: E402

MAX_NEW = 40
SPECS = [
    "ar", "fixed(b=2)", "fixed(b=4)", "fixed", "fixed(b=11)",
    "fixed(b=6)+gate(min_prob=0.3)", "fixed(b=8)+gate(mode=score, budget=1.0)",
    "fixed(b=6)+tree(topk=2, depth=3)", "fixed(b=5)+tree(paths=0.0.0|1|0.1|2.0)",
    "candidates(mode=branch_beam, depth=3, verify=batch)",
    "candidates(mode=branch_beam, depth=3, verify=tree)",
    "candidates(mode=fixed_prefix_rank, prefix=2, verify=batch)",
    "candidates(mode=fixed_prefix_rank, prefix=2, verify=tree)",
    "candidates(mode=uncertainty_sparse_rank, prefix=1, verify=batch)",
    "candidates(mode=uncertainty_sparse_rank, prefix=1, verify=tree)",
    "candidates(mode=sample, topk=4, max=4, verify=batch)",
    "candidates(mode=sample, topk=4, max=4, verify=tree)",
    "fixed(b=6)+recycle(mode=dense)", "fixed(b=6)+recycle(mode=sparse, max=2)",
    "refine(steps=2)", "fixed(b=6)+refine(steps=3, only_below=0.5)",
    "ewma(candidates=4|6|8, probe=3)", "breakeven(candidates=4|8)",
    "ewma(candidates=4|6|8)+tree(topk=2, depth=2)",
]


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.fixture(scope="module")
def reference(pair):
    target, _ = pair
    stop = hf_greedy(target, PROMPTS[1], MAX_NEW)[20]  # a token the output really emits
    return stop, [hf_greedy(target, p, MAX_NEW) for p in PROMPTS], hf_greedy(target, PROMPTS[1], MAX_NEW, stop)


@pytest.mark.parametrize("spec", SPECS)
def test_greedy_equals_plain_ar(pair, reference, spec):
    target, draft = pair
    stop, refs, stopped = reference
    dec = Decoder(target, draft, parse_policy(spec), LoopConfig(max_new_tokens=MAX_NEW))
    for i, (prompt, ref) in enumerate(zip(PROMPTS, refs)):
        res = dec.run(i, prompt)
        assert res.output_ids == ref, spec
        assert res.stop_reason == "max_new_tokens"
        # cycles chain: each starts where the last one's committed tokens end
        starts = [c["start"] for c in res.cycles]
        assert starts[0] == 0 and starts[-1] + res.cycles[-1]["committed"] == len(ref) - 1
        assert all(a + c["committed"] == b for a, b, c in zip(starts, starts[1:], res.cycles))
    dec = Decoder(target, draft, parse_policy(spec), LoopConfig(max_new_tokens=MAX_NEW, stop_token_ids=(stop,)))
    res = dec.run(1, PROMPTS[1])
    assert res.output_ids == stopped and res.stop_reason == "eos"


def test_the_tiny_pair_accepts_drafts(pair):
    """Guard for the tests above: with this pair real acceptance happens, on chains and
    off the top-1 path of trees."""
    target, draft = pair
    chain = Decoder(target, draft, parse_policy("fixed(b=6)"), LoopConfig(max_new_tokens=MAX_NEW)).run(0, PROMPTS[0])
    assert max(c["accepted"] for c in chain.cycles) >= 2
    tree = Decoder(target, draft, parse_policy("fixed(b=6)+tree(topk=3, depth=3)"),
                   LoopConfig(max_new_tokens=MAX_NEW)).run(0, PROMPTS[0])
    assert any(c["chosen_path"] > 0 and c["accepted"] > 0 for c in tree.cycles)


@pytest.mark.parametrize("spec", ["fixed(b=6)", "fixed(b=6)+gate(min_prob=0.3)",
                                  "candidates(mode=branch_beam, depth=3, topk=3, verify=batch)",
                                  "fixed(b=6)+tree(topk=3, depth=3)", "refine(steps=2)"])
def test_kv_caches_hold_the_committed_tokens(pair, spec):
    target, draft = pair
    dec = Decoder(target, draft, parse_policy(spec), LoopConfig(max_new_tokens=MAX_NEW))
    state = dec.begin(0, PROMPTS[0])
    P = len(PROMPTS[0])
    assert cache_length(state.target_cache) == P
    while True:
        context_len = state.context_len
        more = dec.step(state)
        # the target holds prompt + S[:start] of the next cycle; the draft the context it saw
        assert cache_length(state.target_cache) == P + state.start
        assert state.target_cache.layers[0].keys.shape[0] == 1
        assert cache_length(state.draft_cache) == context_len
        assert state.pending.shape[1] == state.context_len - context_len
        if not more:
            break


def test_packed_tree_logits_equal_each_path_alone(pair):
    """One tree pass with the ancestor-only mask gives every node the logits of its
    root-to-node path verified as a chain; the kept KV then equals the chain's."""
    from transformers import DynamicCache
    from specreplay.live.verify import keep_committed
    target, draft = pair
    prompt = PROMPTS[0]
    paths = ((0, 0, 0), (1,), (0, 1), (2, 0, 1), (1, 2))
    nodes = trie_nodes(paths)
    tokens = [(3 * d + 5 * r + 1) % 11 for _, d, r in nodes]
    anchor, L = 7, len(prompt)

    def fresh():
        cache = DynamicCache(config=target.config)
        target(input_ids=torch.tensor([prompt]), **cache_kwargs(target, cache), use_cache=True)
        return cache

    with torch.inference_mode():
        cache = fresh()
        tree = verify_nodes(target, draft, cache, "tree", paths, anchor, tokens, L, True)
        for i, path in enumerate(paths):
            ids = [tokens[j] for j in tree.path_nodes(i)]
            alone = fresh()
            chain = verify_nodes(target, draft, alone, "chain", ((0,) * len(ids),), anchor, ids, L, True)
            rows = [0] + [j + 1 for j in tree.path_nodes(i)]
            torch.testing.assert_close(tree.node_logits[rows], chain.node_logits, atol=1e-5, rtol=1e-5)
        # keep path 3 with 2 accepted tokens: the cache equals the chain's over those tokens
        keep = fresh()
        tree = verify_nodes(target, draft, keep, "tree", paths, anchor, tokens, L, True)
        feats = keep_committed(keep, tree, 3, 2, L)
        ids = [tokens[j] for j in tree.path_nodes(3)]
        alone = fresh()
        chain = verify_nodes(target, draft, alone, "chain", ((0,) * 3,), anchor, ids, L, True)
        crop_cache(alone, L + 3)
        assert cache_length(keep) == L + 3
        for a, b in zip(keep.layers, alone.layers):
            torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)
        # hidden features are unnormalised sums over layers: a tree and a chain reduce in a
        # different order, so they agree to float32 rounding of their own scale, not to 1e-5
        torch.testing.assert_close(feats, chain.features[:, :3], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["hf", "graph"])
def test_a_samples_cycles_add_up_to_its_decode_seconds(pair, backend):
    """Host work between cycles (here a policy whose observe takes 10 ms) is in the next
    cycle's host part: the cycles account for the whole decode, as the simulator, which
    sums cycles, assumes; a clock that starts each cycle afresh loses it."""
    import time
    target, draft = pair
    dec = Decoder(target, draft, parse_policy("fixed(b=4)"), LoopConfig(max_new_tokens=24), backend=backend)
    observe = dec.policy.observe
    nap = 0.010

    def slow(outcome):
        time.sleep(nap)
        observe(outcome)
    dec.policy.observe = slow
    res = dec.run(0, PROMPTS[0])
    cycles = res.cycles
    assert len(cycles) >= 6
    missing = res.decode_s - sum(c["cycle_s"] for c in cycles)
    # only the last cycle's observe falls after its end (the sample's tail); losing every
    # cycle's would miss len(cycles) - 1 naps more
    assert 0 <= missing < 2 * nap
    assert all(c["overhead_s"] >= nap for c in cycles[1:])


@pytest.mark.parametrize("backend", ["hf", "graph"])
@pytest.mark.parametrize("capture", [False, True])
def test_recording_runs_after_a_cycles_end(pair, backend, capture):
    """A cycle's recording (its top-k rows) is launched after the cycle's end, so its
    host work is the next cycle's host part; a graph captured while recording (here a
    25 ms nap booked as capture seconds) is in no cycle and out of the decode seconds."""
    import time
    target, draft = pair
    dec = Decoder(target, draft, parse_policy("fixed(b=4)"), LoopConfig(max_new_tokens=24), backend=backend)
    record_topk = dec.backend.record_topk
    nap = 0.025

    def slow(logits, k):
        time.sleep(nap)
        if capture:
            dec.backend.capture_s["record"] += nap
        return record_topk(logits, k)
    dec.backend.record_topk = slow
    try:
        res = dec.run(0, PROMPTS[0])
    finally:
        dec.backend.record_topk = record_topk
    cycles = res.cycles
    assert len(cycles) >= 6
    missing = res.decode_s - sum(c["cycle_s"] for c in cycles)
    if capture:
        assert all(c["overhead_s"] < nap for c in cycles)
        assert abs(missing) < nap
    else:
        # two record calls a cycle (target and draft rows): the first cycle has none
        # before it, and the last cycle's fall after its end, into the sample's tail
        assert cycles[0]["overhead_s"] < 2 * nap
        assert all(c["overhead_s"] >= 2 * nap for c in cycles[1:])
        assert 2 * nap <= missing < 4 * nap


def test_a_progress_display_and_another_request_are_not_a_cycles_host_time(pair):
    """What the caller does between cycles is not the decode's: a progress callback is
    out of the next cycle and out of the decode seconds; a request stepped in between
    (one decoder, two states in turn) is not charged to the other's cycle."""
    import time
    target, draft = pair
    nap = 0.020
    dec = Decoder(target, draft, parse_policy("fixed(b=4)"), LoopConfig(max_new_tokens=16), backend="hf")
    res = dec.run(0, PROMPTS[0], progress=lambda state: time.sleep(nap))
    assert all(c["overhead_s"] < nap for c in res.cycles)
    assert 0 <= res.decode_s - sum(c["cycle_s"] for c in res.cycles) < nap
    a, b = dec.begin(0, PROMPTS[0]), dec.begin(1, PROMPTS[1])
    for _ in range(4):
        for state in (a, b):
            dec.step(state)
            time.sleep(nap)
    assert all(c["overhead_s"] < nap for s in (a, b) for c in s.cycles)
