"""The README's factual sentences, recomputed: the make target it names exists, and its
paragraph on why the sample trace's tau differs from the model card's states the numbers
the trace, the training log and (live, slow) the fixture pair give."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from specreplay.traces.reader import Trace

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SAMPLE = ROOT / "traces" / "samples" / "humaneval-fixed16"
TRAIN_LOG = ROOT / "models" / "fixtures" / "train_log.json"


def tau_paragraph() -> str:
    (para,) = [p for p in README.split("\n\n") if p.startswith("Why the sample's tau")]
    return " ".join(para.split())


def per_prompt_and_pooled(taus: np.ndarray, sample: np.ndarray) -> tuple[float, float]:
    return (float(np.mean([taus[sample == s].mean() for s in np.unique(sample)])),
            float(taus.mean()))


def test_make_test_offline_is_named_and_exists():
    assert "make test-offline" in README
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^test-offline:", make, re.M)


def test_tau_paragraph_numbers_from_the_trace_and_the_training_log():
    text = tau_paragraph()
    trace = Trace.open(SAMPLE)
    c = trace.cycles
    taus = np.asarray(c["tau"].to_numpy(), dtype=float)
    sample = np.asarray(c["sample"].to_numpy())
    per_prompt, pooled = per_prompt_and_pooled(taus, sample)
    n_prompts = len(np.unique(sample))
    tokens = trace.run["sampling"]["max_new_tokens"]
    dtype = trace.run["setup"]["dtype"]
    assert (f"tau, {pooled:.2f}, is pooled over its {len(taus)} cycles ({n_prompts} HumanEval "
            f"prompts, {tokens} new tokens, {dtype})") in text
    assert f"per-prompt mean is {per_prompt:.2f} at {tokens} tokens" in text
    log = json.loads(TRAIN_LOG.read_text())
    card = log["evaluation"]["humaneval"]
    new_tokens = log["knobs"]["eval_new_tokens"]
    assert (f"The card's {card['16']['mean_tau']:.2f} is the mean over {card['prompts']} "
            f"HumanEval prompts of each prompt's own mean tau, over {new_tokens} new tokens; "
            f"pooled, the card gives {card['16']['pooled_tau']:.2f}") in text
    # the card's table states the same figure
    card_md = (ROOT / "models" / "fixtures" / "MODEL_CARD.md").read_text()
    assert f"{card['16']['mean_tau']:.2f} ({card['16']['pooled_tau']:.2f})" in card_md


@pytest.mark.live
@pytest.mark.slow
def test_tau_paragraph_numbers_at_256_tokens_from_the_fixture_pair():
    """The sample's prompts decoded again for 256 tokens on this CPU in float32 (greedy
    output, then the oracle walk of models/fixtures/tau.py at block 16): the first 128
    tokens are the trace's outputs and taus exactly, the 256-token figures are the
    README's. Minutes on a slow CPU."""
    torch = pytest.importorskip("torch")
    from specreplay.models.fixtures.greedy import generate
    from specreplay.models.fixtures.tau import greedy_taus, mean_tau, truncate_at_stop
    from specreplay.models.loading import load_draft, load_target

    trace = Trace.open(SAMPLE)
    s = trace.samples.to_pydict()
    prompts = [list(p) for p in s["prompt_ids"]]
    stop = trace.run["sampling"]["stop_token_ids"][0]
    target = load_target(ROOT / "models" / "fixtures" / "target", dtype="float32")
    draft = load_draft(ROOT / "models" / "fixtures" / "draft", target)
    with torch.inference_mode():
        outputs = [truncate_at_stop(o, stop) for o in generate(target, prompts, 256, stop, 64)]
    assert [o[:128] for o in outputs] == [list(o) for o in s["output_ids"]]
    walked = mean_tau([greedy_taus(target, draft, p, o, [16])[16]
                       for p, o in zip(prompts, outputs)])
    text = tau_paragraph()
    assert (f"{walked['mean_tau']:.2f} at 256 tokens (pooled {walked['pooled_tau']:.2f})"
            in text), walked
