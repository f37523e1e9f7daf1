"""``specreplay profile``: measure the latency profile of a target/draft pair on this
machine (live/profiler.py says what is measured) and write profile.parquet +
profile.json, which the simulator's cost model reads."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specreplay.errors import CLIError

KINDS_SHOWN = ("target", "tree_verify", "draft", "overhead")
BACKENDS = ("hf", "graph")


def add_backend_flag(parser, default: str = "graph on CUDA for the targets it runs, hf otherwise") -> None:
    """The ``--backend`` flag of record, promote, profile and oracle (live/backend.py)."""
    parser.add_argument("--backend", choices=BACKENDS,
                        help="how tensors are computed: graph (static KV caches, CUDA graphs; Qwen3 "
                             f"and Llama-family targets) or hf (transformers, any causal LM); default: {default}")


def register(sub) -> None:
    p = sub.add_parser(
        "profile", help="measure target/draft forward times for the simulator's cost model",
        description="Measure target forward time over query tokens, context length and batch, "
                    "tree-masked verify at the same sizes, draft time over block size and context "
                    "length, and the per-cycle host overhead; write profile.parquet and "
                    "profile.json into --out (a trace directory or any folder).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  specreplay profile --target Qwen/Qwen3-4B --draft z-lab/Qwen3-4B-DFlash-b16 --out prof\n"
               "  specreplay profile --target T --draft D --out TRACE --q 1,16,64 --batch 1 --quick")
    p.add_argument("--target", required=True, metavar="ID", help="target model: hub id or local folder")
    p.add_argument("--draft", required=True, metavar="ID", help="DFlash draft: hub id or local folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write profile.parquet and profile.json into")
    p.add_argument("--q", metavar="LIST", help="query tokens per row (default 1,2,4,...,256)")
    p.add_argument("--context", metavar="LIST", help="context lengths (default: when --out is a trace, the "
                                     "shortest recorded prompt, then doublings up to the longest context "
                                     "it reached; else 256,512,...,8192; points past the model's max "
                                     "positions are skipped)")
    p.add_argument("--batch", metavar="LIST", help="batch sizes (default 1,2,4,8,16,32)")
    p.add_argument("--block-sizes", metavar="LIST", help="draft block sizes (default 4,8,12,16)")
    p.add_argument("--repeats", type=int, metavar="N", help="timed calls per point (default 10)")
    p.add_argument("--warmup", type=int, metavar="N", help="untimed calls before them (default 2)")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's), bfloat16, float16 or float32")
    p.add_argument("--attn", help="attention implementation: sdpa, eager, flash_attention_2 "
                                  "(default: the transformers default)")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    add_backend_flag(p)
    p.add_argument("--quick", action="store_true",
                   help="a small grid (q 1,4; context 16,48; batch 1,2; block size 4; 1 warm-up "
                        "+ 3 timed calls) that runs in seconds: for tests and a first look")
    p.set_defaults(func=run_profile)


def int_list(text: str | None, flag: str, least: int) -> tuple[int, ...] | None:
    """Parse a comma-separated list of integers >= least (None stays None)."""
    if text is None:
        return None
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise CLIError(f"{flag} takes comma-separated integers like 1,2,4, not {text!r}") from None
    if not values or values[0] < least:
        raise CLIError(f"{flag} values must be integers of at least {least}, got {text!r}")
    return values


def grid_from_args(args):
    """The grid to measure: --quick or the default one, with any grid flags replacing
    its fields."""
    from specreplay.live.profiler import DEFAULT_GRID, QUICK_GRID, with_overrides

    if args.repeats is not None and args.repeats < 1:
        raise CLIError(f"--repeats must be at least 1, not {args.repeats}")
    if args.warmup is not None and args.warmup < 0:
        raise CLIError(f"--warmup must be 0 or more, not {args.warmup}")
    return with_overrides(
        QUICK_GRID if args.quick else DEFAULT_GRID,
        q=int_list(args.q, "--q", 1), context=int_list(args.context, "--context", 0),
        batch=int_list(args.batch, "--batch", 1),
        block_sizes=int_list(args.block_sizes, "--block-sizes", 2),
        repeats=args.repeats, warmup=args.warmup)


def pick_device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device {name!r} is not a device; use cuda, cuda:N or cpu") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name} asks for a GPU but torch sees none; use --device cpu")
    if device.type not in ("cuda", "cpu"):
        raise CLIError(f"--device {name} is not supported; use cuda, cuda:N or cpu")
    return device


def describe_skipped(skipped, target_max, draft_max) -> list[str]:
    """One line per (kind, context length) with the skipped q values (all batch sizes)."""
    by: dict[tuple[str, int], set[int]] = {}
    for p in skipped:
        by.setdefault((p.kind, p.context_len), set()).add(p.q)
    lines = [f"skipped {len(skipped)} points past the position limit "
             f"(target {target_max}, draft {draft_max}):"]
    for (kind, L), qs in sorted(by.items(), key=lambda kv: (KINDS_SHOWN.index(kv[0][0]), kv[0][1])):
        what = "block sizes" if kind == "draft" else "q"
        shown = "-" if kind == "overhead" else ",".join(map(str, sorted(qs)))
        lines.append(f"  {kind} at context {L}: {what} {shown}")
    return lines


def recorded_contexts(folder) -> tuple[int, int] | None:
    """(shortest prompt, longest prompt + output) of the trace in ``folder``, or None
    when it holds no recorded samples."""
    from specreplay.traces.reader import Trace
    if not (Path(folder) / "run.json").exists():
        return None
    try:
        samples = Trace.open(folder).samples.to_pylist()
    except Exception:  # not a readable trace: the default grid applies
        return None
    if not samples:
        return None
    return (min(len(s["prompt_ids"]) for s in samples),
            max(len(s["prompt_ids"]) + len(s["output_ids"]) for s in samples))


def run_profile(args) -> int:
    from tqdm import tqdm

    from specreplay.live.backend import cli_backend
    from specreplay.live.profiler import (DRAFT_TOP_K, GraphProfiler, Profiler, context_grid, describe_setup,
                                          estimate_seconds, host_policies, host_summary, max_positions,
                                          monotonicity, recorded_text, with_overrides)
    from specreplay.models.loading import file_hashes, load_draft, load_target
    from specreplay.traces.io import write_json
    from specreplay.traces.writer import read_json, write_profile

    grid = grid_from_args(args)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"--out {args.out} is a file; give a folder (a trace directory or a new one)")
    if args.context is None and not args.quick:
        span = recorded_contexts(args.out)
        if span is not None:
            grid = with_overrides(grid, context=context_grid(*span))
            print(f"context grid from the recorded prompts in {args.out}: {','.join(map(str, grid.context))}")
    device = pick_device(args.device)
    target = load_target(args.target, dtype=args.dtype, attn=args.attn, device=device)
    draft = load_draft(args.draft, target)
    backend = cli_backend(args.backend, target, draft)
    prof = (GraphProfiler if backend == "graph" else Profiler)(target, draft, grid, device)
    # the host-time decodes read the recorded text, so they accept what the live runs do
    prof.host_text = recorded_text(args.out)
    if not prof.points:
        raise CLIError(f"every point of the grid runs past the position limit (target "
                       f"{max_positions(target)}, draft {max_positions(draft)}); ask for "
                       f"shorter --context values")
    counts = {k: sum(p.kind == k for p in prof.points) for k in KINDS_SHOWN if k != "overhead"}
    hosts = host_policies(grid.block_sizes)
    print("profile grid: " + ", ".join(f"{n} {k}" for k, n in counts.items()) +
          f" points, {grid.warmup} warm-up + {grid.repeats} timed calls each; host time from "
          f"{grid.host_cycles} live cycles of each of {len(hosts)} policies ({', '.join(hosts)}) "
          f"per context length and pass, their prompts "
          f"{'cut from the recorded samples' if prof.host_text else 'random tokens'}")
    if prof.skipped:
        print("\n".join(describe_skipped(prof.skipped, max_positions(target), max_positions(draft))))
    estimate = estimate_seconds(prof.points, grid, prof.probe())
    print(f"estimated {estimate:.0f} s of timed calls on {device} (plus building the KV caches)")
    with tqdm(total=len(prof.points), desc="profile", unit="point", file=sys.stderr) as bar:
        try:
            result = prof.run(progress=lambda group: bar.update(len(group)))
        except ValueError as e:
            raise CLIError(str(e)) from None
    meta = {
        "setup": describe_setup(target, device, backend, getattr(getattr(prof, "backend", None), "fusion", None)),
        "target": {"id": args.target, "files": file_hashes(args.target)},
        "draft": {"id": args.draft, "files": file_hashes(args.draft),
                  "block_size": draft.config.block_size, "mask_token_id": draft.config.mask_token_id},
        # what a draft row times (profiles before this field timed the bare pass + argmax)
        "draft_row": (f"loop draft step: host-built block, pass, top-{DRAFT_TOP_K} kept on the device"
                      if backend == "graph" else f"loop draft step: host-built block, pass, top-{DRAFT_TOP_K} to host"),
        "host_prompts": ("windows of the recorded samples' prompt and output tokens" if prof.host_text
                         else "random tokens (no recorded samples in --out)"),
    }
    out = write_profile(args.out, result.rows, meta)
    # the checks and the backend's own figures go beside the setup in profile.json
    extra = prof.meta(result.rows) if backend == "graph" else {"checks": {"monotone": monotonicity(result.rows)},
                                                                "host_s": host_summary(result.rows),
                                                                "measured": {"host_cycles_per_decode": grid.host_cycles}}
    write_json(Path(out) / "profile.json", {**read_json(Path(out) / "profile.json"), **extra})
    bad = extra["checks"]["monotone"]["violations"]
    print(f"wrote {len(result.rows)} points to {out}/profile.parquet in {result.elapsed_s:.0f} s")
    print("host part of a live cycle (median ms): " +
          ", ".join(f"{m} {v * 1e3:.3f}" for m, v in extra["host_s"].items()))
    print(f"monotonicity check: {len(bad)} violations in {extra['checks']['monotone']['checked']} "
          f"neighbouring pairs" + (" (listed in profile.json checks; the points are kept as measured)"
                                  if bad else ""))
    for v in bad[:5]:
        print(f"  {v['kind']} at {'context' if v['axis'] == 'q' else 'q'} {v['at']}: {v['axis']} {v['from']} -> "
              f"{v['to']} fell from {v['from_s'] * 1e3:.3f} ms to {v['to_s'] * 1e3:.3f} ms")
    return 0
