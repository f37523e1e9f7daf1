"""Every way a trace or profile can be unreadable gets a TraceError naming the file,
table, column or version, never a traceback or a wrong number."""
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specreplay import __version__
from specreplay.cli import main
from specreplay.traces.io import TraceError
from specreplay.traces.reader import Profile, Trace, check_profile_matches
from specreplay.traces.schema import SCHEMA_VERSION
from specreplay.traces.synthetic import leading_zeros, make_trace
from specreplay.traces.writer import write_profile


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("good") / "t", output_lengths=(20, 15),
                      block_sizes=(4, 8), ranks=leading_zeros(3), live_policy="fixed(b=4)")


@pytest.fixture
def trace(good, tmp_path):
    """A fresh copy of the good trace to damage."""
    return shutil.copytree(good, tmp_path / "t")


def edit_run(d, **changes):
    run = json.loads((d / "run.json").read_text())
    run.update(changes)
    (d / "run.json").write_text(json.dumps(run))


def test_missing_directory(tmp_path):
    with pytest.raises(TraceError, match=r"trace directory .*nowhere does not exist"):
        Trace.open(tmp_path / "nowhere")


def test_missing_run_json(trace):
    (trace / "run.json").unlink()
    with pytest.raises(TraceError, match=r"run.json is missing: this is not a specreplay trace"):
        Trace.open(trace)


def test_unreadable_run_json(trace):
    (trace / "run.json").write_text('{"schema_version": 1, ')
    with pytest.raises(TraceError, match=r"run.json is not readable JSON"):
        Trace.open(trace)


def test_newer_schema(trace):
    edit_run(trace, schema_version=SCHEMA_VERSION + 1, tool_version="9.0.0")
    with pytest.raises(TraceError) as e:
        Trace.open(trace)
    assert (f"written by specreplay 9.0.0 with schema {SCHEMA_VERSION + 1}; this is specreplay "
            f"{__version__} reading schema {SCHEMA_VERSION}: upgrade") in str(e.value)


def test_older_unsupported_schema(trace):
    edit_run(trace, schema_version=0, tool_version="0.0.1")
    with pytest.raises(TraceError, match=r"schema 0; this is specreplay .* which reads schemas "
                                         r"1 to 1: re-record it"):
        Trace.open(trace)


def test_missing_schema_version(trace):
    edit_run(trace, schema_version="one")
    with pytest.raises(TraceError, match=r"has no integer schema_version \(found 'one'\)"):
        Trace.open(trace)


def test_missing_table(trace):
    shutil.rmtree(trace / "cycles")
    with pytest.raises(TraceError, match=r"is missing table cycles \(cycles/part-\*.parquet"):
        Trace.open(trace)


def test_missing_optional_table_says_how_to_get_it(trace):
    shutil.rmtree(trace / "oracle")
    t = Trace.open(trace)
    assert not t.has_table("oracle")
    with pytest.raises(TraceError, match=r"has no oracle table: run `specreplay oracle DIR`"):
        t.oracle_arrays()


def test_empty_trace(tmp_path, good):
    d = tmp_path / "t"
    d.mkdir()
    shutil.copy(good / "run.json", d / "run.json")
    with pytest.raises(TraceError, match=r"holds no samples: the recording finished none"):
        Trace.open(d)


def test_empty_samples_table(trace):
    table = pq.read_table(trace / "samples" / "part-000000.parquet").slice(0, 0)
    shutil.rmtree(trace / "samples")
    pq.write_table(table, trace / "samples.parquet")
    with pytest.raises(TraceError, match=r"holds no samples: its samples table is empty"):
        Trace.open(trace)


def test_truncated_parquet(trace):
    part = trace / "cycles" / "part-000001.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    t = Trace.open(trace)
    with pytest.raises(TraceError, match=r"cycles/part-000001.parquet \(table cycles\) is truncated "
                                         r"or not Parquet"):
        t.cycles


def test_missing_column(trace):
    part = trace / "cycles" / "part-000000.parquet"
    pq.write_table(pq.read_table(part).drop_columns(["tau"]), part)
    with pytest.raises(TraceError, match=r"part-000000.parquet \(table cycles\) has no column 'tau' "
                                         r"\(int16\)"):
        Trace.open(trace).cycles


def test_wrong_column_type(trace):
    part = trace / "samples" / "part-000001.parquet"
    t = pq.read_table(part)
    i = t.column_names.index("prefill_s")
    pq.write_table(t.set_column(i, "prefill_s", t.column(i).cast(pa.float32())), part)
    with pytest.raises(TraceError, match=r"\(table samples\): column 'prefill_s' is float, "
                                         r"expected double"):
        Trace.open(trace)


def test_oracle_list_lengths(trace):
    part = trace / "oracle" / "part-000000.parquet"
    t = pq.read_table(part)
    rows = t.to_pylist()
    rows[0]["draft_ids"] = rows[0]["draft_ids"][:-1]
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), part)
    with pytest.raises(TraceError, match=r"part-000000.parquet \(table oracle\), column draft_ids, "
                                         r"row 0, sample 0 start 0 block size 4: holds 11 values; "
                                         r"allowed: \(block_size - 1\) \* top_k = 3 \* 4 = 12 ids"):
        Trace.open(trace).oracle_arrays()


def test_profile_for_another_setup(good, tmp_path):
    trace = Trace.open(good)
    assert check_profile_matches(trace, trace.profile()) == []
    other = write_profile(tmp_path / "h100", trace.profile().table,
                          {**trace.run, "setup": {**trace.run["setup"], "gpu": "H100"}})
    profile = Profile.open(other)
    with pytest.raises(TraceError, match=r"measured on another setup .*setup.gpu: None != 'H100'.*"
                                         r"pass --profile-from-other-setup"):
        check_profile_matches(trace, profile)
    assert check_profile_matches(trace, profile, allow_other_setup=True) == ["setup.gpu: None != 'H100'"]


def test_profile_files_missing_or_newer(tmp_path, good):
    with pytest.raises(TraceError, match=r"profile.json is missing: this is not a specreplay profile"):
        Profile.open(tmp_path)
    d = shutil.copytree(good, tmp_path / "p")
    meta = json.loads((d / "profile.json").read_text())
    (d / "profile.json").write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(TraceError, match=r"profile.json was written by specreplay .* with schema 99"):
        Profile.open(d)


def test_cli_reports_errors_in_one_sentence(trace, capsys):
    (trace / "run.json").unlink()
    assert main(["trace", "check", str(trace)]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "run.json is missing" in out and "Traceback" not in out
    assert main(["trace", "compact", str(trace)]) == 2
    assert "specreplay trace: " in capsys.readouterr().err
