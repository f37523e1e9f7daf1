"""Validating a trace and summarising it on one screen (`specreplay trace check`).

``check_trace(path)`` returns a dict: the summary (``samples``, ``cycles``, ``tau_mean``,
``divergences``, ``oracle_block_sizes``, ``oracle_coverage``, ``probes``,
``bytes_per_cycle``, ``live_policy``, ...) plus ``ok`` and ``problems`` (one sentence
each). A trace is valid when it opens, every table follows the schema and the value rules
of ``traces.validate`` (every broken rule is listed, not only the first), the cycles of
each sample chain from position 0 to the end of its output, tau = accepted + 1 =
committed, and every oracle row has ranks that agree with the output. The consistency
checks run once the values are valid (they read the values the rules guard).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from specreplay.traces.io import TraceError
from specreplay.traces.reader import Trace, check_profile_matches
from specreplay.traces.schema import RANK_BEYOND_END, RANK_NOT_IN_TOPK, TABLES
from specreplay.traces.validate import oracle_gaps


class _Outputs:
    """The output sequences S of all samples as one flat array, for vectorised lookup
    of S[sample][pos]."""

    def __init__(self, trace: Trace):
        outs = trace.outputs()
        n = max(outs) + 1
        self.length = np.zeros(n, np.int64)
        for s, o in outs.items():
            self.length[s] = len(o)
        self.offset = np.concatenate([[0], np.cumsum(self.length)[:-1]])
        self.flat = np.zeros(int(self.length.sum()), np.int32)
        for s, o in outs.items():
            self.flat[self.offset[s]:self.offset[s] + len(o)] = o

    def token(self, sample: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(S[sample][pos], inside) where inside says pos < len(S); 0 outside."""
        inside = pos < self.length[sample]
        idx = self.offset[sample] + np.where(inside, pos, 0)
        return np.where(inside, self.flat[idx], 0), inside


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_samples(trace: Trace) -> list[str]:
    """Sample ids 0..n-1 each once; n_cycles agrees with the cycles table."""
    problems = []
    ids = trace.samples.column("sample").to_numpy()
    if len(np.unique(ids)) != len(ids):
        problems.append(f"samples: sample ids repeat ({len(ids) - len(np.unique(ids))} duplicates)")
    if ids.min() < 0 or ids.max() >= len(ids):
        problems.append(f"samples: sample ids must be 0..{len(ids) - 1}, found "
                        f"{int(ids.min())}..{int(ids.max())}")
    counts = np.bincount(trace.cycles.column("sample").to_numpy(), minlength=int(ids.max()) + 1)
    declared = trace.samples.column("n_cycles").to_numpy(zero_copy_only=False)
    bad = counts[ids] != declared
    if bad.any():
        i = _first(bad)
        problems.append(f"samples: {int(bad.sum())} samples declare another n_cycles than the "
                        f"cycles table holds (sample {int(ids[i])}: {int(declared[i])} declared, "
                        f"{int(counts[ids[i]])} in cycles)")
    return problems


def check_cycles(trace: Trace, outputs: _Outputs) -> list[str]:
    """Each sample's cycles are numbered 0.., start at 0, chain (next start = start +
    committed) and end at the last output position; tau = accepted + 1 = committed; the
    bonus is the output token after the committed prefix."""
    c = trace.cycles
    sample = c.column("sample").to_numpy()
    cycle = c.column("cycle").to_numpy()
    order = np.lexsort((cycle, sample))
    sample, cycle = sample[order], cycle[order]
    start = c.column("start").to_numpy()[order].astype(np.int64)
    accepted = c.column("accepted").to_numpy()[order].astype(np.int64)
    tau = c.column("tau").to_numpy()[order].astype(np.int64)
    committed = c.column("committed").to_numpy()[order].astype(np.int64)
    bonus = c.column("bonus").to_numpy(zero_copy_only=False)[order]
    problems = []

    def report(mask: np.ndarray, what: str, detail) -> None:
        if mask.any():
            i = _first(mask)
            problems.append(f"cycles: {int(mask.sum())} {what} (first: sample {int(sample[i])} "
                            f"cycle {int(cycle[i])}{detail(i)})")

    if (sample >= len(outputs.length)).any() or (sample < 0).any():
        return [f"cycles: rows name samples missing from the samples table"]
    first = np.r_[True, sample[1:] != sample[:-1]]
    last = np.r_[sample[1:] != sample[:-1], True]
    expected_cycle = np.arange(len(sample)) - np.maximum.accumulate(np.where(first, np.arange(len(sample)), 0))
    report(cycle != expected_cycle, "cycles are not numbered 0, 1, ... within their sample",
           lambda i: f", expected number {int(expected_cycle[i])}")
    expected_start = np.where(first, 0, np.r_[0, start[:-1] + committed[:-1]])
    report(start != expected_start, "cycles do not start where the previous one ended",
           lambda i: f": starts at {int(start[i])}, expected {int(expected_start[i])}")
    end = outputs.length[sample] - 1
    report(last & (start + committed != end), "samples' last cycles do not end at the last "
           "output token", lambda i: f": ends at {int(start[i] + committed[i])}, output ends at {int(end[i])}")
    report(tau != accepted + 1, "cycles have tau != accepted + 1",
           lambda i: f": tau {int(tau[i])}, accepted {int(accepted[i])}")
    report(committed != tau, "cycles commit another number of tokens than tau",
           lambda i: f": committed {int(committed[i])}, tau {int(tau[i])}")
    token, inside = outputs.token(sample, start + committed)
    report(inside & (bonus != token), "cycles have a bonus token that is not the output token "
           "after the committed prefix", lambda i: f": bonus {int(bonus[i])}, output {int(token[i])}")
    return problems


def check_oracle(trace: Trace, outputs: _Outputs) -> list[str]:
    """List lengths (via the columnar reader) and ranks consistent with the outputs:
    RANK_BEYOND_END exactly past the end, a rank r >= 0 names the output token's slot,
    RANK_NOT_IN_TOPK means the output token is not among the top-k."""
    problems = []
    for (b, probe), g in trace.oracle_arrays().items():
        where = f"oracle (block size {b}, probe {probe!r})"
        if (g.sample >= len(outputs.length)).any():
            problems.append(f"{where}: rows name samples missing from the samples table")
            continue
        bad_start = (g.start < 0) | (g.start >= outputs.length[g.sample])
        if bad_start.any():
            problems.append(f"{where}: {int(bad_start.sum())} rows start outside the output")
            continue
        pos = g.start[:, None].astype(np.int64) + np.arange(1, b)[None, :]
        token, inside = outputs.token(np.broadcast_to(g.sample[:, None], pos.shape), pos)
        rank = g.true_rank.astype(np.int64)
        wrong_code = (inside != (rank != RANK_BEYOND_END)) | (rank < RANK_BEYOND_END) | (rank >= g.k)
        slot = np.take_along_axis(g.draft_ids, np.clip(rank, 0, g.k - 1)[:, :, None], 2)[:, :, 0]
        wrong_slot = (rank >= 0) & (slot != token)
        missing = (rank == RANK_NOT_IN_TOPK) & (g.draft_ids == token[:, :, None]).any(axis=2)
        for mask, what in ((wrong_code, "rank codes that do not match the output length or top-k"),
                           (wrong_slot, "ranks whose draft token is not the output token"),
                           (missing, "'not in top-k' ranks although the output token is there")):
            rows = mask.any(axis=1)
            if rows.any():
                i = _first(rows)
                problems.append(f"{where}: {int(rows.sum())} rows with {what} (first: sample "
                                f"{int(g.sample[i])} start {int(g.start[i])})")
    return problems


def oracle_coverage(trace: Trace, outputs: _Outputs) -> dict[int, float]:
    """Per block size: the fraction of positions where a cycle can start (0..len(S)-2 of
    every sample) that have a plain oracle row."""
    total = float((outputs.length - 1).clip(min=0).sum())
    cover = {}
    for (b, probe), g in trace.oracle_arrays().items():
        if probe:
            continue
        ok = g.start <= outputs.length[g.sample] - 2
        pairs = np.unique(g.sample[ok].astype(np.int64) * (1 << 32) + g.start[ok])
        cover[b] = round(len(pairs) / total, 6) if total else 0.0
    return cover


def oracle_live_agreement(trace: Trace) -> tuple[int, int]:
    """(agreeing, compared): live cycles with a plain greedy draft whose top-1 proposals
    equal the oracle's at the same (sample, start, block size). On a CPU in float32 every
    cycle agrees; on a GPU, kernels of other shapes can flip near-tied proposals, and
    this is how often replay reads a proposal the live run did not see."""
    if float((trace.run.get("sampling") or {}).get("temperature") or 0.0) > 0:
        return 0, 0
    cyc = trace.cycles
    b = cyc.column("block_size").to_numpy().astype(np.int64)
    probe = np.asarray(cyc.column("probe").to_pylist(), dtype=object)
    sample = cyc.column("sample").to_numpy().astype(np.int64)
    start = cyc.column("start").to_numpy().astype(np.int64)
    drafted = cyc.column("drafted").to_pylist()
    agree = compared = 0
    for (size, key), g in trace.oracle_arrays().items():
        if key:
            continue
        rows = np.flatnonzero((b == size) & (probe == ""))
        if not len(rows):
            continue
        where = {(int(s), int(p)): i for i, (s, p) in enumerate(zip(g.sample, g.start))}
        for r in rows:
            i = where.get((int(sample[r]), int(start[r])))
            if i is None:
                continue
            compared += 1
            agree += list(g.draft_ids[i, :, 0]) == list(drafted[r])
    return agree, compared


def summarize(trace: Trace, outputs: _Outputs) -> dict[str, Any]:
    """The numbers `trace check` prints."""
    run = trace.run
    samples, cycles = trace.samples, trace.cycles
    tau = cycles.column("tau").to_numpy().astype(np.float64)
    divergence = samples.column("ar_divergence").to_numpy(zero_copy_only=False)
    checked = ~np.isnan(divergence.astype(np.float64))
    decode_s = float(np.nansum(samples.column("decode_s").to_numpy(zero_copy_only=False)))
    committed = float(cycles.column("committed").to_numpy().sum())
    size = trace.bytes_on_disk()
    out: dict[str, Any] = {
        "trace": str(trace.dir),
        "synthetic": bool(run.get("synthetic", False)),
        "schema_version": run.get("schema_version"),
        "tool_version": run.get("tool_version"),
        "setup": run.get("setup"),
        "target": (run.get("target") or {}).get("id"),
        "draft": (run.get("draft") or {}).get("id"),
        "live_policy": run.get("live_policy"),
        "complete": bool(run.get("complete", False)),
        "samples": samples.num_rows,
        "output_tokens": int(outputs.length.sum()),
        "cycles": cycles.num_rows,
        "tau_mean": round(float(tau.mean()), 6) if len(tau) else None,
        "live_tokens_per_s": round(committed / decode_s, 3) if decode_s > 0 else None,
        "divergences": int((divergence[checked] >= 0).sum()),
        "divergence_checked_samples": int(checked.sum()),
        "oracle_block_sizes": [],
        "oracle_coverage": {},
        "oracle_top_k": trace.oracle_top_k,
        "probes": [],
        "bytes": size,
        "bytes_per_cycle": round(size / cycles.num_rows, 1) if cycles.num_rows else None,
        "has_profile": (trace.dir / "profile.parquet").exists(),
    }
    if trace.has_table("oracle"):
        cover = oracle_coverage(trace, outputs)
        out["oracle_block_sizes"] = sorted(cover)
        out["oracle_coverage"] = {str(b): f for b, f in sorted(cover.items())}
        out["probes"] = sorted(set(trace.oracle.column("probe").to_pylist()) - {""})
        agree, compared = oracle_live_agreement(trace)
        out["oracle_live_agreement"] = round(agree / compared, 6) if compared else None
        out["oracle_live_compared"] = compared
    return out


def check_trace(path: str | Path) -> dict[str, Any]:
    """Validate a trace and summarise it; never raises for a bad trace: the reasons are
    in ``problems`` and ``ok`` is False."""
    values: list = []  # every broken value rule, collected by the reader
    try:
        trace = Trace.open(path, collect=values)
        for name in TABLES:  # read (schema- and value-check) every table present
            if trace.has_table(name):
                trace.table(name)
        profile = trace.profile()
        problems = [str(p) for p in values]
        if any(p.table in ("samples", "run.json") for p in values):
            # the consistency checks and the summary index everything by these
            return {"trace": str(path), "ok": False, "problems": problems
                    + ["(the consistency checks run once the samples and run.json values are fixed)"]}
        outputs = _Outputs(trace)
        problems += _consistency(bool(values), "samples and cycles",
                                 lambda: check_samples(trace) + check_cycles(trace, outputs))
        if profile is not None:
            diffs = check_profile_matches(trace, profile, allow_other_setup=True)
            if diffs:
                problems.append(f"profile: measured on another setup than the trace "
                                f"({'; '.join(diffs[:4])})")
        if trace.has_table("oracle"):
            problems += _consistency(bool(values), "oracle", lambda: [
                str(p) for p in oracle_gaps(trace.oracle, trace._output_lengths(), trace.run,
                                            str(trace.dir / "oracle"))] + check_oracle(trace, outputs))
        if values:
            try:
                report = summarize(trace, outputs)
            except (TraceError, ValueError, IndexError):
                return {"trace": str(path), "ok": False, "problems": problems}
        else:
            report = summarize(trace, outputs)
    except TraceError as e:
        return {"trace": str(path), "ok": False, "problems": [str(e)]}
    report["ok"] = not problems
    report["problems"] = problems
    return report


def _consistency(invalid_values: bool, what: str, run) -> list[str]:
    """Run a consistency check; on a trace whose values already broke a rule, one that
    cannot run on them is skipped with a note instead of failing."""
    if not invalid_values:
        return run()
    try:
        return run()
    except (TraceError, ValueError, IndexError):
        return [f"(the {what} consistency checks run once the values above are fixed)"]


def _setup_line(setup: Any) -> str:
    if not isinstance(setup, dict):
        return str(setup)
    return " ".join(f"{k}={v}" for k, v in setup.items() if v not in (None, "", {}))


def format_report(r: dict[str, Any]) -> str:
    """The one-screen text summary of ``check_trace``'s result."""
    if "samples" not in r:
        return "\n".join([f"trace   {r['trace']}", "INVALID", *[f"  - {p}" for p in r["problems"]]])
    cover = ", ".join(f"{b} ({100 * f:.0f}%)" for b, f in r["oracle_coverage"].items()) or "none"
    lines = [
        f"trace     {r['trace']}" + ("   [SYNTHETIC: for tests, not a recording]" if r["synthetic"] else ""),
        f"written   specreplay {r['tool_version']}, schema {r['schema_version']}",
        f"setup     {_setup_line(r['setup'])}",
        f"models    target {r['target']}, draft {r['draft']}",
        f"policy    {r['live_policy']}",
        f"samples   {r['samples']} ({'complete' if r['complete'] else 'INCOMPLETE'}), "
        f"{r['output_tokens']} output tokens",
        f"cycles    {r['cycles']}, tau mean {r['tau_mean']:.3f}"
        + (f", live {r['live_tokens_per_s']:.1f} tokens/s" if r["live_tokens_per_s"] else ""),
        f"oracle    block sizes {cover}" + (f", top-{r['oracle_top_k']}" if r["oracle_top_k"] else ""),
        f"probes    {', '.join(r['probes']) or 'none'}",
        *([f"agreement oracle top-1 = live draft at {100 * r['oracle_live_agreement']:.2f}% of "
           f"{r['oracle_live_compared']} plain greedy cycles"]
          if r.get("oracle_live_agreement") is not None else []),
        f"size      {r['bytes'] / 1e6:.2f} MB, {r['bytes_per_cycle']:.0f} bytes per cycle",
        f"AR check  {r['divergences']} divergences in {r['divergence_checked_samples']} checked samples",
        f"profile   {'yes' if r['has_profile'] else 'none'}",
    ]
    if r["ok"]:
        lines.append("OK")
    else:
        lines += [f"INVALID: {len(r['problems'])} problems"] + [f"  - {p}" for p in r["problems"]]
    return "\n".join(lines)
