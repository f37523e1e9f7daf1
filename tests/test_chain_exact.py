"""The first test of the whole chain: record a policy live (tiny pair, CPU, float32, with
the oracle), replay the same policy in the simulator, and get the recorded cycles back
exactly — starts, block sizes and accepted lengths — for every kind of policy, including
time-dependent schedulers (recorded timing) and recycling whose seeded cycles follow each
other."""
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.live

from specreplay.live.recorder import ModelInfo, RecordSettings, Recorder  # noqa: E402
from specreplay.sim.replay import replay  # noqa: E402
from live_pair import PROMPTS, VOCAB, tiny_pair  # noqa: E402
from specreplay.traces.reader import Trace  # noqa: E402


@dataclass
class P:
    dataset_index: int
    ids: list


SPECS = [
    "fixed(b=6)",
    "ewma(candidates=4|6|8, warmup=2, probe=3, streak=1, cooldown=1)",
    "fixed(b=6)+gate(min_prob=0.5)",
    "fixed(b=6)+tree(topk=2, depth=2)",
    "fixed(b=8)+candidates(mode=branch_beam, depth=3, topk=2, max=3, verify=batch)",
    "fixed(b=6)+recycle(mode=dense)",
    "fixed(b=8)+recycle(mode=sparse, max=2)",
    "fixed(b=6)+refine(steps=2, only_below=0.9)",
]


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.mark.parametrize("spec", SPECS)
def test_replaying_the_recorded_policy_reproduces_its_cycles(pair, tmp_path, spec):
    target, draft = pair
    prompts = [P(i, p) for i, p in enumerate(PROMPTS)]
    settings = RecordSettings(out=tmp_path / "t", policy=spec, max_new_tokens=40,
                              oracle_block_sizes=(4, 6, 8), record_logits=False)
    info = ModelInfo(target={"id": "tiny-target", "files": {}},
                     draft={"id": "tiny-draft", "files": {}, "block_size": 8, "mask_token_id": VOCAB - 1},
                     setup={"device": "cpu", "backend": "hf", "dtype": "float32"},
                     dataset={"name": "unit", "indices": [p.dataset_index for p in prompts]})
    Recorder(target, draft, settings, info).record(prompts, progress=False)
    trace = Trace.open(tmp_path / "t")
    live = trace.cycles
    (pred,) = replay(trace, [spec], timing="recorded", bootstrap=10)
    assert pred.replayable, pred.reason
    # exact acceptance; recycling's note on its extra draft pass may follow
    assert pred.label == "exact" and pred.fidelity.split("; ")[0] == "exact"
    got = pred.per_cycle
    for col in ("sample", "start", "block_size", "accepted"):
        assert np.array_equal(np.asarray(got[col]), live.column(col).to_numpy()), col
    assert pred.recorded_cycles == live.num_rows  # every cycle timed by its recorded seconds
    from specreplay.traces.check import check_trace
    report = check_trace(tmp_path / "t")
    assert report["ok"], report["problems"]
    if report["oracle_live_compared"]:  # every plain greedy cycle: oracle == live draft
        assert report["oracle_live_agreement"] == 1.0
    if "recycle" in spec:
        seeded = np.asarray(live.column("n_seeds").to_numpy()) > 0
        # the case that matters: seeded cycles that follow seeded cycles
        assert (seeded[1:] & seeded[:-1]).any()
