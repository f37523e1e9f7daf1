"""The ``specreplay`` command. Each pipeline stage contributes its subcommands through a
``register(subparsers)`` function in its own ``cli`` module; the live ones import torch
only when they run."""
from __future__ import annotations

import argparse
import importlib
import sys

from specreplay import __version__
from specreplay.errors import CLIError

# Stage modules, in the order their commands are listed in --help.
STAGES = tuple(f"specreplay.{m}" for m in ("traces.cli", "policies.cli", "sim.cli", "reports.cli", "live.cli", "live.profile_cli", "live.promote", "models.cli"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="specreplay",
        description="Record speculative decoding on a GPU, replay any policy on a CPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  specreplay demo\n"
               "  specreplay trace check traces/samples/humaneval-fixed16\n"
               "  specreplay replay TRACE --policy 'fixed(b=8)' --policy 'ewma(candidates=8|12|16)'\n"
               "  specreplay record --target ID --draft ID --dataset humaneval --policy 'fixed(b=16)' --out DIR",
    )
    p.add_argument("--version", action="version", version=f"specreplay {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in STAGES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:  # stage not built yet
                continue
            raise
        m.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except CLIError as e:
        print(f"specreplay {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # errors with a clear message from the stages
        from specreplay.traces.io import TraceError
        from specreplay.policies import PolicyError
        if isinstance(e, (TraceError, PolicyError)):
            print(f"specreplay {args.command}: {e}", file=sys.stderr)
            return 2
        raise
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
