"""The report's figures, one function each, drawn with matplotlib's Agg renderer.

Every function takes plain numbers (already taken from a ledger, a replay, an oracle or a
profile by ``reports.report``) and returns a ``Figure``; ``png_bytes`` renders one.
Figures never touch pyplot, so drawing them changes no global matplotlib state.
"""
from __future__ import annotations

import io
import math
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# (figure id, alt text) of every figure the report draws, in page order.
FIGURES = {
    "predicted-vs-measured": "Predicted against measured tokens/s and tau per policy, "
                             "from the ledger, with the y = x line",
    "leaderboard": "Policy leaderboard: predicted tokens/s with bootstrap confidence intervals",
    "tau-histograms": "Histogram of tau (tokens committed per cycle) for each replayed policy",
    "timeline": "Per-sample timeline of tau and of the chosen block size",
    "cost-profile": "Measured latency profile and the fitted cost model over query tokens "
                    "and context length",
    "acceptance-by-offset": "Oracle acceptance by draft offset: P(accepted >= i) per block size",
}

_SAME, _HELDOUT = "#1f77b4", "#d62728"


def _new(w: float, h: float, ncols: int = 1, nrows: int = 1, **kw) -> tuple[Figure, Any]:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _empty(ax, message: str) -> None:
    """Say on the axes why there is nothing to draw, rather than leaving them blank."""
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=10,
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def short_label(spec: str, width: int = 38) -> str:
    """A policy spec shortened for axis tick labels (the tables keep the full spec)."""
    return spec if len(spec) <= width else spec[: width - 1] + "…"


# -- ledger

def _identity_panel(ax, rows: Sequence[dict[str, Any]], pred: str, meas: str,
                    lo: str | None, hi: str | None, unit: str, title: str) -> None:
    lim_lo, lim_hi = math.inf, -math.inf
    for prompts, color, marker in (("same", _SAME, "o"), ("heldout", _HELDOUT, "s")):
        sel = [r for r in rows if r["prompts"] == prompts]
        if not sel:
            continue
        x = np.array([r[pred] for r in sel])
        y = np.array([r[meas] for r in sel])
        xerr = None
        if lo and hi:
            low = np.array([r[lo] if r[lo] is not None else r[pred] for r in sel])
            high = np.array([r[hi] if r[hi] is not None else r[pred] for r in sel])
            xerr = np.vstack([np.maximum(x - low, 0), np.maximum(high - x, 0)])
            lim_lo, lim_hi = min(lim_lo, low.min()), max(lim_hi, high.max())
        label = ("same prompts as the trace" if prompts == "same" else "held-out prompts")
        ax.errorbar(x, y, xerr=xerr, fmt=marker, color=color, ecolor=color, capsize=3,
                    label=label, alpha=0.85)
        for xi, yi, r in zip(x, y, sel):
            ax.annotate(short_label(r["policy"], 22), (xi, yi), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        lim_lo = min(lim_lo, x.min(), y.min())
        lim_hi = max(lim_hi, x.max(), y.max())
    pad = 0.05 * (lim_hi - lim_lo) or 0.05 * abs(lim_hi) or 1.0
    lims = (lim_lo - pad, lim_hi + pad)
    ax.plot(lims, lims, color="grey", lw=1, ls="--", label="y = x (perfect prediction)")
    ax.set_xlim(lims)
    ax.set_ylim(lims)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"predicted {unit}")
    ax.set_ylabel(f"measured live {unit}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def predicted_vs_measured(rows: Sequence[dict[str, Any]]) -> Figure:
    """Two panels, tokens/s and mean tau: one point per ledger row (predicted on x,
    measured on y), horizontal error bars = the prediction's bootstrap interval where the
    ledger has one, the y = x line for a perfect prediction."""
    fig, axes = _new(11, 5.2, ncols=2)
    if not rows:
        for ax in axes[0]:
            _empty(ax, "The ledger has no rows yet.\nA row is added when "
                       "`specreplay promote` runs a predicted policy live.")
        axes[0][0].set_title("Tokens/s: predicted vs measured")
        axes[0][1].set_title("Mean tau: predicted vs measured")
        return fig
    _identity_panel(axes[0][0], rows, "predicted_tokens_per_s", "measured_tokens_per_s",
                    "predicted_ci_low", "predicted_ci_high", "tokens/s",
                    "Tokens/s: predicted vs measured\n(bars: prediction's bootstrap interval)")
    _identity_panel(axes[0][1], rows, "predicted_tau", "measured_tau", None, None,
                    "mean tau (tokens/cycle)", "Mean tau: predicted vs measured")
    return fig


# -- replay

def leaderboard(entries: Sequence[dict[str, Any]], ar_tokens_per_s: float | None = None) -> Figure:
    """Horizontal points with interval bars, best policy on top. ``entries``: dicts with
    ``label``, ``tokens_per_s``, ``ci_low``, ``ci_high`` (replayable predictions only)."""
    n = max(len(entries), 1)
    fig, axes = _new(10, 1.2 + 0.32 * n)
    ax = axes[0][0]
    if not entries:
        _empty(ax, "No policy could be replayed from these traces.")
        ax.set_title("Predicted tokens/s per policy")
        return fig
    order = sorted(entries, key=lambda e: e["tokens_per_s"])
    y = np.arange(len(order))
    x = np.array([e["tokens_per_s"] for e in order])
    # a replay without bootstrap has no interval: a bare point
    lo = np.array([e["tokens_per_s"] if e["ci_low"] is None else e["ci_low"] for e in order])
    hi = np.array([e["tokens_per_s"] if e["ci_high"] is None else e["ci_high"] for e in order])
    ax.errorbar(x, y, xerr=np.vstack([np.maximum(x - lo, 0), np.maximum(hi - x, 0)]),
                fmt="o", color=_SAME, capsize=3, label="predicted tokens/s (bootstrap interval "
                                                      "over prompts)")
    if ar_tokens_per_s:
        ax.axvline(ar_tokens_per_s, color="grey", ls="--", lw=1,
                   label="plain autoregressive decoding (ar)")
    ax.set_yticks(y, [short_label(e["label"], 60) for e in order], fontsize=7)
    ax.set_xlabel("predicted throughput (tokens/s, single stream)")
    ax.set_title("Policy leaderboard: predicted tokens/s, best on top")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def tau_histograms(hists: dict[str, dict[int, int]], ncols: int = 4) -> Figure:
    """Small multiples, one per policy: the share of cycles that committed each tau."""
    n = max(len(hists), 1)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = _new(3.0 * ncols + 0.5, 2.3 * nrows + 0.6, ncols=ncols, nrows=nrows,
                     sharex=True)
    flat = [ax for row in axes for ax in row]
    if not hists:
        _empty(flat[0], "No replayed cycles.")
        return fig
    top = max(max(h) for h in hists.values() if h) if any(hists.values()) else 1
    for ax, (label, hist) in zip(flat, hists.items()):
        total = sum(hist.values())
        taus = np.arange(1, top + 1)
        share = np.array([hist.get(int(t), 0) for t in taus]) / max(total, 1)
        mean = sum(t * c for t, c in hist.items()) / max(total, 1)
        ax.bar(taus, share, color=_SAME, width=0.85)
        ax.axvline(mean, color="black", lw=1, ls=":", label=f"mean {mean:.2f}")
        ax.set_title(short_label(label, 34), fontsize=8)
        ax.legend(fontsize=6, loc="upper right")
        ax.grid(axis="y", alpha=0.3)
    for ax in flat[len(hists):]:
        ax.set_visible(False)
    for ax in flat:
        ax.tick_params(labelbottom=True)
    for ax in axes[-1]:
        ax.set_xlabel("tau (tokens committed per cycle)")
    for row in axes:
        row[0].set_ylabel("share of cycles")
    fig.suptitle("How many tokens each cycle committed, per policy (replayed)")
    return fig


def timeline(series: dict[str, dict[str, np.ndarray]], title: str) -> Figure:
    """Two stacked panels over the output position of one sample: tau per cycle (points)
    and the block size each policy chose (steps). ``series``: label -> dict with
    ``start``, ``tau`` and ``block_size`` arrays (one entry per cycle)."""
    fig, axes = _new(11, 5.5, nrows=2, sharex=True)
    ax_tau, ax_b = axes[0][0], axes[1][0]
    if not series:
        _empty(ax_tau, "No replayed cycles for this sample.")
        return fig
    cmap = [f"C{i}" for i in range(10)]
    for i, (label, s) in enumerate(series.items()):
        color = cmap[i % len(cmap)]
        ax_tau.plot(s["start"], s["tau"], marker="o", ms=3, lw=0.8, color=color,
                    label=short_label(label, 50))
        ax_b.step(s["start"], s["block_size"], where="post", color=color, lw=1.2,
                  label=short_label(label, 50))
    ax_tau.set_ylabel("tau (tokens committed)")
    ax_tau.set_title(title)
    ax_tau.grid(alpha=0.3)
    ax_tau.legend(fontsize=7, loc="upper right")
    ax_b.set_ylabel("block size chosen\n(anchor + drafted)")
    ax_b.set_xlabel("output position where the cycle started (tokens)")
    ax_b.grid(alpha=0.3)
    return fig


def cost_profile(measured: dict[str, dict[str, np.ndarray]],
                 model: Callable[[str, np.ndarray, np.ndarray], np.ndarray] | None,
                 title: str) -> Figure:
    """One row per pass kind (target forward, draft forward), batch 1. Left: time over
    query tokens q (one line per measured context length); right: time over context
    length (one line per measured q). Points: measured medians with p10-p90 bars, joined
    by thin lines (the simulator interpolates linearly between them); dashed lines: the
    fitted structured model ``model(kind, q, context_len)`` in seconds that the
    simulator uses outside the measured grid. ``measured``: kind -> dict of arrays
    ``q``, ``context_len``, ``median_s``, ``p10_s``, ``p90_s``."""
    kinds = [k for k in ("target", "draft") if k in measured and len(measured[k]["q"])]
    fig, axes = _new(11, 0.6 + 4.2 * max(len(kinds), 1), ncols=2, nrows=max(len(kinds), 1))
    if not kinds:
        for ax in axes[0]:
            _empty(ax, "No latency profile: the replay fitted its cost model to the "
                       "trace's live cycles.")
        fig.suptitle(title)
        return fig
    names = {"target": ("target forward", "query tokens per forward, q"),
             "draft": ("draft forward", "block size drafted, q (anchor included)")}
    for row, kind in zip(axes, kinds):
        what, qlabel = names[kind]
        _cost_panel(row[0], measured[kind], "q", "context_len", kind, model)
        _cost_panel(row[1], measured[kind], "context_len", "q", kind, model)
        row[0].set_xlabel(qlabel)
        row[1].set_xlabel("context length already in the KV cache (tokens)")
        row[0].set_title(f"{what}: time over q")
        row[1].set_title(f"{what}: time over context length")
        for ax in row:
            ax.set_ylabel("time per forward (ms)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(title)
    return fig


def _pick(values: np.ndarray, few: int = 3) -> list[int]:
    """A few representative distinct values (smallest, middle, largest)."""
    u = np.unique(values)
    if len(u) <= few:
        return [int(v) for v in u]
    idx = np.linspace(0, len(u) - 1, few).round().astype(int)
    return [int(u[i]) for i in idx]


def _cost_panel(ax, m: dict[str, np.ndarray], xkey: str, fixkey: str, kind: str, model) -> None:
    """One family of curves: x = ``xkey``, one colour per chosen value of ``fixkey``."""
    fixname = "context" if fixkey == "context_len" else "q"
    for j, fixed in enumerate(_pick(m[fixkey])):
        sel = m[fixkey] == fixed
        order = np.argsort(m[xkey][sel])
        x = m[xkey][sel][order]
        med = m["median_s"][sel][order] * 1e3
        lo = m["p10_s"][sel][order] * 1e3
        hi = m["p90_s"][sel][order] * 1e3
        color = f"C{j}"
        ax.errorbar(x, med, yerr=np.vstack([np.maximum(med - lo, 0), np.maximum(hi - med, 0)]),
                    fmt="o-", lw=0.6, ms=4, color=color, capsize=2,
                    label=f"{fixname} {fixed}: measured median")
        if model is not None and len(x):
            grid = np.unique(np.linspace(0, x.max() * 1.1, 80).round().astype(int))
            q = grid if xkey == "q" else np.full_like(grid, fixed)
            ctx = grid if xkey == "context_len" else np.full_like(grid, fixed)
            ax.plot(grid, np.asarray(model(kind, q, ctx)) * 1e3, "--", color=color, lw=1,
                    label=f"{fixname} {fixed}: fitted model")


def acceptance_by_offset(curves: dict[int, np.ndarray], mean_tau: dict[int, float],
                         title: str) -> Figure:
    """One line per block size b: P(accepted >= i) for drafted offset i = 1..b-1, over
    every start position of the oracle. ``mean_tau[b]`` (1 + mean accepted) goes in the
    legend."""
    fig, axes = _new(8, 4.8)
    ax = axes[0][0]
    if not curves:
        _empty(ax, "This trace has no plain-draft oracle rows.")
        ax.set_title(title)
        return fig
    for b in sorted(curves):
        p = curves[b]
        ax.plot(np.arange(1, len(p) + 1), p, marker="o", ms=3,
                label=f"block size {b} (mean tau {mean_tau[b]:.2f})")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("drafted offset i (tokens after the anchor)")
    ax.set_ylabel("P(accepted >= i)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="oracle, every start position", title_fontsize=7)
    return fig
