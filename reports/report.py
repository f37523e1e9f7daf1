"""The report: replay traces over policies, then write one self-contained ``index.html``
(figures embedded as PNG, tables, the setup of every trace and profile) and the same
figures as PNG files into one folder.

Every number on the page comes from a replay result, the oracle, a profile or the
ledger; number cells carry the exact value in ``data-value`` and its field name in
``data-key``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from specreplay.reports import figures as F
from specreplay.reports import page as H
from specreplay.reports.acceptance import acceptance_curves, plain_true_ranks
from specreplay.reports.ledger import findings_path, ledger_summary, read_ledger
from specreplay.traces.reader import Profile, Trace

# Leaderboard columns: (replay field, header, decimals).
LEADERBOARD_NUMBERS = (
    ("tokens_per_s", "tokens/s", 1),
    ("ci_low", "CI low (tokens/s)", 1),
    ("ci_high", "CI high (tokens/s)", 1),
    ("speedup", "speedup over ar", 3),
    ("tau_mean", "mean tau", 3),
    ("tpot_s", "TPOT (s)", 6),
    ("cycles", "cycles", 0),
    ("tokens", "tokens", 0),
    ("samples", "samples", 0),
)


@dataclass
class Replayed:
    """One trace replayed over a list of policies."""
    trace: Trace
    label: str                       # how the page names the trace
    profile: Profile | None          # the profile the replay used (None: none found)
    profile_label: str
    predictions: list[Any]           # sim.replay Prediction objects, in policy order
    results: list[dict[str, Any]] = field(default_factory=list)  # Prediction.to_dict()

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


def timeline_series(rep: Replayed) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """Per-cycle tau and block size of the schedulers (or, when none was replayed, the
    best policy) on the sample with the most replayed cycles; and the figure title."""
    ok = rep.replayable()
    chosen = [(p, r) for p, r in ok if _is_scheduler(r["policy"])]
    note = "block-size schedulers"
    if not chosen and ok:
        chosen = [max(ok, key=lambda pr: pr[1]["tokens_per_s"])]
        note = "no scheduler replayed; the best policy shown"
    if not chosen:
        return {}, f"Timeline of {rep.label}: nothing replayed"
    counts = np.bincount(_column(chosen[0][0].per_cycle, "sample").astype(np.int64))
    sample = int(np.argmax(counts))
    series = {}
    for p, r in chosen:
        pc = p.per_cycle
        sel = _column(pc, "sample") == sample
        series[r["policy"]] = {k: _column(pc, k)[sel] for k in ("start", "tau", "block_size")}
    return series, (f"Sample {sample} of {rep.label} ({note}): tau per cycle (top) and "
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


def _leaderboard_section(replays: Sequence[Replayed], figs: _Figures) -> list[str]:
    multi = len(replays) > 1
    entries, ar = [], None
    for rep, r in leaderboard_rows(replays):
        entries.append({"label": f"{r['policy']} @ {rep.label}" if multi else r["policy"],
                        "tokens_per_s": r["tokens_per_s"], "ci_low": r["ci_low"],
                        "ci_high": r["ci_high"]})
        if r["policy"] == "ar" and not multi:
            ar = r["tokens_per_s"]
    body = ["<h2>Policy leaderboard (predicted)</h2>",
            H.paragraph("Each row is one policy replayed from the named trace with the named "
                        "latency profile: tokens/s single stream, its bootstrap confidence "
                        "interval over prompts, speedup over plain autoregressive decoding "
                        "under the same cost model, mean tau (tokens committed per cycle) "
                        "and time per output token. Fidelity: exact = greedy acceptance "
                        "looked up in the oracle; approximate = Monte Carlo; extrapolated = "
                        "the cost model left the measured grid.")]
    body.append(figs.add("leaderboard", "leaderboard", F.leaderboard(entries, ar),
                         "Predicted tokens/s per policy, best on top; bars are the bootstrap "
                         "interval over prompts."))
    headers = ["rank", "policy", "trace", "profile", "fidelity"] + [h for _, h, _ in LEADERBOARD_NUMBERS]
    rows, rank = [], {}
    for rep, r in leaderboard_rows(replays):
        rank[rep.label] = rank.get(rep.label, 0) + 1
        rows.append([rank[rep.label], r["policy"], rep.label, rep.profile_label, r["fidelity"]]
                    + [H.Num(r[k], H.fmt(r[k], d), k) for k, _, d in LEADERBOARD_NUMBERS])
    body.append(H.table(headers, rows, table_id="leaderboard-table",
                        classes=["", "spec", "path", "path", ""]))
    skipped = [(rep, r) for rep in replays for r in rep.results if not r["replayable"]]
    if skipped:
        body.append("<h3>Not replayable from these traces</h3>")
        body.append(H.table(["policy", "trace", "reason"],
                            [[r["policy"], rep.label, r["reason"]] for rep, r in skipped],
                            table_id="skipped-table", classes=["spec", "path", ""]))
    return body


def _ledger_section(ledger_path: Path | None, figs: _Figures) -> list[str]:
    body = ["<h2>Predicted vs measured (the ledger)</h2>"]
    if ledger_path is None:
        body.append(H.paragraph("No ledger was given (--ledger FILE); the figure below is empty.",
                                muted=True))
        rows = []
    else:
        rows = read_ledger(ledger_path)
        body.append(H.paragraph(f"Ledger {ledger_path}: {len(rows)} prediction(s) confirmed "
                                "live by `specreplay promote`."))
    body.append(figs.add("predicted-vs-measured", "predicted-vs-measured",
                         F.predicted_vs_measured(rows),
                         "Each point is one ledger row: predicted (x) against measured live "
                         "(y); on the dashed line the prediction was exact."))
    if rows:
        body += _ledger_tables(rows)
    findings = findings_path(ledger_path) if ledger_path else None
    notes = [r for r in rows if r.get("note")]
    if notes or (findings and findings.exists()):
        body.append("<h3 id=\"findings\">Validation findings</h3>")
        if notes:
            body.append(H.table(["policy", "prompts", "trace", "finding"],
                                [[r["policy"], r["prompts"], r["trace"], r["note"]] for r in notes],
                                table_id="findings-table", classes=["spec", "", "path", ""]))
        if findings and findings.exists():
            body.append(H.markdown_lite(findings.read_text(encoding="utf-8")))
    return body


def _pct(x: float | None) -> H.Num | None:
    return None if x is None else H.Num(x, f"{100 * x:+.2f} %")


def _ledger_tables(rows: list[dict[str, Any]]) -> list[str]:
    s = ledger_summary(rows)
    body = ["<h3>Error per confirmed prediction</h3>",
            H.paragraph("Relative error = (predicted - measured) / measured; positive means "
                        "the simulator was optimistic.")]
    body.append(H.table(
        ["policy", "prompts", "trace", "profile", "setup", "date", "predicted tokens/s",
         "measured tokens/s", "tokens/s error", "predicted tau", "measured tau", "tau error"],
        [[r["policy"], r["prompts"], r["trace"], r["profile"], r["setup"], r["date"],
          H.Num(r["predicted_tokens_per_s"], H.fmt(r["predicted_tokens_per_s"], 1)),
          H.Num(r["measured_tokens_per_s"], H.fmt(r["measured_tokens_per_s"], 1)),
          _pct(e["tokens_per_s_error"]),
          H.Num(r["predicted_tau"], H.fmt(r["predicted_tau"], 3)),
          H.Num(r["measured_tau"], H.fmt(r["measured_tau"], 3)),
          _pct(e["tau_error"])] for r, e in zip(rows, s["rows"])],
        table_id="ledger-table", classes=["spec", "", "path", "path"]))
    body.append("<h3>Error summary and rank agreement</h3>")
    body.append(H.paragraph("Per trace and prompt set: median and maximum absolute relative "
                            "error, Kendall's tau between predicted and measured tokens/s "
                            "(1 = same order), and whether the best three policies by "
                            "measurement are the best three by prediction, in order."))
    summary_rows = []
    for g in s["groups"]:
        kt = g["kendall_tau"]
        summary_rows.append([
            g["trace"], g["prompts"], g["policies"],
            _pct(g["tokens_per_s_abs_error"]["median"]), _pct(g["tokens_per_s_abs_error"]["max"]),
            _pct(g["tau_abs_error"]["median"]), _pct(g["tau_abs_error"]["max"]),
            H.Num(kt, f"{kt:.3f}") if kt is not None else "n/a (fewer than 2 policies)",
            ("yes" if g["top_preserved"] else "no") + f" (top {g['top_n']})",
            " > ".join(g["top_predicted"]), " > ".join(g["top_measured"])])
    o = s["overall"]
    summary_rows.append(["all rows", "", o["rows"],
                         _pct(o["tokens_per_s_abs_error"]["median"]),
                         _pct(o["tokens_per_s_abs_error"]["max"]),
                         _pct(o["tau_abs_error"]["median"]), _pct(o["tau_abs_error"]["max"]),
                         "", "", "", ""])
    body.append(H.table(["trace", "prompts", "policies", "median |tokens/s error|",
                         "max |tokens/s error|", "median |tau error|", "max |tau error|",
                         "Kendall tau", "top 3 preserved", "best predicted", "best measured"],
                        summary_rows, table_id="ledger-summary-table", classes=["path"]))
    return body


def _trace_sections(i: int, rep: Replayed, figs: _Figures) -> list[str]:
    n = i + 1
    body = [f"<h2>Trace {n}: {H.esc(rep.label)}</h2>"]
    hists = {r["policy"]: tau_hist(r) for _, r in rep.replayable()}
    body.append(figs.add(f"tau-histograms-{n}", "tau-histograms", F.tau_histograms(hists),
                         "Share of replayed cycles by tau; the dotted line is the mean."))
    series, title = timeline_series(rep)
    body.append(figs.add(f"timeline-{n}", "timeline", F.timeline(series, title),
                         "How the schedulers moved the block size along one sample, and the "
                         "tau each cycle got."))
    curves, mean_tau, counts = acceptance_curves(plain_true_ranks(rep.trace.oracle_arrays()))
    body.append(figs.add(
        f"acceptance-by-offset-{n}", "acceptance-by-offset",
        F.acceptance_by_offset(curves, mean_tau, f"Oracle acceptance by offset, {rep.label}"),
        "P(accepted >= i): the share of start positions whose draft top-1 matched the "
        "target at offsets 1..i, per block size, from the oracle's true-token ranks "
        f"({', '.join(f'b={b}: {c} positions' for b, c in counts.items())})."))
    body.append(figs.add(
        f"cost-profile-{n}", "cost-profile",
        F.cost_profile(profile_points(rep.profile), cost_model_curve(rep.profile),
                       f"Latency profile used for {rep.label}: {rep.profile_label}"),
        "Batch 1. Points: measured medians with p10-p90 bars; inside the measured grid the "
        "simulator interpolates linearly between them, outside it uses the fitted model "
        "(dashed: fixed + per-token + per-token-times-context terms)."))
    return body


def _setup_section(replays: Sequence[Replayed]) -> list[str]:
    body = ["<h2>Setup of every trace and profile</h2>"]
    seen: set[str] = set()
    for rep in replays:
        body.append(f"<h3>Trace {H.esc(rep.label)} (run.json)</h3>")
        body.append(H.table(["key", "value"], H.flatten(rep.trace.run), classes=["path"]))
        if rep.profile is not None and str(rep.profile.dir) not in seen:
            seen.add(str(rep.profile.dir))
            body.append(f"<h3>Profile {H.esc(rep.profile_label)} (profile.json)</h3>")
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
    notices = list(notices)
    for rep in replays:
        if is_synthetic(rep.trace.run) and not any("SYNTHETIC" in n for n in notices):
            notices.append(f"SYNTHETIC TRACE: {rep.label} was generated for testing, not "
                           "recorded from models; its numbers say nothing about a real setup.")
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    body = [f"<h1>{H.esc(title)}</h1>"]
    body += [H.notice(n) for n in notices]
    body.append(H.paragraph(
        f"Generated {now}. Traces: {', '.join(r.label for r in replays)}. "
        f"{sum(len(r.results) for r in replays)} policy replays, "
        f"{sum(len(r.replayable()) for r in replays)} replayable."))
    body += _leaderboard_section(replays, figs)
    body += _ledger_section(Path(ledger_path) if ledger_path else None, figs)
    for i, rep in enumerate(replays):
        body += _trace_sections(i, rep, figs)
    body += _setup_section(replays)
    path = out / "index.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(H.page(title, body), encoding="utf-8")
    tmp.replace(path)
    return path
