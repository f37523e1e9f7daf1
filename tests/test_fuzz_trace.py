"""Bounded fuzz of the trace reader: random bit flips in the Parquet files and random
out-of-range value edits in the tables and run.json of a copy of a small trace. Every
case must end in a clear error (exit 2, one line naming what is wrong, no traceback) or
in output identical to the clean trace's; never a traceback, never other numbers with
exit 0. Seeded and bounded: a few hundred cases, well under a minute.

Value edits draw from values outside each column's domain (negative, NaN, infinite,
1e250, the type's extreme, a list one value short or long, a foreign string): an edit to
another *valid* value (a measured time of 5 ms instead of 4 ms) is a different recording,
not a damaged one, and no reader can tell. Bit flips go to the Parquet files, whose
pages carry CRC32 checksums (traces/io.py) that the reader verifies; a flip in the JSON
metadata can turn into another valid setting (temperature 0.0 into 0.1), which is what
the run.json value edits cover instead.
"""
import contextlib
import io
import json
import math
import os
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specreplay.cli import main
from specreplay.traces.synthetic import make_trace

SEED = int(os.environ.get("SPECREPLAY_FUZZ_SEED", "20261203"))  # override to explore
N_FLIPS = 120
N_EDITS = 130
# each case replays one policy under one timing, drawn at random, so every read path is
# fuzzed (fixed(b=8) is the live policy: recorded timing takes its cycles' seconds)
TIMINGS = ("model", "recorded", "calibrated")
POLICIES = ("fixed(b=4)", "fixed(b=8)")
SETTINGS = [(t, p) for t in TIMINGS for p in POLICIES]


def run(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def replay(d: Path, setting: tuple[str, str]) -> tuple[int, str, str]:
    timing, policy = setting
    return run("replay", d, "--timing", timing, "--bootstrap", "20", "--policy", policy)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A small trace (one part per sample) and its clean replay outputs."""
    root = tmp_path_factory.mktemp("fuzz")
    src = make_trace(root / "src", output_lengths=(24, 18), block_sizes=(4, 8), top_k=4,
                     live_policy="fixed(b=8)")
    work = root / "t"
    shutil.copytree(src, work)
    outputs = {}
    for setting in SETTINGS:
        rc, out, err = replay(work, setting)
        assert rc == 0, err
        outputs[setting] = out
    return src, work, outputs


def assert_clear_or_identical(case: str, d: Path, setting: tuple[str, str], clean_out: str) -> str:
    try:
        rc, out, err = replay(d, setting)
    except SystemExit as e:  # argparse-style exits are fine only when non-zero
        rc, out, err = int(e.code or 0), "", "SystemExit"
    except Exception as e:  # a traceback: the reader let damage through
        raise AssertionError(f"{case}: replay raised {type(e).__name__}: {e}") from e
    if rc == 0:
        assert out == clean_out, f"{case}: exit 0 with other output:\n{out}\nclean:\n{clean_out}"
        return "identical"
    assert rc == 2, f"{case}: exit {rc}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specreplay replay: "), f"{case}: {err}"
    assert "Traceback" not in err
    return "refused"


def parquet_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*.parquet"))


def restore(src: Path, work: Path, rel: Path) -> None:
    shutil.copyfile(src / rel, work / rel)


# -- value edits --------------------------------------------------------------------

def hostile(typ: pa.DataType, rng: random.Random):
    """A value outside what any trace column of this type allows."""
    if pa.types.is_floating(typ):
        return rng.choice([math.nan, math.inf, -math.inf, -1.0, -1e-9, 1e250])
    if pa.types.is_integer(typ):
        top = 2 ** (typ.bit_width - 1) - 1
        return rng.choice([-3, -(top + 1), top] + ([-1000] if typ.bit_width > 8 else []))
    if pa.types.is_string(typ):
        return rng.choice(["zz\x00garbage", "chain ", "🙃"])
    raise AssertionError(typ)


def edit_value(path: Path, rng: random.Random) -> str:
    t = pq.read_table(path)
    name = rng.choice([n for n in t.column_names if n != "policy_state"])
    i = t.schema.get_field_index(name)
    field = t.schema.field(i)
    row = rng.randrange(t.num_rows)
    col = t.column(i).combine_chunks()
    old = col[row].as_py()
    if pa.types.is_list(field.type):
        vals = list(old or [])
        how = rng.choice(["element", "short", "long"] if vals else ["long"])
        if how == "element":
            vals[rng.randrange(len(vals))] = hostile(field.type.value_type, rng)
            if pa.types.is_floating(field.type.value_type) and "logprob" in name:
                vals[rng.randrange(len(vals))] = rng.choice([math.nan, 0.5, math.inf])
        elif how == "short":
            vals = vals[:-1]
        else:
            vals = vals + [vals[-1] if vals else 0]
        new = vals
    else:
        new = hostile(field.type, rng)
    cell = pa.array([new], field.type)
    new_col = pa.concat_arrays([col.slice(0, row), cell, col.slice(row + 1)])
    pq.write_table(t.set_column(i, field, new_col), path)
    return f"{path.name} {name}[{row}] = {cell[0].as_py()!r} (was {old!r})"


RUN_EDITS = [
    ("top_k_logits", lambda r, v: r.update(top_k_logits=v), [-1, "4", 1.5]),
    ("temperature", lambda r, v: r["sampling"].update(temperature=v), [-0.5, float("nan"), "0"]),
    ("max_new_tokens", lambda r, v: r["sampling"].update(max_new_tokens=v), [0, -5, 2.5]),
    ("stop_token_ids", lambda r, v: r["sampling"].update(stop_token_ids=v), [[-1], "1"]),
    ("draft.block_size", lambda r, v: r["draft"].update(block_size=v), [0, -16, "16"]),
    ("oracle.block_sizes", lambda r, v: r["oracle"].update(block_sizes=v), [[1, 4, 8], [4, 8, 12], [4], [4, 4, 8], "4,8"]),
    ("oracle.top_k", lambda r, v: r["oracle"].update(top_k=v), [0, 3, 5, 200, "4"]),
    ("oracle.probes", lambda r, v: r["oracle"].update(probes=v), [["recycle(mode=dense)"], [7]]),
    ("oracle", lambda r, v: r.update(oracle=v), [None, [4, 8]]),
]


def edit_run(path: Path, rng: random.Random) -> str:
    run_meta = json.loads(path.read_text())
    key, change, values = rng.choice(RUN_EDITS)
    value = rng.choice(values)
    change(run_meta, value)
    path.write_text(json.dumps(run_meta))
    return f"run.json {key} = {value!r}"


# -- the fuzz -----------------------------------------------------------------------

def test_fuzz_bit_flips(clean):
    src, work, outputs = clean
    rng = random.Random(SEED)
    files = parquet_files(src)
    sizes = [f.stat().st_size for f in files]
    seen = {"refused": 0, "identical": 0}
    for n in range(N_FLIPS):
        f = rng.choices(files, weights=sizes)[0]
        rel = f.relative_to(src)
        data = bytearray(f.read_bytes())
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        (work / rel).write_bytes(bytes(data))
        setting = rng.choice(SETTINGS)
        case = f"flip {n}: {rel} byte {pos}, {setting}"
        try:
            seen[assert_clear_or_identical(case, work, setting, outputs[setting])] += 1
        finally:  # the work copy is shared by the tests of this module
            restore(src, work, rel)
    # flips in the checksummed pages are refused; those in footer statistics and
    # padding change nothing read (about half, on these small files)
    assert seen["refused"] > N_FLIPS // 3, seen


def test_fuzz_value_edits(clean):
    src, work, outputs = clean
    rng = random.Random(SEED + 1)
    files = [f for f in parquet_files(src) if "cycle_logits" not in f.parts]  # replay never reads it
    seen = {"refused": 0, "identical": 0}
    for n in range(N_EDITS):
        if rng.random() < 0.15:
            rel = Path("run.json")
            what = edit_run(work / rel, rng)
        else:
            rel = rng.choice(files).relative_to(src)
            what = edit_value(work / rel, rng)
        setting = rng.choice(SETTINGS)
        case = f"edit {n}: {what}, {setting}"
        try:
            seen[assert_clear_or_identical(case, work, setting, outputs[setting])] += 1
        finally:
            restore(src, work, rel)
    assert seen["refused"] > N_EDITS // 2, seen


def test_trace_check_never_raises_on_damage(clean):
    """`trace check` on the damaged traces: exit 0 or 1, never a traceback."""
    src, work, _ = clean
    rng = random.Random(SEED + 2)
    files = parquet_files(src)
    for n in range(30):
        rel = rng.choice(files).relative_to(src)
        if rng.random() < 0.5:
            data = bytearray((src / rel).read_bytes())
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            (work / rel).write_bytes(bytes(data))
        else:
            edit_value(work / rel, rng)
        try:
            rc, out, err = run("trace", "check", work)
            assert rc in (0, 1) and "Traceback" not in out + err, (n, rel, out, err)
            if rc == 1:
                assert "INVALID" in out
        finally:
            restore(src, work, rel)
