"""The report page and the demo: every figure present, every leaderboard number taken
from the replay, the ledger and its findings rendered, the setup shown."""
import base64
import os
import re
import subprocess
import sys
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from specreplay.reports import demo as demo_mod
from specreplay.reports.figures import FIGURES
from specreplay.reports.ledger import SHIPPED_LEDGER, append_ledger_row, findings_path, ledger_summary, read_ledger
from specreplay.reports.report import LEADERBOARD_NUMBERS, build_report
from specreplay.traces.synthetic import make_trace

ROOT = Path(__file__).resolve().parents[1]
PER_TRACE = ("tau-histograms", "timeline", "acceptance-by-offset", "cost-profile")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Figures (id -> img attrs) and tables (id -> rows of (text, attrs)) of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.figures, self.tables = {}, {}
        self._fig = self._table = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self._fig = a.get("id")
        elif tag == "img" and self._fig:
            self.figures[self._fig] = a
        elif tag == "table":
            self._table = a.get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = ["", a]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if tag == "figure":
            self._fig = None
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(tuple(self._cell))
            self._cell = None


def shown_matches(text: str, value: float) -> bool:
    """The cell text is the value rounded to the digits it shows."""
    digits = -Decimal(text).as_tuple().exponent
    return abs(float(text) - value) <= 0.5 * 10 ** -digits + 1e-12 * abs(value)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo as a user runs it (the shipped sample, or the synthetic fallback)."""
    out = tmp_path_factory.mktemp("demo")
    lines = []
    html, replays = demo_mod.run_demo(out=out, log=lines.append)
    return html, replays, "\n".join(lines)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    d = tmp_path_factory.mktemp("ledger")
    path = d / "ledger.csv"
    base = {"trace": "traces/samples/t", "profile": "traces/samples/t", "setup": "H200 hf bf16",
            "date": "2026-11-30"}
    for policy, pred, meas, ptau, mtau, prompts, note in [
            ("fixed(b=16)", 100.0, 96.0, 4.0, 4.0, "same", None),
            ("fixed(b=8)", 90.0, 92.0, 3.5, 3.5, "same", None),
            ("ewma(candidates=8|12|16)", 95.0, 80.0, 3.8, 3.7, "same",
             "tree verify costed as a chain; measure tree_verify rows to fix"),
            ("fixed(b=16)", 100.0, 99.0, 4.0, 3.9, "heldout", None)]:
        append_ledger_row(path, {**base, "policy": policy, "predicted_tokens_per_s": pred,
                                 "measured_tokens_per_s": meas, "predicted_tau": ptau,
                                 "measured_tau": mtau, "prompts": prompts, "note": note,
                                 "predicted_ci_low": pred - 5, "predicted_ci_high": pred + 5})
    findings_path(path).write_text("# Why ewma missed\n\nIts probe cycles ran at a block size "
                                   "the profile did not measure.\n\n- fix: add q = 12 rows\n")
    return path


@pytest.fixture(scope="module")
def report(demo, ledger, tmp_path_factory):
    """The same replays rendered with a ledger that has rows and findings."""
    _, replays, _ = demo
    out = tmp_path_factory.mktemp("report")
    html = build_report(replays, out, ledger_path=ledger)
    return html, replays


# -- the demo

def test_demo_names_its_folder_and_prints_the_leaderboard(demo):
    html, replays, log = demo
    assert html.name == "index.html" and html.exists()
    assert str(html.parent.resolve()) in log.splitlines()[-1]
    best = max((r for _, r in replays[0].replayable()), key=lambda r: r["tokens_per_s"])
    assert f"{best['tokens_per_s']:.1f}" in log and best["policy"] in log
    for rep in replays:
        for r in rep.results:
            if not r["replayable"]:
                assert f"skipped {r['policy']}" in log and r["reason"] in log


def test_demo_replays_the_whole_default_matrix(demo):
    _, replays, _ = demo
    (rep,) = replays
    refused = []
    parsed = demo_mod.parseable(demo_mod.DEFAULT_POLICIES, refused.append)
    assert len(rep.results) == len(parsed) == len(demo_mod.DEFAULT_POLICIES) - len(refused)
    assert sum(r["replayable"] for r in rep.results) >= 8


def test_demo_labels_a_synthetic_trace(demo):
    html, replays, log = demo
    text = html.read_text()
    if demo_mod.shipped_sample() is None:
        assert "SYNTHETIC" in log and "SYNTHETIC TRACE" in text
    elif replays[0].trace.run.get("synthetic"):
        assert "SYNTHETIC TRACE" in text
    else:
        assert "SYNTHETIC" not in text


def test_every_figure_is_embedded_and_written(demo):
    html, replays, _ = demo
    page = Page(html.read_text())
    expected = ["leaderboard", "predicted-vs-measured"]
    expected += [f"{base}-{i}" for i in range(1, len(replays) + 1) for base in PER_TRACE]
    for fig_id in expected:
        base = re.sub(r"-\d+$", "", fig_id)
        img = page.figures[fig_id]
        assert img["alt"] == FIGURES[base]
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1])
        assert png.startswith(PNG_MAGIC)
        assert (html.parent / f"{fig_id}.png").read_bytes() == png
    assert set(page.figures) == set(expected)


def check_leaderboard(html: Path, replays) -> None:
    """Every leaderboard number is the replay's own number, and every replayable
    result has its row naming its trace by the key of the inputs table."""
    page = Page(html.read_text())
    rows = page.tables["leaderboard-table"]
    header = [t for t, _ in rows[0]]
    body = rows[1:]
    results = {(rep.key, r["policy"]): (rep, r) for rep in replays for _, r in rep.replayable()}
    assert len(body) == len(results)
    numbers = {h: k for k, h, _ in LEADERBOARD_NUMBERS}
    inputs = {c[0][0]: c for c in page.tables["inputs-table"][1:] if c[0][0]}
    seen = set()
    for cells in body:
        cell = dict(zip(header, cells))
        rep, r = results[(cell["trace"][0], cell["policy"][0])]
        seen.add((rep.key, r["policy"]))
        assert Path(html.parent, inputs[rep.key][2][0]).resolve() == Path(rep.trace.dir).resolve()
        assert cell["fidelity"][0] == str(r["fidelity"])
        for h, k in numbers.items():
            text, attrs = cell[h]
            assert attrs["data-key"] == k
            assert float(attrs["data-value"]) == r[k], (r["policy"], k)
            assert shown_matches(text, r[k]), (r["policy"], k, text, r[k])
    assert seen == set(results)
    # best first within a trace, and ranks count 1, 2, ...
    for label in {rep.key for rep in replays}:
        mine = [c for c in body if c[header.index("trace")][0] == label]
        tps = [float(c[header.index("tokens/s")][1]["data-value"]) for c in mine]
        assert tps == sorted(tps, reverse=True)
        assert [int(c[0][0]) for c in mine] == list(range(1, len(mine) + 1))


def test_leaderboard_numbers_come_from_the_replay(demo):
    html, replays, _ = demo
    check_leaderboard(html, replays)


def test_skipped_policies_are_listed_with_their_reason(demo):
    html, replays, _ = demo
    skipped = [(rep, r) for rep in replays for r in rep.results if not r["replayable"]]
    tables = Page(html.read_text()).tables
    if not skipped:
        assert "skipped-table" not in tables
        return
    shown = {(c[0][0], c[2][0]) for c in tables["skipped-table"][1:]}
    assert shown == {(r["policy"], r["reason"]) for _, r in skipped}


def test_setup_of_traces_and_profiles_is_shown(demo):
    html, replays, _ = demo
    text = html.read_text()
    for rep in replays:
        assert f"Trace {rep.key} (run.json)" in text
        assert rep.trace.run["live_policy"] in text
        if rep.profile is not None:
            assert "(profile.json)" in text


def test_demo_report_renders_the_shipped_ledger(demo):
    html, _, _ = demo
    text = html.read_text()
    rows = read_ledger(SHIPPED_LEDGER)
    assert f"{len(rows)} prediction(s) confirmed live" in text


# -- a report with ledger rows and findings

def test_report_with_ledger_rows_tables_and_findings(report, ledger):
    html, replays = report
    page = Page(html.read_text())
    text = html.read_text()
    rows = read_ledger(ledger)
    summary = ledger_summary(rows)
    # one table row per ledger row, with its numbers
    ledger_rows = page.tables["ledger-table"][1:]
    assert len(ledger_rows) == len(rows)
    header = [t for t, _ in page.tables["ledger-table"][0]]
    col = header.index("predicted tokens/s")
    assert float(ledger_rows[2][col][1]["data-value"]) == rows[2]["predicted_tokens_per_s"]
    # the summary row of the "same" group carries Kendall tau
    (same, held) = summary["groups"]
    cells = page.tables["ledger-summary-table"][1]
    assert cells[1][0] == "same"
    assert float(cells[7][1]["data-value"]) == same["kendall_tau"]
    assert cells[8][0].startswith("yes" if same["top_preserved"] else "no")
    # findings: the note column and the findings file, rendered as Markdown
    notes = [c[header.index("note")][0] for c in ledger_rows]
    assert notes[2] == "tree verify costed as a chain; measure tree_verify rows to fix"
    assert "<h3>Why ewma missed</h3>" in text and "<li>fix: add q = 12 rows</li>" in text
    check_leaderboard(html, replays)


def test_report_command_end_to_end(tmp_path, ledger):
    trace = make_trace(tmp_path / "trace", output_lengths=(30, 30), block_sizes=(4, 8),
                       live_policy="fixed(b=8)")
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "specreplay", "report", str(trace), "--ledger", str(ledger),
         "--policy", "fixed(b=8)", "--policy", "fixed(b=4)", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "fixed(b=8)" in res.stdout and str(out.resolve()) in res.stdout
    page = Page((out / "index.html").read_text())
    assert [c[1][0] for c in page.tables["leaderboard-table"][1:]] \
        and {c[1][0] for c in page.tables["leaderboard-table"][1:]} == {"fixed(b=8)", "fixed(b=4)"}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"{f}.png" for f in ["leaderboard", "predicted-vs-measured"] + [f"{b}-1" for b in PER_TRACE])


def test_report_with_calibrated_timing_shows_its_factors(tmp_path):
    """--timing calibrated: the leaderboard numbers are the calibrated replay's, and the
    page says what scaled them."""
    from specreplay.reports.report import build_report, replay_traces
    from specreplay.sim.replay import replay
    trace = make_trace(tmp_path / "trace", output_lengths=(30, 30), block_sizes=(4, 8),
                       live_policy="fixed(b=8)")
    (rep,) = replay_traces([trace], ["fixed(b=4)"], timing="calibrated", bootstrap=0, log=lambda _: None)
    (pred,) = replay(trace, ["fixed(b=4)"], timing="calibrated", bootstrap=0)
    assert rep.results[0]["tokens_per_s"] == pred.tokens_per_s
    html = build_report([rep], tmp_path / "out").read_text()
    assert "calibrated to" in html and "timing calibrated" in html


def test_report_command_refuses_a_missing_trace(tmp_path):
    res = subprocess.run([sys.executable, "-m", "specreplay", "report", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "does not exist" in res.stderr


def test_reports_never_import_torch():
    code = ("import sys, reports.cli, reports.report, reports.demo, reports.figures;"
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip() == "False", res.stderr


def test_findings_markdown_rendered_by_the_markdown_library():
    """Findings and notes: tables with '\\|' kept as a literal bar inside a cell (policy
    specs separate list values with it), lists as lists, emphasis and code rendered,
    headings moved below the page's sections, raw HTML escaped rather than run."""
    from specreplay.reports.page import render_markdown
    out = render_markdown("# Title\n\nintro <b>x</b> **bold** `a|b`\n\n| policy | error |\n"
                          "|---|---|\n| ewma(candidates=8\\|12\\|16) | +13.1 % |\n\n"
                          "- one\n- two\n  - nested\n- three\n", shift=2)
    assert "<h3>Title</h3>" in out
    assert "&lt;b&gt;x&lt;/b&gt;" in out and "<strong>bold</strong>" in out
    assert "<code>a|b</code>" in out and "**" not in out
    assert re.search(r"<td>ewma\(candidates=8\|12\|16\)</td>\s*<td>\+13.1 %</td>", out)
    assert re.search(r"<li>one</li>\s*<li>two\s*<ul>\s*<li>nested</li>\s*</ul>\s*</li>"
                     r"\s*<li>three</li>", out)


def test_demo_page_shows_each_path_once_and_measured_beside_predicted(demo):
    """Paths are listed once (relative to the page) in the inputs table, not per row; the
    leaderboard carries the ledger's measurement of a policy next to its prediction,
    also where the ledger spells the spec with its defaults left out."""
    html, replays, _ = demo
    text = html.read_text()
    (rep,) = replays
    rel = Path(os.path.relpath(Path(rep.trace.dir).resolve(), html.parent.resolve())).as_posix()
    # once, in the inputs table (the profile in its folder by its file), nowhere else
    assert text.count(f">{rel}<") == 1 and text.count(rel) == 2
    assert str(Path(rep.trace.dir).resolve()) not in text.replace(rel, "")
    rows = read_ledger(SHIPPED_LEDGER)
    if not rows:
        return
    page = Page(text)
    lb = page.tables["leaderboard-table"]
    header = [t for t, _ in lb[0]]
    cells = {c[1][0]: dict(zip(header, c)) for c in lb[1:]}
    from specreplay.reports.ledger import resolve_path
    here = Path(rep.trace.dir).resolve()  # measurements of this trace only, not of other studies
    same = [r for r in rows if r["prompts"] == "same" and resolve_path(SHIPPED_LEDGER, r["trace"]) == here]
    for policy, cell in cells.items():
        from specreplay.reports.report import canonical
        mine = [r for r in same if canonical(r["policy"]) == canonical(policy)]
        if not mine:
            assert cell["measured tokens/s"][0] == ""
            continue
        latest = max(mine, key=lambda r: r["date"])  # same date: the later row in the file
        latest = [r for r in mine if r["date"] == latest["date"]][-1]
        assert float(cell["measured tokens/s"][1]["data-value"]) == latest["measured_tokens_per_s"]
    spelled = "fixed(b=16)+candidates(mode=branch_beam, depth=6, topk=2, max=4, verify=tree)"
    if spelled in cells and any(r["policy"].startswith("fixed(b=16)+candidates(") for r in same):
        assert cells[spelled]["measured tokens/s"][0] != ""


def _inside(fig) -> bool:
    """Every title and label drawn inside the figure's canvas."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = fig.bbox
    texts = list(fig.texts) + [t for ax in fig.axes for t in (ax.title, ax._left_title,
                                                                ax._right_title) if t.get_text()]
    return all(box.x0 - 1 <= t.get_window_extent(r).x0 and t.get_window_extent(r).x1 <= box.x1 + 1
               for t in texts if t.get_text())


def test_figure_titles_are_not_clipped():
    import numpy as np
    from specreplay.reports import figures as F
    long = "Sample 20 of T1 (a-rather-long-trace-folder-name-of-a-user) (block-size schedulers): " \
           "tau per cycle (top) and chosen block size (bottom)"
    s = {"p": {"start": np.arange(5), "tau": np.ones(5), "block_size": np.full(5, 8)}}
    assert _inside(F.timeline(s, long))
    assert _inside(F.cost_profile({}, None, "Latency profile used for " + long))
    assert _inside(F.acceptance_by_offset({4: np.array([0.5, 0.2, 0.1])}, {4: 1.8}, long))


def test_predicted_vs_measured_labels_only_the_best_and_the_worst():
    from specreplay.reports import figures as F
    rows = read_ledger(SHIPPED_LEDGER)
    if len(rows) < 3:
        pytest.skip("the shipped ledger has too few rows")
    fig = F.predicted_vs_measured(rows)
    tps, _, tau = fig.axes[:3]
    labels = [t.get_text() for t in tps.texts]
    assert len(labels) == 2
    errs = {i: (r["predicted_tokens_per_s"] - r["measured_tokens_per_s"]) / r["measured_tokens_per_s"]
            for i, r in enumerate(rows)}
    worst = rows[max(errs, key=lambda i: abs(errs[i]))]
    best = rows[min(errs, key=lambda i: abs(errs[i]))]
    assert labels[0].startswith(f"best: {F.short_label(best['policy'], 30)}")
    assert labels[1].startswith(f"worst: {F.short_label(worst['policy'], 30)}")
    # every policy has its marker in the legend below the panels
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert all(F.short_label(r["policy"], 44) in legend for r in rows)


@pytest.mark.skipif(not read_ledger(SHIPPED_LEDGER), reason="the shipped ledger has no rows yet")
def test_demo_renders_the_shipped_ledger_and_its_findings(demo):
    """The shipped validation study: at least 10 policies promoted on the same and on
    held-out prompts, every row in the demo's ledger table with its numbers, every
    measured trace it names shipped with the repo, and the findings on the page."""
    html, _, _ = demo
    rows = read_ledger(SHIPPED_LEDGER)
    for prompts in ("same", "heldout"):
        assert len({r["policy"] for r in rows if r["prompts"] == prompts}) >= 10
    root = SHIPPED_LEDGER.resolve().parents[1]
    for r in rows:
        assert (root / r["measured_trace"] / "run.json").exists(), r["measured_trace"]
        assert (root / r["trace"] / "run.json").exists(), r["trace"]
    page = Page(html.read_text())
    table = page.tables["ledger-table"][1:]
    assert len(table) == len(rows)
    header = [t for t, _ in page.tables["ledger-table"][0]]
    col = header.index("predicted tokens/s")
    for cells, r in zip(table, rows):
        assert float(cells[col][1]["data-value"]) == r["predicted_tokens_per_s"]
    findings = findings_path(SHIPPED_LEDGER)
    if findings.exists():
        # the generated findings, rendered: their title a heading, their lists lists
        text = html.read_text()
        first = next(line for line in findings.read_text().splitlines() if line.startswith("#"))
        title = first.lstrip("#").strip().replace("`", "")
        assert re.search(r"<h3>Findings of the ledger <code>[^<]+</code></h3>", text), title
        assert "<li>Top-1 " in text and "- Top-1" not in text
