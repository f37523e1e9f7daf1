"""The live loop's measured host term: every recorded cycle's seconds are its draft,
verify and host (overhead) parts, the host part is measured (never 0: a cycle always does
host work between the passes), and a replay of the recorded policy charges that term."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.live

from specreplay.live.loop import Decoder, LoopConfig  # noqa: E402
from specreplay.policies import parse_policy  # noqa: E402
from live_pair import PROMPTS, tiny_pair  # noqa: E402


@pytest.fixture(scope="module")
def cycles():
    target, draft = tiny_pair()
    out = []
    for spec in ("fixed(b=6)", "fixed(b=6)+tree(topk=2, depth=2)",
                 "candidates(mode=fixed_prefix_rank, prefix=2, verify=batch)"):
        dec = Decoder(target, draft, parse_policy(spec), LoopConfig(max_new_tokens=24, record=False))
        for i, prompt in enumerate(PROMPTS):
            out += dec.run(i, list(prompt)).cycles
    return out


def test_each_cycle_is_draft_plus_verify_plus_measured_host_time(cycles):
    modes = {c["verify_mode"] for c in cycles}
    assert modes == {"chain", "tree", "batch"}
    for c in cycles:
        assert c["cycle_s"] == pytest.approx(c["draft_s"] + c["target_s"] + c["overhead_s"], rel=1e-9)
        assert c["overhead_s"] > 0, c  # policy calls, acceptance, KV cut-back: never free
    # the host part is a real share of a cycle, not rounding
    over = np.array([c["overhead_s"] for c in cycles])
    total = np.array([c["cycle_s"] for c in cycles])
    assert np.median(over / total) > 0.01


def test_replay_charges_the_recorded_host_time(cycles):
    import pyarrow as pa
    from specreplay.sim.cost import cycle_overheads
    table = pa.table({"overhead_s": [c["overhead_s"] for c in cycles],
                      "verify_mode": [c["verify_mode"] for c in cycles]})
    per_mode = cycle_overheads(table)
    for mode in ("chain", "tree", "batch"):
        own = [c["overhead_s"] for c in cycles if c["verify_mode"] == mode]
        assert per_mode[mode] == pytest.approx(float(np.median(own))) and per_mode[mode] > 0
