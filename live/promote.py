"""``specreplay promote``: confirm simulator predictions live and write both into the
ledger.

For each policy: predict it from the trace (sim.replay, the trace's profile or
``--profile``), decode the same prompts (the trace's own prompt ids), held-out prompts of
the same dataset, or the prompts of another dataset (``--dataset FILE``) live with the
trace's models and sampling settings, ``--repeats`` times, record that run as a new trace
(repeat r of prompt i is its sample r * prompts + i), and append one ledger row with
predicted and measured tokens/s, tau and speedup (all computed by the definitions in
sim/replay.py). ``ar`` always runs too, interleaved with the policies, as the baseline
of the measured speedup. This is the only writer of the ledger; it writes where
``--ledger`` says, by default ``ledger.csv`` in the working directory, never into the
installed package.
"""
from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from specreplay.errors import CLIError

DEFAULT_LEDGER = "ledger.csv"


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", spec).strip("-")[:80] or "policy"


def _prompts_same(trace):
    from specreplay.live.prompts import Prompt
    rows = trace.samples.to_pylist()
    return [Prompt(dataset_index=int(r["dataset_index"]), ids=list(r["prompt_ids"]), text="")
            for r in sorted(rows, key=lambda r: r["sample"])]


def _prompts_heldout(trace, tokenizer, n: int | None):
    """Prompts of the trace's dataset it did not use: ``n`` of them, or by default as
    many as the trace has (fewer if the dataset has fewer left)."""
    from specreplay.live.prompts import dataset_rows, heldout_prompts
    ds = trace.run.get("dataset") or {}
    if not ds.get("name"):
        raise CLIError(f"{trace.path}/run.json names no dataset, so held-out prompts cannot be chosen")
    used = [int(i) for i in trace.samples.column("dataset_index").to_pylist()]
    if n is None:
        rows, _ = dataset_rows(ds["name"], ds.get("split"))
        n = min(len(used), len(rows) - len(set(used)))
        if n < 1:
            raise CLIError(f"{ds['name']} has no prompts left outside the {len(used)} the trace used")
    return heldout_prompts(ds["name"], tokenizer, used, n, split=ds.get("split"),
                           template=ds.get("template"))


def _prompts_file(path: str, trace, tokenizer, n: int | None):
    """Prompts of another dataset (a JSONL file): ``n`` of them, by default as many as the
    trace has, in the file's selection order, with the trace's template."""
    from specreplay.live.prompts import load_prompts
    ds = trace.run.get("dataset") or {}
    return load_prompts(path, tokenizer, max_samples=n or trace.samples.num_rows,
                        template=ds.get("template"))


def _setup_text(run: dict) -> str:
    s = run.get("setup") or {}
    parts = [s.get("gpu") or s.get("device"), s.get("backend"), s.get("dtype"),
             (run.get("target") or {}).get("id"), (run.get("draft") or {}).get("id")]
    return " / ".join(str(p) for p in parts if p)


def turns(n_runs: int, n_prompts: int, repeats: int, order: str) -> list[tuple[int, int, int]]:
    """The live decodes of a promotion in the order they run, as (run, repeat, prompt).

    interleaved: repeat by repeat, prompt by prompt, every run in turn, the first one
    rotating with the prompt and the repeat, so that slow phases of the machine (host
    load, clock changes) fall on all runs alike instead of on whichever ran then;
    sequential: one run after another, each with all its repeats."""
    if order == "sequential":
        return [(k, r, i) for k in range(n_runs) for r in range(repeats) for i in range(n_prompts)]
    return [((i + j + r) % n_runs, r, i) for r in range(repeats) for i in range(n_prompts)
            for j in range(n_runs)]


def _promote(args: argparse.Namespace) -> int:
    from specreplay.live.profiler import describe_setup
    from specreplay.live.recorder import ModelInfo, RecordSettings, Recorder
    from specreplay.models.loading import file_hashes, load_draft, load_target, load_tokenizer
    from specreplay.reports.ledger import append_ledger_row
    from specreplay.sim.replay import measured, replay
    from specreplay.traces.reader import Trace

    if args.repeats < 1:
        raise CLIError(f"--repeats must be at least 1, not {args.repeats}")
    prompt_kind = "heldout" if args.dataset else args.prompts
    if args.dataset and args.prompts == "same":
        raise CLIError("--dataset gives prompts the trace did not use: pass --prompts heldout "
                       "with it, or leave --dataset out to decode the trace's own prompts")
    trace = Trace.open(args.trace)
    run = trace.run
    profile = args.profile or (args.trace if (Path(args.trace) / "profile.parquet").exists() else None)
    preds = replay(trace, args.policy, profile=profile, other_setup=args.profile_from_other_setup,
                   timing=args.timing, states=False)
    for p in preds:
        if not p.replayable:
            raise CLIError(f"cannot promote {p.policy}: {p.reason}")
    sampling = run.get("sampling") or {}
    target_id = args.target or (run.get("target") or {}).get("id")
    draft_id = args.draft or (run.get("draft") or {}).get("id")
    if not target_id or not draft_id:
        raise CLIError(f"{args.trace}/run.json names no target or draft; pass --target and --draft")
    dtype = args.dtype or (run.get("setup") or {}).get("dtype") or "auto"
    from specreplay.live.cli import _device
    device = _device(args)
    target = load_target(target_id, dtype=dtype, attn=args.attn, device=device)
    draft = load_draft(draft_id, target, device=device)
    from specreplay.live.backend import backend_stages, cli_backend
    backend = cli_backend(args.backend, target, draft)
    tokenizer = load_tokenizer(args.tokenizer or target_id)
    if args.dataset:
        prompts = _prompts_file(args.dataset, trace, tokenizer, args.heldout)
        dataset = prompts.describe()
    else:
        prompts = _prompts_same(trace) if args.prompts == "same" else \
            _prompts_heldout(trace, tokenizer, args.heldout)
        dataset = dict(run.get("dataset") or {})
        dataset["indices"] = [p.dataset_index for p in prompts]
    info = ModelInfo(target={"id": target_id, "files": file_hashes(target_id)},
                     draft={"id": draft_id, "files": file_hashes(draft_id),
                            "block_size": draft.config.block_size,
                            "mask_token_id": draft.config.mask_token_id},
                     setup=describe_setup(target, device, backend, backend_stages(backend, target, draft)), dataset=dataset)
    ledger = Path(args.ledger)
    out_root = Path(args.out)
    suffix = prompt_kind + (f"-{_slug(Path(args.dataset).stem)}" if args.dataset else "")
    specs = [p.policy for p in preds]
    # ar is the baseline of the measured speedup: run it in the same turns
    ar_index = next((i for i, p in enumerate(preds) if p.canonical == "ar"), None)
    live_specs = specs + (["ar"] if ar_index is None else [])
    ar_index = len(specs) if ar_index is None else ar_index
    runs = []
    for spec in live_specs:
        out = out_root / f"{_slug(spec)}-{suffix}"
        settings = RecordSettings(
            out=out, policy=spec, max_new_tokens=int(sampling.get("max_new_tokens", 256)),
            temperature=float(sampling.get("temperature", 0.0)), seed=int(sampling.get("seed", 0)),
            sampling=sampling.get("mode", "rejection"),
            top_k_logits=int(run.get("top_k_logits") or 8),
            oracle_top_k=int((run.get("oracle") or {}).get("top_k") or 4),
            oracle=False, record_logits=False, resume=args.resume,
            stop_token_ids=tuple(sampling.get("stop_token_ids") or ()))
        runs.append((out, Recorder(target, draft, settings, info, backend)))
    if args.warmup and prompts:
        # one untimed decode per policy first: kernel selection, allocator growth and
        # lazy initialisation then land on no measured cycle, in particular not all on
        # the first policy's first prompt
        for _, rec in runs:
            rec.warm_up(prompts[0])
    progress = sys.stderr.isatty()
    n = len(prompts)
    sessions = [rec.open(n * args.repeats) for _, rec in runs]
    for k, r, i in turns(len(runs), n, args.repeats, args.order):
        sessions[k].add(r * n + i, prompts[i], progress)
    for session in sessions:
        session.finish()
    ar_m = measured(runs[ar_index][0])
    for pred, (out, _) in zip(preds, runs):
        m = measured(out, bootstrap=args.bootstrap, seed=0)
        row = {
            "policy": pred.policy, "prompts": prompt_kind,
            "predicted_tokens_per_s": pred.tokens_per_s, "measured_tokens_per_s": m["tokens_per_s"],
            "predicted_tau": pred.tau_mean, "measured_tau": m["tau_mean"],
            "predicted_ci_low": pred.ci_low, "predicted_ci_high": pred.ci_high,
            "measured_ci_low": m["ci_low"], "measured_ci_high": m["ci_high"],
            "predicted_speedup": pred.speedup,
            "measured_speedup": ar_m["tpot_s"] / m["tpot_s"] if m["tpot_s"] else None,
            "repeats": args.repeats, "label": pred.label,
            "trace": str(args.trace), "profile": str(profile or "live cycles of the trace"),
            "setup": _setup_text(run), "measured_trace": str(out),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "note": "; ".join(x for x in (pred.fidelity if pred.fidelity != "exact" else "",
                                          f"order={args.order}",
                                          f"prompts from {args.dataset}" if args.dataset else "",
                                          "timing=calibrated" if args.timing == "calibrated" else "")
                              if x),
        }
        append_ledger_row(ledger, row)
        speed = (f"; speedup predicted {pred.speedup:.3f} measured {row['measured_speedup']:.3f}"
                 if pred.speedup and row["measured_speedup"] else "")
        print(f"{pred.policy} [{prompt_kind}, {args.repeats} repeats]: predicted "
              f"{pred.tokens_per_s:.1f} tok/s tau {pred.tau_mean:.3f}; measured "
              f"{m['tokens_per_s']:.1f} tok/s"
              + (f" [{m['ci_low']:.1f}, {m['ci_high']:.1f}]" if m["ci_low"] is not None else "")
              + f" tau "
              f"{m['tau_mean']:.3f}{speed} ({pred.label}) -> {ledger}", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``promote`` to the specreplay command."""
    p = sub.add_parser(
        "promote", help="run predicted policies live and write predicted vs measured to the ledger",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Predict each policy from TRACE with the simulator, decode the same prompts "
                    "(or held-out prompts of the same dataset) live with the trace's models and "
                    "sampling settings, record the live run as a trace under --out, and append "
                    "predicted and measured tokens/s and tau to the ledger.",
        epilog="examples:\n"
               "  specreplay promote --trace traces/he-fixed16 --policy 'tree(topk=2, depth=4)'\n"
               "  specreplay promote --trace traces/he-fixed16 --policy 'fixed(b=8)' "
               "--policy 'ewma' --prompts heldout --out runs/promoted")
    p.add_argument("--trace", required=True, help="the trace the predictions come from")
    p.add_argument("--policy", action="append", required=True, help="policy spec (repeatable)")
    p.add_argument("--prompts", choices=("same", "heldout"), default="same",
                   help="decode the trace's prompts (same) or other prompts of its dataset, or "
                        "of --dataset (heldout)")
    p.add_argument("--heldout", type=int,
                   help="number of held-out prompts (default: as many as the trace has)")
    p.add_argument("--profile", help="cost profile directory (default: the trace's own)")
    p.add_argument("--profile-from-other-setup", action="store_true",
                   help="allow a profile measured on another setup (labelled in the prediction)")
    p.add_argument("--timing", choices=("model", "calibrated"), default="model",
                   help="how the prediction costs time: model (the profile, default) or "
                        "calibrated (the profile scaled to the trace's plain live cycles)")
    p.add_argument("--ledger", default=DEFAULT_LEDGER,
                   help=f"ledger CSV to append to (default: {DEFAULT_LEDGER} in the working "
                        "directory, created with its header when missing)")
    p.add_argument("--repeats", type=int, default=3,
                   help="live decodes of every prompt per policy (default 3), interleaved "
                        "with the other policies and ar; the measured interval spans them")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the measured interval (default 1000)")
    p.add_argument("--dataset",
                   help="held-out prompts of another kind: a .jsonl file (or dataset name) "
                        "whose prompts the trace did not use; needs --prompts heldout")
    p.add_argument("--out", default="runs/promoted", help="where the live traces go (default runs/promoted)")
    p.add_argument("--target", help="target model (default: run.json's)")
    p.add_argument("--draft", help="draft model (default: run.json's)")
    p.add_argument("--tokenizer", help="tokenizer (default: the target's)")
    p.add_argument("--dtype", help="model dtype (default: the recording's)")
    p.add_argument("--attn", help="attention implementation")
    p.add_argument("--device", help="cuda, cuda:N or cpu")
    from specreplay.live.profile_cli import add_backend_flag
    add_backend_flag(p)
    p.add_argument("--resume", action="store_true", help="continue interrupted live runs")
    p.add_argument("--order", choices=("interleaved", "sequential"), default="interleaved",
                   help="interleaved (default): each prompt of each repeat is decoded by every "
                        "policy and ar in turn, so drifts of the machine's speed hit all "
                        "policies alike; sequential: one policy after another")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the untimed decode of the first prompt by each policy")
    p.set_defaults(func=_promote)
