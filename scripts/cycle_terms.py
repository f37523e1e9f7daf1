"""Which term of a cycle's time a prediction got wrong: for each row of a ledger whose
traces are at hand, the policy replayed on the row's trace and profile with this
checkout's cost model (in the timing promote used) against the cycles of the live run the row names, as
mean milliseconds per cycle of the draft passes, the verify pass, the host part and the
whole cycle, with the relative error of each; and tokens/s as replayed now against the
row's measured figure, beside the prediction the row holds (they differ where the cost
model changed after the row was written); and the share of the live runs' decode seconds
that no cycle holds.

    python3 scripts/cycle_terms.py reports/ledger.csv [--trace traces/samples/twin/humaneval-fixed16]

Prints a Markdown table (one row per ledger row) and per prompt set the median error of
each term. No torch: it reads traces and replays on a CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TERMS = ("draft_s", "target_s", "overhead_s", "cycle_s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ledger")
    ap.add_argument("--trace", help="only the rows predicted from this trace")
    args = ap.parse_args(argv)
    from specreplay.reports.ledger import LedgerError, read_ledger
    from specreplay.reports.rank import kendall_tau
    from specreplay.sim.replay import replay
    from specreplay.traces.io import TraceError
    from specreplay.traces.reader import Trace
    try:
        rows = read_ledger(args.ledger)
    except LedgerError as e:
        print(f"cycle_terms: {e}", file=sys.stderr)
        return 2
    # ledger paths are relative to the repository the ledger ships in (reports/ledger.csv),
    # else to the folder it is run from
    ledger = Path(args.ledger).resolve()
    root = ledger.parents[1] if ledger.parent.name == "reports" else Path.cwd()
    if args.trace is not None:
        want = Path(args.trace).resolve()
        rows = [r for r in rows if (root / r["trace"]).resolve() == want]
        if not rows:
            print(f"cycle_terms: no row of {args.ledger} was predicted from {args.trace}", file=sys.stderr)
            return 2
    out, errs, failed = [], {}, 0
    for r in rows:
        trace, live = root / r["trace"], root / (r.get("measured_trace") or "")
        if not (trace / "run.json").exists() or not (live / "run.json").exists():
            print(f"cycle_terms: skipped {r['policy']} ({r['prompts']}): its traces are not at hand", file=sys.stderr)
            continue
        note = r.get("note") or ""
        # as promote predicted it: its profile (none: the trace's live cycles) and timing
        prof = r.get("profile")
        profile = None if not prof or prof == "live cycles of the trace" else root / prof
        try:
            (p,) = replay(trace, [r["policy"]], profile=profile,
                          timing="calibrated" if "timing=calibrated" in note else "model",
                          other_setup="other-setup profile" in note, bootstrap=0)
            live_trace = Trace.open(live)
            cyc = live_trace.cycles
            decode_s = float(np.sum(live_trace.samples["decode_s"].to_numpy()))
        except (TraceError, ValueError) as e:
            print(f"cycle_terms: {r['policy']} ({r['prompts']}): {e}", file=sys.stderr)
            failed += 1
            continue
        if not p.replayable:
            print(f"cycle_terms: {r['policy']} ({r['prompts']}): not replayable: {p.reason}", file=sys.stderr)
            failed += 1
            continue
        pred = {t: float(np.mean(p.per_cycle[t])) for t in TERMS}
        meas = {t: float(np.mean(cyc[t].to_numpy())) for t in TERMS}
        err = {t: (pred[t] - meas[t]) / meas[t] if meas[t] > 0 else None for t in TERMS}
        for t in TERMS:
            if err[t] is not None:
                errs.setdefault((r["prompts"], t), []).append(err[t])
        # decode seconds no cycle holds (host work between cycles, in traces recorded
        # before cycles ran from the previous one's end): the simulator sums cycles
        between = 1 - float(np.sum(cyc["cycle_s"].to_numpy())) / decode_s if decode_s > 0 else None
        if between is not None:
            errs.setdefault((r["prompts"], "between"), []).append(between)
        measured_tps = float(r["measured_tokens_per_s"])
        tps = (p.tokens_per_s if measured_tps > 0 else None, float(r["predicted_tokens_per_s"]), measured_tps)
        if tps[0]:
            errs.setdefault((r["prompts"], "tokens/s"), []).append(abs(p.tokens_per_s / measured_tps - 1))
        out.append((r, pred, meas, err, tps))
    print("| policy | prompts | " + " | ".join(f"{t[:-2]} ms pred / live (error)" for t in TERMS)
          + " | tokens/s now / row's prediction / measured (error now) |")
    print("|---|---|" + "---|" * (len(TERMS) + 1))
    for r, pred, meas, err, (now, then, measured) in out:
        cells = [f"{pred[t] * 1e3:.3f} / {meas[t] * 1e3:.3f} ({'' if err[t] is None else f'{100 * err[t]:+.1f} %'})"
                 for t in TERMS]
        cells.append(f"{now:.1f} / {then:.1f} / {measured:.1f} ({100 * (now / measured - 1):+.1f} %)" if now else "-")
        print(f"| {r['policy']} | {r['prompts']} | " + " | ".join(cells) + " |")
    print()
    for prompts in sorted({k[0] for k in errs}):
        parts = [f"{t[:-2]} {100 * np.median(errs[(prompts, t)]):+.1f} %" for t in TERMS if (prompts, t) in errs]
        print(f"{prompts}: median signed error per term: " + ", ".join(parts))
        gap = errs.get((prompts, "between"))
        if gap:
            print(f"{prompts}: decode seconds outside every cycle: median {100 * np.median(gap):.1f} %, "
                  f"range {100 * np.min(gap):.1f}-{100 * np.max(gap):.1f} % of the live runs' decode time")
        tp = errs.get((prompts, "tokens/s"))
        if tp:
            pairs = [(now, measured) for r, *_, (now, _, measured) in out if r["prompts"] == prompts and now]
            kt = kendall_tau([a for a, _ in pairs], [b for _, b in pairs])
            print(f"{prompts}: tokens/s replayed now, |error| median {100 * np.median(tp):.1f} %, "
                  f"max {100 * np.max(tp):.1f} % over {len(tp)} rows"
                  + (f"; Kendall tau against measured {kt.tau:.2f}" if kt is not None else ""))
    return 2 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
