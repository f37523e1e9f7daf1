"""The predicted-vs-measured ledger: one CSV file, one row per prediction confirmed live.

Columns (``COLUMNS``; the first ten are required, the rest may be empty)::

    policy                  spec string, as replayed and as run live
    prompts                 "same" (the trace's own prompts) or "heldout"
    predicted_tokens_per_s  the simulator's tokens/s
    measured_tokens_per_s   tokens/s of the live confirmation run
    predicted_tau           the simulator's mean tau (tokens committed per cycle)
    measured_tau            mean tau of the live run
    trace                   the trace the prediction was replayed from
    profile                 the latency profile the prediction used
    setup                   the live run's setup (GPU, backend, dtype)
    date                    ISO 8601 date or date-time of the live run
    predicted_ci_low        lower end of the prediction's bootstrap interval (tokens/s)
    predicted_ci_high       upper end of it
    measured_trace          the trace the live confirmation run recorded
    note                    a validation finding about this row (why it missed, what fixes it)
    measured_ci_low         lower end of the 95 % bootstrap interval of the measured tokens/s
                            (over repeats and prompts: each decoded prompt is one unit)
    measured_ci_high        upper end of it
    measured_speedup        measured TPOT of ``ar`` in the same interleaved live run / the
                            policy's measured TPOT
    predicted_speedup       the simulator's speedup against ``ar`` (same cost model)
    repeats                 how many times each prompt was decoded live (integer >= 1)
    label                   the prediction's fidelity label: exact | approximate |
                            extrapolated cost (sim.replay.Prediction.label)

Older ledgers without the last six columns read with those cells empty; appending to
one rewrites its header with every column (old rows keep empty cells).

Only ``specreplay promote`` writes the ledger, through ``append_ledger_row``; every other
part of the tool reads it with ``read_ledger``. Errors name the file, the line and the
column.
"""
from __future__ import annotations

import csv
import fcntl
import io
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from specreplay.reports.rank import kendall_tau

REQUIRED = ("policy", "prompts", "predicted_tokens_per_s", "measured_tokens_per_s",
            "predicted_tau", "measured_tau", "trace", "profile", "setup", "date")
OPTIONAL = ("predicted_ci_low", "predicted_ci_high", "measured_trace", "note",
            "measured_ci_low", "measured_ci_high", "measured_speedup", "predicted_speedup",
            "repeats", "label")
COLUMNS = REQUIRED + OPTIONAL

NUMERIC = ("predicted_tokens_per_s", "measured_tokens_per_s", "predicted_tau", "measured_tau",
           "predicted_ci_low", "predicted_ci_high", "measured_ci_low", "measured_ci_high",
           "measured_speedup", "predicted_speedup", "repeats")
LABELS = ("exact", "approximate", "extrapolated cost")
PROMPT_SETS = ("same", "heldout")

# How many of the best policies must keep their order for "top-3 preserved".
TOP_N = 3

# The ledger shipped with specreplay, rendered by the demo.
SHIPPED_LEDGER = Path(__file__).resolve().parent / "ledger.csv"


class LedgerError(ValueError):
    """The ledger file (or a row for it) is malformed; the message names the file, the
    line and the column."""


# -- reading and checking

def _check_value(col: str, text: str, where: str) -> Any:
    """Turn one cell into its typed value (float for numbers, None for an empty optional)."""
    text = text.strip()
    if not text:
        if col in REQUIRED:
            raise LedgerError(f"{where}, column {col}: empty, but {col} is required")
        return None
    if col in NUMERIC:
        try:
            value = float(text)
        except ValueError:
            raise LedgerError(f"{where}, column {col}: {text!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise LedgerError(f"{where}, column {col}: {text!r} must be a positive finite number")
        if col.endswith("_tau") and value < 1:
            raise LedgerError(f"{where}, column {col}: {text!r} is below 1, and tau counts the "
                              "bonus token so it is at least 1")
        if col == "repeats" and value != int(value):
            raise LedgerError(f"{where}, column repeats: {text!r} must be a whole number of "
                              "live decodes per prompt")
        return value
    if col == "label" and text not in LABELS:
        raise LedgerError(f"{where}, column label: {text!r} must be one of {', '.join(LABELS)}")
    if col == "prompts" and text not in PROMPT_SETS:
        raise LedgerError(f"{where}, column prompts: {text!r} must be one of "
                          f"{', '.join(PROMPT_SETS)}")
    if col == "date":
        try:
            datetime.fromisoformat(text)
        except ValueError:
            raise LedgerError(f"{where}, column date: {text!r} is not an ISO 8601 date "
                              "(e.g. 2026-11-30 or 2026-11-30T14:05:00+00:00)") from None
    return text


def _check_row(raw: dict[str, str], where: str) -> dict[str, Any]:
    row = {col: _check_value(col, raw.get(col, ""), where) for col in COLUMNS}
    for side in ("predicted", "measured"):
        lo, hi = row[f"{side}_ci_low"], row[f"{side}_ci_high"]
        if (lo is None) != (hi is None):
            raise LedgerError(f"{where}: {side}_ci_low and {side}_ci_high go together; "
                              "fill both or neither")
        if lo is not None and lo > hi:
            raise LedgerError(f"{where}: {side}_ci_low {lo} is above {side}_ci_high {hi}")
    return row


def read_ledger(path: str | Path) -> list[dict[str, Any]]:
    """Read a ledger CSV into rows (dicts keyed by ``COLUMNS``; numbers as float, empty
    optional cells as None), in file order. Raises ``LedgerError`` naming the file, line
    and column for a missing file, missing columns, a ragged line, a bad number, an
    unknown prompt set or a bad date."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LedgerError(f"ledger {path} does not exist; pass an existing ledger CSV "
                          "(the shipped one is reports/ledger.csv)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LedgerError(f"ledger {path} cannot be read as UTF-8 text: {e}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise LedgerError(f"ledger {path} is empty; it needs at least the header line "
                          f"{','.join(COLUMNS)}") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise LedgerError(f"ledger {path} line 1: the header lacks column(s) "
                          f"{', '.join(missing)}")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise LedgerError(f"ledger {path} line 1: column(s) {', '.join(dupes)} appear twice")
    rows = []
    try:
        for cells in reader:
            line = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            where = f"ledger {path} line {line}"
            if len(cells) != len(header):
                raise LedgerError(f"{where}: {len(cells)} fields, but the header has "
                                  f"{len(header)}")
            rows.append(_check_row(dict(zip(header, cells)), where))
    except csv.Error as e:
        raise LedgerError(f"ledger {path} line {reader.line_num}: not valid CSV ({e})") from None
    return rows


def findings_path(ledger: str | Path) -> Path:
    """Where the validation findings that go with a ledger live: ``<name>-findings.md``
    next to it (e.g. reports/ledger-findings.md). Free text; the report renders it."""
    ledger = Path(ledger)
    return ledger.with_name(ledger.stem + "-findings.md")


# -- writing (promote only)

def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def append_ledger_row(path: str | Path, row: dict[str, Any]) -> dict[str, Any]:
    """Append one confirmed prediction to the ledger; only ``specreplay promote`` calls
    this. The row is checked like a read row first (``date`` defaults to now, UTC). The
    append is atomic: the whole new file is written to a temporary name, fsynced and
    renamed over the old one, under a lock on the folder, so a crash or a concurrent
    promote never leaves a half-written or lost line. A missing file is created with
    the header. Returns the typed row as ``read_ledger`` would return it."""
    path = Path(path)
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise LedgerError(f"row for ledger {path} has unknown column(s) {', '.join(unknown)}; "
                          f"columns are {', '.join(COLUMNS)}")
    row = dict(row)
    row.setdefault("date", datetime.now(timezone.utc).replace(microsecond=0).isoformat())
    typed = _check_row({c: _format(row.get(c)) for c in COLUMNS}, f"new row for ledger {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        if path.exists() and path.stat().st_size > 0:
            header = [h.strip() for h in next(csv.reader(io.StringIO(path.read_text("utf-8"))))]
            read_ledger(path)  # refuse to append to a file that is already malformed
            old = path.read_text("utf-8")
            if [c for c in COLUMNS if c not in header]:
                # an older ledger: give it every column, so no cell of the new row is lost
                header = list(COLUMNS)
                old_rows = read_ledger(path)
                out = io.StringIO()
                csv.writer(out, lineterminator="\n").writerows(
                    [header] + [[_format(r.get(c)) for c in header] for r in old_rows])
                old = out.getvalue()
        else:
            header, old = list(COLUMNS), ""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if not old:
            w.writerow(header)
        elif not old.endswith("\n"):
            buf.write("\n")
        w.writerow([_format(typed.get(c)) for c in header])
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(old + buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        os.fsync(dfd)
    finally:
        fcntl.flock(dfd, fcntl.LOCK_UN)
        os.close(dfd)
    return typed


# -- error metrics

def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured: positive when the simulator is optimistic."""
    return (predicted - measured) / measured


# How sim/replay.py prints the tau error bound of an approximate prediction in its label
# (the note promote writes carries it): "... tau +-0.713)".
_TAU_BOUND = re.compile(r"tau \+-([0-9]+(?:\.[0-9]+)?)")


def tau_bound(row: dict[str, Any]) -> float | None:
    """The tau error bound printed with the row's prediction (from its note), or None
    where none was printed (an exact prediction, or an older row)."""
    m = _TAU_BOUND.search(row.get("note") or "")
    return float(m.group(1)) if m else None


def tau_inside_bound(row: dict[str, Any], exact_tolerance: float) -> bool:
    """Whether the measured tau lies inside the prediction's printed bound: within the
    bound where one was printed, else within ``exact_tolerance`` (relative) of it."""
    bound = tau_bound(row)
    err = abs(row["predicted_tau"] - row["measured_tau"])
    return err <= (bound if bound is not None else exact_tolerance * row["measured_tau"])


def _abs_stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    s = sorted(abs(v) for v in values)
    n = len(s)
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return {"median": median, "max": s[-1]}


def _ranking(rows: list[dict[str, Any]], key: str) -> list[str]:
    """Policies ordered best first by ``key`` (ties broken by policy name)."""
    return [r["policy"] for r in sorted(rows, key=lambda r: (-r[key], r["policy"]))]


def _group_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank agreement between predicted and measured tokens/s for rows replayed from one
    trace and run on one prompt set (one row per policy)."""
    pred = [r["predicted_tokens_per_s"] for r in rows]
    meas = [r["measured_tokens_per_s"] for r in rows]
    kt, kp = None, None
    if len(rows) >= 2:
        res = kendall_tau(pred, meas)
        if res is not None:
            kt, kp = res.tau, res.p
    n_top = min(TOP_N, len(rows))
    top_pred = _ranking(rows, "predicted_tokens_per_s")[:n_top]
    top_meas = _ranking(rows, "measured_tokens_per_s")[:n_top]
    return {
        "trace": rows[0]["trace"],
        "prompts": rows[0]["prompts"],
        "policies": len(rows),
        "tokens_per_s_abs_error": _abs_stats([relative_error(p, m) for p, m in zip(pred, meas)]),
        "tau_abs_error": _abs_stats([relative_error(r["predicted_tau"], r["measured_tau"])
                                     for r in rows]),
        "speedup_abs_error": _abs_stats([relative_error(r["predicted_speedup"],
                                                        r["measured_speedup"])
                                         for r in rows if r.get("predicted_speedup")
                                         and r.get("measured_speedup")]),
        "kendall_tau": kt,
        "kendall_p": kp,
        "top_n": n_top,
        "top_predicted": top_pred,
        "top_measured": top_meas,
        "top_preserved": top_pred == top_meas if rows else None,
    }


# Note tags that describe how a live run was made (``promote`` writes them), as opposed
# to findings about one row: rows differing in one of these belong to different studies.
CONDITION_TAGS = ("order=", "timing=", "prompts from ")


def run_conditions(note: str | None) -> str:
    """The run-condition tags of a row's note (e.g. "order=interleaved"), joined by "; "
    in their order in the note; "" when the note has none."""
    tags = [t.strip() for t in (note or "").split(";")]
    return "; ".join(t for t in tags if t.startswith(CONDITION_TAGS))


def studies(rows: list[dict[str, Any]]
            ) -> list[tuple[tuple[str, str, str, str, str], list[dict[str, Any]]]]:
    """The ledger's rows by study: one group per (trace, profile, setup, prompt set, run
    conditions of the note), in order of first appearance, holding one row per policy
    (a policy confirmed more than once in a study counts with its latest row: latest
    ``date``, then file order)."""
    groups: dict[tuple[str, str, str, str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        key = (r["trace"], r["profile"], r["setup"], r["prompts"], run_conditions(r.get("note")))
        g = groups.setdefault(key, {})
        old = g.get(r["policy"])
        if old is None or _date_key(r["date"]) >= _date_key(old["date"]):
            g[r["policy"]] = r
    return [(k, list(g.values())) for k, g in groups.items()]


def ledger_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The error metrics of a ledger (rows as from ``read_ledger``).

    Returns a dict with
    - ``rows``: per row, ``policy``, ``prompts``, ``trace``, ``tokens_per_s_error``,
      ``tau_error`` and ``speedup_error`` (relative: (predicted - measured) / measured;
      speedup None where the row has no speedups) and ``note``;
    - ``overall``: ``rows`` and the median and max absolute relative errors over all rows
      (``tokens_per_s_abs_error`` / ``tau_abs_error`` / ``speedup_abs_error`` over the rows
      that have speedups: {"median", "max"}, None when empty);
    - ``groups``: one entry per study (``studies``: trace, profile, setup, prompt set and
      the run conditions of the note, kept as ``study``), with
      the same error statistics, ``kendall_tau`` and ``kendall_p`` (``reports.rank.kendall_tau``,
      tau-b, of predicted vs measured tokens/s; None for fewer than two policies or constant
      values), ``top_predicted`` / ``top_measured`` (the best ``top_n`` = min(3, policies)
      policies, best first) and ``top_preserved`` (True when both lists are equal, order
      included).
    """
    per_row = [{
        "policy": r["policy"], "prompts": r["prompts"], "trace": r["trace"],
        "tokens_per_s_error": relative_error(r["predicted_tokens_per_s"],
                                             r["measured_tokens_per_s"]),
        "tau_error": relative_error(r["predicted_tau"], r["measured_tau"]),
        "speedup_error": (relative_error(r["predicted_speedup"], r["measured_speedup"])
                          if r.get("predicted_speedup") and r.get("measured_speedup") else None),
        "note": r.get("note"),
    } for r in rows]
    return {
        "rows": per_row,
        "overall": {
            "rows": len(rows),
            "tokens_per_s_abs_error": _abs_stats([p["tokens_per_s_error"] for p in per_row]),
            "tau_abs_error": _abs_stats([p["tau_error"] for p in per_row]),
            "speedup_abs_error": _abs_stats([p["speedup_error"] for p in per_row
                                             if p["speedup_error"] is not None]),
        },
        "groups": [{**_group_summary(g), "study": conditions}
                   for (_, _, _, _, conditions), g in studies(rows)],
    }


def _date_key(text: str) -> datetime:
    """A comparable date: dates without a zone are taken as UTC."""
    d = datetime.fromisoformat(text)
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def study_speedups(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float, str]]:
    """Predicted and measured speedup over ``ar`` of each policy of one study (rows as
    in ``studies``): the ledger's ``predicted_speedup`` / ``measured_speedup`` where the
    row has both ("ledger"), else the ratio of the row's tokens/s to the study's own
    ``ar`` row, predicted to predicted and measured to measured ("ar row"; ar itself
    is left out, its speedup being 1 by definition); policies with neither are left
    out."""
    ar = next((r for r in rows if r["policy"] == "ar"), None)
    out = {}
    for r in rows:
        if r.get("predicted_speedup") and r.get("measured_speedup"):
            out[r["policy"]] = (r["predicted_speedup"], r["measured_speedup"], "ledger")
        elif ar is not None and r is not ar:  # ar against itself is 1 by definition
            out[r["policy"]] = (r["predicted_tokens_per_s"] / ar["predicted_tokens_per_s"],
                                r["measured_tokens_per_s"] / ar["measured_tokens_per_s"],
                                "ar row")
    return out


def resolve_path(ledger: str | Path, text: str) -> Path | None:
    """A path written in a ledger row (as ``promote`` was given it, relative to where it
    ran), found on disk: as written, next to the ledger, or next to the ledger's folder
    (the shipped ledger's paths are relative to the repository root); None if absent."""
    p = Path(text)
    if p.is_absolute():
        return p if p.exists() else None
    ledger = Path(ledger).resolve()
    for base in (Path.cwd(), ledger.parent, ledger.parent.parent):
        if (base / p).exists():
            return (base / p).resolve()
    return None
