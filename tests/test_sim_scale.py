"""The simulator at scale: costs linear in the work, the single-stream direct loop equal
to the SimPy engine for every policy family, cheap loading, sweeps sharing one load.
SYNTHETIC traces."""
import time

import numpy as np
import pytest

from specreplay.sim.replay import Replayer
from specreplay.traces.synthetic import leading_zeros, make_trace


@pytest.fixture(scope="module")
def long_and_short(tmp_path_factory):
    """One 32k-token sample and sixteen 2k-token samples: every cycle accepts 3 of 7
    drafted tokens, so both replay the same 8,192 cycles, at very different contexts."""
    root = tmp_path_factory.mktemp("scale")
    kw = dict(block_sizes=(8,), ranks=leading_zeros(3), live_policy="fixed(b=8)")
    return (make_trace(root / "long", output_lengths=[32768], **kw),
            make_trace(root / "short", output_lengths=[2048] * 16, **kw))


def test_long_contexts_cost_no_more_per_cycle_than_short_ones(long_and_short):
    long, short = long_and_short
    spent = {}
    for name, trace in (("long", long), ("short", short)):
        r = Replayer(trace, bootstrap=0, states=False)
        t0 = time.process_time()
        pred = r.predict("ewma(candidates=8)")  # through the engine: a cost query per cycle
        spent[name] = time.process_time() - t0
        assert pred.cycles == 8192, name
    # generous: a rebuild of the cost table per new context length took minutes here
    assert spent["long"] < 4 * spent["short"] + 1.0, spent
