"""How fast the simulator replays, loads and sweeps. Not a test.

Prints seven lines::

    cycles_per_s fixed=N ewma_c1=N ewma_c16=N
    cycles_per_s_single ewma=N tree=N
    load load_s_per_Mpos=X bytes_per_pos=N oracle_bytes_per_pos=N positions=N layout=compacted checks=stamped
    load load_s_per_Mpos=X bytes_per_pos=N oracle_bytes_per_pos=N positions=N layout=compacted checks=run
    load load_s_per_Mpos=X bytes_per_pos=N oracle_bytes_per_pos=N positions=N layout=parts checks=run
    sweep policies=N sweep_s_1w=X sweep_s_2w=X sweep_speedup_2w=X layout=compacted
    long_context tokens=N samples=N fixed=N ewma=N ewma_vs_short=X

* fixed: ``fixed(b=16)`` single stream (the vectorised fixed-block path);
* ewma_c1 / ewma_c16: ``ewma(candidates=8|12|16)`` through the SimPy engine, closed
  loop with 1 / 16 requests in flight (batched GPU steps at 16);
* cycles_per_s_single: the same EWMA, and ``fixed(b=16)+tree(topk=3, depth=6)``, single
  stream (the direct loop over the same per-request code);
* load: opening the trace and building its oracle arrays, cost model and oracle
  agreement (a ``Replayer``), in a fresh process that loaded a tiny trace first (imports
  and one-time set-up): CPU seconds per million output positions, and the growth of
  the process's resident memory per position (what the loaded trace keeps, plus what
  the allocators keep of the decoding's buffers), and the bytes per position of the
  oracle arrays themselves (the draft's ids and log-probabilities are decoded and
  checked, then dropped until a policy reads them). Three times: the trace compacted
  (one file per table, `specreplay trace compact`), whose files carry the stamp of the
  check compaction ran (``checked.json``: unchanged files are not checked again, and
  the log-probabilities, read only to be checked, are not decoded); the same files
  without the stamp (every value check runs); and as recorded (a part file per sample
  and table, every check runs);
* sweep: a 100-policy EWMA grid (``--sweep-policies``) through ``run_sweep`` with 1 and
  with 2 worker processes on the compacted (stamped) trace, wall-clock seconds
  including the load;
* long_context: samples of 32,768 output tokens, cycles per second of fixed and
  single-stream EWMA, and EWMA's rate relative to the short-context trace's.

Input: a SYNTHETIC trace (traces/synthetic.py) of realistic shape, 164 prompts x 2,048
output tokens (336k positions; oracle block sizes 4, 8, 12, 16; top-4; the draft's
top-1 right with probability 0.85 per offset), written to a temporary directory first
(that takes minutes and is not timed). ``--scale S`` multiplies the number of prompts
(and of long-context samples, at least one) to run smaller; ``--replay-only`` prints
the two cycles_per_s lines alone (for before/after runs of the replay's hot path), each
figure the best of ``--repeats`` timings.

One core: the process pins itself to one CPU where the OS allows (except for the
two-worker sweep, which gets the CPUs the process started with), and the replay
figures are cycles per second of that process's CPU time (``time.process_time``), so
other load on the machine does not deflate them; each is the best of several runs of
at least half a second each. The sweep's figures are wall-clock, so they do depend on
how idle the machine is.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from specreplay.sim.replay import Replayer
from specreplay.sim.sweep import expand_grid, run_sweep
from specreplay.traces.compact import compact
from specreplay.traces.reader import CHECKED_STAMP
from specreplay.traces.synthetic import make_trace, random_ranks

SAMPLES, LENGTH, BLOCK_SIZES = 164, 2048, (4, 8, 12, 16)
LONG_SAMPLES, LONG_LENGTH = 2, 32768
EWMA = "ewma(candidates=8|12|16)"
TREE = "fixed(b=16)+tree(topk=3, depth=6)"
GRID = "ewma(alpha=0.05|0.1|0.2|0.3|0.5, probe=4|8|12|16|24, margin=0.0|0.05|0.1|0.2)"


REPEATS = 3  # timings per figure (--repeats)


def cycles_per_s(replayer: Replayer, spec: str, repeats: int | None = None, min_s: float = 0.5) -> int:
    """Best cycles per CPU second over ``repeats`` timings of at least ``min_s`` each."""
    replayer.baseline  # the speedup's ar replay, once, untimed
    best = 0.0
    for _ in range(REPEATS if repeats is None else repeats):
        cycles, t0 = 0, time.process_time()
        while True:
            cycles += replayer.predict(spec).cycles
            spent = time.process_time() - t0
            if spent >= min_s:
                break
        best = max(best, cycles / spent)
    return int(best)


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; elsewhere the peak, from rusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def load_only(trace: str, warm: str) -> None:
    """Child process: time one load and print its figures as JSON. A tiny trace is
    loaded first, so that the imports and one-time set-up a first load pays are not
    counted per position."""
    Replayer(warm, bootstrap=0, states=False)
    gc.collect()
    before = rss_bytes()
    t0 = time.process_time()
    r = Replayer(trace, bootstrap=0, states=False)
    spent = time.process_time() - t0
    gc.collect()
    positions = r.setting.data.n_positions
    held = sum(g.nbytes() for g in r.setting.acc.groups.values())
    print(json.dumps({"load_s": spent, "positions": positions,
                      "bytes": rss_bytes() - before, "held": held}))


def measure_load(trace: Path, warm: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--load-only", str(trace), str(warm)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def sweep_seconds(trace: Path, specs: list[str], workers: int) -> float:
    t0 = time.perf_counter()
    run_sweep(specs, {"trace": str(trace), "bootstrap": 0, "states": False}, workers=workers)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the number of prompts (and long-context samples) by this")
    ap.add_argument("--sweep-policies", type=int, default=100,
                    help="policies in the sweep (the first N of a 100-policy grid)")
    ap.add_argument("--replay-only", action="store_true",
                    help="print only the cycles_per_s lines (no load, sweep or long-context runs)")
    ap.add_argument("--repeats", type=int, default=REPEATS,
                    help="timings of each replay figure, the best one reported")
    ap.add_argument("--load-only", nargs=2, metavar=("TRACE", "WARM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_only:
        load_only(*args.load_only)
        return
    if not 0 < args.scale <= 1 or not 1 <= args.sweep_policies <= 100 or args.repeats < 1:
        ap.error("--scale must be in (0, 1], --sweep-policies in 1..100 and --repeats >= 1")
    globals()["REPEATS"] = args.repeats  # cycles_per_s's default
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    one_core = (lambda: os.sched_setaffinity(0, {sorted(cpus)[0]})) if cpus else (lambda: None)
    one_core()
    samples = max(2, round(SAMPLES * args.scale))
    long_samples = max(1, round(LONG_SAMPLES * args.scale))
    with tempfile.TemporaryDirectory() as tmp:
        trace = make_trace(Path(tmp) / "bench", output_lengths=[LENGTH] * samples,
                           block_sizes=BLOCK_SIZES, ranks=random_ranks(0.85, 0.1, seed=1),
                           live_policy="fixed(b=16)")
        single = Replayer(trace, bootstrap=0, states=False)
        data = single.setting.data
        fixed = cycles_per_s(single, "fixed(b=16)")
        ewma_single = cycles_per_s(single, EWMA)
        tree = cycles_per_s(single, TREE)
        c1 = cycles_per_s(Replayer(data, concurrency=1, bootstrap=0, states=False), EWMA)
        c16 = cycles_per_s(Replayer(data, concurrency=16, bootstrap=0, states=False), EWMA)
        print(f"cycles_per_s fixed={fixed} ewma_c1={c1} ewma_c16={c16}", flush=True)
        print(f"cycles_per_s_single ewma={ewma_single} tree={tree}", flush=True)
        if args.replay_only:
            return
        del single, data
        gc.collect()

        warm = make_trace(Path(tmp) / "warm", output_lengths=[64, 64], block_sizes=BLOCK_SIZES,
                          live_policy="fixed(b=16)")
        compacted = Path(tmp) / "compacted"
        shutil.copytree(trace, compacted)
        compact(compacted)
        unstamped = Path(tmp) / "unstamped"
        shutil.copytree(compacted, unstamped)
        (unstamped / CHECKED_STAMP).unlink()
        for layout, path in (("compacted checks=stamped", compacted),
                             ("compacted checks=run", unstamped), ("parts checks=run", trace)):
            load = measure_load(path, warm)
            print(f"load load_s_per_Mpos={load['load_s'] / load['positions'] * 1e6:.2f} "
                  f"bytes_per_pos={load['bytes'] / load['positions']:.0f} "
                  f"oracle_bytes_per_pos={load['held'] / load['positions']:.0f} "
                  f"positions={load['positions']} layout={layout}", flush=True)

        specs = expand_grid(GRID)[:args.sweep_policies]
        t1 = sweep_seconds(compacted, specs, 1)
        if cpus and len(cpus) >= 2:
            os.sched_setaffinity(0, cpus)  # the two workers get the CPUs we started with
        t2 = sweep_seconds(compacted, specs, 2)
        one_core()
        print(f"sweep policies={len(specs)} sweep_s_1w={t1:.1f} sweep_s_2w={t2:.1f} "
              f"sweep_speedup_2w={t1 / t2:.2f} layout=compacted", flush=True)

        long = make_trace(Path(tmp) / "long", output_lengths=[LONG_LENGTH] * long_samples,
                          block_sizes=(8, 12, 16), ranks=random_ranks(0.85, 0.1, seed=2),
                          live_policy="fixed(b=16)")
        r = Replayer(long, bootstrap=0, states=False)
        long_fixed = cycles_per_s(r, "fixed(b=16)")
        long_ewma = cycles_per_s(r, EWMA)
        print(f"long_context tokens={LONG_LENGTH} samples={long_samples} fixed={long_fixed} "
              f"ewma={long_ewma} ewma_vs_short={long_ewma / max(ewma_single, 1):.2f}", flush=True)


if __name__ == "__main__":
    main()
