"""The pieces of the fixture trainer (models/fixtures/): corpus listing and split, the
tokenizer's stream, the knob parser, the batched block pass against the model's own
forward_blocks, anchors and the block loss, the oracle walk that gives tau, and the
batched greedy generator against transformers' generate."""
import random
from pathlib import Path

import pytest

from specreplay.models.fixtures import corpus


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_listing_is_sorted_and_skips_caches_and_nested_site_folders(tmp_path):
    std, site = tmp_path / "lib", tmp_path / "lib" / "site-packages"
    _write(std / "b.py", b"x = 1\n")
    _write(std / "a" / "z.py", b"y = 2\n")
    _write(std / "__pycache__" / "c.py", b"cached\n")
    _write(std / "notes.txt", b"not python\n")
    _write(site / "pkg" / "m.py", b"z = 3\n")
    listing = corpus.list_source_files([(corpus.STDLIB, std), (corpus.SITE_PACKAGES, site)])
    assert [name for name, _ in listing] == ["site-packages/pkg/m.py", "stdlib/a/z.py", "stdlib/b.py"]


def test_read_sample_filters_cuts_and_dedupes(tmp_path):
    good = b"def f(x):\n    return x + 1\n" * 4                 # 108 bytes
    files = {
        "good.py": good,
        "copy.py": good,                                        # same content: kept once
        "short.py": b"x = 1\n",                                 # under min bytes
        "wide.py": b"x = '" + b"a" * 300 + b"'\n",              # a line over the limit
        "latin.py": b"s = '\xe9t\xe9'\n" * 20,                  # not UTF-8
        "long.py": b"y = 2\n" * 100,                            # 600 bytes: cut
    }
    for name, data in files.items():
        _write(tmp_path / name, data)
    listing = corpus.list_source_files([(corpus.STDLIB, tmp_path)])
    got = corpus.read_sample(listing, max_total_bytes=10_000, max_file_bytes=200, min_file_bytes=50,
                             max_line_chars=100, workers=2)
    texts = {f.name: f.text for f in got}
    assert sorted(texts) in (["stdlib/copy.py", "stdlib/long.py"], ["stdlib/good.py", "stdlib/long.py"])
    # cut at the last newline before 200 bytes: 33 whole lines of 6 bytes
    assert texts["stdlib/long.py"] == "y = 2\n" * 33


def test_read_sample_stops_at_the_total_cap(tmp_path):
    for i in range(20):
        _write(tmp_path / f"m{i:02d}.py", f"v{i:02d} = {i:03d}\n".encode() * 14)  # 140 bytes each
    listing = corpus.list_source_files([(corpus.STDLIB, tmp_path)])
    got = corpus.read_sample(listing, max_total_bytes=1000, max_file_bytes=10_000, min_file_bytes=1,
                             max_line_chars=100, workers=2)
    assert len(got) == 7  # 7 * 140 = 980 <= 1000 < 8 * 140
    again = corpus.read_sample(listing, max_total_bytes=1000, max_file_bytes=10_000, min_file_bytes=1,
                               max_line_chars=100, workers=1)
    assert [f.name for f in got] == [f.name for f in again]


def test_split_depends_on_the_name_only():
    files = [corpus.SourceFile(f"stdlib/m{i}.py", "x\n") for i in range(2000)]
    train, held = corpus.split_heldout(files, 0.1)
    assert len(train) + len(held) == 2000
    assert 140 <= len(held) <= 260  # 10 % of 2000 by a hash, within sampling noise
    # a file's side never depends on the other files present
    sub_train, sub_held = corpus.split_heldout(files[::3], 0.1)
    assert {f.name for f in sub_held} == {f.name for f in held} & {f.name for f in files[::3]}
    assert corpus.split_heldout(files, 0.0)[1] == [] and corpus.split_heldout(files, 1.0)[0] == []


def test_tokenizer_specials_and_stream_layout():
    pytest.importorskip("tokenizers")
    from specreplay.models.fixtures import bpe

    texts = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.sep)\n"] * 20
    tok = bpe.train_tokenizer(texts, vocab_size=300)
    assert [tok.token_to_id(t) for t in bpe.SPECIAL_TOKENS] == [0, 1, 2]
    stream, starts = bpe.encode_files(tok, texts[:2], eos_id=0)
    first = tok.encode(texts[0]).ids
    assert starts.tolist() == [0, len(first) + 1, len(stream)]
    assert stream[len(first)] == 0 and stream[-1] == 0
    assert tok.decode(stream[:len(first)].tolist()) == texts[0]


def test_configure_applies_preset_then_overrides():
    from specreplay.models.fixtures import train

    cfg = train.configure(["--preset=tiny", "--seed=7", "--compile=false", "--gamma=5"])
    assert cfg.seed == 7 and cfg.compile is False and cfg.gamma == 5.0
    assert cfg.hidden_size == train.PRESETS["tiny"]["hidden_size"]
    assert train.configure([]).hidden_size == train.hidden_size
    for bad in (["--nope=1"], ["--seed=x"], ["seed=1"], ["--preset=huge"], ["--compile=maybe"]):
        with pytest.raises(train.UsageError):
            train.configure(bad)


def test_file_start_prompts_are_distinct_file_heads():
    np = pytest.importorskip("numpy")
    from specreplay.models.fixtures.draft_data import file_start_prompts

    # three files of 10, 3 and 8 tokens, each followed by end-of-text (id 0)
    stream = np.array(list(range(1, 11)) + [0] + [21, 22, 23, 0] + list(range(31, 39)) + [0])
    starts = np.array([0, 11, 15, 24])
    prompts = file_start_prompts(random.Random(0), stream, starts, 5, 4, 6)
    assert len(prompts) == 2  # the 3-token file is too short
    heads = sorted(p[0] for p in prompts)
    assert heads == [1, 31]
    for p in prompts:
        assert 4 <= len(p) <= 6 and p == list(range(p[0], p[0] + len(p)))


# --- torch parts -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair():
    torch = pytest.importorskip("torch")
    from specreplay.models.loading import build_tiny_pair

    torch.set_num_threads(1)
    return build_tiny_pair(seed=3, vocab=40, std=0.3, block_size=8)


@pytest.mark.live
def test_batched_blocks_equal_forward_blocks(pair):
    import torch

    from specreplay.models.fixtures.dflash_training import block_inputs, draw_anchors, forward_blocks_batched

    target, draft = pair
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 40, (3, 30), generator=gen)
    with torch.no_grad():
        context = draft.context_features(target(tokens, output_hidden_states=True).hidden_states)
        anchors = draw_anchors(torch.tensor([4, 9, 2]), torch.tensor([30, 25, 20]), 8, 5, gen)
        block_ids, _ = block_inputs(tokens, anchors, 8, draft.mask_token_id)
        batched = forward_blocks_batched(draft, context, anchors, block_ids)
        for i in range(3):
            one = draft.forward_blocks(context[i:i + 1], anchors[i], block_ids[i])
            torch.testing.assert_close(batched[i], one, rtol=1e-5, atol=1e-5)


@pytest.mark.live
def test_anchors_are_distinct_and_leave_room_for_the_block():
    torch = pytest.importorskip("torch")
    from specreplay.models.fixtures.dflash_training import draw_anchors

    prompt_lens, lengths = torch.tensor([5, 10]), torch.tensor([30, 20])
    anchors = draw_anchors(prompt_lens, lengths, 8, 3, torch.Generator().manual_seed(1))
    for row, p, n in zip(anchors.tolist(), prompt_lens.tolist(), lengths.tolist()):
        assert len(set(row)) == 3 and all(p <= a <= n - 8 for a in row)
    # sequence 2 has 20 - 8 - 10 + 1 = 3 anchor positions: exactly 10, 11, 12
    assert sorted(anchors[1].tolist()) == [10, 11, 12]
    with pytest.raises(ValueError):
        draw_anchors(prompt_lens, lengths, 8, 4, torch.Generator())


@pytest.mark.live
def test_block_inputs_and_loss_by_hand():
    torch = pytest.importorskip("torch")
    from specreplay.models.fixtures.dflash_training import block_inputs, block_loss, slot_weights

    tokens = torch.arange(10, 30)[None]  # token at position t is 10 + t
    block_ids, labels = block_inputs(tokens, torch.tensor([[3, 7]]), 4, mask_id=1)
    assert block_ids.tolist() == [[[13, 1, 1, 1], [17, 1, 1, 1]]]
    assert labels.tolist() == [[[14, 15, 16], [18, 19, 20]]]
    assert slot_weights(4, 2.0).tolist() == pytest.approx([1.0, 0.6065307, 0.3678794])

    # block 0: slots 1, 2 right, slot 3 wrong -> accepted 2; block 1: slot 1 wrong -> 0
    vocab = 32
    logits = torch.zeros(1, 2, 3, vocab)
    right = [[14, 15, 0], [0, 19, 20]]
    for j in range(2):
        for k in range(3):
            logits[0, j, k, right[j][k]] = 50.0  # one-hot: cross-entropy ~0 where right
    loss, stats = block_loss(logits, labels, gamma=2.0)
    assert float(stats["anchor_tau"]) == pytest.approx(1 + (2 + 0) / 2)
    assert float(stats["acc1"]) == pytest.approx(0.5)
    # wrong slots cost 50 each (the label's logit is 0, the argmax's 50); weights 1, e^-.5, e^-1
    w = slot_weights(4, 2.0)
    expected = ((50 * w[2]) + (50 * w[0])) / 2 / w.sum()
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.live
def test_oracle_walk_by_hand():
    pytest.importorskip("torch")
    import torch

    from specreplay.models.fixtures.tau import accepted_at, cycle_taus, mean_tau, truncate_at_stop

    output = [5, 6, 7, 8, 9, 10]
    # block size 4: proposals for offsets 1..3 at each start p = 0..4
    proposals = torch.tensor([[6, 7, 0], [7, 8, 9], [0, 0, 0], [9, 10, 11], [10, 11, 12]])
    assert accepted_at(proposals, output) == [2, 3, 0, 2, 1]
    # p=0: tau 3 -> p=3: accepted 2 but only 2 tokens remain -> tau 2, done
    assert cycle_taus([2, 3, 0, 2, 1], len(output)) == [3, 2]
    assert cycle_taus([0] * 5, len(output)) == [1] * 5
    assert cycle_taus([], 1) == []
    assert truncate_at_stop([4, 0, 5], 0) == [4, 0] and truncate_at_stop([4, 5], 0) == [4, 5]
    m = mean_tau([[3, 2], [1], []])
    assert m == {"mean_tau": pytest.approx((2.5 + 1) / 2), "pooled_tau": 2.0, "cycles": 3}


@pytest.mark.live
def test_batched_greedy_equals_generate_per_prompt(pair):
    import torch

    from specreplay.models.fixtures.greedy import generate

    target, _ = pair
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 40, (n,), generator=gen).tolist() for n in (4, 11, 7, 1, 15)]
    got = generate(target, prompts, 12, pad_id=0, batch_size=3)
    for prompt, out in zip(prompts, got):
        ids = torch.tensor([prompt])
        ref = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                              do_sample=False, eos_token_id=None, pad_token_id=0)
        assert out == ref[0, len(prompt):].tolist()
