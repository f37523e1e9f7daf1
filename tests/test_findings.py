"""``specreplay ledger findings``: the shipped findings file is exactly what the command
writes from the shipped ledger, its numbers agree with an independent recomputation from
the CSV, and a small ledger's findings match statistics worked out by hand."""
import csv
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from specreplay.reports.findings import findings_markdown, write_findings
from specreplay.reports.ledger import SHIPPED_LEDGER, append_ledger_row, findings_path, read_ledger

ROOT = Path(__file__).resolve().parents[1]
LEDGER = "reports/ledger.csv"
FINDINGS = "reports/ledger-findings.md"


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "specreplay", *args], cwd=cwd,
                          capture_output=True, text=True)


def regenerate() -> str:
    """The findings text the command writes for the shipped ledger, run from the root."""
    return findings_markdown(read_ledger(ROOT / LEDGER), LEDGER,
                             f"specreplay ledger findings {LEDGER} --out {FINDINGS}")


def test_shipped_findings_equal_the_command_output():
    """Editing the ledger or the findings by hand makes this fail: regenerate with
    `specreplay ledger findings reports/ledger.csv --out reports/ledger-findings.md`."""
    assert findings_path(SHIPPED_LEDGER) == ROOT / FINDINGS
    shipped = (ROOT / FINDINGS).read_text(encoding="utf-8")
    assert shipped == regenerate(), ("reports/ledger-findings.md is not what the ledger gives; "
                                     "regenerate it with the command in its first paragraph")


@pytest.mark.parametrize("name", ["fixture_graph", "fixture_hf", "twin_engine"])
def test_benchmark_findings_equal_the_command_output(name):
    """The study records in benchmarks/results (the float32 fixture-pair re-runs through
    the graph and hf backends, the twin study on the engine of 2026-12-03 before its
    complete re-run): their findings are what their ledgers give."""
    ledger, out = f"benchmarks/results/{name}_ledger.csv", f"benchmarks/results/{name}_findings.md"
    want = findings_markdown(read_ledger(ROOT / ledger), ledger, f"specreplay ledger findings {ledger} --out {out}")
    assert (ROOT / out).read_text(encoding="utf-8") == want


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {p.splitlines()[0]: p for p in parts}


def _raw_studies():
    """The shipped ledger grouped straight from the CSV (trace, prompt set and the order=
    tag of the note), latest row per policy: an independent path to the same numbers."""
    groups: dict[tuple[str, str, str], dict[str, dict]] = {}
    with open(ROOT / LEDGER, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            order = [t.strip() for t in r["note"].split(";") if t.strip().startswith("order=")]
            groups.setdefault((r["trace"], r["prompts"], order[0] if order else ""), {})[r["policy"]] = r
    return groups


def test_every_study_number_matches_a_recomputation_from_the_csv():
    sections = _sections((ROOT / FINDINGS).read_text(encoding="utf-8"))
    studies = {k: v for k, v in sections.items() if k.startswith("Study ")}
    raw = _raw_studies()
    assert len(studies) == len(raw)
    try:  # the Kendall check against scipy where it is installed
        import scipy.stats as stats
    except ImportError:
        stats = None
    for (trace, prompts, order), by_policy in raw.items():
        where = "the trace's own prompts" if prompts == "same" else "held-out prompts"
        (name,) = [k for k in studies if f"{where}, {order}" in k and f"Trace `{trace}`" in studies[k]]
        text = studies[name]
        rows = list(by_policy.values())
        pred = [float(r["predicted_tokens_per_s"]) for r in rows]
        meas = [float(r["measured_tokens_per_s"]) for r in rows]
        err = [abs(p - m) / m for p, m in zip(pred, meas)]
        assert f"median {100 * statistics.median(err):.1f} %" in text
        assert f"max {100 * max(err):.1f} %" in text
        faster = sum(p > m for p, m in zip(pred, meas))
        assert f"Predicted faster than measured: {faster} of {len(rows)} rows" in text
        cyc = [abs(p * float(r["measured_tau"]) / float(r["predicted_tau"]) - m) / m
               for p, m, r in zip(pred, meas, rows)]
        assert (f"|error| median {100 * statistics.median(cyc):.1f} %" in text)
        best_pred = max(rows, key=lambda r: float(r["predicted_tokens_per_s"]))["policy"]
        best_meas = max(rows, key=lambda r: float(r["measured_tokens_per_s"]))["policy"]
        top1 = "preserved" if best_pred == best_meas else "not preserved"
        assert f"Top-1 {top1}: predicted `{best_pred}`, measured `{best_meas}`" in text
        if stats is not None:
            ref = stats.kendalltau(pred, meas)
            assert f"{ref.statistic:.2f} (p = {ref.pvalue:.2g}," in text


def test_the_findings_say_what_the_ledger_says_about_the_top_policy():
    """The hand-written findings once claimed top-1 was preserved on the same prompts,
    where the sequential run's own rows say it was not."""
    studies = _sections((ROOT / FINDINGS).read_text(encoding="utf-8"))
    seq = next(v for k, v in studies.items() if k.endswith("own prompts, order=sequential"))
    assert "- Top-1 not preserved" in seq


def hand_rows():
    # tokens/s errors (pred - meas) / meas: A +0.25, B -0.10, C +0.60, D -0.20;
    # tau errors: A +0.10, B 0, C -0.20, D +0.25; speedup errors A +0.10, B -0.05
    base = {"trace": "t", "profile": "p", "setup": "H200", "date": "2026-12-01",
            "prompts": "same", "note": "order=interleaved"}
    return [dict(base, policy="A", predicted_tokens_per_s=100.0, measured_tokens_per_s=80.0,
                 predicted_tau=4.4, measured_tau=4.0, predicted_speedup=2.2,
                 measured_speedup=2.0, label="exact"),
            dict(base, policy="B", predicted_tokens_per_s=90.0, measured_tokens_per_s=100.0,
                 predicted_tau=3.0, measured_tau=3.0, predicted_speedup=1.9,
                 measured_speedup=2.0, label="exact"),
            dict(base, policy="C", predicted_tokens_per_s=80.0, measured_tokens_per_s=50.0,
                 predicted_tau=2.0, measured_tau=2.5),
            dict(base, policy="D", predicted_tokens_per_s=60.0, measured_tokens_per_s=75.0,
                 predicted_tau=5.0, measured_tau=4.0)]


def test_small_ledger_findings_by_hand(tmp_path):
    path = tmp_path / "ledger.csv"
    for r in hand_rows():
        append_ledger_row(path, r)
    text = findings_markdown(read_ledger(path), "ledger.csv", "cmd")
    # |errors| 0.10 0.20 0.25 0.60: median 0.225, max 0.60; A and C too fast
    assert "Tokens/s |error|: median 22.5 % (target ≤ 3.0 %: missed), max 60.0 %" in text
    assert "Predicted faster than measured: 2 of 4 rows (signed error from -20.0 % to +60.0 %)" in text
    # with the measured tau: A 100*4/4.4 = 90.9 vs 80 (+13.6 %), B -10 %, C 100 vs 50
    # (+100 %), D 48 vs 75 (-36 %): median (13.6 + 36) / 2 = 24.8 %
    assert "|error| median 24.8 % (target ≤ 3.0 %: missed), max 100.0 %" in text
    assert "Speedup over ar |error| (2 of 4 rows have both): median 7.5 % (target ≤ 3.0 %: missed), max 10.0 %" in text
    assert "Rows labelled exact: 2; tau within 1.0 % in 1 of them." in text
    # predicted A > B > C > D, measured B > A > D > C: 4 of 6 pairs agree, tau 1/3, and
    # 2 inversions of 4 items happen in 1 + 3 + 5 of 24 permutations: p = 2 * 9 / 24
    assert f"Kendall tau between predicted and measured tokens/s: 0.33 (p = {18 / 24:.2g}, exact, n = 4" in text
    assert "Top-1 not preserved: predicted `A`, measured `B`." in text
    assert "Top-3 not preserved (2 of 3 in both)" in text


def test_miss_and_tau_bound_lines_by_hand(tmp_path):
    # hand_rows: time-per-cycle errors A +13.6 %, B -10 %, C +100 %, D -36 % (above), so
    # the time misses too; predicted too short (error > 0) in A and C
    text = findings_markdown(hand_rows(), "ledger.csv", "cmd")
    assert "- The tokens/s miss is (also) time: the time per cycle alone misses a target, predicted too short in 2 of 4 rows" in text
    assert "printed tau bound" not in text  # no row prints a bound
    # every row's time per cycle right (predicted tokens/s = measured x predicted tau /
    # measured tau), tau off: P 2.0 vs 2.5 (bound 0.6: inside), Q 3.0 vs 3.3 (bound 0.2:
    # outside), R 4.0 vs 4.0 without a bound (exact: inside within 1 %)
    base = {"trace": "t", "profile": "p", "setup": "H200", "date": "2026-12-01",
            "prompts": "heldout"}
    rows = [dict(base, policy="P", predicted_tokens_per_s=80.0, measured_tokens_per_s=100.0,
                 predicted_tau=2.0, measured_tau=2.5, note="approximate (...; tau +-0.600)"),
            dict(base, policy="Q", predicted_tokens_per_s=100.0, measured_tokens_per_s=110.0,
                 predicted_tau=3.0, measured_tau=3.3, note="approximate (...; tau +-0.200)"),
            dict(base, policy="R", predicted_tokens_per_s=50.0, measured_tokens_per_s=50.0,
                 predicted_tau=4.0, measured_tau=4.0, note="")]
    text = findings_markdown(rows, "ledger.csv", "cmd")
    assert "Time per cycle alone (tokens/s with the measured tau): |error| median 0.0 %" in text
    assert ("- The tokens/s miss is acceptance, not time: the time per cycle alone meets both "
            "targets, and the predicted tau is below the measured one in 2 of 3 rows.") in text
    assert ("- Measured tau inside the prediction's printed tau bound: 1 of 2 rows that print "
            "one (bounds ±0.200 to ±0.600).") in text
    # all targets met: no miss line
    met = [dict(r, predicted_tokens_per_s=r["measured_tokens_per_s"], predicted_tau=r["measured_tau"])
           for r in rows]
    assert "tokens/s miss" not in findings_markdown(met, "ledger.csv", "cmd")


def test_command_writes_the_file_and_refuses_bad_input(tmp_path):
    ledger = tmp_path / "ledger.csv"
    ledger.write_text(SHIPPED_LEDGER.read_text(encoding="utf-8"), encoding="utf-8")
    r = cli("ledger", "findings", str(ledger))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "ledger-findings.md"
    assert out.read_text(encoding="utf-8").startswith(f"# Findings of the ledger `{ledger}`")
    # an edited measurement changes the findings
    text = ledger.read_text(encoding="utf-8").replace("104.21593201881427", "118.0", 1)
    ledger.write_text(text, encoding="utf-8")
    write_findings(ledger, tmp_path / "again.md")
    assert (tmp_path / "again.md").read_text() != out.read_text()
    r = cli("ledger", "findings", str(ledger), "--out", str(tmp_path))
    assert r.returncode == 2 and "is a directory" in r.stderr
    r = cli("ledger", "findings", str(tmp_path / "missing.csv"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = cli("ledger", "findings", str(ledger), "--out", str(tmp_path / "no" / "f.md"))
    assert r.returncode == 2 and "does not exist" in r.stderr
