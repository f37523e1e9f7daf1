"""The DFlash draft on its own: the cached pass, the all-blocks pass, masks, config
parsing and the checkpoint round trip (float32, CPU, tiny random models)."""
import json

import pytest

torch = pytest.importorskip("torch")

from specreplay.models.checkpoint import CheckpointError, parse_size  # noqa: E402
from specreplay.models.draft import DFlashDraftModel, crop_cache, new_cache  # noqa: E402
from specreplay.models.draft_config import DraftConfig, DraftConfigError, build_target_layer_ids  # noqa: E402
from specreplay.models.loading import build_tiny_pair, tiny_draft_config  # noqa: E402

pytestmark = pytest.mark.live
ATOL = 1e-5


@pytest.fixture(scope="module")
def pair():
    return build_tiny_pair(seed=3)


@pytest.fixture(scope="module")
def features(pair):
    """Raw context features of a 40-token random sequence, and the sequence."""
    target, draft = pair
    ids = torch.randint(0, 95, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = target(ids, output_hidden_states=True).hidden_states
    return draft.context_features(hidden), ids


def _blocks(draft, ids, anchors, b, seeds=False):
    """[anchor, MASK...] blocks; with ``seeds`` some offsets hold real tokens (recycling)."""
    seq = torch.cat([ids[0], ids[0]])  # anchors may sit at T (the bonus position)
    blocks = torch.full((len(anchors), b), draft.mask_token_id)
    blocks[:, 0] = seq[anchors]
    if seeds:
        blocks[:, 2::2] = seq[anchors[:, None] + torch.arange(2, b, 2)]
    return blocks


def _single(draft, context, anchor, block, **kw):
    """The cache-free pass for one block: context rows [0, anchor), positions 0..anchor+b-1."""
    b = block.shape[-1]
    return draft(block[None], context[:, :anchor], torch.arange(anchor + b)[None], **kw)[0]


def test_build_target_layer_ids_spaces_taps_from_layer_1_to_L_minus_3():
    # L=36, 5 taps: span 32, step 8 -> 1, 9, ..., 33 (the shipped Qwen3-4B/8B config).
    assert build_target_layer_ids(36, 5) == [1, 9, 17, 25, 33]
    assert build_target_layer_ids(36, 1) == [18]
    assert build_target_layer_ids(6, 2) == [1, 3]


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
@pytest.mark.parametrize("seeds", [False, True])
def test_forward_blocks_equals_per_block_forward(pair, features, chunk_size, seeds):
    _, draft = pair
    context, ids = features
    b = 6
    anchors = torch.tensor([0, 1, 7, 20, 33, 39, 40])
    blocks = _blocks(draft, ids, anchors, b, seeds)
    with torch.no_grad():
        together = draft.forward_blocks(context, anchors, blocks, chunk_size=chunk_size)
        assert together.shape == (len(anchors), b, draft.config.hidden_size)
        for j, a in enumerate(anchors.tolist()):
            alone = _single(draft, context, a, blocks[j])
            torch.testing.assert_close(together[j], alone, atol=ATOL, rtol=0)


def test_forward_blocks_carries_gradients(pair, features):
    _, draft = pair
    context, ids = features
    anchors = torch.tensor([3, 10])
    hidden = draft.forward_blocks(context, anchors, _blocks(draft, ids, anchors, 4))
    draft.logits(hidden).logsumexp(-1).sum().backward()
    assert draft.fc.weight.grad is not None and draft.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    draft.zero_grad(set_to_none=True)


def test_cached_steps_equal_the_cache_free_pass(pair, features):
    """Context arriving over three calls (as committed tokens do) gives what one
    cache-free pass over all of it gives; block rows never enter the cache."""
    _, draft = pair
    context, ids = features
    b = 8
    block = _blocks(draft, ids, torch.tensor([30]), b)
    cache = new_cache()
    with torch.no_grad():
        for lo, hi in ((0, 12), (12, 13), (13, 30)):
            step = draft(block, context[:, lo:hi], torch.arange(lo, hi + b)[None], past_key_values=cache)
            assert cache.get_seq_length() == hi
        refine = draft(block, None, torch.arange(30, 30 + b)[None], past_key_values=cache)
        assert cache.get_seq_length() == 30
        alone = _single(draft, context, 30, block[0])
    torch.testing.assert_close(step[0], alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(refine[0], alone, atol=ATOL, rtol=0)
    crop_cache(cache, 25)
    assert cache.get_seq_length() == 25
    crop_cache(cache, 40)
    assert cache.get_seq_length() == 25


def test_attention_mask_hiding_late_context_equals_an_earlier_anchor(pair, features):
    """Keys hidden by the mask count for nothing: a pass over all 40 context rows with
    rows >= a masked equals the block at anchor a."""
    _, draft = pair
    context, ids = features
    a, b = 17, 5
    block = _blocks(draft, ids, torch.tensor([a]), b)
    visible = torch.ones(1, 1, b, 40 + b, dtype=torch.bool)
    visible[..., a:40] = False
    positions = torch.cat([torch.arange(40), torch.arange(a, a + b)])[None]
    with torch.no_grad():
        masked = draft(block, context, positions, attention_mask=visible)
        all_visible = draft(block, context, positions, attention_mask=torch.ones_like(visible))
        unmasked = draft(block, context, positions)
        alone = _single(draft, context, a, block[0])
    torch.testing.assert_close(masked[0], alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(all_visible, unmasked, atol=ATOL, rtol=0)


def test_block_attention_is_bidirectional(pair, features):
    """Changing the last block row changes the first row's output (it could not under a
    causal mask)."""
    _, draft = pair
    context, ids = features
    block = _blocks(draft, ids, torch.tensor([10]), 4)
    other = block.clone()
    other[0, -1] = 7
    with torch.no_grad():
        h1 = _single(draft, context, 10, block[0])
        h2 = _single(draft, context, 10, other[0])
    assert (h1[0] - h2[0]).abs().max() > 1e-4


@pytest.mark.parametrize("is_causal, window", [(None, 5), (False, 3)])
def test_sliding_layers_agree_between_forward_and_forward_blocks(pair, features, is_causal, window):
    """A checkpoint with a sliding layer (causal inside the block by default, or
    bidirectional with a window narrower than the block): the all-blocks mask and the
    per-call mask describe the same visibility."""
    target, _ = pair
    context, ids = features
    d = tiny_draft_config(target.config, draft_layers=2).to_dict()
    d.update(layer_types=["sliding_attention", "full_attention"], sliding_window=window)
    if is_causal is not None:
        d["is_causal"] = is_causal
    draft = DFlashDraftModel(DraftConfig.from_dict(d))
    draft.init_weights(0.1, torch.Generator().manual_seed(1))
    draft.eval().bind_target(target)
    assert draft.layers[0].self_attn.block_causal == (is_causal is None)
    assert not draft.layers[1].self_attn.block_causal
    anchors = torch.tensor([0, 9, 31])
    blocks = _blocks(draft, ids, anchors, 6, seeds=True)
    with torch.no_grad():
        together = draft.forward_blocks(context, anchors, blocks, chunk_size=2)
        for j, a in enumerate(anchors.tolist()):
            torch.testing.assert_close(together[j], _single(draft, context, a, blocks[j]), atol=ATOL, rtol=0)
        # layer 1 is bidirectional over the whole block, so row 0 still sees the last row
        changed = blocks[1].clone()
        changed[-1] = 7
        assert (_single(draft, context, 9, blocks[1]) - _single(draft, context, 9, changed))[0].abs().max() > 1e-6


def test_save_and_load_round_trip_with_shards(tmp_path, pair, features):
    target, draft = pair
    context, ids = features
    draft.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and all((tmp_path / s).stat().st_size < 40_000 + 4096 for s in shards)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(draft.state_dict())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dflash_config"] == {"mask_token_id": 95, "target_layer_ids": [1, 3], "block_size": 8}
    assert config["architectures"] == ["DFlashDraftModel"] and config["block_size"] == 8

    loaded = DFlashDraftModel.from_pretrained(tmp_path).bind_target(target)
    for name, tensor in draft.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    anchors = torch.tensor([5, 22])
    blocks = _blocks(draft, ids, anchors, 8)
    with torch.no_grad():
        assert torch.equal(loaded.forward_blocks(context, anchors, blocks),
                           draft.forward_blocks(context, anchors, blocks))

    # a second save into the same folder as one file leaves no stale shards behind
    loaded.save_pretrained(tmp_path, max_shard_size="1GB")
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]


def test_dtype_on_load(tmp_path, pair):
    _, draft = pair
    draft.to(torch.bfloat16).save_pretrained(tmp_path)
    draft.to(torch.float32)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert DFlashDraftModel.from_pretrained(tmp_path).fc.weight.dtype == torch.bfloat16
    assert DFlashDraftModel.from_pretrained(tmp_path, dtype="float32").fc.weight.dtype == torch.float32


def test_old_config_layout_and_unknown_keys():
    """Top-level block_size/num_target_layers, rope_theta at the top, no target_layer_ids:
    the taps come from the formula; keys we do not use survive to_dict."""
    old = {
        "architectures": ["DFlashDraftModel"], "model_type": "qwen3", "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 50, "num_target_layers": 12,
        "block_size": 10, "rope_theta": 1000000, "dflash_config": {"mask_token_id": 49},
        "auto_map": {"AutoModel": "dflash.DFlashDraftModel"},
    }
    config = DraftConfig.from_dict(old)
    # L=12, n=3: round(1 + i*8/2) -> 1, 5, 9
    assert config.target_layer_ids == [1, 5, 9]
    assert config.block_size == 10 and config.mask_token_id == 49
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1000000}
    new = config.to_dict()
    assert new["auto_map"] == old["auto_map"] and "rope_theta" not in new
    assert new["dflash_config"] == {"mask_token_id": 49, "target_layer_ids": [1, 5, 9], "block_size": 10}
    assert DraftConfig.from_dict(new).to_dict() == new


@pytest.mark.parametrize("change, words", [
    ({"dflash_config": {}}, "no mask_token_id"),
    ({"architectures": ["DFlash2DraftModel"]}, "DFlash 2 checkpoint"),
    ({"hidden_size": None}, "hidden_size"),
])
def test_bad_configs_say_what_is_wrong(change, words):
    d = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
         "vocab_size": 50, "num_target_layers": 4, "dflash_config": {"mask_token_id": 49}}
    d.update(change)
    if d["hidden_size"] is None:
        del d["hidden_size"]
    with pytest.raises(DraftConfigError, match=words):
        DraftConfig.from_dict(d)


def test_parse_size_units():
    assert parse_size("15MB") == 15_000_000
    assert parse_size("16MiB") == 16 * 2**20
    assert parse_size("40KB") == 40_000
    assert parse_size(123) == 123
    with pytest.raises(CheckpointError, match="15MB"):
        parse_size("fifteen")


def test_unbound_draft_says_to_bind(pair):
    target, _ = pair
    draft = DFlashDraftModel(tiny_draft_config(target.config))
    with pytest.raises(RuntimeError, match="bind_target"):
        draft.embed(torch.tensor([[1]]))
