"""Refinement does what its knobs say: the default redrafts the unsure offsets and so
changes proposals, a pass that re-masks nothing (or re-masks everything with the mask
input, the old default) repeats the plain proposal, input=previous feeds the draft's
own tokens back in, and each setting has its own probe key."""
from pathlib import Path

import numpy as np
import pytest

from specreplay.policies import PolicyError, parse_policy

FIXTURES = Path(__file__).resolve().parent.parent / "models" / "fixtures"
SAMPLE = Path(__file__).resolve().parent.parent / "traces" / "samples" / "humaneval-fixed16"


def _key(spec: str) -> str:
    return parse_policy(spec).inputs[0].spec()


def test_probe_keys_name_the_parameters():
    assert _key("refine(steps=2)") == "refine(steps=2, only_below=0.5)"
    assert _key("refine(steps=2, input=mask)") == _key("refine(steps=2)")
    assert _key("refine(steps=3, input=previous)") == "refine(steps=3, only_below=0.5, input=previous)"
    # the key recorded before the input knob existed still names the same (old) input
    assert _key("refine(steps=2, only_below=1.0)") == "refine(steps=2, only_below=1.0)"
    assert parse_policy("fixed(b=8)+refine(steps=1)").probes() == ()
    with pytest.raises(PolicyError, match="input must be mask or previous"):
        parse_policy("refine(input=noise)")


def test_draft_request_carries_the_input():
    from specreplay.policies.base import CycleContext, DraftRequest
    ctx = CycleContext(0, 0, 0, 10, 100, 16)
    req = parse_policy("refine(steps=3, only_below=0.7, input=previous)").inputs[0].draft_input(ctx, DraftRequest(8))
    assert (req.refine_steps, req.refine_only_below, req.refine_input) == (2, 0.7, "previous")
    assert req.probe == "refine(steps=3, only_below=0.7, input=previous)"


torch_needed = pytest.mark.live


@torch_needed
def test_refine_block_inputs():
    pytest.importorskip("torch")
    from specreplay.live.drafting import refine_block
    ids = np.array([[5, 6], [7, 8], [9, 1]], dtype=np.int32)
    lps = np.log(np.array([[0.9, 0.1], [0.3, 0.2], [0.6, 0.4]], dtype=np.float32))
    block, redraft = refine_block(3, ids, lps, 0.5, 99)
    assert block == [3, 5, 99, 9] and redraft.tolist() == [False, True, False]
    block, redraft = refine_block(3, ids, lps, 0.5, 99, "previous")
    assert block == [3, 5, 7, 9] and redraft.tolist() == [False, True, False]
    assert refine_block(3, ids, lps, 0.0, 99)[1].tolist() == [False] * 3
    assert refine_block(3, ids, lps, 1.0, 99)[0] == [3, 99, 99, 99]


@pytest.fixture(scope="module")
def fixture_rows():
    """Oracle rows at block size 16 of the first sample of the shipped trace (its first
    48 output tokens), the fixture pair on the CPU in float32, with four refine probes."""
    torch = pytest.importorskip("torch")
    import pyarrow.parquet as pq

    from specreplay.live.oracle import Oracle
    from specreplay.models.loading import load_draft, load_target
    torch.set_num_threads(2)
    target = load_target(str(FIXTURES / "target"), dtype="float32", device="cpu")
    draft = load_draft(str(FIXTURES / "draft"), target)
    samples = pq.read_table(SAMPLE / "samples.parquet").to_pylist()
    prompt, output = list(samples[0]["prompt_ids"]), list(samples[0]["output_ids"])[:48]
    keys = {name: _key(spec) for name, spec in [
        ("default", "refine(steps=2)"), ("none", "refine(steps=2, only_below=0.0)"),
        ("all", "refine(steps=2, only_below=1.0)"), ("previous", "refine(steps=2, input=previous)")]}
    rows, _ = Oracle(target, draft, [16], 4, list(keys.values()), 48).rows(0, prompt, output)
    by = {}
    for r in rows:
        by.setdefault(r["probe"], {})[r["start"]] = r
    return {name: by[key] for name, key in keys.items()} | {"plain": by[""]}


def _arrays(row):
    return (np.asarray(row["draft_ids"]).reshape(15, 4),
            np.asarray(row["draft_logprobs"], np.float32).reshape(15, 4))


@torch_needed
def test_nothing_remasked_or_same_input_repeats_the_plain_proposal(fixture_rows):
    plain = fixture_rows["plain"]
    for name in ("none", "all"):
        for p, row in fixture_rows[name].items():
            assert row["draft_ids"] == plain[p]["draft_ids"], (name, p)
            assert np.array_equal(row["draft_logprobs"], plain[p]["draft_logprobs"]), (name, p)


@pytest.mark.parametrize("name", ["default", "previous"])
@torch_needed
def test_refinement_changes_the_unsure_offsets_only(fixture_rows, name):
    plain = fixture_rows["plain"]
    changed_rows = 0
    for p, row in fixture_rows[name].items():
        ids, lps = _arrays(row)
        pids, plps = _arrays(plain[p])
        unsure = np.exp(plps[:, 0].astype(np.float64)) < 0.5
        # confident offsets keep the first pass's proposal, value for value
        assert np.array_equal(ids[~unsure], pids[~unsure]) and np.array_equal(lps[~unsure], plps[~unsure])
        if not unsure.any():
            assert row["draft_ids"] == plain[p]["draft_ids"]
        if not np.array_equal(lps[unsure], plps[unsure]):
            changed_rows += 1
    # the second pass sees another input, so redrafted offsets get other proposals
    assert changed_rows >= len(plain) // 4, changed_rows


def test_recycle_predictions_carry_the_extra_pass_label(tmp_path):
    """Live recycling runs one more plain draft pass per seeded cycle; every prediction
    of a policy using it says so, and other policies' do not."""
    from specreplay.sim.replay import replay
    from specreplay.traces.synthetic import make_trace
    key = parse_policy("recycle(mode=dense)").inputs[0].spec()
    trace = make_trace(tmp_path / "t", output_lengths=(60, 50), block_sizes=(8,), probes={key: None})
    plain, recycled = replay(trace, ["fixed(b=8)", "fixed(b=8)+recycle(mode=dense)"], bootstrap=0)
    assert recycled.replayable and "recycle: +1 plain draft pass per seeded cycle" in recycled.fidelity
    assert "plain draft pass" not in plain.fidelity
