"""HTML building blocks for the one-file report page: escaped text, tables whose number
cells carry the exact value they show, figures embedded as base64 PNG."""
from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.86em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.spec, td.path { font-family: ui-monospace, monospace; font-size: 0.95em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.88em; color: #555; }
.notice { background: #fff4d6; border: 1px solid #e0b84c; padding: 0.6em 1em; margin: 1em 0; }
.muted { color: #777; }
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


@dataclass(frozen=True)
class Num:
    """A number cell: ``text`` is what the reader sees; ``value`` (the exact number, kept
    in ``data-value``) and ``key`` (the field it came from, ``data-key``) let anyone
    check the page against the data it was made from."""
    value: float
    text: str
    key: str = ""


def fmt(value: float | None, digits: int = 2) -> str:
    """Fixed-point text for a table cell; '' for a missing value."""
    if value is None:
        return ""
    return f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str = "",
          classes: Sequence[str] = ()) -> str:
    """An HTML table. Cells: ``Num`` (right-aligned, with data-value/data-key), None
    (empty) or anything else (escaped text). ``classes`` gives a CSS class per column."""
    out = [f'<table{f" id={esc(table_id)!r}" if table_id else ""}>',
           "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>",
           "<tbody>"]
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = classes[i] if i < len(classes) and classes[i] else ""
            if isinstance(c, Num):
                key = f' data-key="{esc(c.key)}"' if c.key else ""
                cells.append(f'<td class="num" data-value="{c.value!r}"{key}>{esc(c.text)}</td>')
            elif c is None:
                cells.append("<td></td>")
            else:
                cells.append(f'<td{f" class={cls!r}" if cls else ""}>{esc(c)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def figure(fig_id: str, alt: str, png: bytes, caption: str, file_name: str) -> str:
    """A figure embedded as a base64 PNG, with the name of the same figure's PNG file."""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="{esc(fig_id)}">\n<img alt="{esc(alt)}" '
            f'src="data:image/png;base64,{data}">\n'
            f'<figcaption>{esc(caption)} <span class="muted">(file: {esc(file_name)})'
            f'</span></figcaption>\n</figure>')


def notice(text: str) -> str:
    return f'<div class="notice">{esc(text)}</div>'


def paragraph(text: str, muted: bool = False) -> str:
    return f'<p{" class=muted" if muted else ""}>{esc(text)}</p>'


def markdown_lite(text: str) -> str:
    """Findings notes: '#' lines become headings, '- ' lines list items, runs of '|'
    lines a table (the first row its header, '|---|' rows skipped, '\\|' a literal bar), blank lines
    separate paragraphs; everything else is escaped text."""
    out, para, items, rows = [], [], [], []

    def flush() -> None:
        if para:
            out.append(f"<p>{esc(' '.join(para))}</p>")
            para.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if rows:
            head, *body = rows
            out.append("<table class=\"findings\"><thead><tr>"
                       + "".join(f"<th>{esc(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
                                 for r in body) + "</tbody></table>")
            rows.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            if para or items:
                flush()
            # a cell may hold a literal '|' written as '\\|' (policy specs list values so)
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s[1:].rstrip("|"))]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
            continue
        if rows:
            flush()
        if not s:
            flush()
        elif s.startswith("#"):
            flush()
            out.append(f"<h3>{esc(s.lstrip('#').strip())}</h3>")
        elif s.startswith(("- ", "* ")):
            if para:
                flush()
            items.append(s[2:])
        else:
            if items:
                flush()
            para.append(s)
    flush()
    return "\n".join(out)


def flatten(obj: Any, prefix: str = "", max_items: int = 12) -> list[tuple[str, str]]:
    """(key path, value text) pairs of a JSON object, for setup tables. Long lists are
    cut to their first items and a count; file-hash maps become a count, since the
    hashes themselves stay in the JSON file."""
    if isinstance(obj, dict):
        if prefix.endswith("files") and obj:
            return [(prefix, f"{len(obj)} files (sha256 of each in the JSON file)")]
        out: list[tuple[str, str]] = []
        for k in obj:
            out += flatten(obj[k], f"{prefix}.{k}" if prefix else str(k), max_items)
        return out or [(prefix, "{}")]
    if isinstance(obj, list):
        if len(obj) > max_items:
            head = ", ".join(json.dumps(v) for v in obj[:max_items])
            return [(prefix, f"[{head}, …] ({len(obj)} items)")]
        return [(prefix, json.dumps(obj))]
    if obj is None:
        return [(prefix, "null")]
    return [(prefix, str(obj))]


def page(title: str, body: Sequence[str]) -> str:
    """The whole self-contained page."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
