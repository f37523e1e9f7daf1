"""Errors every stage may raise for bad input. A neutral module, so that a stage never
imports the command-line front end to say that its input was wrong."""
from __future__ import annotations


class CLIError(Exception):
    """Bad input: printed as one sentence, exit status 2."""
