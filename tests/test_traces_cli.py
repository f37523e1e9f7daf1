"""`specreplay trace check|compact|merge` on synthetic traces."""
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specreplay.cli import main
from specreplay.traces.reader import Trace
from specreplay.traces.synthetic import leading_zeros, make_trace

PROBE = "recycle(mode=sparse)"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """40 tokens (max_new_tokens) and 25 tokens (ends at eos); rank 0 at offsets 1..5,
    live fixed(b=8). Sample 0: starts 0, 6, ..., 36, tau 6 six times then 3 (39 - 36).
    Sample 1: starts 0, 6, 12, 18, tau 6 four times (18 + 6 = 24, its last token)."""
    return make_trace(tmp_path_factory.mktemp("cli") / "t", output_lengths=(40, 25),
                      block_sizes=(4, 8), ranks=leading_zeros(5), live_policy="fixed(b=8)",
                      probes={PROBE: None}, ar_divergence={1: 7})


def check_json(capsys, d):
    rc = main(["trace", "check", str(d), "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_check_json_fields(good, capsys):
    rc, r = check_json(capsys, good)
    assert rc == 0 and r["ok"] is True and r["problems"] == []
    assert r["samples"] == 2 and r["cycles"] == 11
    assert r["tau_mean"] == pytest.approx((6 * 6 + 3 + 4 * 6) / 11, abs=1e-6)
    assert r["divergences"] == 1 and r["divergence_checked_samples"] == 2
    assert r["oracle_block_sizes"] == [4, 8]
    assert r["oracle_coverage"] == {"4": 1.0, "8": 1.0}
    assert r["probes"] == [PROBE]
    size = sum(f.stat().st_size for f in good.rglob("*") if f.is_file())
    assert r["bytes_per_cycle"] == pytest.approx(size / 11, abs=0.1)
    assert r["live_policy"] == "fixed(b=8)" and r["synthetic"] is True


def test_check_text_summary(good, capsys):
    assert main(["trace", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "cycles    11, tau mean 5.727" in out
    assert "block sizes 4 (100%), 8 (100%), top-4" in out and out.rstrip().endswith("OK")
    assert len(out.splitlines()) <= 24


def rewrite(part, column, fn):
    t = pq.read_table(part)
    rows = t.to_pylist()
    for r in rows:
        r[column] = fn(r)
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), part)


@pytest.fixture
def trace(good, tmp_path):
    return shutil.copytree(good, tmp_path / "t")


def test_check_finds_broken_chains_and_tau(trace, capsys):
    # sample 1's cycle 2 claims to start at 13 instead of 12 (so cycle 3, at 18, no
    # longer follows it either); cycle 0 of sample 0 says tau 5 with accepted 5
    rewrite(trace / "cycles" / "part-000001.parquet", "start",
            lambda r: 13 if r["cycle"] == 2 else r["start"])
    rewrite(trace / "cycles" / "part-000000.parquet", "tau",
            lambda r: 5 if r["cycle"] == 0 else r["tau"])
    rc, r = check_json(capsys, trace)
    assert rc == 1 and r["ok"] is False
    text = "\n".join(r["problems"])
    assert "2 cycles do not start where the previous one ended (first: sample 1 cycle 2: " \
           "starts at 13, expected 12)" in text
    assert "1 cycles have tau != accepted + 1 (first: sample 0 cycle 0: tau 5, accepted 5)" in text
    assert "commit another number of tokens than tau" in text


def test_check_finds_oracle_rows_of_wrong_length(trace, capsys):
    rewrite(trace / "oracle" / "part-000000.parquet", "true_rank",
            lambda r: r["true_rank"][:-1] if r["block_size"] == 8 and r["probe"] == "" else r["true_rank"])
    assert main(["trace", "check", str(trace)]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out
    assert "(table oracle), column true_rank, row " in out
    assert ("sample 0 start 0 block size 8: holds 6 values; allowed: block_size - 1 = 7 rank "
            "codes") in out


def test_check_finds_ranks_that_contradict_the_output(trace, capsys):
    # at start 3, rank 0 now claims offset 6 (past the leading five) is the top-1 token
    rewrite(trace / "oracle" / "part-000000.parquet", "true_rank",
            lambda r: [0] * 7 if (r["block_size"], r["probe"], r["start"]) == (8, "", 3) else r["true_rank"])
    rc, r = check_json(capsys, trace)
    assert rc == 1
    assert r["problems"] == ["oracle (block size 8, probe ''): 1 rows with ranks whose draft token "
                             "is not the output token (first: sample 0 start 3)"]


def test_compact_keeps_every_row(trace, capsys):
    before = Trace.open(trace)
    tables = {n: before.table(n).num_rows for n in ("samples", "cycles", "cycle_logits", "oracle")}
    taus = before.cycles.sort_by([("sample", "ascending"), ("cycle", "ascending")]).column("tau")
    assert main(["trace", "compact", str(trace)]) == 0
    assert sorted(p.name for p in trace.iterdir() if p.is_dir()) == []
    after = Trace.open(trace)
    assert {n: after.table(n).num_rows for n in tables} == tables
    assert after.cycles.column("tau").to_pylist() == taus.to_pylist()
    capsys.readouterr()
    assert check_json(capsys, trace)[1]["ok"] is True


def test_interrupted_compaction_is_finished_by_rerunning(trace, capsys):
    # a crash after the new cycles file and the marker were written, before the swap
    full = Trace.open(trace).cycles
    pq.write_table(full, trace / "cycles.compact.parquet")
    (trace / "compacting.json").write_text(json.dumps({"tables": ["cycles"]}))
    rc, r = check_json(capsys, trace)
    assert rc == 1 and "compaction of" in r["problems"][0] and "was interrupted" in r["problems"][0]
    assert main(["trace", "compact", str(trace)]) == 0
    assert Trace.open(trace).cycles.num_rows == full.num_rows


def test_merge_renumbers_samples(tmp_path, capsys):
    kw = dict(output_lengths=(12, 20), block_sizes=(4,), live_policy="fixed(b=4)", seed=1)
    a = make_trace(tmp_path / "rank0", dataset_indices=[0, 1], **kw)
    b = make_trace(tmp_path / "rank1", dataset_indices=[2, 3], **kw)
    assert main(["trace", "merge", str(tmp_path / "all"), str(a), str(b)]) == 0
    m = Trace.open(tmp_path / "all")
    assert m.samples.column("sample").to_pylist() == [0, 1, 2, 3]
    assert m.samples.column("dataset_index").to_pylist() == [0, 1, 2, 3]
    assert m.run["dataset"]["indices"] == [0, 1, 2, 3] and m.run["complete"] is True
    n_a = Trace.open(a).cycles.num_rows
    assert m.cycles.num_rows == 2 * n_a
    assert set(m.cycles.column("sample").to_pylist()) == {0, 1, 2, 3}
    assert set(m.oracle.column("sample").to_pylist()) == {0, 1, 2, 3}
    capsys.readouterr()
    assert check_json(capsys, tmp_path / "all")[1]["samples"] == 4


def test_merge_refuses_mismatches(tmp_path, capsys):
    kw = dict(output_lengths=(12,), block_sizes=(4,), seed=1)
    a = make_trace(tmp_path / "a", live_policy="fixed(b=4)", **kw)
    other = make_trace(tmp_path / "b", live_policy="ar", dataset_indices=[5], **kw)
    assert main(["trace", "merge", str(tmp_path / "m1"), str(a), str(other)]) == 2
    err = capsys.readouterr().err
    assert "cannot merge" in err and "live_policy: 'fixed(b=4)' != 'ar'" in err
    assert main(["trace", "merge", str(tmp_path / "m2"), str(a), str(a)]) == 2
    assert "dataset row 0 is in both" in capsys.readouterr().err
    assert main(["trace", "merge", str(a), str(a)]) == 2
    assert "is not empty: choose an empty or new directory" in capsys.readouterr().err


def test_help_has_examples(capsys):
    for cmd in ("check", "compact", "merge"):
        with pytest.raises(SystemExit):
            main(["trace", cmd, "--help"])
        assert f"specreplay trace {cmd}" in capsys.readouterr().out.split("examples:")[1]
