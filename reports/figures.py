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
    "predicted-vs-measured": "Predicted against measured tokens/s, speedup over ar and "
                             "tau per policy, from the ledger, with the y = x line",
    "leaderboard": "Policy leaderboard: predicted tokens/s with bootstrap confidence "
                   "intervals, and the ledger's measured tokens/s where it has them",
    "tau-histograms": "Histogram of tau (tokens committed per cycle) for each replayed policy",
    "timeline": "Per-sample timeline of tau and of the chosen block size",
    "cost-profile": "Measured latency profile and the fitted cost model over query tokens "
                    "and context length",
    "acceptance-by-offset": "Oracle acceptance by draft offset: P(accepted >= i) per block size",
}

_SAME, _MEASURED = "#1f77b4", "#d62728"


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

# Marker shapes of the predicted-vs-measured plots and the Unicode glyph that shows the
# same shape in the page's tables (one policy = one colour and shape on every panel).
MARKERS = (("o", "●"), ("s", "■"), ("^", "▲"), ("v", "▼"), ("D", "◆"), ("P", "✚"),
           ("X", "✖"), ("*", "★"), ("<", "◀"), (">", "▶"), ("h", "⬢"), ("p", "⬟"))
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf", "#393b79")


def policy_styles(policies: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """policy -> (colour, matplotlib marker, Unicode glyph), in order of first
    appearance; colour (11) and shape (12) advance together, so up to 132 policies
    stay distinct."""
    out: dict[str, tuple[str, str, str]] = {}
    for p in policies:
        if p not in out:
            i = len(out)
            marker, glyph = MARKERS[i % len(MARKERS)]
            out[p] = (COLORS[i % len(COLORS)], marker, glyph)
    return out


def wrap_title(text: str, fig_width_in: float, fontsize: float = 12) -> str:
    """Break a title into lines that fit the figure's width (about 0.55 em a
    character), so that no title is clipped at the figure's edge."""
    import textwrap
    chars = max(20, int(fig_width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars)) or text


def _identity_panel(ax, points: Sequence[dict[str, Any]], styles, unit: str, title: str,
                    fig_w: float) -> None:
    """One predicted (x) vs measured (y) panel. ``points``: dicts with ``policy``,
    ``prompts``, ``x``, ``y`` and optional ``xlo``/``xhi`` and ``ylo``/``yhi``
    intervals. Only the best and the worst point (smallest and largest |relative
    error|) are labelled; the rest are told apart by their marker."""
    if not points:
        _empty(ax, f"No {unit} in this ledger.")
        ax.set_title(wrap_title(title, fig_w / 3, 11), fontsize=11)
        return
    lim_lo, lim_hi = math.inf, -math.inf
    for pt in points:
        color, marker, _ = styles[pt["policy"]]
        x, y = pt["x"], pt["y"]
        xerr = yerr = None
        if pt.get("xlo") is not None:
            xerr = [[max(x - pt["xlo"], 0)], [max(pt["xhi"] - x, 0)]]
            lim_lo, lim_hi = min(lim_lo, pt["xlo"]), max(lim_hi, pt["xhi"])
        if pt.get("ylo") is not None:
            yerr = [[max(y - pt["ylo"], 0)], [max(pt["yhi"] - y, 0)]]
            lim_lo, lim_hi = min(lim_lo, pt["ylo"]), max(lim_hi, pt["yhi"])
        held = pt["prompts"] != "same"
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt=marker, ms=7, color=color,
                    ecolor=color, elinewidth=0.8, capsize=2, alpha=0.9,
                    markerfacecolor="white" if held else color, markeredgewidth=1.3)
        lim_lo, lim_hi = min(lim_lo, x, y), max(lim_hi, x, y)
    pad = 0.06 * (lim_hi - lim_lo) or 0.05 * abs(lim_hi) or 1.0
    lims = (lim_lo - pad, lim_hi + pad)
    ax.plot(lims, lims, color="grey", lw=1, ls="--")
    errs = [abs(pt["x"] - pt["y"]) / pt["y"] for pt in points]
    best, worst = int(np.argmin(errs)), int(np.argmax(errs))
    picks = [(worst, "worst")] if best == worst else [(best, "best"), (worst, "worst")]
    # the labels sit stacked in the corner of the half with fewer points (above the
    # line when most predictions were too fast), joined to their points by a line:
    # they never cover each other, and rarely a point
    over = sum(pt["x"] > pt["y"] for pt in points)
    upper_left = over >= len(points) - over
    for j, (i, which) in enumerate(picks):
        pt = points[i]
        pos = (0.03, 0.97 - 0.13 * j) if upper_left else (0.97, 0.03 + 0.13 * j)
        ax.annotate(f"{which}: {short_label(pt['policy'], 30)}\n({pt['prompts']} prompts, "
                    f"{100 * (pt['x'] - pt['y']) / pt['y']:+.1f} %)",
                    (pt["x"], pt["y"]), fontsize=7, xytext=pos, textcoords="axes fraction",
                    ha="left" if upper_left else "right", va="top" if upper_left else "bottom",
                    arrowprops={"arrowstyle": "-", "color": "black", "lw": 0.6},
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "#999", "alpha": 0.95})
    ax.set_xlim(lims)
    ax.set_ylim(lims)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"predicted {unit}")
    ax.set_ylabel(f"measured live {unit}")
    ax.set_title(wrap_title(title, fig_w / 3, 11), fontsize=11)
    ax.grid(alpha=0.3)


def predicted_vs_measured(rows: Sequence[dict[str, Any]],
                          speedups: Sequence[dict[str, Any]] = ()) -> Figure:
    """Three panels, tokens/s, speedup over ar and mean tau: one point per ledger row
    (predicted on x, measured on y), filled for the trace's own prompts, hollow for
    held-out ones; bars: the prediction's bootstrap interval (x) and the measurement's
    (y) where the ledger has them; the dashed line y = x is a perfect prediction.
    ``speedups``: points for the speedup panel (``policy``, ``prompts``, ``x``, ``y``,
    optional intervals). A legend below keys every policy by colour and shape."""
    w = 15.0
    fig, axes = _new(w, 6.8, ncols=3)
    if not rows:
        for ax in axes[0]:
            _empty(ax, "The ledger has no rows yet.\nA row is added when "
                       "`specreplay promote` runs a predicted policy live.")
        for ax, t in zip(axes[0], ("Tokens/s", "Speedup over ar", "Mean tau")):
            ax.set_title(f"{t}: predicted vs measured")
        return fig
    styles = policy_styles([r["policy"] for r in rows])
    tps = [{"policy": r["policy"], "prompts": r["prompts"], "x": r["predicted_tokens_per_s"],
            "y": r["measured_tokens_per_s"], "xlo": r.get("predicted_ci_low"),
            "xhi": r.get("predicted_ci_high"), "ylo": r.get("measured_ci_low"),
            "yhi": r.get("measured_ci_high")} for r in rows]
    tau = [{"policy": r["policy"], "prompts": r["prompts"], "x": r["predicted_tau"],
            "y": r["measured_tau"]} for r in rows]
    _identity_panel(axes[0][0], tps, styles, "tokens/s",
                    "Tokens/s: predicted vs measured (bars: bootstrap intervals)", w)
    _identity_panel(axes[0][1], list(speedups), styles, "speedup over ar",
                    "Speedup over ar: predicted vs measured (bars: the tokens/s intervals "
                    "scaled)", w)
    _identity_panel(axes[0][2], tau, styles, "mean tau (tokens/cycle)",
                    "Mean tau: predicted vs measured", w)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], ls="", marker=m, color=c, ms=7, label=short_label(p, 44))
               for p, (c, m, _) in styles.items()]
    handles += [Line2D([], [], ls="", marker="o", color="black", ms=7,
                       label="filled: the trace's own prompts"),
                Line2D([], [], ls="", marker="o", color="black", markerfacecolor="white",
                       ms=7, label="hollow: held-out prompts"),
                Line2D([], [], ls="--", color="grey", label="y = x: perfect prediction")]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7.5,
               frameon=False)
    return fig


# -- replay

def leaderboard(entries: Sequence[dict[str, Any]], ar_tokens_per_s: float | None = None) -> Figure:
    """Horizontal points with interval bars, best policy on top. ``entries``: dicts with
    ``label``, ``tokens_per_s``, ``ci_low``, ``ci_high`` (replayable predictions only)
    and, where the ledger confirmed the policy live, ``measured`` with optional
    ``measured_low`` / ``measured_high`` (drawn beside the prediction)."""
    n = max(len(entries), 1)
    w = 10.0
    fig, axes = _new(w, 1.5 + 0.34 * n)
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
    has_meas = [i for i, e in enumerate(order) if e.get("measured") is not None]
    off = 0.17 if has_meas else 0.0
    ax.errorbar(x, y + off, xerr=np.vstack([np.maximum(x - lo, 0), np.maximum(hi - x, 0)]),
                fmt="o", color=_SAME, capsize=3, label="predicted tokens/s (bootstrap "
                                                      "interval over prompts)")
    if has_meas:
        mx = np.array([order[i]["measured"] for i in has_meas])
        mlo = np.array([order[i].get("measured_low") or order[i]["measured"] for i in has_meas])
        mhi = np.array([order[i].get("measured_high") or order[i]["measured"] for i in has_meas])
        ax.errorbar(mx, np.array(has_meas) - off,
                    xerr=np.vstack([np.maximum(mx - mlo, 0), np.maximum(mhi - mx, 0)]),
                    fmt="D", ms=5, color=_MEASURED, capsize=3,
                    label="measured live, same prompts (ledger; its interval where it has one)")
    if ar_tokens_per_s:
        ax.axvline(ar_tokens_per_s, color="grey", ls="--", lw=1,
                   label="plain autoregressive decoding (ar), predicted")
    ax.set_yticks(y, [short_label(e["label"], 60) for e in order], fontsize=7)
    ax.set_xlabel("throughput (tokens/s, single stream)")
    ax.set_title(wrap_title("Policy leaderboard: predicted tokens/s, best on top"
                            + (", with the ledger's live measurement" if has_meas else ""),
                            w * 0.7))
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
    ax_tau.set_title(wrap_title(title, 11))
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
        fig.suptitle(wrap_title(title, 11))
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
    fig.suptitle(wrap_title(title, 11))
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
        ax.set_title(wrap_title(title, 8))
        return fig
    for b in sorted(curves):
        p = curves[b]
        ax.plot(np.arange(1, len(p) + 1), p, marker="o", ms=3,
                label=f"block size {b} (mean tau {mean_tau[b]:.2f})")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("drafted offset i (tokens after the anchor)")
    ax.set_ylabel("P(accepted >= i)")
    ax.set_title(wrap_title(title, 8))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="oracle, every start position", title_fontsize=7)
    return fig
