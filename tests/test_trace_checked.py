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
    for text in ("{not json", "[]", '{"rules": "%s", "files": []}' % reader.rules_digest()):
        path.write_text(text)
        assert not Trace.open(trace).values_checked("oracle")


def test_trace_check_runs_every_rule_on_a_stamped_trace(trace):
    problems = []
    t = Trace.open(trace, collect=problems)
    assert not t.values_checked("oracle")


SPECS = ("fixed(b=4)", "ewma(candidates=4|8)", "fixed(b=8)+gate(min_prob=0.5)",
         "fixed(b=8)+candidates(mode=branch_beam, depth=3, topk=2, max=4)",
         "fixed(b=8)+refine(steps=2, only_below=0.5)")


def test_a_stamped_load_replays_what_a_checked_load_replays(trace, tmp_path):
    from specreplay.sim.replay import oracle_agreement, stamped_agreement
    plain = Path(shutil.copytree(trace, tmp_path / "plain"))
    (plain / CHECKED_STAMP).unlink()
    stamped, checked = Replayer(trace, bootstrap=20), Replayer(plain, bootstrap=20)
    # the stamp's agreement is the one replay measures from the loaded arrays
    assert stamped_agreement(Trace.open(trace)) is not None
    assert stamped_agreement(Trace.open(plain)) is None
    assert stamped.setting.agreement == checked.setting.agreement
    assert stamped.setting.agreement == oracle_agreement(Trace.open(plain))
    # the token ids were not decoded at the stamped load; policies that read them load them
    assert not stamped.setting.acc.loaded("draft_ids")
    for spec in SPECS:
        a = json.dumps(stamped.predict(spec).to_dict(), sort_keys=True).replace(str(trace), "T")
        b = json.dumps(checked.predict(spec).to_dict(), sort_keys=True).replace(str(plain), "T")
        assert a == b, spec


def test_a_malformed_agreement_fact_is_not_used(trace):
    from specreplay.sim.replay import stamped_agreement
    path = trace / CHECKED_STAMP
    stamp = json.loads(path.read_text())
    for bad in ([1], ["1", 2], [-1, 3], None, 7):
        path.write_text(json.dumps({**stamp, "facts": {"oracle_agreement": bad}}))
        assert stamped_agreement(Trace.open(trace)) is None
    edit(trace, "cycles", "drafted", 0, lambda d: d[::-1])  # another valid recording
    path.write_text(json.dumps(stamp))
    assert stamped_agreement(Trace.open(trace)) is None
