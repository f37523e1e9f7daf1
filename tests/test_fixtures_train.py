"""The fixture trainer end to end at toy scale on the CPU (``--preset=tiny``): one run
into a temporary folder, then its outputs are loaded the way users load them, checked
against the size limits and the log, and its tau evaluation is checked against the
product's live decode loop."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixtures")
    proc = subprocess.run([sys.executable, "-m", "specreplay.models.fixtures.train", "--preset=tiny",
                           f"--out_dir={out}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "train_log.json").read_text())


@pytest.fixture(scope="module")
def loaded(run):
    from specreplay.models.loading import load_draft, load_target, load_tokenizer

    out, _ = run
    torch.set_num_threads(1)
    target = load_target(out / "target", dtype="float32")
    return target, load_draft(out / "draft", target), load_tokenizer(out / "target")


def test_outputs_load_with_transformers_and_the_draft_loader(run, loaded):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specreplay.models.draft import build_target_layer_ids

    out, log = run
    target = AutoModelForCausalLM.from_pretrained(out / "target")
    assert type(target).__name__ == "Qwen3ForCausalLM"
    assert target.dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(out / "target")
    assert (tok.eos_token, tok.mask_token, tok.pad_token) == ("<|endoftext|>", "<|mask|>", "<|pad|>")
    assert tok.chat_template is None
    code = "def area(r):\n    return 3.14159 * r ** 2  # πr²\n"
    assert tok.decode(tok(code)["input_ids"]) == code

    _, draft, _ = loaded
    layers = log["knobs"]["target_layers"]
    assert draft.block_size == 16
    assert draft.mask_token_id == tok.mask_token_id
    assert draft.target_layer_ids == build_target_layer_ids(layers, log["knobs"]["draft_layers"])
    assert json.loads((out / "draft" / "config.json").read_text())["dtype"] == "bfloat16"


def test_files_fit_the_limits_and_match_the_logged_hashes(run):
    from specreplay.models.loading import file_hashes

    out, log = run
    files = log["checkpoints"]["files"]
    on_disk = {f"{name}/{rel}": digest for name in ("target", "draft")
               for rel, digest in file_hashes(out / name).items()}
    assert {k: v["sha256"] for k, v in files.items()} == on_disk
    sizes = [(out / name).stat().st_size for name in files]
    assert max(sizes) < 16 * 2**20 and sum(sizes) < 40_000_000
    assert log["checkpoints"]["within_limits"] is True


def test_log_records_training_that_learnt(run):
    _, log = run
    assert log["seed"] == log["knobs"]["seed"] and "--preset=tiny" in log["command"]
    assert log["target"]["steps"] > 0 and log["target"]["heldout"]["loss"] is not None
    draft = log["draft"]
    assert draft["heldout"]["loss"] < draft["heldout_before"]["loss"]
    assert draft["parameters"] > 0 and log["target"]["parameters"] > draft["parameters"]
    evaluation = log["evaluation"]
    assert set(evaluation) >= {"heldout_files", "humaneval", "live_loop_check"}
    for name in ("heldout_files", "humaneval"):
        for b in (4, 8, 12, 16):
            assert 1.0 <= evaluation[name][str(b)]["mean_tau"] <= b
    assert evaluation["live_loop_check"]["identical_share"] == 1.0


def test_oracle_walk_equals_the_live_loop_and_output_equals_greedy(loaded):
    """On the CPU in float32 the tau the trainer reports (oracle walk over the greedy
    output) must be exactly what the live loop measures, cycle by cycle, and the live
    output must be plain greedy decoding."""
    from specreplay.live.loop import Decoder, LoopConfig
    from specreplay.models.fixtures.tau import greedy_taus
    from specreplay.policies import parse_policy

    target, draft, tok = loaded
    prompts = [tok("def fib(n):\n    ")["input_ids"], tok("import os\nimport sys\n\n\nclass ")["input_ids"]]
    for b in (4, 16):
        decoder = Decoder(target, draft, parse_policy(f"fixed(b={b})"),
                          LoopConfig(max_new_tokens=40, stop_token_ids=(tok.eos_token_id,), record=False))
        for i, prompt in enumerate(prompts):
            result = decoder.run(i, prompt)
            ids = torch.tensor([prompt])
            ref = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                                  do_sample=False, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
            assert result.output_ids == ref
            walked = greedy_taus(target, draft, prompt, result.output_ids, [b])[b]
            assert walked == [c["tau"] for c in result.cycles]


def test_model_card_renders_every_file_and_the_tau_table(run):
    from specreplay.models.fixtures.model_card import render

    _, log = run
    card = render(log)
    for name, f in log["checkpoints"]["files"].items():
        assert f"| {name} | {f['bytes']:,} | `{f['sha256']}` |" in card
    humaneval = log["evaluation"]["humaneval"]
    assert f"| humaneval ({humaneval['prompts']}) | {humaneval['4']['mean_tau']:.2f}" in card
    assert log["replay_command"] in card


def test_draft_only_run_keeps_the_target_files_and_the_card_says_so(run, tmp_path):
    """``--target_from`` trains only a draft: the target folder it writes holds the very
    files it loaded (same checksums), and the card, rendered from the folder, lists the
    files there and names the earlier run that trained the target."""
    from specreplay.models.fixtures.model_card import main as card_main
    from specreplay.models.loading import file_hashes

    out, first = run
    second = tmp_path / "draft-only"
    proc = subprocess.run([sys.executable, "-m", "specreplay.models.fixtures.train", "--preset=tiny",
                           f"--target_from={out / 'target'}", f"--out_dir={second}",
                           "--eval_humaneval=False"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert file_hashes(second / "target") == file_hashes(out / "target")
    log = json.loads((second / "train_log.json").read_text())
    assert log["target"]["loaded_from"] == str(out / "target")
    (second / "target_train_log.json").write_text(json.dumps(first))
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert card_main([str(second / "train_log.json")]) == 0
    card = buf.getvalue()
    assert "trained by an earlier run" in card and first["command"] in card
    for name, digest in file_hashes(second / "draft").items():
        assert f"| draft/{name} | {(second / 'draft' / name).stat().st_size:,} | `{digest}` |" in card


def test_bad_knob_is_one_sentence_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "specreplay.models.fixtures.train", "--block_sise=8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "block_sise" in proc.stderr
