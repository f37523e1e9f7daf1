"""Every value rule of traces/validate.py, one case each: a trace whose column holds a
value outside what it allows is refused by `trace check` (exit 1, every problem listed)
and by every command that reads it (here `replay`, exit 2) with the same sentence naming
the file, table, column, row, value and what is allowed, never replayed into numbers."""
import contextlib
import io
import json
import math
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specreplay.cli import main
from specreplay.traces.io import TraceError
from specreplay.traces.reader import Profile, Trace
from specreplay.traces.synthetic import make_trace

SAMPLE = Path(__file__).resolve().parents[1] / "traces" / "samples" / "humaneval-fixed16"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("good") / "t", output_lengths=(30, 24),
                      block_sizes=(4, 8), top_k=4, live_policy="fixed(b=8)",
                      probes={"refine(steps=2, only_below=0.5)": None})


@pytest.fixture
def trace(good, tmp_path):
    return Path(shutil.copytree(good, tmp_path / "t"))


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def part_of(d: Path, table: str) -> Path:
    if table == "profile":
        return d / "profile.parquet"
    single = d / f"{table}.parquet"
    return single if single.exists() else d / table / "part-000000.parquet"


def edit(d: Path, table: str, column: str, row: int, value) -> Path:
    """Set one cell (``value`` may be a function of the old value) and rewrite the file."""
    path = part_of(d, table)
    t = pq.read_table(path)
    col = t.column(column).combine_chunks()
    old = col[row].as_py()
    cell = pa.array([value(old) if callable(value) else value], col.type)
    i = t.schema.get_field_index(column)
    new = pa.concat_arrays([col.slice(0, row), cell, col.slice(row + 1)])
    pq.write_table(t.set_column(i, t.schema.field(i), new), path)
    return path


def edit_rows(d: Path, table: str, change) -> Path:
    """Rewrite a file's rows through ``change(rows) -> rows``."""
    path = part_of(d, table)
    t = pq.read_table(path)
    pq.write_table(pa.Table.from_pylist(change(t.to_pylist()), schema=t.schema), path)
    return path


def edit_run(d: Path, change) -> None:
    run = json.loads((d / "run.json").read_text())
    change(run)
    (d / "run.json").write_text(json.dumps(run))


def first_row(d: Path, table: str, pred) -> int:
    rows = pq.read_table(part_of(d, table)).to_pylist()
    return next(i for i, r in enumerate(rows) if pred(r))


def refused(d: Path, *pieces: str, replay_args: tuple[str, ...] = ()) -> str:
    """`trace check` and `replay` both refuse ``d``; the check lists a problem holding every
    piece, and replay prints that same sentence. Returns it."""
    rc, out, _ = run("trace", "check", d)
    assert rc == 1 and "INVALID" in out, out
    lines = [ln[4:] for ln in out.splitlines() if ln.startswith("  - ")]
    match = [ln for ln in lines if all(p in ln for p in pieces)]
    assert match, f"no problem with {pieces} in:\n{out}"
    rc, rout, rerr = run("replay", d, "--policy", "fixed(b=4)", *replay_args)
    assert rc == 2 and rout == "", (rc, rout, rerr)
    assert rerr.startswith("specreplay replay: ") and "Traceback" not in rerr
    first = re.sub(r" \(\d+ more problems?: .*\)$", "", rerr.strip().removeprefix("specreplay replay: "))
    assert first in lines, (first, lines)
    return match[0]


def test_the_good_trace_is_valid(good):
    rc, out, _ = run("trace", "check", good)
    assert rc == 0 and out.rstrip().endswith("OK"), out
    assert run("replay", good, "--policy", "fixed(b=4)")[0] == 0


# -- the cases the issue saw replayed with exit 0 -----------------------------------

def test_accepted_below_zero(trace):
    p = edit(trace, "cycles", "accepted", 2, -3)
    msg = refused(trace, "column accepted, row 2", "holds -3", "allowed: 0 to block_size - 1 = 7")
    assert msg.startswith(f"{p} (table cycles), column accepted, row 2, sample 0 cycle 2: holds -3")


def test_accepted_beyond_the_block(trace):
    edit(trace, "cycles", "accepted", 1, 300)
    refused(trace, "column accepted, row 1", "holds 300", "allowed: 0 to block_size - 1 = 7",
            replay_args=("--timing", "recorded"))


def test_nan_cycle_seconds_under_recorded_timing(trace):
    edit(trace, "cycles", "cycle_s", 0, math.nan)
    refused(trace, "column cycle_s, row 0", "holds nan", "finite number of seconds > 0",
            replay_args=("--timing", "recorded"))


def test_negative_draft_seconds_under_calibrated_timing(trace):
    edit(trace, "cycles", "draft_s", 3, -0.004)
    refused(trace, "column draft_s, row 3", "holds -0.004", replay_args=("--timing", "calibrated"))


@pytest.mark.parametrize("value", [-0.002, 1e250, 0.0, math.inf, math.nan])
def test_profile_seconds(trace, value):
    edit(trace, "profile", "median_s", 5, value)
    refused(trace, "(table profile), column median_s, row 5", f"holds {value!r}",
            "allowed: a finite number of seconds > 0 and < 3600")


@pytest.mark.parametrize("value", [4, 100, -3])
def test_oracle_rank_outside_the_kept_top_k(trace, value):
    edit(trace, "oracle", "true_rank", 0, lambda r: [value] + r[1:])
    refused(trace, "(table oracle), column true_rank, row 0", f"holds {value} at index 0",
            "or a rank 0 to 3 (the oracle kept top-4)")


def _sample_copy(tmp_path: Path, edited: str) -> Path:
    """The shipped sample trace with every file linked except ``edited``, copied."""
    d = tmp_path / "sample"
    d.mkdir()
    for f in SAMPLE.iterdir():
        if f.name == edited:
            shutil.copy(f, d / f.name)
        else:
            os.symlink(f, d / f.name)
    return d


@pytest.mark.parametrize("case", ["rank", "profile", "accepted", "draft_s", "cycle_s"])
def test_the_issue_cases_on_the_shipped_sample(tmp_path, case):
    table, column, value, args = {
        "rank": ("oracle", "true_rank", lambda r: [9] + r[1:], ()),
        "profile": ("profile", "median_s", -1e-3, ()),
        "accepted": ("cycles", "accepted", 300, ("--timing", "recorded")),
        "draft_s": ("cycles", "draft_s", -0.01, ("--timing", "calibrated")),
        "cycle_s": ("cycles", "cycle_s", math.nan, ("--timing", "recorded")),
    }[case]
    d = _sample_copy(tmp_path, f"{table}.parquet")
    edit(d, table, column, 7, value)
    refused(d, f"column {column}, row 7", replay_args=args)


# -- samples ------------------------------------------------------------------------

@pytest.mark.parametrize("column,value,allowed", [
    ("sample", -1, "an integer >= 0"),
    ("dataset_index", -5, "an integer >= 0"),
    ("prefill_s", -0.5, "a finite number of seconds > 0 and < 3600"),
    ("prefill_s", 0.0, "a finite number of seconds > 0 and < 3600"),
    ("prefill_s", 1e9, "a finite number of seconds > 0 and < 3600"),
    ("prefill_s", None, "a finite number of seconds > 0 and < 3600"),
    ("decode_s", math.inf, "a finite number of seconds > 0 and < 86400"),
    ("decode_s", 0.0, "0 only for a sample without cycles"),
    ("n_cycles", -1, "an integer >= 0"),
    ("ar_divergence", -2, "-1 (no divergence), an output position 0 to 29, or null"),
    ("ar_divergence", 30, "-1 (no divergence), an output position 0 to 29, or null"),
    ("stop_reason", "tired", "one of 'eos', 'max_new_tokens'"),
])
def test_samples_values(trace, column, value, allowed):
    edit(trace, "samples", column, 0, value)
    refused(trace, "(table samples)", f"column {column}, row 0", allowed)


@pytest.mark.parametrize("value,allowed", [(2, "a sample id 0 to 1"), (2 ** 31 - 1, "a sample id 0 to 1"),
                                           (1, "each sample id once")])
def test_samples_number_samples_from_zero(trace, value, allowed):
    edit(trace, "samples", "sample", 0, value)
    if value != 1:  # the parts of sample 0 then name another sample
        for table in ("cycles", "oracle"):
            edit_rows(trace, table, lambda rows: [dict(r, sample=value) for r in rows])
    refused(trace, "(table samples), column sample, row ", allowed)


def test_samples_output_needs_a_token(trace):
    edit(trace, "samples", "output_ids", 0, [])
    refused(trace, "column output_ids, row 0", "holds 0 tokens", "at least one output token")


@pytest.mark.parametrize("column", ["output_ids", "prompt_ids"])
def test_samples_token_ids(trace, column):
    edit(trace, "samples", column, 0, lambda ids: ids[:3] + [-7] + ids[4:])
    refused(trace, f"column {column}, row 0", "holds -7 at index 3", "token ids 0 to 16777215")


# -- cycles -------------------------------------------------------------------------

@pytest.mark.parametrize("column,value,allowed", [
    ("sample", -1, "an integer >= 0"),
    ("cycle", -1, "an integer >= 0"),
    ("start", -4, "an integer >= 0"),
    ("context_len", -1, "an integer >= 0"),
    ("block_size", 0, "an integer >= 1"),
    ("tau", 0, "1 to block_size = 8"),
    ("tau", 9, "1 to block_size = 8"),
    ("committed", 40, "1 to block_size = 8"),
    ("verify_mode", "zigzag", "one of 'chain', 'batch', 'tree'"),
    ("verify_tokens", 0, "1 to block_size * max(verify_batch, n_paths) = 8"),
    ("verify_tokens", 9, "1 to block_size * max(verify_batch, n_paths) = 8"),
    ("accepted", 8, "0 to block_size - 1 = 7"),
    ("verify_batch", 0, "1 (rows of a batch verify pass; 1 unless verify_mode is 'batch')"),
    ("verify_batch", 4, "1 (rows of a batch verify pass; 1 unless verify_mode is 'batch')"),
    ("n_paths", 0, "an integer >= 1"),
    ("chosen_path", 1, "0 to n_paths - 1 = 0"),
    ("prev_offset", -1, "0 to start = "),
    ("prev_offset", 10000, "0 to start = "),
    ("n_seeds", -2, "0 to block_size - 1 = 7 (seeds fill drafted positions)"),
    ("n_seeds", 8, "0 to block_size - 1 = 7 (seeds fill drafted positions)"),
    ("bonus", -1, "token ids 0 to 16777215"),
    ("bonus", 2 ** 31 - 1, "token ids 0 to 16777215"),
    ("draft_s", 0.0, "0 only at block size 1"),
    ("target_s", math.inf, "a finite number of seconds > 0 and < 3600"),
    ("overhead_s", -1e-4, "a finite number of seconds > 0 and < 3600"),
    ("cycle_s", 4000.0, "a finite number of seconds > 0 and < 3600"),
])
def test_cycles_values(trace, column, value, allowed):
    edit(trace, "cycles", column, 1, value)
    refused(trace, "(table cycles)", f"column {column}, row 1", allowed)


@pytest.mark.parametrize("column,value,allowed", [
    ("sample", 5, "a sample id of the samples table"),
    ("start", 30, "a position inside the sample's output, 0 to 29"),
    ("context_len", 9999, "len(prompt) + start = "),
    ("probe", "recycle(mode=dense)", "'' (plain draft) or a probe run.json's oracle lists: "
                                     "'refine(steps=2, only_below=0.5)'"),
])
def test_cycles_agree_with_samples_and_run_json(trace, column, value, allowed):
    """Recorded seconds and the calibration are keyed by these columns."""
    edit(trace, "cycles", column, 1, value)
    refused(trace, f"column {column}, row 1", f"holds {value!r}" if isinstance(value, str)
            else f"holds {value}", allowed, replay_args=("--timing", "recorded"))


def test_cycles_n_paths_within_the_verified_tokens(trace):
    edit(trace, "cycles", "n_paths", 1, 9)
    edit(trace, "cycles", "chosen_path", 1, 0)
    refused(trace, "column n_paths, row 1", "holds 9", "1 to verify_tokens = 8")


def test_cycles_drafted_length_and_ids(trace):
    edit(trace, "cycles", "drafted", 0, lambda d: d[:-1])
    refused(trace, "column drafted, row 0", "holds 6 values", "block_size - 1 = 7 token ids")


def test_cycles_drafted_ids(trace):
    edit(trace, "cycles", "drafted", 0, lambda d: [-1] + d[1:])
    refused(trace, "column drafted, row 0", "holds -1 at index 0", "token ids 0 to 16777215")


def test_cycles_list_every_problem(trace):
    """trace check lists every broken rule, not only the first."""
    edit(trace, "cycles", "accepted", 0, -3)
    edit(trace, "cycles", "cycle_s", 2, math.nan)
    with pytest.raises(TraceError, match=r"column accepted, row 0, .* \(1 more problem: "
                                         r"`specreplay trace check .*` lists them\)$"):
        Trace.open(trace).cycles  # the reader: the first problem, and how many more
    edit(trace, "samples", "prefill_s", 0, -1.0)
    rc, out, _ = run("trace", "check", trace)
    assert rc == 1
    for piece in ("column accepted, row 0", "column cycle_s, row 2", "column prefill_s, row 0"):
        assert piece in out, out


# -- oracle (plain and probe rows) --------------------------------------------------

@pytest.mark.parametrize("column,value,pieces", [
    ("sample", -1, ("holds -1", "an integer >= 0")),
    ("start", -2, ("holds -2", "an integer >= 0")),
    ("block_size", 1, ("holds 1", "an integer >= 2")),
    ("prev_offset", 3, ("holds 3", "0 to start = 0")),
    ("draft_ids", lambda v: [-9] + v[1:], ("holds -9 at index 0", "token ids 0 to 16777215")),
    ("draft_logprobs", lambda v: [float("nan")] + v[1:], ("holds nan at index 0", "log-probabilities <= 0")),
    ("draft_logprobs", lambda v: v[:2] + [0.5] + v[3:], ("holds 0.5 at index 2", "log-probabilities <= 0")),
    ("draft_ids", lambda v: v[:-1], ("holds 11 values", "(block_size - 1) * top_k = 3 * 4 = 12 ids")),
    ("true_rank", lambda v: v + [0], ("holds 4 values", "block_size - 1 = 3 rank codes")),
])
def test_oracle_values(trace, column, value, pieces):
    edit(trace, "oracle", column, 0, value)
    refused(trace, "(table oracle)", f"column {column}, row 0", *pieces)


def test_oracle_probe_rows_are_checked_too(trace):
    row = first_row(trace, "oracle", lambda r: r["probe"] != "")
    edit(trace, "oracle", "true_rank", row, lambda r: r[:1] + [7] + r[2:])
    refused(trace, f"column true_rank, row {row}", "probe 'refine(steps=2, only_below=0.5)'",
            "holds 7 at index 1")


def test_oracle_rows_name_known_samples(trace):
    edit(trace, "oracle", "sample", 0, 9)
    refused(trace, "(table oracle), column sample, row 0", "holds 9", "a sample id of the samples table")


def test_oracle_rows_start_inside_the_output(trace):
    edit(trace, "oracle", "start", 0, 30)
    refused(trace, "column start, row 0", "holds 30", "a position inside the sample's output")


def test_oracle_rows_appear_once(trace):
    edit_rows(trace, "oracle", lambda rows: rows + rows[:1])
    refused(trace, "one row per (sample, start, block size, probe, prev_offset)",
            "(sample 0, start 0, block size 4, probe '', prev_offset 0) again")


def test_oracle_block_sizes_match_run_json(trace):
    edit_run(trace, lambda r: r["oracle"].update(block_sizes=[4, 8, 12]))
    refused(trace, "plain block sizes holds [4, 8]", "oracle.block_sizes, [4, 8, 12]")


def test_oracle_probes_match_run_json(trace):
    edit_run(trace, lambda r: r["oracle"].update(probes=[]))
    refused(trace, "probes holds ['refine(steps=2, only_below=0.5)']", "oracle.probes, []")


def test_oracle_gaps_are_listed_by_check(trace):
    edit_rows(trace, "oracle", lambda rows: [r for r in rows
                                             if not (r["block_size"] == 4 and r["probe"] == "" and r["start"] == 5)])
    rc, out, _ = run("trace", "check", trace)
    assert rc == 1 and "block size 4 holds plain rows at 28 of the 29 starts of sample 0" in out, out


# -- oracle_target, cycle_logits: read by Monte Carlo replay and reports ------------

@pytest.mark.parametrize("column,value,pieces", [
    ("position", -1, ("holds -1", "an integer >= 0")),
    ("target_ids", lambda v: [-3] + v[1:], ("holds -3 at index 0", "token ids 0 to 16777215")),
    ("target_logprobs", lambda v: [float("nan")] + v[1:], ("holds nan at index 0", "log-probabilities <= 0")),
    ("target_ids", lambda v: v[:-1], ("holds 3 values", "top_k = 4 token ids")),
])
def test_oracle_target_values(trace, column, value, pieces):
    path = edit(trace, "oracle_target", column, 0, value)
    with pytest.raises(TraceError) as e:
        Trace.open(trace).oracle_target
    assert str(e.value).startswith(f"{path} (table oracle_target), column {column}, row 0")
    assert all(p in str(e.value) for p in pieces), str(e.value)
    rc, out, _ = run("trace", "check", trace)
    assert rc == 1 and str(e.value) in out


def test_cycle_logits_offsets(trace):
    edit(trace, "cycle_logits", "offset", 0, -1)
    with pytest.raises(TraceError, match=r"\(table cycle_logits\), column offset, row 0, sample 0 "
                                         r"cycle 0: holds -1; allowed: an integer >= 0"):
        Trace.open(trace).cycle_logits


# -- profile ------------------------------------------------------------------------

def _profile_row(d: Path, kind: str) -> int:
    return first_row(d, "profile", lambda r: r["kind"] == kind)


@pytest.mark.parametrize("column,value,kind,allowed", [
    ("kind", "warp", "target", "one of 'target', 'tree_verify', 'draft', 'overhead'"),
    ("q", 0, "target", "query tokens 1 to 16777216"),
    ("q", 1 << 30, "draft", "query tokens 1 to 16777216"),
    ("q", -1, "overhead", "for overhead rows the cycle's verify tokens"),
    ("mode", "warp", "overhead", "one of 'ar', 'chain', 'gated', 'tree', 'batch', 'probed' on overhead rows"),
    ("mode", "chain", "target", "empty on the others"),
    ("context_len", -1, "target", "an integer from 0 to 16777216"),
    ("context_len", 2 ** 31 - 1, "target", "an integer from 0 to 16777216"),
    ("batch", 0, "draft", "an integer >= 1"),
    ("p10_s", -1.0, "target", "a finite number of seconds > 0"),
    ("p90_s", math.nan, "tree_verify", "a finite number of seconds > 0"),
    ("n", 0, "target", "timed repetitions >= 1"),
])
def test_profile_values(trace, column, value, kind, allowed):
    row = _profile_row(trace, kind)
    edit(trace, "profile", column, row, value)
    refused(trace, f"(table profile), column {column}, row {row}", allowed)


def test_profile_host_rows_without_a_mode_are_the_legacy_q0_rows(trace):
    """An overhead row with verify tokens must say which cycle kind it timed."""
    row = _profile_row(trace, "overhead")
    edit(trace, "profile", "q", row, 8)
    refused(trace, f"(table profile), column mode, row {row}", "or empty where q is 0")


def test_profile_one_row_per_grid_point(trace):
    edit_rows(trace, "profile", lambda rows: rows + [dict(rows[3], median_s=1.0)])
    msg = refused(trace, "(table profile), column kind, q, context_len, batch",
                  "one row per grid point")
    assert "grid point (target, " in msg


def test_profile_from_elsewhere_is_checked(trace, tmp_path):
    """A profile paired with --profile is validated like the trace's own."""
    other = tmp_path / "prof"
    other.mkdir()
    for f in ("profile.parquet", "profile.json"):
        shutil.copy(trace / f, other / f)
    edit(other, "profile", "median_s", 0, 1e250)
    with pytest.raises(TraceError, match=r"column median_s, row 0, kind 'target' q 1 context_len 0 "
                                         r"batch 1: holds 1e\+250"):
        Profile.open(other)
    rc, out, err = run("replay", trace, "--policy", "fixed(b=4)", "--profile", other)
    assert rc == 2 and "holds 1e+250" in err and out == ""


# -- run.json -----------------------------------------------------------------------

@pytest.mark.parametrize("key,change,pieces", [
    ("top_k_logits", lambda r: r.update(top_k_logits=-1), ("holds -1", "an integer >= 0")),
    ("sampling.temperature", lambda r: r["sampling"].update(temperature=-0.5), ("holds -0.5", "a finite number >= 0")),
    ("sampling.temperature", lambda r: r["sampling"].update(temperature=float("nan")), ("holds nan",)),
    ("sampling.max_new_tokens", lambda r: r["sampling"].update(max_new_tokens=0), ("holds 0", "an integer >= 1 or null")),
    ("sampling.stop_token_ids", lambda r: r["sampling"].update(stop_token_ids=[-1]), ("holds [-1]",)),
    ("draft.block_size", lambda r: r["draft"].update(block_size=0), ("holds 0", "an integer >= 1 or null")),
    ("oracle.block_sizes", lambda r: r["oracle"].update(block_sizes=[1, 4, 8]), ("distinct integers >= 2",)),
    ("oracle.top_k", lambda r: r["oracle"].update(top_k=0), ("holds 0", "an integer from 1 to 127")),
    ("oracle.probes", lambda r: r["oracle"].update(probes=[3]), ("holds [3]", "a list of probe keys")),
    ("oracle.probe_block_sizes", lambda r: r["oracle"].update(probe_block_sizes=[16]), ("a subset of oracle.block_sizes",)),
    ("oracle", lambda r: r.update(oracle=None), ("holds None", "since the trace holds an oracle table")),
])
def test_run_json_values(trace, key, change, pieces):
    edit_run(trace, change)
    refused(trace, f"run.json (table run.json): key {key} ", *pieces)
