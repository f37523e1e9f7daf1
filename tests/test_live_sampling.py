"""Temperature > 0: both acceptance schemes commit tokens distributed exactly as the
target's own samples (chi-square tests over many seeds on small vocabularies)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
stats = pytest.importorskip("scipy.stats")
pytestmark = pytest.mark.live

from specreplay.live.sampling import chain_rejection, multiround  # noqa: E402
from specreplay.policies import trie_nodes  # noqa: E402

V = 5


def _dist(gen, n=V, peak=None):
    p = torch.rand(n, generator=gen) + 0.05
    if peak is not None:
        p[peak] += 1.5
    return p / p.sum()


def _chi2(counts, expected_probs):
    counts = np.asarray(counts, float).ravel()
    exp = np.asarray(expected_probs, float).ravel() * counts.sum()
    keep = exp > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was committed"
    # the probabilities come in float32: their sum misses 1 by rounding, which scipy's
    # chisquare refuses (observed and expected totals must agree to 1.5e-8)
    exp = exp[keep] * (counts.sum() / exp[keep].sum())
    return stats.chisquare(counts[keep], exp).pvalue


@pytest.fixture(scope="module")
def tables():
    g = torch.Generator().manual_seed(1)
    p1 = _dist(g, peak=2)                                   # target, first token
    p2 = torch.stack([_dist(g, peak=(i + 1) % V) for i in range(V)])  # target, second | first
    q1, q2 = _dist(g, peak=0), _dist(g, peak=3)             # the draft's (off) guesses
    return p1, p2, q1, q2


def _second(acc, tokens, p2, first, gen):
    """The second committed token: from this cycle, or (when the cycle committed only
    one) the next cycle's exact target draw."""
    if acc.accepted >= 2:
        return tokens[1]
    if acc.accepted == 1:
        return acc.bonus
    return int(torch.multinomial(p2[first], 1, generator=gen))


def test_chain_rejection_sampling_is_exact(tables):
    p1, p2, q1, q2 = tables
    gen = torch.Generator().manual_seed(7)
    counts = np.zeros((V, V))
    for _ in range(12000):
        x1 = int(torch.multinomial(q1, 1, generator=gen))
        x2 = int(torch.multinomial(q2, 1, generator=gen))
        p_rows = torch.stack([p1, p2[x1], p2[x2]])
        acc = chain_rejection([x1, x2], p_rows, torch.stack([q1, q2]), gen)
        first = x1 if acc.accepted >= 1 else acc.bonus
        counts[first, _second(acc, [x1, x2], p2, first, gen)] += 1
    assert _chi2(counts, p1[:, None] * p2) > 1e-3


def test_multiround_over_fixed_candidates_is_exact(tables):
    p1, p2, _, _ = tables
    paths = ((0, 0), (1, 1), (2,))
    tokens_of = {(0,): 2, (0, 0): 3, (1,): 0, (1, 1): 1, (2,): 4}  # fixed candidates per node
    nodes = trie_nodes(paths)
    keys, node_tokens = [], []
    for j, (parent, d, r) in enumerate(nodes):
        key = (keys[parent] if parent >= 0 else ()) + (r,)
        keys.append(key)
        node_tokens.append(tokens_of[key])
    rows = [p1] + [p2[t] for t in node_tokens]
    probs = torch.stack(rows)
    gen = torch.Generator().manual_seed(3)
    counts = np.zeros((V, V))
    for _ in range(12000):
        acc = multiround(nodes, node_tokens, probs, paths, gen)
        path_tokens = [tokens_of[paths[acc.path][:d]] for d in range(1, len(paths[acc.path]) + 1)]
        first = path_tokens[0] if acc.accepted >= 1 else acc.bonus
        counts[first, _second(acc, path_tokens, p2, first, gen)] += 1
    assert _chi2(counts, p1[:, None] * p2) > 1e-3


@pytest.mark.parametrize("spec,sampling", [("fixed(b=4)", "rejection"),
                                           ("fixed(b=4)+tree(topk=3, depth=2)", "rejection"),
                                           ("fixed(b=4)", "multiround")])
def test_live_loop_samples_the_target_distribution(spec, sampling):
    """S[1] over many seeds, decoded through the whole loop (draft, verify, accept, cap
    at max_new_tokens=2), against the exact target marginal sum_s0 p(s0) p(s1 | s0)."""
    from specreplay.live.loop import Decoder, LoopConfig
    from specreplay.policies import parse_policy
    from tests.live_pair import PROMPTS, VOCAB, tiny_pair
    target, draft = tiny_pair()
    prompt = PROMPTS[1]
    T = 1.0
    with torch.inference_mode():
        logits = target(torch.tensor([prompt])).logits[0, -1]
        p0 = torch.softmax(logits / T, -1)
        nxt = target(torch.tensor([[*prompt, s] for s in range(VOCAB)])).logits[:, -1]
        marginal = (p0[:, None] * torch.softmax(nxt / T, -1)).sum(0).numpy()
    counts = np.zeros(VOCAB)
    accepted = 0
    for seed in range(700):
        dec = Decoder(target, draft, parse_policy(spec),
                      LoopConfig(max_new_tokens=3, temperature=T, seed=seed, sampling=sampling, record=False))
        res = dec.run(0, prompt)
        counts[res.output_ids[1]] += 1
        accepted += res.cycles[0]["accepted"]
    assert accepted > 0
    assert _chi2(counts, marginal) > 1e-3
