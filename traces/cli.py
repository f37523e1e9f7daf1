"""`specreplay trace ...`: check, compact and merge trace directories."""
from __future__ import annotations

import argparse
import json

from specreplay.traces.check import check_trace, format_report


def _check(args: argparse.Namespace) -> int:
    report = check_trace(args.dir)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def _compact(args: argparse.Namespace) -> int:
    from specreplay.traces.compact import compact
    names = compact(args.dir)
    print(f"compacted {args.dir}: " + (", ".join(names) if names else "already one file per table"))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from specreplay.traces.compact import merge
    run = merge(args.out, args.parts)
    print(f"merged {len(args.parts)} traces into {args.out}: "
          f"{len(run['dataset']['indices'])} samples")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``trace check|compact|merge`` to the specreplay command."""
    fmt = argparse.RawDescriptionHelpFormatter
    trace = sub.add_parser("trace", help="check, compact or merge trace directories",
                           description="Work with trace directories (the format: traces/README.md).",
                           formatter_class=fmt,
                           epilog="examples:\n"
                                  "  specreplay trace check traces/samples/humaneval-fixed16\n"
                                  "  specreplay trace compact out/run1\n"
                                  "  specreplay trace merge out/all out/rank0 out/rank1")
    trace.set_defaults(func=lambda args: (trace.print_help(), 2)[1])
    tsub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")

    p = tsub.add_parser("check", help="validate a trace and print a one-screen summary",
                        formatter_class=fmt,
                        description="Validate a trace (schema, cycle chaining, tau, oracle list "
                                    "lengths and ranks) and summarise it: setup, samples, cycles, "
                                    "tau, oracle coverage, probes, bytes per cycle, divergences "
                                    "from AR. Exit status 1 when invalid, with the problems listed.",
                        epilog="examples:\n"
                               "  specreplay trace check traces/samples/humaneval-fixed16\n"
                               "  specreplay trace check out/run1 --json | jq .tau_mean")
    p.add_argument("dir", metavar="DIR", help="trace directory")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_check)

    p = tsub.add_parser("compact", help="rewrite a trace's parts as one file per table",
                        formatter_class=fmt,
                        description="Rewrite the per-sample part files of every table as one "
                                    "Parquet file per table, crash-safely. Compact a trace "
                                    "before shipping it; it can still be resumed or given an "
                                    "oracle afterwards.",
                        epilog="examples:\n  specreplay trace compact out/run1")
    p.add_argument("dir", metavar="DIR", help="trace directory")
    p.set_defaults(func=_compact)

    p = tsub.add_parser("merge", help="join traces recorded by several ranks",
                        formatter_class=fmt,
                        description="Join the traces written by the ranks of one sharded "
                                    "recording into one trace. They must share the setup, "
                                    "models, sampling, live policy and oracle settings; samples "
                                    "are renumbered in the order given.",
                        epilog="examples:\n"
                               "  specreplay trace merge out/all out/rank0 out/rank1 out/rank2\n"
                               "  specreplay trace merge out/all out/rank*")
    p.add_argument("out", metavar="OUT", help="new (or empty) directory for the merged trace")
    p.add_argument("parts", metavar="PART_DIR", nargs="+", help="trace directories to join")
    p.set_defaults(func=_merge)
