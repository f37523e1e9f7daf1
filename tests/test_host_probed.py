"""The probed host mode: a chain drafted from a probe input (refinement, recycling's
seeds) has its proposals fetched to the host between the draft's passes and its verify
planned there, so it is labelled, measured and costed apart from a plain chain."""
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from specreplay.policies.base import host_mode
from specreplay.sim.cost import cycle_overheads
from specreplay.traces.schema import HOST_MODES


def test_host_mode_names_a_probed_chain_and_nothing_else():
    assert "probed" in HOST_MODES
    assert host_mode(16, "chain", gated=False, probed=True) == "probed"
    assert host_mode(16, "chain", gated=False) == "chain"
    assert host_mode(16, "chain", gated=True, probed=True) == "gated"  # the gate's host step dominates
    assert host_mode(16, "tree", gated=False, probed=True) == "tree"
    assert host_mode(1, "chain", gated=False, probed=True) == "ar"


def test_recorded_probed_chains_have_their_own_median():
    cycles = pa.table({"verify_mode": ["chain"] * 4 + ["tree"], "block_size": [8, 8, 8, 1, 8],
                       "probe": ["", "refine(steps=2)", "refine(steps=2)", "", "refine(steps=2)"],
                       "overhead_s": [1e-3, 3e-3, 5e-3, 2e-4, 7e-3]})
    out = cycle_overheads(cycles)
    assert out == {"ar": 2e-4, "chain": 1e-3, "probed": 4e-3, "tree": 7e-3,
                   "all": float(np.median([1e-3, 3e-3, 5e-3, 2e-4, 7e-3]))}


def test_replay_charges_a_refined_chain_the_probed_host_rows(tmp_path):
    """SYNTHETIC trace and profile: host rows of 1 ms for a chain and 4 ms for a probed
    chain; a refined policy's every cycle (each names the refine probe) costs 4 ms of host
    time, the plain policy's 1 ms."""
    from specreplay.sim.replay import replay
    from specreplay.traces.reader import Profile
    from specreplay.traces.synthetic import leading_zeros, make_trace
    key = "refine(steps=2, only_below=0.5)"
    t = make_trace(tmp_path / "t", output_lengths=(40, 30), block_sizes=(8,), ranks=leading_zeros(3),
                   top1_prob=0.3, probes={key: None}, live_policy="fixed(b=8)")
    p = Profile.open(t)
    base = p.table.filter(pa.compute.not_equal(p.table["kind"], "overhead"))
    rows = {c: base[c].to_pylist() for c in base.column_names}
    rows["mode"] = [""] * base.num_rows
    for mode, secs in (("chain", 1e-3), ("probed", 4e-3)):
        for c, v in zip(("kind", "q", "context_len", "batch", "median_s", "p10_s", "p90_s", "n", "mode"),
                        ("overhead", 0, 0, 1, secs, secs, secs, 1, mode)):
            rows[c].append(v)
    prof = Profile(p.dir, p.meta, pa.table(rows))
    plain, refined = replay(t, ["fixed(b=8)", "fixed(b=8)+refine(steps=2)"], profile=prof)
    assert refined.replayable, refined.reason
    assert np.allclose(plain.per_cycle["overhead_s"], 1e-3, rtol=0, atol=1e-15)
    assert np.allclose(refined.per_cycle["overhead_s"], 4e-3, rtol=0, atol=1e-15)
