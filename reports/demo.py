"""``specreplay demo``: replay the shipped sample trace over a default matrix of policies,
print the leaderboard and write the report. Offline, on CPU, in well under a minute."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from specreplay import traces
from specreplay.policies import PolicyError, parse_policy

# The demo's policy matrix, and the default of `specreplay report`: fixed block sizes,
# the two block-size schedulers, confidence gating, trees of a few widths, a candidate
# generator, suffix recycling and selective refinement, with plain decoding as baseline.
DEFAULT_POLICIES = [
    "ar",
    "fixed(b=4)",
    "fixed(b=8)",
    "fixed(b=12)",
    "fixed(b=16)",
    "ewma(candidates=8|12|16)",
    "breakeven(candidates=8|12|16)",
    "fixed(b=16)+gate(min_prob=0.2)",
    "fixed(b=16)+tree(topk=2, depth=4)",
    "fixed(b=16)+tree(topk=2, depth=6)",
    "fixed(b=16)+tree(topk=3, depth=4)",
    "fixed(b=16)+candidates(mode=branch_beam, depth=6, topk=2, max=4, verify=tree)",
    "fixed(b=16)+recycle(mode=sparse)",
    "fixed(b=16)+refine(steps=2)",
]

SAMPLES_DIR = Path(traces.__file__).resolve().parent / "samples"
DEFAULT_OUT = Path("out/demo")
SYNTHETIC_NOTICE = ("SYNTHETIC TRACE: no sample trace is shipped under traces/samples/ yet, "
                    "so this demo generated a synthetic trace (made-up acceptance and "
                    "timings, for testing the tool). Its numbers say nothing about any "
                    "model or GPU.")


def shipped_sample() -> Path | None:
    """The first trace directory (holding run.json) under traces/samples/, by name."""
    if not SAMPLES_DIR.is_dir():
        return None
    for d in sorted(SAMPLES_DIR.iterdir()):
        if d.is_dir() and (d / "run.json").exists():
            return d
    return None


def synthetic_trace(out: Path) -> Path:
    """Generate the labelled synthetic fallback trace into ``out/synthetic-trace``: six
    prompts, the oracle for block sizes 4, 8, 12 and 16 at top-4, the probes the default
    matrix needs, a profile, live policy fixed(b=16)."""
    import shutil

    from specreplay.traces.synthetic import make_trace
    d = out / "synthetic-trace"
    if d.exists():
        shutil.rmtree(d)
    probes = {}
    for spec in DEFAULT_POLICIES:
        try:
            probes.update({key: None for key in parse_policy(spec).probes()})
        except PolicyError:
            continue  # reported when the matrix is parsed for the replay
    make_trace(d, output_lengths=(96,) * 6, block_sizes=(4, 8, 12, 16), top_k=4,
               probes=probes, live_policy="fixed(b=16)")
    return d


def parseable(specs: list[str], log: Callable[[str], None]) -> list[str]:
    """The specs the policy parser accepts; each refused one is reported with the reason."""
    ok = []
    for spec in specs:
        try:
            parse_policy(spec)
        except PolicyError as e:
            log(f"skipped {spec}: {e}")
            continue
        ok.append(spec)
    return ok


def run_demo(out: Path = DEFAULT_OUT, trace_dir: Path | None = None,
             log: Callable[[str], None] = print) -> tuple[Path, list]:
    """Replay ``trace_dir`` (default: the shipped sample, else a synthetic trace written
    into ``out``) over ``DEFAULT_POLICIES``, print the leaderboard and the policies
    skipped with their reasons, write the report with the shipped ledger into ``out``.
    Returns the path of ``index.html`` and the replays (``reports.report.Replayed``)
    behind it."""
    from specreplay.reports.ledger import SHIPPED_LEDGER
    from specreplay.reports.report import build_report, leaderboard_text, replay_traces

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notices = []
    if trace_dir is None:
        trace_dir = shipped_sample()
        if trace_dir is None:
            trace_dir = synthetic_trace(out)
            notices.append(SYNTHETIC_NOTICE)
            log(SYNTHETIC_NOTICE)
            log(f"synthetic trace written to {trace_dir}")
    log(f"replaying {trace_dir} over {len(DEFAULT_POLICIES)} policies")
    specs = parseable(DEFAULT_POLICIES, log)
    replays = replay_traces([Path(trace_dir)], specs, log=log)
    log(leaderboard_text(replays))
    html = build_report(replays, out, ledger_path=SHIPPED_LEDGER, notices=notices,
                        title="specreplay demo")
    log(f"report written to {out.resolve()} (open {html.resolve()})")
    return html, replays
