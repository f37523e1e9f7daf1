"""Conformance with the authors' reference package ``dflash`` 0.1.0: a checkpoint it
writes loads into our draft with identical logits, and its decode loop and a greedy
DFlash loop on our draft produce identical tokens and acceptance lengths (CPU, float32).

The greedy loop below is a compact restatement of the DFlash cycle for this comparison
only (it truncates the last block at the tail, as the reference does); the product's
decode loop lives in ``live/``.
"""
import time

import pytest

torch = pytest.importorskip("torch")
ref = pytest.importorskip("dflash.model")

from transformers import DynamicCache, Qwen3Config  # noqa: E402

from specreplay.models.draft import DFlashDraftModel, crop_cache, new_cache  # noqa: E402
from specreplay.models.loading import build_tiny_pair, cache_kwargs  # noqa: E402

pytestmark = pytest.mark.live
ATOL = 1e-5


@pytest.fixture(scope="module")
def target():
    return build_tiny_pair(seed=5)[0]


def _reference_draft(layer_types=None, sliding_window=None, seed=0, is_causal=None):
    """A random draft built by the reference package's own constructor."""
    config = Qwen3Config(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, initializer_range=0.2,
        num_target_layers=6, layer_types=layer_types, use_sliding_window=sliding_window is not None,
        sliding_window=sliding_window, max_window_layers=0)
    config.dflash_config = {"mask_token_id": 95, "target_layer_ids": [1, 2, 4], "block_size": 8}
    if is_causal is not None:
        config.is_causal = is_causal
    torch.manual_seed(seed)
    return ref.DFlashDraftModel(config).float().eval()


def _reference_pass(draft, target, block, context, positions, cache=None):
    noise = torch.nn.functional.embedding(block, target.get_input_embeddings().weight)
    hidden = draft(target_hidden=context, noise_embedding=noise, position_ids=positions,
                   past_key_values=cache, use_cache=cache is not None)
    return draft.compute_logits(hidden, target.lm_head)


def _context(target, draft_layer_ids, n=30, seed=1):
    ids = torch.randint(0, 95, (1, n), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        hidden = target(ids, output_hidden_states=True).hidden_states
    return ref.extract_context_feature(hidden, draft_layer_ids), ids


def test_reference_checkpoint_gives_identical_logits(tmp_path, target):
    reference = _reference_draft()
    reference.save_pretrained(tmp_path, max_shard_size="50KB")  # sharded, with an index
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = DFlashDraftModel.from_pretrained(tmp_path).bind_target(target)
    assert ours.target_layer_ids == [1, 2, 4] and ours.block_size == 8 and ours.mask_token_id == 95
    context, ids = _context(target, reference.target_layer_ids)
    block = torch.tensor([[int(ids[0, 17])] + [95] * 7])
    ref_cache, our_cache = DynamicCache(), new_cache()
    with torch.no_grad():
        # first call: 18 context rows; second call: 12 more rows, as after a verify step
        for lo, hi in ((0, 18), (18, 30)):
            positions = torch.arange(lo, hi + 8)[None]
            expected = _reference_pass(reference, target, block, context[:, lo:hi], positions, ref_cache)
            ref._crop_to(ref_cache, hi)
            got = ours.logits(ours(block, context[:, lo:hi], positions, past_key_values=our_cache))
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
        assert our_cache.get_seq_length() == ref_cache.get_seq_length() == 30
        # and the all-blocks pass agrees with the reference's cache-free pass
        anchors = torch.tensor([0, 11, 30])
        blocks = torch.full((3, 8), 95)
        blocks[:, 0] = torch.tensor([3, 4, 5])
        together = ours.logits(ours.forward_blocks(context, anchors, blocks))
        for j, a in enumerate(anchors.tolist()):
            expected = _reference_pass(reference, target, blocks[j:j + 1], context[:, :a], torch.arange(a + 8)[None])
            torch.testing.assert_close(together[j:j + 1], expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("is_causal, window", [(None, 6), (False, 5)])
def test_reference_sliding_checkpoint_gives_identical_logits(tmp_path, target, is_causal, window):
    """Newer checkpoints: a sliding layer windowed over context, causal inside the block
    unless a top-level is_causal says otherwise."""
    reference = _reference_draft(["sliding_attention", "full_attention"], window, seed=2, is_causal=is_causal)
    reference.save_pretrained(tmp_path)
    ours = DFlashDraftModel.from_pretrained(tmp_path).bind_target(target)
    assert ours.layers[0].self_attn.sliding_window == window
    assert ours.layers[0].self_attn.block_causal == (is_causal is None)
    context, ids = _context(target, reference.target_layer_ids, n=20)
    block = torch.tensor([[int(ids[0, 5])] + [95] * 7])
    with torch.no_grad():
        expected = _reference_pass(reference, target, block, context, torch.arange(28)[None])
        got = ours.logits(ours(block, context, torch.arange(28)[None]))
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def greedy_dflash(draft, target, prompt, max_new_tokens, stop_ids=()):
    """Greedy DFlash decoding with our draft: returns (output tokens, tokens committed
    per cycle). Prefill; then per cycle: draft [anchor, MASK...] with the context of the
    tokens committed since the last cycle, verify the block with the target, accept the
    leading drafts equal to the target's argmax plus the bonus token, cap at
    max_new_tokens and the first stop token, cut the target cache back."""
    n = prompt.shape[1]
    max_length = n + max_new_tokens
    target_cache, draft_cache = DynamicCache(), new_cache()
    out = target(prompt, **cache_kwargs(target, target_cache), use_cache=True, output_hidden_states=True)
    tokens = prompt[0].tolist() + [int(out.logits[0, -1].argmax())]
    context = draft.context_features(out.hidden_states)
    start, committed = n, []
    stopped = tokens[start] in stop_ids
    while start + 1 < max_length and not stopped:
        size = min(draft.block_size, max_length - start)
        block = [tokens[start]] + [draft.mask_token_id] * (size - 1)
        if size > 1:
            positions = torch.arange(start - context.shape[1], start + size)[None]
            hidden = draft(torch.tensor([block]), context, positions, past_key_values=draft_cache)
            block[1:] = draft.logits(hidden[:, 1:]).argmax(-1)[0].tolist()
        out = target(torch.tensor([block]), position_ids=torch.arange(start, start + size)[None],
                     **cache_kwargs(target, target_cache), use_cache=True, output_hidden_states=True)
        posterior = out.logits[0].argmax(-1).tolist()
        accepted = 0
        while accepted < size - 1 and block[accepted + 1] == posterior[accepted]:
            accepted += 1
        new = block[1:accepted + 1] + [posterior[accepted]]
        produced = min(accepted + 1, max_length - start - 1)
        for i, token in enumerate(new[:produced]):
            if token in stop_ids:
                produced, stopped = i + 1, True
                break
        tokens = tokens[:start + 1] + new[:produced]
        start += produced
        crop_cache(target_cache, start)
        context = draft.context_features(out.hidden_states)[:, :produced]
        committed.append(produced)
    return tokens[n:min(start + 1, max_length)], committed


def greedy_ar(target, prompt, max_new_tokens, stop_ids=()):
    """Plain autoregressive greedy decoding with a KV cache."""
    cache = DynamicCache()
    logits = target(prompt, **cache_kwargs(target, cache), use_cache=True).logits
    tokens = []
    for _ in range(max_new_tokens):
        tokens.append(int(logits[0, -1].argmax()))
        if tokens[-1] in stop_ids:
            break
        logits = target(torch.tensor([[tokens[-1]]]), **cache_kwargs(target, cache), use_cache=True).logits
    return tokens


@pytest.fixture(scope="module")
def decoding_pair(tmp_path_factory):
    """Our tiny pair, plus the same draft loaded by the reference package from our save
    (so this also checks that the reference reads what we write)."""
    target, ours = build_tiny_pair(seed=1, std=0.1)
    folder = tmp_path_factory.mktemp("draft")
    ours.save_pretrained(folder)
    return target, ours, ref.DFlashDraftModel.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("backend", ["hf", "graph"])
@pytest.mark.parametrize("prompt_seed, max_new_tokens", [(5, 45), (5, 38), (100, 45)])
def test_reference_decode_loop_matches_ours(monkeypatch, decoding_pair, prompt_seed, max_new_tokens, backend):
    # the reference's clock calls torch.cuda.synchronize(); on CPU use the plain clock
    monkeypatch.setattr(ref, "_cuda_time", time.perf_counter)
    target, ours, reference = decoding_pair
    prompt = torch.randint(0, 95, (1, 8), generator=torch.Generator().manual_seed(prompt_seed))
    with torch.no_grad():
        plain = greedy_ar(target, prompt, max_new_tokens)
        tokens, committed = greedy_dflash(ours, target, prompt, max_new_tokens)
        expected = ref.dflash_generate(reference, target, prompt, max_new_tokens, None, return_stats=True)
    assert tokens == expected.output_ids[0, 8:].tolist() == plain
    assert committed == expected.acceptance_lengths
    assert sum(committed) == max_new_tokens - 1  # S[0] comes from prefill
    # The product's loop: same tokens; same commits in every cycle but the last, where
    # it drafts the full block while the reference cuts the block to what fits.
    from specreplay.live.loop import Decoder, LoopConfig
    from specreplay.policies import parse_policy
    live = Decoder(target, ours, parse_policy(f"fixed(b={ours.block_size})"),
                   LoopConfig(max_new_tokens=max_new_tokens), backend=backend).run(0, prompt[0].tolist())
    live_committed = [c["committed"] for c in live.cycles]
    assert live.output_ids == plain
    assert live_committed[:-1] == expected.acceptance_lengths[:len(live_committed) - 1]
    if prompt_seed == 5:
        # this random pair and prompt fall into a stretch the draft predicts, so whole
        # blocks are accepted (and at 38 tokens the tail block is cut to 3)
        assert max(committed) == ours.block_size


def test_reference_decode_loop_matches_ours_at_a_stop_token(monkeypatch, decoding_pair):
    monkeypatch.setattr(ref, "_cuda_time", time.perf_counter)
    target, ours, reference = decoding_pair
    prompt = torch.randint(0, 95, (1, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = greedy_ar(target, prompt, 45)
        stop = plain[30]
        first = plain.index(stop)  # decoding ends at the first occurrence of the stop token
        tokens, committed = greedy_dflash(ours, target, prompt, 45, stop_ids=(stop,))
        expected = ref.dflash_generate(reference, target, prompt, 45, [stop], return_stats=True)
    assert tokens == plain[:first + 1] == expected.output_ids[0, 8:].tolist()
    assert committed == expected.acceptance_lengths
