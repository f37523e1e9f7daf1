"""The probed host mode: a chain drafted from a probe input (refinement, recycling's
seeds) has its proposals fetched to the host between the draft's passes and its verify
planned there, so it is labelled, measured and costed apart from a plain chain."""
import numpy as np
import pyarrow as pa

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
