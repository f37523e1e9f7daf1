#!/usr/bin/env python3
"""Write held-out prompts of another kind than HumanEval for a validation study: function
headers with their docstrings, cut from the fixture corpus's held-out files, one JSON
object per line ({"prompt", "source", "function"}), for ``--dataset FILE.jsonl``.

A file is held out of the fixture pair's training when the salted hash of its
machine-independent name falls in the first ``heldout_fraction`` of the hash range
(models/fixtures/corpus.py ``split_heldout``; the fraction is the one the shipped pair was
trained with, read from models/fixtures/train_log.json). The split depends on the name
only, so every such file on this machine is text the pair never trained on, whatever
else the machine holds. Files are visited in the corpus's own name-hash order; in each,
the functions with a docstring give one prompt each (the ``def`` line(s) and the
docstring, dedented), at most ``--per-file`` per file so that one package does not fill
the set. The output is the same on every machine with the same packages.

    python3 scripts/heldout_prompts.py OUT.jsonl [--n 24] [--per-file 2]
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models" / "fixtures"))
import corpus  # noqa: E402  (the fixture corpus module, imported without torch)


def heldout_fraction() -> float:
    """The held-out share the shipped fixture pair was trained with."""
    log = json.loads((ROOT / "models" / "fixtures" / "train_log.json").read_text())
    return float(log["knobs"]["heldout_fraction"])


def header_prompts(text: str, limit: int, min_doc: int, max_chars: int) -> list[tuple[str, str]]:
    """(qualified name, prompt) of up to ``limit`` functions of a module's source that
    have a docstring of at least ``min_doc`` characters: the source from the ``def`` (or
    its first decorator-free line) through the docstring's closing line, dedented, and
    ending with a newline, so the model continues with the body."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines()
    out: list[tuple[str, str]] = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if len(out) >= limit:
                return
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(child, clean=False)
                body0 = child.body[0] if child.body else None
                if not doc or len(doc.strip()) < min_doc or body0 is None or body0.end_lineno is None:
                    continue
                snippet = textwrap.dedent("\n".join(lines[child.lineno - 1:body0.end_lineno])) + "\n"
                if len(snippet) <= max_chars:
                    out.append((prefix + child.name, snippet))
    visit(tree, "")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the JSONL file to write")
    ap.add_argument("--n", type=int, default=24, help="prompts to write (default 24)")
    ap.add_argument("--per-file", type=int, default=2, help="at most this many per file (default 2)")
    ap.add_argument("--min-doc", type=int, default=40, help="shortest docstring kept, characters (default 40)")
    ap.add_argument("--max-chars", type=int, default=1500, help="longest prompt kept, characters (default 1500)")
    args = ap.parse_args(argv)
    if args.n < 1 or args.per_file < 1:
        print("error: --n and --per-file must be at least 1", file=sys.stderr)
        return 2
    cut = heldout_fraction() * 2**64
    listing = corpus.list_source_files(corpus.source_roots())
    held = [(name, path) for name, path in listing if corpus.name_hash(name, "split") < cut]
    held.sort(key=lambda item: corpus.name_hash(item[0], "order"))
    rows = []
    for name, path in held:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for func, prompt in header_prompts(text, args.per_file, args.min_doc, args.max_chars):
            rows.append({"prompt": prompt, "source": name, "function": func})
            if len(rows) == args.n:
                break
        if len(rows) == args.n:
            break
    if len(rows) < args.n:
        print(f"error: only {len(rows)} function headers with docstrings found in the "
              f"{len(held)} held-out files on this machine; ask for --n {len(rows)} or fewer",
              file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} prompts from {len({r['source'] for r in rows})} held-out files "
          f"({len(held)} on this machine) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
