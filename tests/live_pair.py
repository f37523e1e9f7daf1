"""The tiny random pair the live tests decode with: a 12-token vocabulary and weights
large enough that the draft's guesses match the target often enough to exercise
acceptance, trees and KV cut-back on real paths."""
from __future__ import annotations

VOCAB = 12
PROMPTS = [[i % (VOCAB - 1) for i in range(3, 20)], [5, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]]


def tiny_pair():
    import torch
    from specreplay.models.loading import build_tiny_pair
    # tiny matrices: one thread is fastest and immune to a busy machine
    torch.set_num_threads(1)
    return build_tiny_pair(seed=0, vocab=VOCAB, std=0.3, block_size=8)


def hf_greedy(target, prompt, max_new_tokens, eos=None):
    """Plain greedy decoding by transformers' own generate: the reference output."""
    import torch
    ids = torch.tensor([prompt])
    out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                          do_sample=False, eos_token_id=eos, pad_token_id=eos if eos is not None else 0)
    ids = out[0, len(prompt):].tolist()
    if eos is not None and eos in ids:
        ids = ids[:ids.index(eos) + 1]
    return ids


def save_pair(root):
    """The tiny pair saved as model folders under ``root`` (target/, draft/), with a
    one-character-per-token tokenizer and a three-prompt JSONL dataset; returns root."""
    import json

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    target, draft = tiny_pair()
    target.save_pretrained(root / "target")
    draft.save_pretrained(root / "draft")
    vocab = {c: i for i, c in enumerate("abcdefghijk")}
    vocab["<mask>"] = VOCAB - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="a").save_pretrained(root / "target")
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ("abcdefghij", "kjihgf", "badcafe")))
    return root
