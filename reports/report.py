"""The report: replay traces over policies, then write one self-contained ``index.html``
(figures embedded as PNG, tables, the setup of every trace and profile) and the same
figures as PNG files into one folder.

Every number on the page comes from a replay result, the oracle, a profile or the
ledger; number cells carry the exact value in ``data-value`` and its field name in
``data-key``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from specreplay.reports import figures as F
from specreplay.reports import page as H
from specreplay.reports.acceptance import acceptance_curves, plain_true_ranks
from specreplay.reports.ledger import (findings_path, ledger_summary, read_ledger,
                                       resolve_path, run_conditions, studies, study_speedups)
from specreplay.traces.reader import Profile, Trace

# Leaderboard columns: (replay field, header, decimals).
LEADERBOARD_NUMBERS = (
    ("tokens_per_s", "tokens/s", 1),
    ("ci_low", "CI low", 1),
    ("ci_high", "CI high", 1),
    ("speedup", "speedup over ar", 3),
    ("tau_mean", "mean tau", 3),
    ("tpot_s", "TPOT (s)", 5),
)


def canonical(spec: str) -> str:
    """A policy spec with every knob spelled out, so that two spellings of one policy
    (defaults written or left out) match; an unparseable spec stays as written."""
    from specreplay.policies import PolicyError, parse_policy
    try:
        return str(parse_policy(spec))
    except PolicyError:
        return spec


@dataclass
class Replayed:
    """One trace replayed over a list of policies."""
    trace: Trace
    label: str                       # how the page names the trace
    profile: Profile | None          # the profile the replay used (None: none found)
    profile_label: str
    predictions: list[Any]           # sim.replay Prediction objects, in policy order
    results: list[dict[str, Any]] = field(default_factory=list)  # Prediction.to_dict()
    key: str = ""                    # how the page's tables name the trace: T1, T2, ...

    def replayable(self) -> list[tuple[Any, dict[str, Any]]]:
        return [(p, r) for p, r in zip(self.predictions, self.results) if r["replayable"]]


# -- replay

def _profile_for(trace: Trace, profile_dir: Path | None) -> tuple[Profile | None, str]:
    if profile_dir is not None:
        return Profile.open(profile_dir), str(profile_dir)
    own = trace.profile()
    if own is None:
        return None, "none: cost model fitted to the trace's live cycles"
    return own, f"{trace.dir}/profile.parquet (recorded with the trace)"


def replay_traces(trace_dirs: Sequence[Path], specs: Sequence[str], profile_dir: Path | None = None,
                  other_setup: bool = False, bootstrap: int = 1000,
                  log: Callable[[str], None] = print, timing: str = "model") -> list[Replayed]:
    """Replay every trace over ``specs`` (single stream; ``timing`` "model" or
    "calibrated", see sim.replay.replay) with the given
    profile, or each trace's own; ``other_setup`` allows a profile measured on another
    setup (the predictions are labelled). Policies the trace cannot replay come back
    with ``replayable`` false and the reason; they are printed, not dropped."""
    # open every trace and profile first, so a bad path fails before any replay runs
    opened = [(d, Trace.open(d)) for d in trace_dirs]
    profiles = [_profile_for(t, Path(profile_dir) if profile_dir else None) for _, t in opened]
    from specreplay.sim.replay import replay
    out = []
    for (d, trace), (profile, profile_label) in zip(opened, profiles):
        preds = replay(trace, list(specs), profile=profile, bootstrap=bootstrap,
                       other_setup=other_setup, timing=timing)
        if timing != "model" and preds:
            # the factors behind every number on the page, e.g. "draft x1.353, verify x1.169"
            profile_label += f"; timing {timing}: {preds[0].cost}"
        rep = Replayed(trace=trace, label=str(d), profile=profile, profile_label=profile_label,
                       predictions=preds, results=[p.to_dict() for p in preds])
        for r in rep.results:
            if not r["replayable"]:
                log(f"skipped {r['policy']} on {rep.label}: {r['reason']}")
        out.append(rep)
    return out


def leaderboard_rows(replays: Sequence[Replayed]) -> list[tuple[Replayed, dict[str, Any]]]:
    """Replayable results, trace by trace, best tokens/s first."""
    rows = []
    for rep in replays:
        ok = [r for _, r in rep.replayable()]
        rows += [(rep, r) for r in sorted(ok, key=lambda r: -r["tokens_per_s"])]
    return rows


def leaderboard_text(replays: Sequence[Replayed]) -> str:
    """The leaderboard as a plain-text table for the terminal."""
    lines = []
    for rep in replays:
        lines.append(f"\nleaderboard: {rep.label} (profile: {rep.profile_label})")
        lines.append(f"{'#':>3}  {'tokens/s':>10}  {'CI':>21}  {'speedup':>7}  {'tau':>6}  "
                     f"{'fidelity':<11}  policy")
        for i, (_, r) in enumerate(leaderboard_rows([rep]), 1):
            ci = f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
            lines.append(f"{i:>3}  {r['tokens_per_s']:>10.1f}  {ci:>21}  {r['speedup']:>7.3f}  "
                         f"{r['tau_mean']:>6.3f}  {str(r['fidelity']):<11}  {r['policy']}")
    return "\n".join(lines)


# -- data for the figures

def _column(per_cycle: Any, name: str) -> np.ndarray:
    col = per_cycle[name]
    return np.asarray(col.to_numpy() if hasattr(col, "to_numpy") else col)


def tau_hist(result: dict[str, Any]) -> dict[int, int]:
    """Cycles per tau value of one prediction (its ``tau_hist[t]`` = cycles with tau t)."""
    return {t: int(c) for t, c in enumerate(result["tau_hist"]) if c}


def _is_scheduler(spec: str) -> bool:
    """A policy whose block size may change from cycle to cycle."""
    from specreplay.policies import parse_policy
    return parse_policy(spec).block.name not in ("fixed", "ar")


def timeline_series(rep: Replayed, name: str = "") -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """Per-cycle tau and block size of the schedulers (or, when none was replayed, the
    best policy) on the sample with the most replayed cycles; and the figure title
    (naming the trace ``name``, by default its label)."""
    name = name or rep.label
    ok = rep.replayable()
    chosen = [(p, r) for p, r in ok if _is_scheduler(r["policy"])]
    note = "block-size schedulers"
    if not chosen and ok:
        chosen = [max(ok, key=lambda pr: pr[1]["tokens_per_s"])]
        note = "no scheduler replayed; the best policy shown"
    if not chosen:
        return {}, f"Timeline of {name}: nothing replayed"
    counts = np.bincount(_column(chosen[0][0].per_cycle, "sample").astype(np.int64))
    sample = int(np.argmax(counts))
    series = {}
    for p, r in chosen:
        pc = p.per_cycle
        sel = _column(pc, "sample") == sample
        series[r["policy"]] = {k: _column(pc, k)[sel] for k in ("start", "tau", "block_size")}
    return series, (f"Sample {sample} of {name} ({note}): tau per cycle (top) and "
                    "chosen block size (bottom)")


def profile_points(profile: Profile | None) -> dict[str, dict[str, np.ndarray]]:
    """Batch-1 measured points of the profile, by kind."""
    if profile is None:
        return {}
    t = profile.table
    cols = {c: np.asarray(t[c].to_numpy(zero_copy_only=False)) for c in
            ("kind", "q", "context_len", "batch", "median_s", "p10_s", "p90_s")}
    out = {}
    for kind in ("target", "draft"):
        sel = (cols["kind"] == kind) & (cols["batch"] == 1)
        out[kind] = {c: cols[c][sel] for c in ("q", "context_len", "median_s", "p10_s", "p90_s")}
    return out


def cost_model_curve(profile: Profile | None) -> Callable | None:
    """``f(kind, q, context_len) -> seconds``: the simulator's fitted structured cost
    model (fixed + per token + per token x context) for batch 1, or None without a
    profile or when the profile lacks that kind."""
    if profile is None:
        return None
    from specreplay.sim.cost import CostModel
    try:
        model = CostModel(profile.table, label=str(profile.dir), setup=profile.meta)
    except ValueError:
        return None

    def f(kind: str, q: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        surface = model.surfaces.get(kind)
        if surface is None:
            return np.full(np.shape(q), np.nan)
        return surface.fitted(q, ctx, 1)
    return f


# -- page sections

class _Figures:
    """Collects figures: writes each PNG file and returns its embedded HTML."""

    def __init__(self, out: Path):
        self.out = out
        self.files: list[Path] = []

    def add(self, fig_id: str, base: str, fig, caption: str) -> str:
        png = F.png_bytes(fig)
        path = self.out / f"{fig_id}.png"
        path.write_bytes(png)
        self.files.append(path)
        return H.figure(fig_id, F.FIGURES[base], png, caption, path.name)


def _rel(path: Path | str, out: Path) -> str:
    """A path as seen from the report's folder, so the page reads the same wherever the
    folder is opened from."""
    return Path(os.path.relpath(Path(path).resolve(), out.resolve())).as_posix()


@dataclass
class _Ledger:
    """The ledger as the page uses it: rows, the study of each row (1-based, in order of
    first appearance) and the rows each study's statistics use."""
    path: Path
    rows: list[dict[str, Any]]
    keys: list[tuple[str, str, str, str, str]]
    used: list[list[dict[str, Any]]]

    @classmethod
    def read(cls, path: Path) -> "_Ledger":
        rows = read_ledger(path)
        grouped = studies(rows)
        return cls(path, rows, [k for k, _ in grouped], [g for _, g in grouped])

    def study_of(self, row: dict[str, Any]) -> int:
        key = (row["trace"], row["profile"], row["setup"], row["prompts"],
               run_conditions(row.get("note")))
        return self.keys.index(key) + 1

    def speedup_points(self) -> dict[int, tuple[float, float, str]]:
        """id(row) -> (predicted, measured, source) for every row a study uses."""
        out = {}
        for rows in self.used:
            sp = study_speedups(rows)
            for r in rows:
                if r["policy"] in sp:
                    out[id(r)] = sp[r["policy"]]
        return out

    def measured_for(self, rep: "Replayed") -> dict[str, tuple[dict[str, Any], int]]:
        """canonical policy -> (ledger row, study) of the live confirmation on the
        trace's own prompts of this replay's trace (the latest study that has it)."""
        out: dict[str, tuple[dict[str, Any], int]] = {}
        for k, ((trace, _, _, prompts, _), rows) in enumerate(zip(self.keys, self.used), 1):
            found = resolve_path(self.path, trace)
            if prompts != "same" or found is None or found != Path(rep.trace.dir).resolve():
                continue
            for r in rows:
                old = out.get(canonical(r["policy"]))
                if old is None or r["date"] >= old[0]["date"]:
                    out[canonical(r["policy"])] = (r, k)
        return out


def _inputs_section(replays: Sequence[Replayed], ledger: _Ledger | None, out: Path) -> list[str]:
    """Every file the page was made from, once, by the key the tables use."""
    rows = []
    profiles: dict[str, str] = {}
    for rep in replays:
        run = rep.trace.run
        setup = run.get("setup") or {}
        dataset = run.get("dataset") or {}
        what = ", ".join(str(x) for x in (
            f"{len(dataset['indices'])} {dataset.get('name', '')} prompts".replace("  ", " ")
            if isinstance(dataset.get("indices"), list) else None,
            f"live policy {run.get('live_policy')}" if run.get("live_policy") else None,
            setup.get("dtype"), setup.get("backend"), setup.get("gpu")) if x)
        rows.append([rep.key, "trace", _rel(rep.trace.dir, out), what])
        if rep.profile is not None:
            pdir = Path(rep.profile.dir).resolve()
            if str(pdir) in profiles:
                continue
            pkey = profiles[str(pdir)] = f"P{len(profiles) + 1}"
            # a profile in the trace's folder is named by its file, not the folder again
            shown = (_rel(pdir / "profile.parquet", out)
                     if pdir == Path(rep.trace.dir).resolve() else _rel(pdir, out))
            rows.append([pkey, f"latency profile of {rep.key}", shown,
                         rep.profile_label.split("; ", 1)[1] if "; " in rep.profile_label
                         else "recorded with the trace" if "recorded with the trace"
                         in rep.profile_label else ""])
        else:
            rows.append(["", f"latency profile of {rep.key}", "", rep.profile_label])
    if ledger is not None:
        rows.append(["L", "ledger", _rel(ledger.path, out),
                     f"{len(ledger.rows)} rows in {len(ledger.keys)} studies"])
        for name, kind in (("findings", findings_path(ledger.path)),
                           ("notes", notes_path(ledger.path))):
            if kind.exists():
                rows.append(["", f"ledger {name}", _rel(kind, out),
                             "computed from the ledger by `specreplay ledger findings`"
                             if name == "findings" else "written by hand"])
    return ["<h2 id=\"inputs\">Inputs</h2>",
            H.paragraph("The files behind this page, each named once; the tables below refer "
                        "to them by key. Paths are relative to this page's folder."),
            H.table(["key", "what", "path", "details"], rows, table_id="inputs-table",
                    classes=["", "", "path", ""])]


def _leaderboard_section(replays: Sequence[Replayed], figs: _Figures,
                         ledger: _Ledger | None) -> list[str]:
    multi = len(replays) > 1
    entries, ar = [], None
    measured = {rep.key: (ledger.measured_for(rep) if ledger else {}) for rep in replays}
    speed = ledger.speedup_points() if ledger else {}
    for rep, r in leaderboard_rows(replays):
        m = measured[rep.key].get(canonical(r["policy"]))
        entries.append({"label": f"{r['policy']} @ {rep.key}" if multi else r["policy"],
                        "tokens_per_s": r["tokens_per_s"], "ci_low": r["ci_low"],
                        "ci_high": r["ci_high"],
                        "measured": m[0]["measured_tokens_per_s"] if m else None,
                        "measured_low": m[0].get("measured_ci_low") if m else None,
                        "measured_high": m[0].get("measured_ci_high") if m else None})
        if r["policy"] == "ar" and not multi:
            ar = r["tokens_per_s"]
    any_measured = any(measured.values())
    body = ["<h2>Policy leaderboard (predicted" + (", with live measurements" if any_measured
                                                 else "") + ")</h2>",
            H.paragraph("Each row is one policy replayed from the trace named by its key (see "
                        "Inputs) with that trace's latency profile: tokens/s single stream with "
                        "its bootstrap confidence interval over prompts, speedup over plain "
                        "autoregressive decoding under the same cost model, mean tau (tokens "
                        "committed per cycle) and time per output token. Fidelity: exact = "
                        "greedy acceptance looked up in the oracle; approximate = Monte Carlo; "
                        "extrapolated = the cost model left the measured grid."
                        + (" Measured: the ledger's live run of the same policy on the "
                           "trace's own prompts (study S, see the ledger section), with its "
                           "error (predicted - measured) / measured." if any_measured else ""))]
    body.append(figs.add("leaderboard", "leaderboard", F.leaderboard(entries, ar),
                         "Predicted tokens/s per policy, best on top; bars are the bootstrap "
                         "interval over prompts"
                         + ("; red diamonds: the ledger's measured tokens/s." if any_measured
                            else ".")))
    headers = ["rank", "policy", "trace", "fidelity"] + [h for _, h, _ in LEADERBOARD_NUMBERS]
    if any_measured:
        headers += ["measured tokens/s", "error", "measured speedup", "measured tau", "study"]
    rows, rank = [], {}
    for rep, r in leaderboard_rows(replays):
        rank[rep.key] = rank.get(rep.key, 0) + 1
        row = ([rank[rep.key], r["policy"], rep.key, r["fidelity"]]
               + [H.Num(r[k], H.fmt(r[k], d), k) for k, _, d in LEADERBOARD_NUMBERS])
        if any_measured:
            m = measured[rep.key].get(canonical(r["policy"]))
            if m is None:
                row += [None] * 5
            else:
                lr, k = m
                sp = speed.get(id(lr))
                err = (r["tokens_per_s"] - lr["measured_tokens_per_s"]) / lr["measured_tokens_per_s"]
                row += [H.Num(lr["measured_tokens_per_s"], H.fmt(lr["measured_tokens_per_s"], 1),
                              "measured_tokens_per_s"),
                        H.Num(err, f"{100 * err:+.1f} %", "tokens_per_s_error"),
                        H.Num(sp[1], H.fmt(sp[1], 3), "measured_speedup") if sp else None,
                        H.Num(lr["measured_tau"], H.fmt(lr["measured_tau"], 3), "measured_tau"),
                        f"S{k}"]
        rows.append(row)
    body.append(H.table(headers, rows, table_id="leaderboard-table",
                        classes=["", "spec", "", ""]))
    skipped = [(rep, r) for rep in replays for r in rep.results if not r["replayable"]]
    if skipped:
        body.append("<h3>Not replayable from these traces</h3>")
        body.append(H.table(["policy", "trace", "reason"],
                            [[r["policy"], rep.key, r["reason"]] for rep, r in skipped],
                            table_id="skipped-table", classes=["spec", "", ""]))
    return body


def notes_path(ledger: Path) -> Path:
    """Hand-written notes of a ledger's studies: ``<name>-notes.md`` next to it."""
    return ledger.with_name(ledger.stem + "-notes.md")


def _ledger_section(ledger: _Ledger | None, figs: _Figures, out: Path,
                    replays: Sequence[Replayed] = ()) -> list[str]:
    body = ["<h2>Predicted vs measured (the ledger)</h2>"]
    if ledger is None:
        body.append(H.paragraph("No ledger was given (--ledger FILE); the figure below is empty.",
                                muted=True))
        rows: list[dict[str, Any]] = []
    else:
        rows = ledger.rows
        body.append(H.paragraph(f"Ledger L (see Inputs): {len(rows)} prediction(s) confirmed "
                                "live by `specreplay promote`, in "
                                f"{len(ledger.keys)} studies."))
    speed = ledger.speedup_points() if ledger else {}
    sp_points = []
    for r in rows:
        sp = speed.get(id(r))
        if sp is None:
            continue
        pred, meas, _ = sp
        # the tokens/s intervals scaled to the speedup: the ar run's own noise is left out
        scale_p, scale_m = pred / r["predicted_tokens_per_s"], meas / r["measured_tokens_per_s"]
        sp_points.append({"policy": r["policy"], "prompts": r["prompts"], "x": pred, "y": meas,
                          "xlo": r["predicted_ci_low"] * scale_p if r.get("predicted_ci_low") else None,
                          "xhi": r["predicted_ci_high"] * scale_p if r.get("predicted_ci_high") else None,
                          "ylo": r["measured_ci_low"] * scale_m if r.get("measured_ci_low") else None,
                          "yhi": r["measured_ci_high"] * scale_m if r.get("measured_ci_high") else None})
    derived = any(v[2] == "ar row" for v in speed.values())
    body.append(figs.add("predicted-vs-measured", "predicted-vs-measured",
                         F.predicted_vs_measured(rows, sp_points),
                         "Each point is one ledger row: predicted (x) against measured live "
                         "(y); on the dashed line the prediction was exact. Only the best and "
                         "the worst point of each panel are labelled; the marker column of the "
                         "table below finds the others. Speedup over ar"
                         + (" comes from each study's own ar row (tokens/s ratio) where the "
                            "ledger has no speedup columns" if derived else "")
                         + "; its bars are the tokens/s intervals scaled to it (the ar run's "
                         "own noise not included)."))
    if ledger is not None and rows:
        body += _ledger_tables(ledger, out, replays)
    findings = findings_path(ledger.path) if ledger else None
    notes = notes_path(ledger.path) if ledger else None
    if findings is not None and findings.exists():
        # the file's own title (computed from the ledger) is the section's heading
        body.append('<section id="findings">'
                    + H.render_markdown(findings.read_text(encoding="utf-8")) + "</section>")
    if notes is not None and notes.exists():
        body.append('<section id="notes">'
                    + H.render_markdown(notes.read_text(encoding="utf-8")) + "</section>")
    return body


def _pct(x: float | None) -> H.Num | None:
    return None if x is None else H.Num(x, f"{100 * x:+.1f} %")


def _abs_pct(x: float | None) -> H.Num | None:
    """An absolute (unsigned) error."""
    return None if x is None else H.Num(x, f"{100 * x:.1f} %")


def _ledger_tables(ledger: _Ledger, out: Path, replays: Sequence[Replayed] = ()) -> list[str]:
    rows = ledger.rows
    known_traces = {Path(rep.trace.dir).resolve(): rep.key for rep in replays}
    known_profiles: dict[Path, str] = {}
    for rep in replays:
        if rep.profile is not None:
            known_profiles.setdefault(Path(rep.profile.dir).resolve(),
                                      f"P{len(known_profiles) + 1}")

    def shown(text: str, known: dict[Path, str]) -> str:
        found = resolve_path(ledger.path, text)
        if found is None:
            return text
        return known.get(found) or _rel(found, out)

    s = ledger_summary(rows)
    styles = F.policy_styles([r["policy"] for r in rows])
    speed = ledger.speedup_points()
    body = ["<h3>Studies</h3>",
            H.paragraph("A study is one set of live runs: same trace, profile, live setup, "
                        "prompt set and run conditions (from the row's note). Trace and "
                        "profile: the key of the inputs table where it is one of them, else "
                        "the path relative to this page's folder (as the ledger wrote it "
                        "when the file is not found).")]
    st_rows = []
    for k, ((trace, profile, setup, prompts, cond), used) in enumerate(
            zip(ledger.keys, ledger.used), 1):
        dates = sorted({r["date"] for r in rows if ledger.study_of(r) == k})
        st_rows.append([f"S{k}", prompts, cond, len(used), shown(trace, known_traces),
                        shown(profile, known_profiles), setup,
                        dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"])
    body.append(H.table(["study", "prompts", "run conditions", "policies", "trace", "profile",
                         "live setup", "date"], st_rows, table_id="ledger-studies-table",
                        classes=["", "", "", "", "path", "path", "", ""]))
    body += ["<h3>Error per confirmed prediction</h3>",
             H.paragraph("Relative error = (predicted - measured) / measured; positive means "
                         "the simulator was optimistic. Marker: the point's colour and shape "
                         "on the figure above (hollow there for held-out prompts).")]
    table_rows = []
    for i, (r, e) in enumerate(zip(rows, s["rows"]), 1):
        color, _, glyph = styles[r["policy"]]
        sp = speed.get(id(r))
        # the note's run conditions are the study's; the rest is about this row
        note = "; ".join(t.strip() for t in (r.get("note") or "").split(";")
                         if t.strip() and t.strip() not in run_conditions(r.get("note")))
        table_rows.append([
            H.Marker(glyph, color, r["policy"]), i, f"S{ledger.study_of(r)}", r["policy"],
            H.Num(r["predicted_tokens_per_s"], H.fmt(r["predicted_tokens_per_s"], 1)),
            H.Num(r["measured_tokens_per_s"], H.fmt(r["measured_tokens_per_s"], 1)),
            _pct(e["tokens_per_s_error"]),
            H.Num(sp[0], H.fmt(sp[0], 3)) if sp else None,
            H.Num(sp[1], H.fmt(sp[1], 3)) if sp else None,
            H.Num(r["predicted_tau"], H.fmt(r["predicted_tau"], 3)),
            H.Num(r["measured_tau"], H.fmt(r["measured_tau"], 3)),
            _pct(e["tau_error"]), note])
    body.append(H.table(
        ["marker", "#", "study", "policy", "predicted tokens/s", "measured tokens/s",
         "tokens/s error", "predicted speedup", "measured speedup", "predicted tau",
         "measured tau", "tau error", "note"],
        table_rows, table_id="ledger-table", classes=["", "", "", "spec"]))
    body.append("<h3>Error summary and rank agreement</h3>")
    body.append(H.paragraph("Per study: median and maximum absolute relative error, Kendall's "
                            "tau between predicted and measured tokens/s (1 = same order), and "
                            "whether the best three policies by measurement are the best three "
                            "by prediction, in order."))
    summary_rows = []
    for k, g in enumerate(s["groups"], 1):
        kt = g["kendall_tau"]
        summary_rows.append([
            f"S{k}", g["prompts"], g["policies"],
            _abs_pct(g["tokens_per_s_abs_error"]["median"]), _abs_pct(g["tokens_per_s_abs_error"]["max"]),
            _abs_pct(g["tau_abs_error"]["median"]), _abs_pct(g["tau_abs_error"]["max"]),
            H.Num(kt, f"{kt:.3f}") if kt is not None else "n/a (fewer than 2 policies)",
            ("yes" if g["top_preserved"] else "no") + f" (top {g['top_n']})",
            " > ".join(g["top_predicted"]), " > ".join(g["top_measured"])])
    o = s["overall"]
    summary_rows.append(["all rows", "", o["rows"],
                         _abs_pct(o["tokens_per_s_abs_error"]["median"]),
                         _abs_pct(o["tokens_per_s_abs_error"]["max"]),
                         _abs_pct(o["tau_abs_error"]["median"]), _abs_pct(o["tau_abs_error"]["max"]),
                         "", "", "", ""])
    body.append(H.table(["study", "prompts", "policies", "median |tokens/s error|",
                         "max |tokens/s error|", "median |tau error|", "max |tau error|",
                         "Kendall tau", "top 3 preserved", "best predicted", "best measured"],
                        summary_rows, table_id="ledger-summary-table",
                        classes=["", "", "", "", "", "", "", "", "", "spec", "spec"]))
    return body


def _trace_sections(i: int, rep: Replayed, figs: _Figures) -> list[str]:
    n = i + 1
    name = f"{rep.key} ({Path(rep.trace.dir).name})"
    body = [f"<h2>Trace {H.esc(name)}</h2>"]
    hists = {r["policy"]: tau_hist(r) for _, r in rep.replayable()}
    body.append(figs.add(f"tau-histograms-{n}", "tau-histograms", F.tau_histograms(hists),
                         "Share of replayed cycles by tau; the dotted line is the mean."))
    series, title = timeline_series(rep, name)
    body.append(figs.add(f"timeline-{n}", "timeline", F.timeline(series, title),
                         "How the schedulers moved the block size along one sample, and the "
                         "tau each cycle got."))
    curves, mean_tau, counts = acceptance_curves(plain_true_ranks(rep.trace.oracle_arrays()))
    body.append(figs.add(
        f"acceptance-by-offset-{n}", "acceptance-by-offset",
        F.acceptance_by_offset(curves, mean_tau, f"Oracle acceptance by offset, {name}"),
        "P(accepted >= i): the share of start positions whose draft top-1 matched the "
        "target at offsets 1..i, per block size, from the oracle's true-token ranks "
        f"({', '.join(f'b={b}: {c} positions' for b, c in counts.items())})."))
    body.append(figs.add(
        f"cost-profile-{n}", "cost-profile",
        F.cost_profile(profile_points(rep.profile), cost_model_curve(rep.profile),
                       f"Latency profile used for {name}"
                       + (f" ({rep.profile_label.split('; ', 1)[1]})" if "; " in rep.profile_label
                          else "")),
        "Batch 1. Points: measured medians with p10-p90 bars; inside the measured grid the "
        "simulator interpolates linearly between them, outside it uses the fitted model "
        "(dashed: fixed + per-token + per-token-times-context terms)."))
    return body


def _setup_section(replays: Sequence[Replayed]) -> list[str]:
    body = ["<h2>Setup of every trace and profile</h2>"]
    seen: set[str] = set()
    for rep in replays:
        body.append(f"<h3>Trace {H.esc(rep.key)} (run.json)</h3>")
        body.append(H.table(["key", "value"], H.flatten(rep.trace.run), classes=["path"]))
        if rep.profile is not None and str(rep.profile.dir) not in seen:
            seen.add(str(rep.profile.dir))
            body.append(f"<h3>Latency profile of {H.esc(rep.key)} (profile.json)</h3>")
            body.append(H.table(["key", "value"], H.flatten(rep.profile.meta), classes=["path"]))
    return body


def is_synthetic(run: dict[str, Any]) -> bool:
    """A trace made by traces.synthetic (for tests), not recorded from models."""
    return bool(run.get("synthetic")) or "synthetic" in json.dumps(run.get("target")).lower()


def build_report(replays: Sequence[Replayed], out: Path, ledger_path: Path | None = None,
                 notices: Sequence[str] = (), title: str = "specreplay report") -> Path:
    """Write ``out/index.html`` and every figure as ``out/<figure id>.png``; returns the
    HTML path. Synthetic traces are labelled as such at the top of the page."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = _Figures(out)
    for i, rep in enumerate(replays, 1):
        rep.key = f"T{i}"
    ledger = _Ledger.read(Path(ledger_path)) if ledger_path else None
    notices = list(notices)
    for rep in replays:
        if is_synthetic(rep.trace.run) and not any("SYNTHETIC" in n for n in notices):
            notices.append(f"SYNTHETIC TRACE: {rep.label} was generated for testing, not "
                           "recorded from models; its numbers say nothing about a real setup.")
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    body = [f"<h1>{H.esc(title)}</h1>"]
    body += [H.notice(n) for n in notices]
    body.append(H.paragraph(
        f"Generated {now}. {len(replays)} trace(s) "
        f"({', '.join(f'{r.key}: {Path(r.trace.dir).name}' for r in replays)}), "
        f"{sum(len(r.results) for r in replays)} policy replays, "
        f"{sum(len(r.replayable()) for r in replays)} replayable."))
    body += _inputs_section(replays, ledger, out)
    body += _leaderboard_section(replays, figs, ledger)
    body += _ledger_section(ledger, figs, out, replays)
    for i, rep in enumerate(replays):
        body += _trace_sections(i, rep, figs)
    body += _setup_section(replays)
    path = out / "index.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(H.page(title, body), encoding="utf-8")
    tmp.replace(path)
    return path
