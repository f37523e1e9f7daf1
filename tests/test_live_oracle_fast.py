"""The oracle's fast path: context K/V projected once per sample and shared by every
block, blocks batched over that one copy, equal blocks drafted once, ranks computed for
all rows at once; and still the numbers of the cache-free single-block pass."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.live

from specreplay.live.drafting import block_input, topk_logprobs  # noqa: E402
from specreplay.live.oracle import Oracle, default_probe_keys  # noqa: E402
from specreplay.traces.schema import RANK_BEYOND_END, RANK_NOT_IN_TOPK  # noqa: E402
from live_pair import PROMPTS, tiny_pair  # noqa: E402

OUTPUT = [3, 7, 7, 1, 0, 5, 9, 9, 2, 4, 6, 8, 10, 3, 3, 5, 1, 2]


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


def test_context_kv_is_computed_once_per_sample(pair, monkeypatch):
    target, draft = pair
    calls = {"context_kv": 0, "blocks": 0}
    real_kv, real_blocks = draft.context_kv, draft.forward_blocks

    def counting_kv(context):
        calls["context_kv"] += 1
        return real_kv(context)

    def counting_blocks(context, *a, **kw):
        assert not torch.is_tensor(context), "forward_blocks got raw features: K/V re-projected"
        calls["blocks"] += 1
        return real_blocks(context, *a, **kw)
    monkeypatch.setattr(draft, "context_kv", counting_kv)
    monkeypatch.setattr(draft, "forward_blocks", counting_blocks)
    probes = default_probe_keys(["recycle", "refine(steps=3, only_below=0.9)"])
    rows, _ = Oracle(target, draft, [4, 6], 4, probes, 32).rows(0, PROMPTS[0], OUTPUT)
    assert calls["context_kv"] == 1
    assert calls["blocks"] >= 2 * (1 + len(probes))  # every size and probe read that one copy
    assert {r["probe"] for r in rows} == {"", *probes}


def test_rows_equal_the_cache_free_pass_of_each_block(pair):
    """Each oracle row is, by definition, one cache-free draft forward with context rows
    [0, P+p) and the block at positions P+p..; the batched shared-context pass must give
    the same top-k ids and (float16-rounded) log-probs."""
    target, draft = pair
    P = len(PROMPTS[1])
    rows, _ = Oracle(target, draft, [5, 8], 4).rows(1, PROMPTS[1], OUTPUT)
    ids = torch.tensor([PROMPTS[1] + OUTPUT])
    with torch.inference_mode():
        feats = draft.context_features(target(input_ids=ids, output_hidden_states=True).hidden_states)
        for row in rows:
            p, b = row["start"], row["block_size"]
            block = torch.tensor([block_input(OUTPUT[p], b, draft.mask_token_id)])
            hidden = draft(block, feats[:, :P + p], torch.arange(P + p + b)[None])
            want_ids, want_lps = topk_logprobs(draft.logits(hidden[0, 1:]).float(), 4)
            assert row["draft_ids"] == want_ids.reshape(-1).tolist(), (p, b)
            got = np.asarray(row["draft_logprobs"], np.float32)
            ulp = np.abs(np.spacing(want_lps.reshape(-1).astype(np.float16))).astype(np.float32)
            assert np.all(np.abs(got - want_lps.reshape(-1)) <= ulp), (p, b)


def test_equal_blocks_are_drafted_once_and_keep_their_order(pair, monkeypatch):
    target, draft = pair
    oracle = Oracle(target, draft, [6], 4)
    P = len(PROMPTS[0])
    with torch.inference_mode():
        ids = torch.tensor([PROMPTS[0] + OUTPUT])
        kv = draft.context_kv(draft.context_features(target(input_ids=ids, output_hidden_states=True).hidden_states))
        blocks = [(p, block_input(OUTPUT[p], 6, draft.mask_token_id)) for p in (0, 4, 0, 9, 4)]
        seen = []
        real = draft.forward_blocks
        monkeypatch.setattr(draft, "forward_blocks", lambda c, a, b, **kw: seen.append(len(a)) or real(c, a, b, **kw))
        top_ids, top_lps = oracle._propose(kv, P, blocks, 6)
        alone = [oracle._propose(kv, P, [blk], 6) for blk in blocks]
    assert seen[0] == 3
    for j, (i, lp) in enumerate(alone):
        assert np.array_equal(top_ids[j], i[0]) and np.array_equal(top_lps[j], lp[0])


def test_vectorised_ranks_equal_the_definition():
    rng = np.random.default_rng(0)
    S = rng.integers(0, 6, size=20).tolist()
    b, k = 6, 3
    starts = list(range(len(S) - 1))
    ids = rng.integers(0, 6, size=(len(starts), b - 1, k)).astype(np.int32)
    lps = rng.normal(size=ids.shape).astype(np.float32)
    rows = Oracle._rows(None, 0, b, "p", starts, [2] * len(starts), ids, lps, S)
    for row, p in zip(rows, starts):
        want = []
        for i in range(1, b):
            if p + i >= len(S):
                want.append(RANK_BEYOND_END)
                continue
            hit = np.flatnonzero(ids[p, i - 1] == S[p + i])
            want.append(int(hit[0]) if hit.size else RANK_NOT_IN_TOPK)
        assert row["true_rank"] == want
        assert row["draft_ids"] == ids[p].reshape(-1).tolist() and row["prev_offset"] == 2
        assert row["draft_logprobs"].dtype == np.float16
    assert any(RANK_NOT_IN_TOPK in r["true_rank"] for r in rows)
    assert any(0 in r["true_rank"] for r in rows)
