"""Errors every stage may raise for bad input. A neutral module, so that a stage never
imports the command-line front end to say that its input was wrong."""
from __future__ import annotations


class CLIError(Exception):
    """Bad input: printed as one sentence, exit status 2."""


def check_output_dir(path, flag: str = "--out") -> None:
    """Refuse, before any work runs, an output folder that cannot be created or written:
    an existing file at ``path``, a file on the way to it, or a folder without write
    permission. The folder itself need not exist (the command creates it)."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CLIError(f"{flag} {path} is a file: give a folder (it is created if missing)")
    above = path
    while not above.exists():
        if above.parent == above:
            break
        above = above.parent
    if above != path and not above.is_dir():
        raise CLIError(f"{flag} {path} cannot be created: {above} is a file, not a folder")
    if above.is_dir() and not os.access(above, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path} cannot be written: no write permission in {above}")


def check_input_dir(path, flag: str, what: str) -> None:
    """Refuse an input folder that is a file or missing, saying which of the two it is."""
    from pathlib import Path

    path = Path(path)
    if path.is_file():
        raise CLIError(f"{flag} {path} is a file: give the {what} directory")
    if not path.is_dir():
        raise CLIError(f"{flag} {path} does not exist: give the {what} directory")
