"""scripts/cycle_terms.py on the shipped twin study: one row per ledger row, each term's
error computed from the replay and the live run it names (real traces, no torch)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cycle_terms_splits_each_rows_cycle_into_its_terms():
    out = subprocess.run([sys.executable, "scripts/cycle_terms.py", "reports/ledger.csv", "--trace",
                          "traces/samples/twin/humaneval-fixed16"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| ") and "ms pred" not in ln]
    assert len(rows) == 28
    for ln in rows:
        nums = [float(x) for x in re.findall(r"(\d+\.\d+) / ", ln)], \
               [float(x) for x in re.findall(r" / (\d+\.\d+)", ln)]
        for side in nums:  # the cycle is its draft, verify and host parts, on both sides
            assert abs(side[0] + side[1] + side[2] - side[3]) <= 0.0021, ln
    assert re.search(r"^same: median signed error per term: draft [+-]", out.stdout, re.M)
    bad = subprocess.run([sys.executable, "scripts/cycle_terms.py", "no-such-ledger.csv"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "cycle_terms:" in bad.stderr and "Traceback" not in bad.stderr


def test_cycle_terms_reports_a_row_it_cannot_replay_and_goes_on(tmp_path):
    """A row whose policy the trace cannot replay is named, the other rows still print,
    and the exit status says a row failed."""
    lines = (ROOT / "reports/ledger.csv").read_text(encoding="utf-8").splitlines()
    twin = [ln for ln in lines[1:] if ",traces/samples/twin/humaneval-fixed16," in ln and ln.startswith("ar,")]
    broken = twin[0].replace("ar,", "fixed(b=5),", 1)  # no oracle rows at block size 5
    (tmp_path / "ledger.csv").write_text("\n".join([lines[0], twin[0], broken]) + "\n", encoding="utf-8")
    out = subprocess.run([sys.executable, str(ROOT / "scripts/cycle_terms.py"), str(tmp_path / "ledger.csv")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "fixed(b=5) (same): not replayable" in out.stderr
    assert sum(ln.startswith("| ar |") for ln in out.stdout.splitlines()) == 1
