"""Cost twins (models/twin.py): the fixture pair embedded in a larger shape keeps its
function exactly (CPU float32, the ``test`` shape), and the registered real shapes have
the real models' parameter counts."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.live

from specreplay.live.loop import Decoder, LoopConfig  # noqa: E402
from specreplay.models import twin  # noqa: E402
from specreplay.models.loading import (ModelLoadError, file_hashes, load_draft, load_target,  # noqa: E402
                                       load_tokenizer)
from specreplay.policies import parse_policy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX_T, FIX_D = twin.fixture_dirs()
V = json.loads((FIX_T / "config.json").read_text())["vocab_size"]
PROMPTS = ["def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
           "import os\n\ndef list_python_files(root):\n",
           "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"]


@pytest.fixture(scope="module")
def fixture_pair():
    torch.set_num_threads(2)
    target = load_target(str(FIX_T), dtype="float32")
    return target, load_draft(str(FIX_D), target)


@pytest.fixture(scope="module")
def twin_models():
    target = load_target("twin:test", dtype="float32")
    return target, load_draft("twin:test", target)


@pytest.fixture(scope="module")
def tokens():
    tok = load_tokenizer("twin:test")
    return [tok(p).input_ids for p in PROMPTS], tok


def _random_ids(n=2, length=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (n, length), generator=g)


def test_twin_has_the_shape_it_names(twin_models):
    target, draft = twin_models
    shape = twin.SHAPES["test"]
    cfg = target.config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps"):
        assert getattr(cfg, key) == shape.target[key], key
    assert not cfg.tie_word_embeddings
    assert target.lm_head.weight.data_ptr() != target.model.embed_tokens.weight.data_ptr()
    assert draft.config.num_hidden_layers == shape.draft["num_hidden_layers"]
    assert draft.config.target_layer_ids == shape.draft["target_layer_ids"]
    assert draft.fc.weight.shape == (640, 5 * 640)
    assert draft.config.block_size == 16 and draft.config.mask_token_id == 1


def test_target_logits_equal_the_fixtures_and_padded_rows_never_win(fixture_pair, twin_models):
    fixture, _ = fixture_pair
    target, _ = twin_models
    ids = _random_ids()
    with torch.no_grad():
        want = fixture(input_ids=ids).logits
        got = target(input_ids=ids).logits
    real = got[..., :V]
    assert float((real - want).abs().max() / want.abs().max()) < 1e-5
    assert torch.equal(real.argmax(-1), want.argmax(-1))
    assert int(got.argmax(-1).max()) < V
    pad_mass = torch.softmax(got.float(), -1)[..., V:].sum(-1)
    assert float(pad_mass.max()) < 1e-6


def test_draft_proposals_equal_the_fixture_drafts(fixture_pair, twin_models):
    """Same context (each model's own target pass), same blocks: the twin draft's top-4
    equals the fixture draft's at every offset of 40 blocks, and its padded rows hold
    no probability."""
    fixture, fdraft = fixture_pair
    target, draft = twin_models
    ids = _random_ids(1, 120, seed=1)
    anchors = torch.arange(2, 120, 3)
    blocks = torch.full((len(anchors), 16), 1)
    blocks[:, 0] = ids[0, anchors.clamp(max=119)]
    with torch.no_grad():
        f_ctx = fdraft.context_features(fixture(input_ids=ids, output_hidden_states=True).hidden_states)
        t_ctx = draft.context_features(target(input_ids=ids, output_hidden_states=True).hidden_states)
        want = fdraft.logits(fdraft.forward_blocks(f_ctx, anchors, blocks))[:, 1:]
        got = draft.logits(draft.forward_blocks(t_ctx, anchors, blocks))[:, 1:]
    assert float((got[..., :V] - want).abs().max() / want.abs().max()) < 1e-5
    assert torch.equal(got.topk(4, -1).indices, want.topk(4, -1).indices)
    assert float(torch.softmax(got.float(), -1)[..., V:].sum(-1).max()) < 1e-6


def test_greedy_dflash_output_and_every_accepted_length_equal_the_fixture_pairs(
        fixture_pair, twin_models, tokens):
    prompts, tok = tokens
    cfg = LoopConfig(max_new_tokens=24, stop_token_ids=(tok.eos_token_id,))
    policy = parse_policy("fixed(b=16)")
    pairs = {"fixture": fixture_pair, "twin": twin_models}
    for i, prompt in enumerate(prompts):
        runs = {name: Decoder(t, d, policy, cfg).run(i, list(prompt)) for name, (t, d) in pairs.items()}
        assert runs["twin"].output_ids == runs["fixture"].output_ids
        assert [c["accepted"] for c in runs["twin"].cycles] == [c["accepted"] for c in runs["fixture"].cycles]
        assert [c["drafted"] for c in runs["twin"].cycles] == [c["drafted"] for c in runs["fixture"].cycles]
        assert sum(c["accepted"] for c in runs["twin"].cycles) > 0


# Largest share of exact zeros the construction needs per tensor kind on the test shape
# (half of its width is the fixture's, so these are far above Qwen3-8B's few per cent):
# o_proj rows beyond the fixture's width, gate and v rows of extra units and heads over
# the real dimensions, fc columns at every tap's real dimensions. Zero padding put 75 %
# and more in every one of them. (The fixture itself holds a few exact zeros.)
ZERO_BOUNDS = {"q_proj": 0.001, "k_proj": 0.001, "up_proj": 0.001, "lm_head": 0.01, "o_proj": 0.2,
               "down_proj": 0.13, "gate_proj": 0.38, "v_proj": 0.38, "embed_tokens": 0.17,
               "fc": 0.36}


def test_only_the_zeros_the_construction_needs(twin_models):
    """Zeros are cheaper on a GPU than real weights (fewer bits switch), so a twin padded
    with zeros runs faster than the real model: every weight the function does not pin
    is random, and the zeros left stay under the derived shares."""
    target, draft = twin_models
    for name, model in (("target", target), ("draft", draft)):
        shares = twin.zero_shares(model)
        table = ", ".join(f"{k} {z / n:.3f}" for k, (z, n) in shares.items())
        zeros, total = shares["all"]
        assert zeros / total < 0.16, f"{name}: {table}"
        for kind, bound in ZERO_BOUNDS.items():
            if kind in shares:
                z, n = shares[kind]
                assert z / n <= bound, f"{name} {kind}: {z / n:.3f} > {bound} ({table})"
    assert set(ZERO_BOUNDS) <= set(twin.zero_shares(target)) | set(twin.zero_shares(draft))


def test_a_tied_shape_keeps_the_log_probabilities(fixture_pair):
    """Qwen3-4B ties its embedding and head: the twin then shifts every real logit of a
    position by one constant, which log-softmax removes."""
    fixture, _ = fixture_pair
    base = twin.SHAPES["test"]
    tied = dataclasses.replace(base, name="test-tied",
                               target=dict(base.target, tie_word_embeddings=True))
    target = twin.build_target(tied)
    assert target.lm_head.weight.data_ptr() == target.model.embed_tokens.weight.data_ptr()
    ids = _random_ids(1, 64, seed=2)
    with torch.no_grad():
        want = torch.log_softmax(fixture(input_ids=ids).logits, -1)
        got = torch.log_softmax(target(input_ids=ids).logits, -1)
    assert float((got[..., :V] - want).abs().max()) < 1e-4
    assert float(got[..., V:].exp().sum(-1).max()) < 1e-6


def test_real_shapes_have_the_real_parameter_counts():
    """Counted on the meta device (nothing allocated): Qwen3-8B has 8,190,735,360
    parameters, its five-layer DFlash draft 1,048,626,432 besides the borrowed embedding
    and head; Qwen3-4B 4,022,468,096 and its draft 537,427,200."""
    assert twin.parameter_counts("qwen3-8b") == {"target": 8_190_735_360, "draft": 1_048_626_432}
    assert twin.parameter_counts("twin:qwen3-4b") == {"target": 4_022_468_096, "draft": 537_427_200}


def test_cli_writes_a_twin_the_ordinary_loaders_read(tmp_path, twin_models):
    from transformers import AutoModelForCausalLM
    out = tmp_path / "twin"
    res = subprocess.run([sys.executable, "-m", "specreplay", "twin", "--shape", "test", "--target",
                          str(FIX_T), "--draft", str(FIX_D), "--out", str(out), "--dtype", "float32"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "built in" in res.stdout and "parameters" in res.stdout
    target, draft = twin_models
    hf = AutoModelForCausalLM.from_pretrained(out / "target", dtype=torch.float32)
    loaded = load_target(str(out / "target"), dtype="float32")
    ldraft = load_draft(str(out / "draft"), loaded)
    ids = _random_ids(1, 40, seed=3)
    with torch.no_grad():
        want = target(input_ids=ids, output_hidden_states=True)
        assert torch.equal(hf(input_ids=ids).logits, want.logits)
        got = loaded(input_ids=ids, output_hidden_states=True)
        ctx_w, ctx_g = draft.context_features(want.hidden_states), ldraft.context_features(got.hidden_states)
        blocks = torch.tensor([[ids[0, 20].item()] + [1] * 15])
        assert torch.equal(ldraft.forward_blocks(ctx_g, [20], blocks), draft.forward_blocks(ctx_w, [20], blocks))
    assert load_tokenizer(str(out / "target"))("x = 1").input_ids == load_tokenizer("twin:test")("x = 1").input_ids
    # a twin draft id pairs with a written twin target of the same shape
    assert load_draft("twin:test", loaded).config.hidden_size == 640
    again = subprocess.run([sys.executable, "-m", "specreplay", "twin", "--shape", "test",
                            "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_twin_ids_name_their_fixture_files_and_refuse_wrong_pairings(fixture_pair):
    hashes = file_hashes("twin:qwen3-8b")
    assert hashes["target/config.json"] == file_hashes(str(FIX_T))["config.json"]
    assert hashes["draft/model.safetensors"] == file_hashes(str(FIX_D))["model.safetensors"]
    with pytest.raises(ModelLoadError, match="needs the target twin:test"):
        load_draft("twin:test", fixture_pair[0])
    with pytest.raises(twin.TwinError, match="unknown twin shape 'qwen9'"):
        load_target("twin:qwen9")


def test_twin_help_says_what_it_is_for_and_what_it_is_not():
    res = subprocess.run([sys.executable, "-m", "specreplay", "twin", "--help"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "real acceptance at real cost" in text
    assert "What it is not: Qwen3-8B" in text
    for name in twin.SHAPES:
        assert name in text


def test_fixture_that_does_not_fit_is_refused():
    small = dataclasses.replace(twin.SHAPES["test"], name="narrow",
                                target=dict(twin.SHAPES["test"].target, hidden_size=256))
    with pytest.raises(twin.TwinError, match="hidden size"):
        twin.plan_twin(small)
    assert np.isclose(twin.plan_twin("test").channel ** 2, 1e-6 * (4 * 320 - 640))
