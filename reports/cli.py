"""Commands of the reports stage: ``specreplay report`` and ``specreplay demo``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _log(msg: str) -> None:
    print(msg, flush=True)


def cmd_report(args: argparse.Namespace) -> int:
    from specreplay.reports.demo import DEFAULT_POLICIES, parseable
    from specreplay.reports.ledger import LedgerError, read_ledger
    from specreplay.reports.report import build_report, leaderboard_text, replay_traces
    from specreplay.errors import CLIError, check_input_dir, check_output_dir

    check_output_dir(args.out)  # before the replays, which take minutes
    if args.profile is not None:
        check_input_dir(args.profile, "--profile", "profile")
    if args.ledger is not None:
        try:
            read_ledger(args.ledger)  # a malformed ledger fails before the replay, not after
        except LedgerError as e:
            raise CLIError(str(e)) from None
    specs = args.policy or parseable(DEFAULT_POLICIES, _log)
    replays = replay_traces(args.traces, specs, profile_dir=args.profile,
                            other_setup=args.profile_from_other_setup, log=_log,
                            timing=args.timing)
    if not any(rep.replayable() for rep in replays):
        print("specreplay report: no requested policy could be replayed from these traces "
              "(reasons above), so no report was written", file=sys.stderr)
        return 1
    _log(leaderboard_text(replays))
    html = build_report(replays, args.out, ledger_path=args.ledger)
    _log(f"report written to {html.parent.resolve()} (open {html.resolve()})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from specreplay.reports.demo import run_demo
    from specreplay.reports.ledger import LedgerError
    from specreplay.errors import CLIError, check_output_dir

    check_output_dir(args.out)
    if args.trace is not None and not args.trace.is_dir():
        raise CLIError(f"--trace {args.trace} is not a directory; pass a trace directory "
                       "(e.g. one under traces/samples/)")
    try:
        _, replays = run_demo(out=args.out, trace_dir=args.trace, log=_log)
    except LedgerError as e:
        raise CLIError(str(e)) from None
    if not any(rep.replayable() for rep in replays):
        print(f"specreplay demo: no policy of the demo could be replayed from {args.trace} "
              "(reasons above)", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from specreplay.reports.demo import DEFAULT_OUT, DEFAULT_POLICIES

    p = sub.add_parser(
        "report", help="replay traces and write an HTML report with figures",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Replay each TRACE over the policies and write OUT/index.html (one "
                    "self-contained page: figures as embedded PNGs, the leaderboard, the "
                    "ledger's predicted-vs-measured errors, the setup of every trace and "
                    "profile) plus every figure as a PNG file in OUT.",
        epilog="examples:\n"
               "  specreplay report traces/samples/humaneval-fixed16 --out report\n"
               "  specreplay report TRACE --ledger reports/ledger.csv --policy 'fixed(b=8)' "
               "--policy 'ewma(candidates=8|12|16)' --out report\n"
               "  specreplay report TRACE --profile PROFILE_DIR --out report\n"
               "without --policy, the demo's matrix is replayed:\n  "
               + "\n  ".join(DEFAULT_POLICIES))
    p.add_argument("traces", nargs="+", type=Path, metavar="TRACE", help="trace directories")
    p.add_argument("--ledger", type=Path, default=None,
                   help="predicted-vs-measured ledger CSV to plot (e.g. reports/ledger.csv)")
    p.add_argument("--policy", action="append", default=None, metavar="SPEC",
                   help="policy spec to replay (repeatable; default: the demo's matrix)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="latency profile directory (default: each trace's own profile)")
    p.add_argument("--profile-from-other-setup", action="store_true",
                   help="allow a --profile measured on another GPU/backend/models than the "
                        "trace (predictions are labelled with the profile's setup)")
    p.add_argument("--timing", choices=("model", "calibrated"), default="model",
                   help="model: time from the profile (default); calibrated: the profile scaled "
                        "to each trace's plain live cycles (needs the trace's own profile)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for index.html and the PNG figures (created if missing)")
    p.set_defaults(func=cmd_report)

    d = sub.add_parser(
        "demo", help="offline demo: replay the shipped sample trace and write the report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Replay the shipped sample trace (the first under traces/samples/) over "
                    "a default matrix of policies on this CPU, print the leaderboard and "
                    "write the report, with the shipped ledger, into a folder named at the "
                    "end. Needs no GPU and no network. Without a shipped sample it generates "
                    "a clearly labelled synthetic trace instead.",
        epilog="examples:\n  specreplay demo\n  specreplay demo --out /tmp/demo\n"
               "  specreplay demo --trace traces/samples/humaneval-fixed16")
    d.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help=f"output folder (default: {DEFAULT_OUT})")
    d.add_argument("--trace", type=Path, default=None, metavar="DIR",
                   help="trace to replay instead of the shipped sample")
    d.set_defaults(func=cmd_demo)
