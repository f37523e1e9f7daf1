"""The shipped fixture pair (models/fixtures/): it loads through the ordinary loaders on a
CPU, stays within its size budget, and — once the draft is shipped next to the target —
decodes HumanEval prompts with DFlash exactly as plain greedy decoding does, accepting
more than two tokens a cycle on average."""
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.live

FIXTURES = Path(__file__).resolve().parent.parent / "models" / "fixtures"
TARGET, DRAFT = FIXTURES / "target", FIXTURES / "draft"
MiB = 1 << 20


def _weights(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()]


def test_shipped_files_fit_their_budget():
    files = _weights(TARGET) + (_weights(DRAFT) if DRAFT.exists() else [])
    assert files, "models/fixtures/target is missing"
    assert max(p.stat().st_size for p in files) < 16 * MiB
    assert sum(p.stat().st_size for p in files) < 40 * 1_000_000


def test_target_and_tokenizer_load_with_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(TARGET)
    model = AutoModelForCausalLM.from_pretrained(TARGET, dtype=torch.float32)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.config.head_dim == 128
    assert 10e6 <= sum(p.numel() for p in model.parameters()) <= 20e6
    assert tok.eos_token_id is not None and tok.mask_token_id is not None
    text = "def add(a, b):\n    return a + b\n"
    assert tok.decode(tok(text).input_ids) == text  # byte-level BPE round trip


@pytest.mark.skipif(not (DRAFT / "config.json").exists(),
                    reason="the fixture draft is not shipped yet (models/fixtures/draft)")
def test_dflash_equals_greedy_and_accepts_more_than_two_tokens_a_cycle():
    from specreplay.live.loop import Decoder, LoopConfig
    from specreplay.live.prompts import load_prompts
    from specreplay.models.loading import load_draft, load_target, load_tokenizer
    from specreplay.policies import parse_policy
    torch.set_num_threads(2)
    target = load_target(str(TARGET), dtype="float32", device="cpu")
    draft = load_draft(str(DRAFT), target)
    tok = load_tokenizer(str(TARGET))
    prompts = load_prompts("humaneval", tok, max_samples=3)
    cfg = LoopConfig(max_new_tokens=64, stop_token_ids=(tok.eos_token_id,))
    taus = []
    for i, p in enumerate(prompts):
        spec = Decoder(target, draft, parse_policy("fixed(b=16)"), cfg).run(i, list(p.ids))
        ar = Decoder(target, draft, parse_policy("ar"), cfg).run(i, list(p.ids))
        assert spec.output_ids == ar.output_ids
        taus += [c["tau"] for c in spec.cycles]
    assert sum(taus) / len(taus) > 2
