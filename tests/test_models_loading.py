"""Loading targets, drafts and tokenizers from local folders (and failing clearly), file
hashes, and the tiny test pair."""
import hashlib
import time

import pytest

torch = pytest.importorskip("torch")

from specreplay.models.draft import DFlashDraftModel  # noqa: E402
from specreplay.models.loading import (ModelLoadError, build_tiny_pair, file_hashes, load_draft,  # noqa: E402
                            load_target, load_tokenizer)

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
    target, draft = build_tiny_pair(seed=2)
    root = tmp_path_factory.mktemp("pair")
    target.save_pretrained(root / "target")
    draft.save_pretrained(root / "draft")
    return target, draft, root


@pytest.fixture
def offline(monkeypatch):
    """No hub access, as on a machine without network (fails fast instead of retrying)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_load_target_and_draft_from_local_folders(saved_pair):
    target, draft, root = saved_pair
    loaded_target = load_target(root / "target", dtype="float32")
    loaded_draft = load_draft(str(root / "draft"), loaded_target)
    assert not loaded_target.training and not loaded_draft.training
    assert loaded_draft.fc.weight.dtype == torch.float32
    ids = torch.tensor([[5, 9, 2, 40, 7, 7, 1]])
    with torch.no_grad():
        a = target(ids, output_hidden_states=True)
        b = loaded_target(ids, output_hidden_states=True)
        assert torch.equal(a.logits, b.logits)
        anchors, blocks = torch.tensor([2, 6]), torch.full((2, 8), 95)
        expected = draft.logits(draft.forward_blocks(draft.context_features(a.hidden_states), anchors, blocks))
        got = loaded_draft.logits(loaded_draft.forward_blocks(
            loaded_draft.context_features(b.hidden_states), anchors, blocks))
    assert torch.equal(got, expected)


def test_draft_follows_the_target_dtype(saved_pair):
    _, _, root = saved_pair
    target = load_target(root / "target", dtype="bfloat16")
    assert load_draft(root / "draft", target).fc.weight.dtype == torch.bfloat16
    assert load_draft(root / "draft", target, dtype="float32").fc.weight.dtype == torch.float32


def test_missing_local_folder_says_what_was_looked_for(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match=r"no target model folder at .*nowhere; pass a folder"):
        load_target(missing)
    target, _ = build_tiny_pair(seed=0)
    with pytest.raises(ModelLoadError, match=r"no draft model folder at .*nowhere"):
        load_draft(missing, target)


def test_folder_without_weights(tmp_path, saved_pair):
    target, _, root = saved_pair
    (tmp_path / "config.json").write_text((root / "draft" / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="no model.safetensors or model.safetensors.index.json"):
        load_draft(tmp_path, target)
    with pytest.raises(ModelLoadError, match="does not hold a loadable causal LM"):
        load_target(tmp_path)


def test_unreachable_hub_id_says_how_to_supply_it_locally(offline):
    with pytest.raises(ModelLoadError, match=r"huggingface-cli download nobody-here/no-model --local-dir DIR"):
        load_target("nobody-here/no-model")
    target, _ = build_tiny_pair(seed=0)
    with pytest.raises(ModelLoadError, match=r"could not fetch the draft model 'nobody-here/no-model'.*huggingface-cli"):
        load_draft("nobody-here/no-model", target)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        file_hashes("nobody-here/no-model")


def test_draft_for_another_target_is_refused(saved_pair):
    _, _, root = saved_pair
    narrow, _ = build_tiny_pair(seed=0, hidden=32, head_dim=8)
    with pytest.raises(ModelLoadError, match="hidden size 64 but the target has 32"):
        load_draft(root / "draft", narrow)
    shallow, _ = build_tiny_pair(seed=0, target_layers=2, draft_layers=1)
    with pytest.raises(ModelLoadError, match=r"reads target layers \[1, 3\] but the target has only 2 layers"):
        load_draft(root / "draft", shallow)


def test_load_tokenizer_from_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path))("hello world there")["input_ids"] == [1, 2, 0]
    with pytest.raises(ModelLoadError, match="no tokenizer folder at"):
        load_tokenizer(tmp_path / "absent")


def test_file_hashes(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "empty.bin").write_bytes(b"")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "skip").write_bytes(b"x")
    # a Hugging Face cache snapshot: the file links to a blob named by its sha256
    blob = tmp_path / "blobs" / ("0" * 64)
    blob.parent.mkdir()
    blob.write_bytes(b"not read")
    (tmp_path / "weights.safetensors").symlink_to(blob)
    hashes = file_hashes(tmp_path)
    assert hashes == {
        # FIPS 180-2 test vector for "abc", and the hash of the empty string
        "a.txt": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "sub/empty.bin": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "blobs/" + "0" * 64: hashlib.sha256(b"not read").hexdigest(),
        "weights.safetensors": "0" * 64,
    }


def test_tiny_pair_is_fast_seeded_and_leaves_the_global_rng_alone():
    build_tiny_pair(seed=0)  # first call pays for imports
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    start = time.perf_counter()
    target, draft = build_tiny_pair(seed=7)
    assert time.perf_counter() - start < 1.0
    assert torch.equal(torch.rand(1), expected_next)
    again_target, again_draft = build_tiny_pair(seed=7)
    other_target, _ = build_tiny_pair(seed=8)
    assert torch.equal(target.lm_head.weight, again_target.lm_head.weight)
    assert torch.equal(draft.fc.weight, again_draft.fc.weight)
    assert not torch.equal(target.lm_head.weight, other_target.lm_head.weight)
    assert isinstance(draft, DFlashDraftModel) and draft.target_layer_ids == [1, 3]
    assert draft.mask_token_id == 95 and draft.block_size == 8
    assert target.lm_head.weight.dtype == draft.fc.weight.dtype == torch.float32
    assert not target.training and not draft.training
