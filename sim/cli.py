"""`specreplay replay` and `specreplay sweep`: predict policies from a recorded trace."""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

_FMT = argparse.RawDescriptionHelpFormatter

_FIDELITY = ("fidelity: exact = greedy acceptance looked up in the oracle and every cost "
             "interpolated inside the profile's grid; approximate = Monte Carlo acceptance "
             "(sampled trace); extrapolated cost = some cost query left the grid (fitted "
             "model); other-setup profile = time from another setup's profile.")


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _replay_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"trace": args.trace, "profile": args.profile, "concurrency": args.concurrency,
            "rate": args.rate, "timing": args.timing, "seed": args.seed,
            "bootstrap": args.bootstrap, "other_setup": args.profile_from_other_setup,
            "slo_ttft_s": args.slo_ttft, "slo_tpot_s": args.slo_tpot,
            # the commands print summaries only: no per-cycle policy state to capture
            "states": False}


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_table(results: list[dict[str, Any]]) -> str:
    """Predictions as a terminal table, in the order given; unreplayable ones last with
    their reasons."""
    ok = [r for r in results if r["replayable"]]
    serving = any(r.get("serving") for r in ok)
    head = (f"{'tokens/s':>10}  {'95% CI':>21}  {'TPOT ms':>8}  {'tau':>6}  {'speedup':>7}  "
            + (f"{'TTFT ms':>8}  {'goodput/s':>9}  " if serving else "")
            + f"{'fidelity':<18}  policy")
    lines = [head]
    for r in ok:
        ci = f"[{_num(r['ci_low'], '.1f')}, {_num(r['ci_high'], '.1f')}]"
        row = (f"{_num(r['tokens_per_s'], '10.1f')}  {ci:>21}  {_num(r['tpot_s'] * 1e3, '8.3f')}  "
               f"{_num(r['tau_mean'], '6.3f')}  {_num(r['speedup'], '7.3f')}  ")
        if serving:
            s = r["serving"]
            row += (f"{_num(s['ttft_s']['mean'] * 1e3, '8.2f')}  "
                    f"{_num(s['goodput_rps'], '9.3f')}  ")
        lines.append(row + f"{r['fidelity']:<18}  {r['policy']}")
    for r in results:
        if not r["replayable"]:
            lines.append(f"{'-':>10}  {'':>21}  {'':>8}  {'':>6}  {'':>7}  "
                         + (f"{'':>8}  {'':>9}  " if serving else "")
                         + f"{'not replayable':<18}  {r['policy']}: {r['reason']}")
    if ok:
        first = ok[0]
        lines.append(f"\ntrace: {first['trace']} ({first['samples']} samples, "
                     f"{first['tokens']} output tokens); timing: {first['timing']}")
        lines.append(f"cost: {first['cost']}")
        if serving:
            lines.append("serving predictions are unvalidated: no live batched run has "
                         "confirmed them yet")
    return "\n".join(lines)


def _check_trace_args(args: argparse.Namespace) -> None:
    """Refuse flag values the trace cannot honour, before any replay runs."""
    from specreplay.errors import CLIError, check_input_dir
    if args.profile is not None:
        check_input_dir(args.profile, "--profile", "profile")
    if args.bootstrap < 0:
        raise CLIError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if (args.slo_ttft is not None or args.slo_tpot is not None) and \
            args.concurrency is None and args.rate is None:
        raise CLIError("--slo-ttft/--slo-tpot apply to serving runs: add --concurrency N or "
                       "--rate R")


def _check_concurrency(args: argparse.Namespace, n_samples: int) -> None:
    """A closed loop keeps at most one request per prompt in flight: a larger
    --concurrency would predict a load that this trace cannot produce."""
    from specreplay.errors import CLIError
    if args.concurrency is not None and args.concurrency > n_samples:
        raise CLIError(f"--concurrency {args.concurrency} is more than the {n_samples} prompts "
                       f"recorded in {args.trace}, and a closed loop keeps at most one request "
                       f"per prompt in flight: pass --concurrency {n_samples} or less (or --rate "
                       "for open-loop arrivals)")


def _exit_status(results: list[dict[str, Any]]) -> int:
    """1 when not one requested policy could be replayed: a script must not take an
    empty table for a result."""
    return 0 if any(r["replayable"] for r in results) else 1


def _replay(args: argparse.Namespace) -> int:
    from specreplay.policies.spec import parse_policy
    from specreplay.sim.replay import replay
    from specreplay.sim.tracedata import load_trace
    _check_trace_args(args)
    for spec in args.policy:
        parse_policy(spec)  # a typo fails at once, before the trace loads
    data = load_trace(args.trace)
    _check_concurrency(args, data.n_samples)
    preds = replay(policies=args.policy, **{**_replay_kwargs(args), "trace": data})
    results = [p.to_dict() for p in preds]
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return _exit_status(results)


def _sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from specreplay.sim.sweep import expand_grid, run_sweep
    from specreplay.sim.tracedata import load_trace
    from specreplay.errors import CLIError
    _check_trace_args(args)
    specs = [s for g in args.grid for s in expand_grid(g)] + list(args.policy or [])
    if not specs:
        raise CLIError("nothing to sweep: give --grid GRID (or --policy SPEC)")
    specs = list(dict.fromkeys(specs))
    # a bad trace fails here, before any worker starts
    _check_concurrency(args, load_trace(args.trace).n_samples)
    bar = tqdm(total=len(specs), unit="policy", desc="replaying", file=sys.stderr,
               disable=args.json and not sys.stderr.isatty())
    try:
        results = run_sweep(specs, _replay_kwargs(args), args.workers, progress=bar.update)
    finally:
        bar.close()
    results.sort(key=lambda r: -(r["tokens_per_s"] or 0) if r["replayable"] else math.inf)
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return _exit_status(results)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", metavar="TRACE", help="trace directory (with its oracle)")
    p.add_argument("--profile", metavar="DIR",
                   help="latency profile directory (default: the trace's own profile, else a "
                        "cost model fitted to the trace's live cycles)")
    p.add_argument("--profile-from-other-setup", action="store_true",
                   help="allow a profile measured on another GPU/backend/models; predictions "
                        "are labelled 'other-setup profile: <setup>'")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_positive_int, metavar="N",
                      help="serving: N requests in flight (closed loop), batched on one GPU; "
                           "at most the number of recorded prompts")
    load.add_argument("--rate", type=_positive_float, metavar="R",
                      help="serving: Poisson arrivals at R requests per second")
    p.add_argument("--timing", choices=("model", "recorded", "calibrated"), default="model",
                   help="model: every cycle's seconds from the cost model (default); "
                        "recorded: cycles the live run ran take their recorded seconds; "
                        "calibrated: the cost model scaled to the trace's plain live cycles "
                        "(the live loop's own host work and the machine's slow phases)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of Monte Carlo acceptance, arrivals and the bootstrap (default 0)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the tokens/s CI (default 1000; 0 = none)")
    p.add_argument("--slo-ttft", type=_positive_float, metavar="S",
                   help="serving: time-to-first-token SLO in seconds, for goodput")
    p.add_argument("--slo-tpot", type=_positive_float, metavar="S",
                   help="serving: time-per-output-token SLO in seconds, for goodput")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list, one object per policy (keys: policy, tokens_per_s, "
                        "tpot_s, tau_mean, tau_hist, speedup, ci_low, ci_high, fidelity, "
                        "replayable, reason, cycles, tokens, samples, serving, ...)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``replay`` and ``sweep`` to the specreplay command."""
    p = sub.add_parser(
        "replay", help="predict policies' tokens/s, TPOT and tau from a recorded trace",
        formatter_class=_FMT,
        description="Replay policies on a recorded trace: acceptance from the oracle, time "
                    "from the cost model. Single stream by default (the live decode loop); "
                    "--concurrency or --rate simulate serving with batched GPU steps.\n\n"
                    "tokens/s = output tokens / decode seconds; TPOT = mean over samples of "
                    "decode seconds / output tokens (as the seed scripts); speedup = TPOT of "
                    "'ar' / TPOT of the policy under the same cost model.\n" + _FIDELITY,
        epilog="examples:\n"
               "  specreplay replay TRACE --policy 'fixed(b=8)' --policy 'fixed(b=16)'\n"
               "  specreplay replay TRACE --policy 'ewma(candidates=8|12|16)' --timing recorded\n"
               "  specreplay replay TRACE --policy 'fixed(b=16)+tree(topk=2, depth=4)' --json\n"
               "  specreplay replay TRACE --policy 'fixed(b=8)' --concurrency 16\n"
               "  specreplay replay TRACE --policy ewma --rate 4 --slo-ttft 0.5 --slo-tpot 0.02\n"
               "  specreplay replay TRACE --policy ewma --profile H100_PROFILE "
               "--profile-from-other-setup")
    _common(p)
    p.add_argument("--policy", action="append", required=True, metavar="SPEC",
                   help="policy spec to replay (repeatable), e.g. 'fixed(b=8)', 'ar', "
                        "'ewma(alpha=0.1)+gate(min_prob=0.2)'")
    p.set_defaults(func=_replay)

    p = sub.add_parser(
        "sweep", help="replay grids of policy knob values in parallel processes",
        formatter_class=_FMT,
        description="Expand grids of knob values into policies and replay them all, in "
                    "parallel processes, best tokens/s first.\n\n"
                    "Grid syntax: '|' separates alternatives of a one-value knob; a list-"
                    "valued knob (ewma's candidates, where '|' builds the list) takes its "
                    "alternatives separated by ';'. Every combination is one policy.\n"
                    + _FIDELITY,
        epilog="examples:\n"
               "  specreplay sweep TRACE --grid 'ewma(alpha=0.05|0.1|0.2, probe=8|12)'\n"
               "  specreplay sweep TRACE --grid 'fixed(b=4|8|16)' --grid "
               "'fixed(b=16)+gate(min_prob=0.1|0.2|0.4)' --workers 2\n"
               "  specreplay sweep TRACE --grid 'ewma(candidates=8|16;8|12|16)' --json\n"
               "  specreplay sweep TRACE --grid 'fixed(b=8|16)' --concurrency 8")
    _common(p)
    p.add_argument("--grid", action="append", default=[], metavar="GRID",
                   help="policy grid (repeatable), e.g. 'ewma(alpha=0.05|0.1, probe=8|12)'")
    p.add_argument("--policy", action="append", metavar="SPEC",
                   help="an extra single policy to include (repeatable)")
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="parallel worker processes (default 1; capped at the CPU count)")
    p.set_defaults(func=_sweep)
