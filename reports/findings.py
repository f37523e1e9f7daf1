"""``specreplay ledger findings``: the validation findings of a ledger, written as Markdown
from the ledger alone, so that every number in the file is a statistic computed from
its rows and the file can be checked by regenerating it.

Per study (``ledger.studies``: trace, profile, setup, prompt set and the run conditions
``promote`` notes, e.g. ``order=interleaved``):

- tokens/s relative error: median and max of |predicted - measured| / measured, and how
  many predictions were too fast;
- the error of the time per cycle alone: tokens/s predicted with the measured tau in
  place of the predicted one (predicted tokens/s x measured tau / predicted tau), the
  part of the error the cost model owns when the prompt set moves tau;
- speedup over ``ar`` relative error where the ledger has ``predicted_speedup`` and
  ``measured_speedup``, else from the study's own ``ar`` row (``ledger.study_speedups``);
- tau relative error, how many rows labelled ``exact`` are within 1 %, and how many
  measured taus lie inside the tau error bound an approximate prediction prints;
- where a tokens/s target is missed, whether the miss lies in acceptance (the time per
  cycle alone meets the targets) or in the time per cycle;
- Kendall's tau-b between predicted and measured tokens/s with its p-value
  (``reports.rank``), whether the top policy and the top three (in order) are the same;
- how many measured values fall inside the prediction's interval;

each held against the targets below, and, over studies, the run-to-run spread of the
measured tokens/s of a policy confirmed more than once on the same prompts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from specreplay.reports.ledger import (_abs_stats, _group_summary, _ranking, read_ledger,
                                       relative_error, studies, study_speedups, tau_bound,
                                       tau_inside_bound)
from specreplay.reports.rank import kendall_tau

# The time targets of the project's validation (issue 13, "Done means"): a replay's
# tokens/s and speedup within these of the live run, and the ranking kept.
TARGETS = {
    "tokens_per_s_median": 0.03,
    "tokens_per_s_max": 0.08,
    "speedup_median": 0.03,
    "kendall_tau": 0.9,
    "exact_tau": 0.01,
}


def pct(x: float) -> str:
    """A relative value as a signed-free percentage with one decimal, e.g. 24.0 %."""
    return f"{100 * x:.1f} %"


def spct(x: float) -> str:
    """A signed relative value as a percentage with one decimal, e.g. +13.9 %."""
    return f"{100 * x:+.1f} %"


def pval(p: float) -> str:
    """A p-value with two significant digits."""
    return f"{p:.2g}"


def _met(value: float, limit: float, below: bool = True) -> str:
    ok = value <= limit if below else value >= limit
    return "met" if ok else "missed"


def _cell(text: Any) -> str:
    """A Markdown table cell: a literal '|' (policy specs list values with it) escaped."""
    return str(text).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`"


def cycle_time_error(r: dict[str, Any]) -> float:
    """Relative tokens/s error once tau is taken from the measured run: the error of the
    predicted time per cycle alone."""
    return relative_error(r["predicted_tokens_per_s"] * r["measured_tau"] / r["predicted_tau"],
                          r["measured_tokens_per_s"])


def _met_both(stats: dict[str, float | None]) -> bool:
    return (stats["median"] <= TARGETS["tokens_per_s_median"]
            and stats["max"] <= TARGETS["tokens_per_s_max"])


def _miss_lines(rows: list[dict[str, Any]], tps: dict, cyc: dict) -> list[str]:
    """Which half of a prediction a missed tokens/s target lies in: tokens/s is the
    tokens per cycle (tau) over the time per cycle, so when the time per cycle alone
    meets the targets the miss is acceptance, else it is (also) the cost model's time."""
    if _met_both(tps):
        return []
    n = len(rows)
    if _met_both(cyc):
        low = sum(r["predicted_tau"] < r["measured_tau"] for r in rows)
        return [f"- The tokens/s miss is acceptance, not time: the time per cycle alone "
                f"meets both targets, and the predicted tau is below the measured one in "
                f"{low} of {n} rows."]
    slow = sum(cycle_time_error(r) > 0 for r in rows)
    return [f"- The tokens/s miss is (also) time: the time per cycle alone misses a target, "
            f"predicted too short in {slow} of {n} rows; `scripts/cycle_terms.py` splits it "
            f"into the draft, verify and host terms from the traces."]


def _study_name(prompts: str, conditions: str) -> str:
    where = "the trace's own prompts" if prompts == "same" else "held-out prompts"
    return f"{where}, {conditions}" if conditions else where


def _study_lines(k: int, key: tuple[str, str, str, str, str], rows: list[dict[str, Any]]
                 ) -> list[str]:
    trace, profile, setup, prompts, conditions = key
    g = _group_summary(rows)
    n = len(rows)
    errs = [relative_error(r["predicted_tokens_per_s"], r["measured_tokens_per_s"]) for r in rows]
    tps = g["tokens_per_s_abs_error"]
    dates = sorted({r["date"] for r in rows})
    out = [f"## Study {k}: {_study_name(prompts, conditions)}", ""]
    out.append(f"- Rows: {n} policies (one row each; a policy confirmed again counts with "
               f"its latest row), dated {dates[0]}"
               + (f" to {dates[-1]}" if len(dates) > 1 else "") + ".")
    out.append(f"- Trace {_code(trace)}, profile {_code(profile)}, live setup "
               f"{_code(setup)}.")
    out.append(f"- Tokens/s |error|: median {pct(tps['median'])} (target ≤ "
               f"{pct(TARGETS['tokens_per_s_median'])}: "
               f"{_met(tps['median'], TARGETS['tokens_per_s_median'])}), max {pct(tps['max'])} "
               f"(target ≤ {pct(TARGETS['tokens_per_s_max'])}: "
               f"{_met(tps['max'], TARGETS['tokens_per_s_max'])}).")
    fast = sum(e > 0 for e in errs)
    out.append(f"- Predicted faster than measured: {fast} of {n} rows "
               f"(signed error from {spct(min(errs))} to {spct(max(errs))}).")
    cyc = _abs_stats([cycle_time_error(r) for r in rows])
    out.append(f"- Time per cycle alone (tokens/s with the measured tau): |error| median "
               f"{pct(cyc['median'])} (target ≤ {pct(TARGETS['tokens_per_s_median'])}: "
               f"{_met(cyc['median'], TARGETS['tokens_per_s_median'])}), max {pct(cyc['max'])} "
               f"(target ≤ {pct(TARGETS['tokens_per_s_max'])}: "
               f"{_met(cyc['max'], TARGETS['tokens_per_s_max'])}).")
    out += _miss_lines(rows, tps, cyc)
    sp = g["speedup_abs_error"]
    with_sp = sum(1 for r in rows if r.get("predicted_speedup") and r.get("measured_speedup"))
    derived = {p: v for p, v in study_speedups(rows).items() if v[2] == "ar row"}
    if sp["median"] is None and derived:
        d = _abs_stats([relative_error(pr, me) for pr, me, _ in derived.values()])
        out.append(f"- Speedup over ar, from the study's own ar row (the ledger has no "
                   f"speedup columns here; ratio of tokens/s, {len(derived)} policies besides "
                   f"ar): |error| median {pct(d['median'])} (target ≤ "
                   f"{pct(TARGETS['speedup_median'])}: "
                   f"{_met(d['median'], TARGETS['speedup_median'])}), max {pct(d['max'])}.")
    elif sp["median"] is None:
        out.append("- Speedup over ar: not in the ledger for these rows (no "
                   "predicted_speedup and measured_speedup, and no ar row in the study).")
    else:
        out.append(f"- Speedup over ar |error| ({with_sp} of {n} rows have both): median "
                   f"{pct(sp['median'])} (target ≤ {pct(TARGETS['speedup_median'])}: "
                   f"{_met(sp['median'], TARGETS['speedup_median'])}), max {pct(sp['max'])}.")
    tau = g["tau_abs_error"]
    tau_errs = [abs(relative_error(r["predicted_tau"], r["measured_tau"])) for r in rows]
    zero = sum(e == 0 for e in tau_errs)
    within = sum(e <= TARGETS["exact_tau"] for e in tau_errs)
    out.append(f"- Tau |error|: median {pct(tau['median'])}, max {pct(tau['max'])}; "
               f"{zero} of {n} rows exactly equal, {within} of {n} within "
               f"{pct(TARGETS['exact_tau'])}.")
    bounded = [r for r in rows if tau_bound(r) is not None]
    if bounded:
        inside = sum(tau_inside_bound(r, TARGETS["exact_tau"]) for r in bounded)
        bounds = sorted(tau_bound(r) for r in bounded)
        out.append(f"- Measured tau inside the prediction's printed tau bound: {inside} of "
                   f"{len(bounded)} rows that print one (bounds ±{bounds[0]:.3f} to "
                   f"±{bounds[-1]:.3f}).")
    exact = [(r, e) for r, e in zip(rows, tau_errs) if r.get("label") == "exact"]
    if exact:
        ok = sum(e <= TARGETS["exact_tau"] for _, e in exact)
        out.append(f"- Rows labelled exact: {len(exact)}; tau within "
                   f"{pct(TARGETS['exact_tau'])} in {ok} of them.")
    res = kendall_tau([r["predicted_tokens_per_s"] for r in rows],
                      [r["measured_tokens_per_s"] for r in rows])
    if res is None:
        out.append("- Kendall tau: undefined (fewer than two policies, or constant values).")
    else:
        out.append(f"- Kendall tau between predicted and measured tokens/s: {res.tau:.2f} "
                   f"(p = {pval(res.p)}, {res.method}, n = {res.n}; target ≥ "
                   f"{TARGETS['kendall_tau']}: {_met(res.tau, TARGETS['kendall_tau'], False)}).")
    pred_rank = _ranking(rows, "predicted_tokens_per_s")
    meas_rank = _ranking(rows, "measured_tokens_per_s")
    top1 = "preserved" if pred_rank[0] == meas_rank[0] else "not preserved"
    out.append(f"- Top-1 {top1}: predicted {_code(pred_rank[0])}, measured "
               f"{_code(meas_rank[0])}.")
    if n >= 3:
        p3, m3 = pred_rank[:3], meas_rank[:3]
        if p3 == m3:
            top3 = "preserved, in order"
        elif set(p3) == set(m3):
            top3 = "the same three policies, in another order"
        else:
            top3 = f"not preserved ({len(set(p3) & set(m3))} of 3 in both)"
        out.append(f"- Top-3 {top3}: predicted " + " > ".join(_code(p) for p in p3)
                   + "; measured " + " > ".join(_code(p) for p in m3) + ".")
    with_ci = [r for r in rows if r.get("predicted_ci_low") is not None]
    if with_ci:
        inside = sum(r["predicted_ci_low"] <= r["measured_tokens_per_s"] <= r["predicted_ci_high"]
                     for r in with_ci)
        out.append(f"- Measured tokens/s inside the prediction's bootstrap interval: {inside} "
                   f"of {len(with_ci)} rows.")
    with_mci = [r for r in rows if r.get("measured_ci_low") is not None
                and r.get("predicted_ci_low") is not None]
    if with_mci:
        overlap = sum(r["measured_ci_low"] <= r["predicted_ci_high"]
                      and r["predicted_ci_low"] <= r["measured_ci_high"] for r in with_mci)
        out.append(f"- Prediction's and measurement's intervals overlap: {overlap} of "
                   f"{len(with_mci)} rows.")
    return out + [""]


def _spread_lines(keyed: list[tuple[tuple[str, str, str, str, str], list[dict[str, Any]]]]
                  ) -> list[str]:
    """Policies measured in more than one study on the same trace, setup and prompts:
    how far apart their measured tokens/s came out (largest over smallest, minus 1)."""
    seen: dict[tuple[str, str, str, str], list[tuple[int, dict[str, Any]]]] = {}
    for k, ((trace, _, setup, prompts, _), rows) in enumerate(keyed, 1):
        for r in rows:
            seen.setdefault((trace, setup, prompts, r["policy"]), []).append((k, r))
    multi = [(key, v) for key, v in seen.items() if len(v) > 1]
    if not multi:
        return []
    out = ["## Run-to-run spread of the measurement", "",
           "Policies confirmed live in more than one study on the same trace, setup and "
           "prompts. Spread = largest measured tokens/s / smallest − 1; an error below it "
           "cannot be told apart from the live run's own variation.", "",
           "| policy | prompts | studies | measured tokens/s | spread |", "|---|---|---|---|---|"]
    spreads = []
    for (_, _, prompts, policy), v in multi:
        vals = [r["measured_tokens_per_s"] for _, r in v]
        spread = max(vals) / min(vals) - 1
        spreads.append(spread)
        out.append(f"| {_cell(policy)} | {prompts} | {', '.join(str(k) for k, _ in v)} | "
                   f"{', '.join(f'{x:.1f}' for x in vals)} | {pct(spread)} |")
    s = _abs_stats(spreads)
    out += ["", f"Over these {len(spreads)} policies the spread has median {pct(s['median'])} "
                f"and max {pct(s['max'])}.", ""]
    return out


def _rows_table(rows: list[dict[str, Any]], keyed) -> list[str]:
    index = {id(r): k for k, (_, group) in enumerate(keyed, 1) for r in group}
    out = ["## Every row", "",
           "Error = (predicted − measured) / measured. Study: the study above whose "
           "statistics use the row (none: a later row of the same policy replaced it).", "",
           "| # | study | policy | prompts | predicted tok/s | measured tok/s | error | "
           "predicted tau | measured tau | tau error | speedup error | note |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        sp = (spct(relative_error(r["predicted_speedup"], r["measured_speedup"]))
              if r.get("predicted_speedup") and r.get("measured_speedup") else "")
        out.append(
            f"| {i} | {index.get(id(r), 'none')} | {_cell(r['policy'])} | {r['prompts']} | "
            f"{r['predicted_tokens_per_s']:.1f} | {r['measured_tokens_per_s']:.1f} | "
            f"{spct(relative_error(r['predicted_tokens_per_s'], r['measured_tokens_per_s']))} | "
            f"{r['predicted_tau']:.3f} | {r['measured_tau']:.3f} | "
            f"{spct(relative_error(r['predicted_tau'], r['measured_tau']))} | {sp} | "
            f"{_cell(r.get('note') or '')} |")
    return out + [""]


def findings_markdown(rows: Sequence[dict[str, Any]], ledger_name: str, command: str) -> str:
    """The findings of ledger rows (as from ``read_ledger``) as Markdown text.
    ``ledger_name`` is how the text names the ledger and ``command`` the command line
    that wrote it (both as the user typed them, so the text does not depend on where
    the repository lies)."""
    rows = list(rows)
    out = [f"# Findings of the ledger {_code(ledger_name)}", "",
           f"Generated by `{command}`: every number below is "
           f"computed from the ledger's {len(rows)} rows, and a test regenerates this file "
           "and compares, so it cannot drift from the ledger. Targets: tokens/s |error| "
           f"median ≤ {pct(TARGETS['tokens_per_s_median'])} and max ≤ "
           f"{pct(TARGETS['tokens_per_s_max'])}, speedup |error| median ≤ "
           f"{pct(TARGETS['speedup_median'])}, Kendall tau ≥ {TARGETS['kendall_tau']}, tau "
           f"within {pct(TARGETS['exact_tau'])} where the label is exact.", ""]
    if not rows:
        return "\n".join(out + ["The ledger has no rows yet.", ""])
    keyed = studies(rows)
    for k, (key, group) in enumerate(keyed, 1):
        out += _study_lines(k, key, group)
    out += _spread_lines(keyed)
    out += _rows_table(rows, keyed)
    return "\n".join(out)


def write_findings(ledger: str | Path, out: str | Path) -> Path:
    """Read ``ledger``, write its findings to ``out`` (atomically); returns ``out``."""
    rows = read_ledger(ledger)
    text = findings_markdown(rows, str(ledger),
                             f"specreplay ledger findings {ledger} --out {out}")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
