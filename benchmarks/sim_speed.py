"""How fast the simulator replays, in simulated cycles per second. Not a test.

Prints exactly one line::

    cycles_per_s fixed=N ewma_c1=N ewma_c16=N

* fixed: ``fixed(b=16)`` single stream (the vectorised fixed-block path);
* ewma_c1: ``ewma(candidates=8|12|16)`` through the SimPy engine, closed loop with one
  request in flight;
* ewma_c16: the same with 16 requests in flight (batched GPU steps).

Input: a SYNTHETIC trace (traces/synthetic.py) of 48 samples x 2,000 output tokens
(96,000 positions; oracle block sizes 8, 12, 16; top-4; the draft's top-1 right with
probability 0.85 per offset), written to a temporary directory first (that takes a
while and is not timed). The trace is loaded and its oracle arrays and cost model built
once, as a sweep does; the timed part is each policy's replay, summary included
(bootstrap off), without per-cycle policy-state capture (``states=False``, as
``specreplay replay`` and ``sweep`` run; capturing it costs about a quarter more time
for the EWMA scheduler, whose state() builds a dict every cycle).

One core: the process pins itself to one CPU where the OS allows, and the figures are
cycles per second of that process's CPU time (``time.process_time``), so other load on
the machine does not deflate them. Each figure is the best of several runs of at least
half a second each.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specreplay.sim.replay import Replayer  # noqa: E402
from specreplay.traces.synthetic import make_trace, random_ranks  # noqa: E402

SAMPLES, LENGTH = 48, 2000
EWMA = "ewma(candidates=8|12|16)"


def cycles_per_s(replayer: Replayer, spec: str, repeats: int = 3, min_s: float = 0.5) -> int:
    """Best cycles per CPU second over ``repeats`` timings of at least ``min_s`` each."""
    replayer.baseline  # the speedup's ar replay, once, untimed
    best = 0.0
    for _ in range(repeats):
        cycles, t0 = 0, time.process_time()
        while True:
            cycles += replayer.predict(spec).cycles
            spent = time.process_time() - t0
            if spent >= min_s:
                break
        best = max(best, cycles / spent)
    return int(best)


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory() as tmp:
        trace = make_trace(Path(tmp) / "bench", output_lengths=[LENGTH] * SAMPLES,
                           block_sizes=(8, 12, 16), ranks=random_ranks(0.85, 0.1, seed=1),
                           live_policy="fixed(b=16)")
        single = Replayer(trace, bootstrap=0, states=False)
        data = single.setting.data
        fixed = cycles_per_s(single, "fixed(b=16)")
        c1 = cycles_per_s(Replayer(data, concurrency=1, bootstrap=0, states=False), EWMA)
        c16 = cycles_per_s(Replayer(data, concurrency=16, bootstrap=0, states=False), EWMA)
    print(f"cycles_per_s fixed={fixed} ewma_c1={c1} ewma_c16={c16}")


if __name__ == "__main__":
    main()
