"""The checked-files stamp (traces.reader, ``checked.json``): a compacted trace whose
files still hold the bytes `trace compact` checked is read without checking its values
again, and without decoding the columns read only to be checked; any changed byte, other
rules or `trace check` runs every rule, so every invalid value is still refused with the
sentence `trace check` prints."""
import json
import math
import shutil
from pathlib import Path

import pytest

from specreplay.sim.replay import Replayer
from specreplay.traces import reader, validate
from specreplay.traces.compact import compact
from specreplay.traces.reader import CHECKED_STAMP, Trace
from specreplay.traces.synthetic import make_trace
from test_trace_values import edit, edit_run, refused


@pytest.fixture(scope="module")
def compacted(tmp_path_factory):
    d = make_trace(tmp_path_factory.mktemp("checked") / "t", output_lengths=(30, 24),
                   block_sizes=(4, 8), top_k=4, live_policy="fixed(b=8)",
                   probes={"refine(steps=2, only_below=0.5)": None})
    compact(d)
    return d


@pytest.fixture
def trace(compacted, tmp_path):
    return Path(shutil.copytree(compacted, tmp_path / "t"))


def test_compaction_stamps_every_file_it_checked(trace):
    stamp = json.loads((trace / CHECKED_STAMP).read_text())
    assert stamp["rules"] == reader.rules_digest()
    assert set(stamp["files"]) == {"run.json"} | {p.name for p in trace.glob("*.parquet")} - {"profile.parquet"}
    t = Trace.open(trace)
    assert all(t.values_checked(name) for name in ("samples", "cycles", "oracle", "oracle_target"))


def test_a_stamped_trace_loads_without_the_checks(trace, monkeypatch):
    def never(*a, **kw):
        raise AssertionError("a value rule ran on files checked before")
    for rule in ("check_samples", "check_cycles", "check_oracle", "check_oracle_coverage",
                 "check_sample_ids"):
        monkeypatch.setattr(validate, rule, never)
    pred = Replayer(trace, bootstrap=0).predict("fixed(b=4)")
    assert pred.replayable and pred.cycles > 0


@pytest.mark.parametrize("table,column,value,pieces", [
    # draft_logprobs is not even decoded at a stamped load: a changed file must be
    ("oracle", "draft_logprobs", lambda v: [math.nan] + v[1:], ("holds nan at index 0",)),
    ("oracle", "true_rank", lambda v: v[:1] + [7] + v[2:], ("holds 7 at index 1",)),
    ("cycles", "accepted", -3, ("column accepted, row 0", "holds -3")),
    ("samples", "prefill_s", -1.0, ("column prefill_s, row 0", "holds -1.0")),
])
def test_a_changed_file_is_checked_again(trace, table, column, value, pieces):
    edit(trace, table, column, 0, value)
    if table != "samples":  # (opening reads the samples table: it refuses it there)
        assert not Trace.open(trace).values_checked(table)
    refused(trace, f"(table {table})", *pieces)


def test_a_changed_run_json_voids_the_stamp(trace):
    edit_run(trace, lambda r: r["oracle"].update(top_k=3))  # ranks 3 now past the top-k
    t = Trace.open(trace)
    assert not any(t.values_checked(n) for n in ("samples", "cycles", "oracle"))
    refused(trace, "(table oracle)", "column draft_ids", "(block_size - 1) * top_k = 3 * 3 = 9 ids")


def test_a_stamp_of_other_rules_or_bytes_is_not_trusted(trace):
    path = trace / CHECKED_STAMP
    stamp = json.loads(path.read_text())
    path.write_text(json.dumps({**stamp, "rules": "0" * 64}))
    assert not Trace.open(trace).values_checked("oracle")
    stamp["files"]["oracle.parquet"] = "0" * 64
    path.write_text(json.dumps(stamp))
    t = Trace.open(trace)
    assert not t.values_checked("oracle") and t.values_checked("cycles")
    path.write_text("{not json")
    assert not Trace.open(trace).values_checked("oracle")


def test_trace_check_runs_every_rule_on_a_stamped_trace(trace):
    problems = []
    t = Trace.open(trace, collect=problems)
    assert not t.values_checked("oracle")
