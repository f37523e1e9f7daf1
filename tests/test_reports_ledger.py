"""The predicted-vs-measured ledger: format, atomic append, error metrics, bad files."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from specreplay.reports.ledger import (COLUMNS, REQUIRED, SHIPPED_LEDGER, LedgerError, append_ledger_row,
                            ledger_summary, read_ledger)

ROOT = Path(__file__).resolve().parents[1]


def row(policy, pred, meas, ptau, mtau, prompts="same", date="2026-11-30", **kw):
    r = {"policy": policy, "prompts": prompts, "predicted_tokens_per_s": pred,
         "measured_tokens_per_s": meas, "predicted_tau": ptau, "measured_tau": mtau,
         "trace": "traces/samples/t", "profile": "traces/samples/t/profile.parquet",
         "setup": "H200 hf bf16", "date": date}
    r.update(kw)
    return r


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- the shipped file and round trips

def test_shipped_ledger_is_a_valid_ledger_of_known_columns():
    # the shipped rows predate the measured-noise columns: a ledger may lack optional ones
    header = next(csv.reader(SHIPPED_LEDGER.open()))
    assert header == list(COLUMNS)[:len(header)] and len(header) >= 10
    rows = read_ledger(SHIPPED_LEDGER)
    assert all(r["prompts"] in ("same", "heldout") for r in rows)


def test_append_creates_the_file_and_rows_read_back_exactly(tmp_path):
    path = tmp_path / "sub" / "ledger.csv"
    first = append_ledger_row(path, row("fixed(b=16)", 123.456789012345, 120.0, 4.25, 4.25,
                                        predicted_ci_low=118.5, predicted_ci_high=129.0,
                                        measured_trace="runs/promote-1",
                                        note="cost model, tree verify: 3 % slow"))
    append_ledger_row(path, row("ewma(candidates=8|12|16, alpha=0.1)", 130.0, 140.0, 4.0,
                                4.5, prompts="heldout"))
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert len(lines) == 3
    rows = read_ledger(path)
    assert rows[0] == first
    assert rows[0]["predicted_tokens_per_s"] == 123.456789012345  # repr round-trips floats
    assert rows[0]["note"] == "cost model, tree verify: 3 % slow"  # commas survive quoting
    assert rows[1]["policy"] == "ewma(candidates=8|12|16, alpha=0.1)"
    assert rows[1]["predicted_ci_low"] is None and rows[1]["measured_trace"] is None
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_append_fills_the_date_and_keeps_the_existing_header_order(tmp_path):
    path = write(tmp_path / "l.csv", ",".join(reversed(REQUIRED)) + "\n")
    r = row("ar", 50.0, 49.0, 1.0, 1.0)
    del r["date"]
    typed = append_ledger_row(path, r)
    assert typed["date"].startswith("20")
    back = read_ledger(path)
    assert back[0]["policy"] == "ar" and back[0]["measured_tokens_per_s"] == 49.0


def test_append_refuses_bad_rows_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "l.csv"
    append_ledger_row(path, row("ar", 50.0, 49.0, 1.0, 1.0))
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="unknown column.*speed"):
        append_ledger_row(path, {**row("ar", 1.0, 1.0, 1.0, 1.0), "speed": 3})
    with pytest.raises(LedgerError, match="column prompts: 'train'"):
        append_ledger_row(path, row("ar", 1.0, 1.0, 1.0, 1.0, prompts="train"))
    with pytest.raises(LedgerError, match="column measured_tau: 'nan'"):
        append_ledger_row(path, row("ar", 1.0, 1.0, 1.0, float("nan")))
    with pytest.raises(LedgerError, match="predicted_ci_low and predicted_ci_high go together"):
        append_ledger_row(path, row("ar", 1.0, 1.0, 1.0, 1.0, predicted_ci_low=0.5))
    assert path.read_bytes() == before


# -- error metrics, derived by hand

def hand_rows():
    # tokens/s errors (pred-meas)/meas: A +0.25, B -0.10, C +0.60, D -0.20
    # tau errors: A +0.10, B 0, C -0.20, D +0.25
    return [row("A", 100.0, 80.0, 4.4, 4.0), row("B", 90.0, 100.0, 3.0, 3.0),
            row("C", 80.0, 50.0, 2.0, 2.5), row("D", 60.0, 75.0, 5.0, 4.0)]


def test_summary_errors_kendall_and_top3_by_hand():
    s = ledger_summary(hand_rows())
    errs = {r["policy"]: r["tokens_per_s_error"] for r in s["rows"]}
    assert errs == pytest.approx({"A": 0.25, "B": -0.10, "C": 0.60, "D": -0.20})
    taus = {r["policy"]: r["tau_error"] for r in s["rows"]}
    assert taus == pytest.approx({"A": 0.10, "B": 0.0, "C": -0.20, "D": 0.25})
    (g,) = s["groups"]
    # |errors| sorted 0.10 0.20 0.25 0.60: median (0.20 + 0.25) / 2
    assert g["tokens_per_s_abs_error"]["median"] == pytest.approx(0.225)
    assert g["tokens_per_s_abs_error"]["max"] == pytest.approx(0.60)
    assert g["tau_abs_error"]["median"] == pytest.approx(0.15)
    assert g["tau_abs_error"]["max"] == pytest.approx(0.25)
    # predicted order A > B > C > D, measured B > A > D > C. Of the 6 pairs, AB and CD
    # swap (discordant), the other 4 agree: tau = (4 - 2) / 6.
    assert g["kendall_tau"] == pytest.approx(1 / 3)
    assert g["top_predicted"] == ["A", "B", "C"]
    assert g["top_measured"] == ["B", "A", "D"]
    assert g["top_preserved"] is False
    assert s["overall"]["rows"] == 4


def test_summary_groups_by_trace_and_prompts_and_keeps_the_latest_row():
    rows = [row("A", 100.0, 90.0, 3.0, 3.0, date="2026-11-01"),
            row("B", 80.0, 70.0, 2.0, 2.0),
            row("C", 60.0, 50.0, 2.0, 2.0),
            row("A", 100.0, 95.0, 3.0, 3.0, date="2026-11-30T10:00:00"),  # supersedes the first A
            row("A", 100.0, 50.0, 3.0, 3.0, prompts="heldout")]
    s = ledger_summary(rows)
    same, held = s["groups"]
    assert (same["prompts"], same["policies"]) == ("same", 3)
    # same order predicted and measured: every pair concordant
    assert same["kendall_tau"] == pytest.approx(1.0)
    assert same["top_preserved"] is True
    # A's latest error (100 - 95) / 95 enters the group; the superseded row does not
    assert same["tokens_per_s_abs_error"]["max"] == pytest.approx(max(5 / 95, 10 / 70, 10 / 50))
    assert (held["prompts"], held["policies"], held["kendall_tau"]) == ("heldout", 1, None)
    assert held["top_n"] == 1 and held["top_preserved"] is True
    # per-row and overall statistics keep every row
    assert len(s["rows"]) == 5
    assert s["overall"]["tokens_per_s_abs_error"]["max"] == pytest.approx(1.0)


def test_summary_of_an_empty_ledger():
    s = ledger_summary([])
    assert s["rows"] == [] and s["groups"] == []
    assert s["overall"]["tokens_per_s_abs_error"] == {"median": None, "max": None}


# -- malformed files: file, line and column named

HEADER = ",".join(COLUMNS[:14])  # a ledger of the first layout (no measured-noise columns)
GOOD = "ar,same,50,49,1,1,t,p,s,2026-11-30,,,,"


@pytest.mark.parametrize("text,expected", [
    ("", r"l\.csv is empty"),
    ("policy,prompts\n", r"l\.csv line 1: the header lacks column\(s\) predicted_tokens_per_s"),
    (HEADER + "\n" + GOOD + "\n" + GOOD.replace(",1,1,", ",1,abc,") + "\n",
     r"l\.csv line 3, column measured_tau: 'abc' is not a number"),
    (HEADER + "\n" + GOOD + ",extra\n", r"l\.csv line 2: 15 fields, but the header has 14"),
    (HEADER + "\n" + GOOD.replace("same", "train") + "\n",
     r"l\.csv line 2, column prompts: 'train' must be one of same, heldout"),
    (HEADER + "\n" + GOOD.replace("2026-11-30", "yesterday") + "\n",
     r"l\.csv line 2, column date: 'yesterday' is not an ISO 8601 date"),
    (HEADER + "\n" + GOOD.replace("ar,", ",", 1) + "\n",
     r"l\.csv line 2, column policy: empty, but policy is required"),
    (HEADER + "\n" + GOOD.replace(",50,49,", ",-5,49,") + "\n",
     r"l\.csv line 2, column predicted_tokens_per_s: '-5' must be a positive finite number"),
    (HEADER + "\n" + GOOD.replace(",1,1,", ",0.5,1,") + "\n",
     r"l\.csv line 2, column predicted_tau: '0.5' is below 1"),
])
def test_malformed_ledgers_name_file_line_and_column(tmp_path, text, expected):
    path = write(tmp_path / "l.csv", text)
    with pytest.raises(LedgerError, match=expected):
        read_ledger(path)


def test_missing_ledger_file(tmp_path):
    with pytest.raises(LedgerError, match="does not exist"):
        read_ledger(tmp_path / "none.csv")


def test_report_command_rejects_a_malformed_ledger_with_one_sentence(tmp_path):
    bad = write(tmp_path / "bad.csv", HEADER + "\n" + GOOD.replace(",49,", ",4x9,") + "\n")
    res = subprocess.run([sys.executable, "-m", "specreplay", "report", str(tmp_path / "trace"),
                          "--ledger", str(bad), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "line 2, column measured_tokens_per_s: '4x9' is not a number" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
