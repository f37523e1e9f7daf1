"""The oracle pass reproduces what the live draft proposed, exactly (CPU float32):
plain blocks, recycled seeds and refinement, through the same policy and drafting code."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.live

from specreplay.live.loop import Decoder, LoopConfig  # noqa: E402
from specreplay.live.oracle import Oracle, default_probe_keys  # noqa: E402
from specreplay.policies import parse_policy  # noqa: E402
from specreplay.traces.schema import RANK_BEYOND_END  # noqa: E402
from live_pair import PROMPTS, tiny_pair  # noqa: E402

MAX_NEW = 32


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


def _index(rows):
    return {(r["start"], r["block_size"], r["probe"], r["prev_offset"]): r for r in rows}


def _same(row, view):
    """Same proposals, and log-probs equal up to their float16 rounding: the oracle's
    packed pass and the live pass reduce in a different order, so a value that lies on
    a float16 rounding boundary may land one step apart."""
    live = view.logprobs.reshape(-1)
    ulp = np.abs(np.spacing(live.astype(np.float16))).astype(np.float32)
    return (row["draft_ids"] == view.ids.reshape(-1).tolist()
            and bool(np.all(np.abs(np.asarray(row["draft_logprobs"], np.float32) - live) <= ulp)))


@pytest.mark.parametrize("spec", ["fixed(b=6)", "ewma(candidates=4|6, probe=2)",
                                  "fixed(b=6)+refine(steps=2)", "fixed(b=6)+refine(steps=3, only_below=0.6)",
                                  "fixed(b=6)+refine(steps=3, only_below=0.8, input=previous)"])
def test_oracle_equals_live_plain_and_refine(pair, spec):
    target, draft = pair
    policy = parse_policy(spec)
    res = Decoder(target, draft, policy, LoopConfig(max_new_tokens=MAX_NEW)).run(0, PROMPTS[0])
    rows, target_rows = Oracle(target, draft, [4, 6], 4, policy.probes(), MAX_NEW).rows(
        0, res.prompt_ids, res.output_ids)
    idx = _index(rows)
    for cyc, view in zip(res.cycles, res.views):
        row = idx[(cyc["start"], cyc["block_size"], cyc["probe"], cyc["prev_offset"])]
        assert _same(row, view), cyc
        # greedy acceptance is the leading run of rank 0 (capped at the end of S)
        ranks = list(row["true_rank"])
        lead = next((i for i, r in enumerate(ranks) if r != 0), len(ranks))
        assert cyc["accepted"] == min(lead, len(res.output_ids) - 1 - cyc["start"] - 1)
    assert len(target_rows) == len(res.output_ids)
    last = [r for r in rows if r["start"] == len(res.output_ids) - 2 and r["block_size"] == 6][0]
    assert list(last["true_rank"])[1:] == [RANK_BEYOND_END] * 4


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_oracle_recycle_probe_equals_live(pair, mode):
    """Where the previous live cycle drafted plainly (its proposal equals the plain oracle
    row), the live seeded proposal equals the probe row at prev_offset = tau."""
    target, draft = pair
    policy = parse_policy(f"fixed(b=6)+recycle(mode={mode})")
    checked = 0
    for i, prompt in enumerate(PROMPTS):
        res = Decoder(target, draft, policy, LoopConfig(max_new_tokens=MAX_NEW)).run(i, prompt)
        rows, _ = Oracle(target, draft, [6], 4, policy.probes(), MAX_NEW).rows(i, res.prompt_ids, res.output_ids)
        idx = _index(rows)
        for prev, cyc, prev_view, view in zip(res.cycles, res.cycles[1:], res.views, res.views[1:]):
            if not cyc["n_seeds"] or not _same(idx[(prev["start"], 6, "", 0)], prev_view):
                continue
            assert cyc["prev_offset"] == prev["tau"]
            assert _same(idx[(cyc["start"], 6, cyc["probe"], cyc["prev_offset"])], view)
            checked += 1
    assert checked >= 2


def test_default_probe_keys_are_canonical_specs():
    keys = default_probe_keys(["recycle", "refine"])
    assert keys == [parse_policy("recycle(mode=sparse)").inputs[0].spec(),
                    parse_policy("recycle(mode=dense)").inputs[0].spec(),
                    parse_policy("refine(steps=2)").inputs[0].spec()]
    assert keys[2].startswith("refine(steps=2")


def test_probes_flag_given_twice_adds_up():
    """`--probes A --probes B` asks for both (a second flag replacing the first would,
    with --replace, drop a recorded probe the user meant to keep)."""
    from specreplay.cli import build_parser
    from specreplay.live.cli import _probe_keys
    args = build_parser().parse_args(["oracle", "T", "--probes", "recycle(mode=sparse, max=-1, min_margin=-1.0)",
                                      "--probes", "refine(steps=2, only_below=0.5)"])
    assert _probe_keys(args.probes) == ("recycle(mode=sparse, max=-1, min_margin=-1.0)",
                                        "refine(steps=2, only_below=0.5)")
    assert _probe_keys("recycle") == _probe_keys(["recycle", "recycle(mode=sparse)"])


def test_a_block_size_given_twice_is_drafted_once(pair):
    """--oracle-block-sizes 4,4 means block size 4: one group of rows, not two, and the
    probes' groups once each, in the order of the first mention."""
    target, draft = pair
    res = Decoder(target, draft, parse_policy("fixed(b=4)"), LoopConfig(max_new_tokens=12)).run(0, PROMPTS[0])
    probes = default_probe_keys(["recycle", "refine"])
    once = Oracle(target, draft, [6, 4], 4, probes, 12).rows(0, res.prompt_ids, res.output_ids)[0]
    twice = Oracle(target, draft, [6, 4, 6], 4, probes, 12).rows(0, res.prompt_ids, res.output_ids)[0]
    key = lambda r: (r["start"], r["block_size"], r["probe"], r["prev_offset"])  # noqa: E731
    assert [key(r) for r in twice] == [key(r) for r in once]
    assert len({key(r) for r in twice}) == len(twice)
    assert [r["block_size"] for r in once][0] == 6
