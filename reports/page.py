"""HTML building blocks for the one-file report page: escaped text, tables whose number
cells carry the exact value they show, figures embedded as base64 PNG, Markdown
rendered by the ``markdown`` library (raw HTML in it is shown as text, not run)."""
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
.wide { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.8em; }
th, td { border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.spec, td.path { font-family: ui-monospace, monospace; font-size: 0.95em; }
td.spec { max-width: 24em; }
td.path { overflow-wrap: anywhere; }
td.marker { text-align: center; font-size: 1.15em; }
.md table th, .md table td { font-size: 0.95em; }
.md td { white-space: nowrap; }
.md code { font-size: 0.92em; background: #f6f6f6; padding: 0 2px; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.88em; color: #555; }
.notice { background: #fff4d6; border: 1px solid #e0b84c; padding: 0.6em 1em; margin: 1em 0; }
.muted { color: #777; }
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


@dataclass(frozen=True)
class Marker:
    """A cell showing a plot marker: ``glyph`` (a Unicode shape) in ``color``, so that a
    table row can be found on a figure that labels only a few points."""
    glyph: str
    color: str
    title: str = ""


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
            if isinstance(c, Marker):
                cells.append(f'<td class="marker" title="{esc(c.title)}" '
                             f'style="color: {esc(c.color)}">{esc(c.glyph)}</td>')
            elif isinstance(c, Num):
                key = f' data-key="{esc(c.key)}"' if c.key else ""
                cells.append(f'<td class="num" data-value="{c.value!r}"{key}>{esc(c.text)}</td>')
            elif c is None:
                cells.append("<td></td>")
            elif cls == "spec":
                # a long spec may break after '+' or ', ' (never inside a knob's name)
                text = esc(c).replace("+", "+<wbr>").replace(", ", ", <wbr>")
                cells.append(f'<td class="spec">{text}</td>')
            else:
                cells.append(f'<td{f" class={cls!r}" if cls else ""}>{esc(c)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    # a table wider than the page scrolls inside its box instead of widening the page
    return '<div class="wide">' + "\n".join(out) + "</div>"


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


def render_markdown(text: str, shift: int = 2) -> str:
    """Markdown (with tables; ``\\|`` is a literal bar inside a cell) rendered by the
    ``markdown`` library into a ``<div class="md">``. Headings move ``shift`` levels
    down so that a file's ``#`` sits below the page's own sections; list items nested by
    2 spaces stay nested; raw HTML in the text is escaped, never passed through
    (findings and notes come from files)."""
    import markdown

    md = markdown.Markdown(extensions=["tables"])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    # Python-Markdown nests a list item only under 4 spaces; most editors write 2, which
    # it would flatten into the parent list: a text that indents list items by 2 has
    # every list item's indentation doubled
    marker = r"(?m)^( +)(?=[-*+] |\d+\. )"
    if any(len(m) % 4 for m in re.findall(marker, text)):
        text = re.sub(marker, lambda m: m.group(1) * 2, text)
    out = md.convert(text)
    out = re.sub(r"<(/?)h([1-6])\b", lambda m: f"<{m.group(1)}h{min(6, int(m.group(2)) + shift)}",
                 out)
    # a wide table scrolls inside its box, like the page's own tables
    out = out.replace("<table>", '<div class="wide"><table>').replace("</table>", "</table></div>")
    return f'<div class="md">\n{out}\n</div>'


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
