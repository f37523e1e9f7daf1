"""``specreplay record`` and ``specreplay oracle``. Torch is imported only when a
command runs."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from specreplay.errors import CLIError, check_output_dir


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise CLIError(f"{flag} takes comma-separated integers like 4,8,12,16, not {text!r}") from None
    if not values or any(v < 2 for v in values):
        raise CLIError(f"{flag} needs block sizes of at least 2, got {text!r}")
    return values


def _probe_keys(texts: list[str] | str | None) -> tuple[str, ...]:
    """Probe keys from ``recycle,refine(steps=3, only_below=0.5)`` (commas inside
    parentheses belong to a key); ``--probes`` given several times adds up, so a
    second flag never silently replaces the first (with ``--replace`` that would drop
    a recorded probe)."""
    from specreplay.live.oracle import default_probe_keys
    from specreplay.policies.spec import split_top
    if isinstance(texts, str):
        texts = [texts]
    parts = [k for t in texts or () if t for k in split_top(t, ",")]
    return tuple(dict.fromkeys(default_probe_keys(parts))) if parts else ()


def _stop_ids(tokenizer, target) -> tuple[int, ...]:
    """Stop tokens: the tokenizer's eos plus the target's generation-config eos ids."""
    ids: list[int] = []
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(target, "generation_config", None), "eos_token_id", None)):
        if value is None:
            continue
        ids += list(value) if isinstance(value, (list, tuple)) else [value]
    return tuple(dict.fromkeys(int(i) for i in ids))


def _device(args):
    from specreplay.live.profile_cli import pick_device
    import torch
    rank, world = _shard()
    if world > 1 and args.device is None and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    return pick_device(args.device)


def _shard():
    from specreplay.live.recorder import shard
    return shard()


def _record(args: argparse.Namespace) -> int:
    from specreplay.live.backend import backend_stages, cli_backend
    from specreplay.live.profiler import describe_setup
    from specreplay.live.prompts import load_prompts
    from specreplay.live.recorder import ModelInfo, RecordSettings, Recorder
    from specreplay.models.loading import file_hashes, load_draft, load_target, load_tokenizer
    from specreplay.policies.spec import parse_policy

    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be at least 1, not {args.max_new_tokens}")
    if args.temperature < 0:
        raise CLIError(f"--temperature must be 0 (greedy) or more, not {args.temperature}")
    if args.top_k_logits < 1 or args.oracle_top_k < 1:
        raise CLIError("--top-k-logits and --oracle-top-k must be at least 1")
    policy = parse_policy(args.policy)  # bad specs fail before any model loads
    if policy.max_rank() >= args.oracle_top_k:
        raise CLIError(f"policy {policy.spec()} verifies draft rank {policy.max_rank()}; pass "
                       f"--oracle-top-k {policy.max_rank() + 1} or more")
    block_sizes = _int_list(args.oracle_block_sizes, "--oracle-block-sizes")
    probes = _probe_keys(args.probes)
    rank, world = _shard()
    out = Path(args.out) / f"rank-{rank}" if world > 1 else Path(args.out)
    check_output_dir(out)  # before the models load
    device = _device(args)
    target = load_target(args.target, dtype=args.dtype, attn=args.attn, device=device)
    draft = load_draft(args.draft, target, device=device)
    backend = cli_backend(args.backend, target, draft)
    tokenizer = load_tokenizer(args.tokenizer or args.target)
    prompts = load_prompts(args.dataset, tokenizer, max_samples=args.max_samples, split=args.split,
                           template=args.template)
    mine = prompts[rank::world]
    dataset = prompts.describe()
    dataset["indices"] = [p.dataset_index for p in mine]
    info = ModelInfo(
        target={"id": args.target, "files": file_hashes(args.target)},
        draft={"id": args.draft, "files": file_hashes(args.draft),
               "block_size": draft.config.block_size, "mask_token_id": draft.config.mask_token_id},
        setup=describe_setup(target, device, backend, backend_stages(backend, target, draft)), dataset=dataset)
    stop = tuple(args.stop_token_ids) if args.stop_token_ids is not None else _stop_ids(tokenizer, target)
    settings = RecordSettings(
        out=out, policy=args.policy, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, seed=args.seed, sampling=args.sampling,
        top_k_logits=args.top_k_logits, oracle_top_k=args.oracle_top_k,
        oracle_block_sizes=block_sizes, probes=probes, oracle=not args.no_oracle,
        probe_block_sizes=_int_list(args.probe_block_sizes, "--probe-block-sizes")
        if args.probe_block_sizes else None,
        check_ar=args.check_ar, resume=args.resume, record_logits=not args.no_logits,
        stop_token_ids=stop, warmup=args.warmup)
    try:
        recorder = Recorder(target, draft, settings, info, backend)
    except ValueError as e:
        raise CLIError(str(e)) from None
    summary = recorder.record(mine, progress=not args.quiet and sys.stderr.isatty())
    _print_summary(out, summary, args)
    return 0


def _print_summary(out: Path, s: dict, args) -> None:
    print(f"recorded {s['recorded']} samples into {out} ({s['skipped']} already there), "
          f"{s['tokens']} tokens in {s['cycles']} cycles, mean tau {s['tau_mean']:.2f}")
    if args.check_ar:
        print(f"samples whose output differs from plain AR decoding: {s['divergent']}")
    if not args.no_oracle:
        missing = sorted(set(s["block_sizes"]) - set(_int_list(args.oracle_block_sizes, "--oracle-block-sizes")))
        if missing:
            print(f"note: the live policy drafted block sizes {missing} that the oracle did not "
                  f"record; add them to --oracle-block-sizes to replay it", file=sys.stderr)


def _oracle_plan(args: argparse.Namespace, run: dict, recompute_all: str | None = None):
    """The pass that the flags ask for over a trace whose run.json is ``run``."""
    from specreplay.live.oracle_plan import plan_oracle
    from specreplay.policies.spec import parse_policy
    if args.top_k is not None and args.top_k < 1:
        raise CLIError(f"--top-k must be at least 1, not {args.top_k}")
    live_spec = run.get("live_policy")
    return plan_oracle(
        run.get("oracle"),
        block_sizes=_int_list(args.block_sizes, "--block-sizes") if args.block_sizes else None,
        probes=_probe_keys(args.probes) if args.probes is not None else None,
        top_k=args.top_k,
        probe_block_sizes=_int_list(args.probe_block_sizes, "--probe-block-sizes")
        if args.probe_block_sizes else None,
        live_probes=parse_policy(live_spec).probes() if live_spec else (),
        replace=args.replace, recompute_all=recompute_all)


def _other_models(args: argparse.Namespace, run: dict) -> str | None:
    """Why rows recorded earlier cannot sit beside rows computed now (other model files,
    another dtype), or None."""
    reasons = []
    for role in ("target", "draft"):
        given, recorded = getattr(args, role), (run.get(role) or {}).get("files")
        if given and recorded:
            from specreplay.models.loading import file_hashes
            if file_hashes(given) != recorded:
                reasons.append(f"--{role} {given} is not the recorded {role} (its files differ)")
    dtype = (run.get("setup") or {}).get("dtype")
    if args.dtype and args.dtype != "auto" and dtype and args.dtype != dtype:
        reasons.append(f"--dtype {args.dtype} is not the recording's {dtype}")
    return "; ".join(reasons) or None


def _kept_rows(table, keep) -> "np.ndarray":
    """Mask of the rows of an oracle table whose (block size, probe) group is kept."""
    import numpy as np
    blocks = table.column("block_size").to_numpy()
    probes = table.column("probe").to_pylist()
    return np.fromiter(((int(b), p) in keep for b, p in zip(blocks, probes)), bool, len(probes))


def _oracle(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from specreplay.live.oracle_plan import describe_drop
    from specreplay.traces.io import table_from_rows
    from specreplay.traces.reader import Trace
    from specreplay.traces.writer import TraceWriter, now_utc

    trace = Trace.open(args.trace)
    run = trace.run
    old_meta = run.get("oracle") or {}
    plan = _oracle_plan(args, run)  # bad flags fail before anything loads
    reason = _other_models(args, run) if old_meta and plan.keep else None
    if reason:
        plan = _oracle_plan(args, run, reason)
    held = (f"block sizes {','.join(map(str, plan.block_sizes))}, top-{plan.top_k}, "
            f"probes {list(plan.probes) or 'none'}")
    if plan.nothing_to_do:
        print(f"the oracle of {args.trace} already holds {held}: nothing to compute")
        return 0
    oracle = None
    if plan.compute:
        from specreplay.live.oracle import Oracle
        from specreplay.models.loading import load_draft, load_target
        target_id = args.target or (run.get("target") or {}).get("id")
        draft_id = args.draft or (run.get("draft") or {}).get("id")
        if not target_id or not draft_id:
            raise CLIError(f"{args.trace}/run.json names no target or draft; pass --target and --draft")
        device = _device(args)
        dtype = args.dtype or (run.get("setup") or {}).get("dtype") or "auto"
        target = load_target(target_id, dtype=dtype, attn=args.attn, device=device)
        draft = load_draft(draft_id, target, device=device)
        max_new = (run.get("sampling") or {}).get("max_new_tokens")
        from specreplay.live.backend import backend_for, cli_backend
        backend = cli_backend(args.backend or (run.get("setup") or {}).get("backend"), target, draft)
        oracle = Oracle(target, draft, plan.compute_block_sizes, plan.top_k, plan.compute_probes,
                        max_new, probe_block_sizes=plan.probe_block_sizes, only=plan.compute,
                        backend=backend_for(backend, target, draft))
    old = trace.oracle if plan.keep and trace.has_table("oracle") else None
    keep = _kept_rows(old, plan.keep) if old is not None else None
    # the target's top-k along S depends only on the models and k: kept unless they change
    old_k = int(old_meta.get("top_k") or 0)
    old_target = trace.oracle_target if old_meta and plan.top_k == old_k and not reason \
        and trace.has_table("oracle_target") else None
    writer = TraceWriter.reopen(args.trace)
    samples = trace.samples.to_pylist()
    for row in samples:
        s = int(row["sample"])
        parts, target_rows = [], None
        if old is not None:
            parts.append(old.filter(pa.array(keep & (old.column("sample").to_numpy() == s))))
        if oracle is not None:
            rows, target_rows = oracle.rows(s, row["prompt_ids"], row["output_ids"])
            parts.append(table_from_rows("oracle", rows))
        if old_target is not None:
            mine = old_target.filter(pa.array(old_target.column("sample").to_numpy() == s))
            target_rows = mine if mine.num_rows else target_rows
        writer.add_oracle(s, pa.concat_tables(parts) if parts else None, target_rows)
    writer.update_run(oracle=plan.run_meta(now_utc()))
    computed = sorted(plan.compute)
    print(f"oracle pass over {len(samples)} samples of {args.trace}: computed "
          f"{_groups_text(computed) or 'nothing'}; it now holds {held}")
    if plan.dropped is not None:
        print(f"dropped by --replace (recorded in {args.trace}/run.json): "
              f"{describe_drop(plan.dropped)}")
        lost = sorted(set(plan.dropped["block_sizes"]) & set(_live_block_sizes(trace)))
        if lost:
            print(f"the live policy {run.get('live_policy')} drafted block sizes "
                  f"{','.join(map(str, lost))}, so it can no longer be replayed from this trace")
    return 0


def _groups_text(groups) -> str:
    """[(8, ""), (8, "refine(...)"), (12, "")] -> 'block size 8 (plain, refine(...)); ...'"""
    by_size: dict[int, list[str]] = {}
    for b, p in groups:
        by_size.setdefault(b, []).append(p or "plain")
    return "; ".join(f"block size {b} ({', '.join(ps)})" for b, ps in sorted(by_size.items()))


def _live_block_sizes(trace) -> list[int]:
    if not trace.has_table("cycles"):
        return []
    return sorted(set(trace.cycles.column("block_size").to_pylist()))


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``record`` and ``oracle`` to the specreplay command."""
    from specreplay.live.profile_cli import add_backend_flag
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "record", help="decode prompts live with a policy and write a trace",
        formatter_class=fmt,
        description="Decode prompts with a target and a DFlash draft under a policy, writing "
                    "a trace (traces/README.md): per-cycle timings, plans, acceptance, top-k "
                    "logits, and the oracle pass that makes replay of other policies possible. "
                    "Each finished sample is flushed; --resume continues a killed run. Under "
                    "torchrun, prompts are sharded round-robin and rank r writes OUT/rank-r.",
        epilog="examples:\n"
               "  specreplay record --target Qwen/Qwen3-8B --draft z-lab/Qwen3-8B-DFlash-b16 \\\n"
               "      --dataset humaneval --policy 'fixed(b=16)' --out traces/he-fixed16\n"
               "  specreplay record ... --probes recycle,refine --check-ar --max-samples 20\n"
               "  torchrun --nproc-per-node 4 -m specreplay record ... --out traces/run")
    p.add_argument("--target", required=True, help="target model: hub id or local folder")
    p.add_argument("--draft", required=True, help="DFlash draft: hub id or local folder")
    p.add_argument("--tokenizer", help="tokenizer (default: the target's)")
    p.add_argument("--dataset", required=True, help="dataset name (gsm8k, humaneval, ...) or a JSONL file")
    p.add_argument("--split", help="dataset split (default: the dataset's usual one)")
    p.add_argument("--template", choices=("chat", "plain", "raw"), help="prompt template (default: chat when available)")
    p.add_argument("--policy", required=True, help="policy spec run live, e.g. 'fixed(b=16)'")
    p.add_argument("--out", required=True, help="trace directory to write")
    p.add_argument("--max-samples", type=int, help="prompts to record (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per prompt (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--sampling", choices=("rejection", "multiround"), default="rejection",
                   help="temperature > 0: standard rejection sampling for chains (default) or the "
                        "exact multi-round scheme for every plan; candidate plans always use multi-round")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--stop-token-ids", type=int, nargs="*",
                   help="stop tokens (default: the tokenizer's and the target's eos)")
    p.add_argument("--top-k-logits", type=int, default=8, help="k kept per cycle position (default 8)")
    p.add_argument("--no-logits", action="store_true", help="do not record cycle_logits (recording off)")
    p.add_argument("--oracle-top-k", type=int, default=4,
                   help="k of the draft proposals a policy sees and the oracle stores (default 4)")
    p.add_argument("--oracle-block-sizes", default="4,8,12,16", help="block sizes of the oracle pass")
    p.add_argument("--probes", action="append",
                   help="oracle probes: recycle, refine, or probe keys, comma-separated (the flag may repeat)")
    p.add_argument("--probe-block-sizes",
                   help="block sizes that get the probes (default: every oracle block size); "
                        "probes add up to b-1 rows per position, so this bounds a trace's size")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle pass (run `specreplay oracle` later)")
    p.add_argument("--check-ar", action="store_true",
                   help="also decode each prompt plainly and store the first divergence")
    p.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float16, float32")
    p.add_argument("--attn", help="attention implementation (sdpa, eager, ...; tree verify needs a mask-capable one)")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    add_backend_flag(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted recording in --out")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the untimed decode of the first prompt before recording (its cold "
                        "start then lands in the trace's timing)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_record)

    p = sub.add_parser(
        "oracle", help="run (or redo) the oracle pass on a recorded trace",
        formatter_class=fmt,
        description="Compute the oracle tables of a trace: for every output position and block "
                    "size, the draft's top-k proposals and the true token's rank, plus the probes "
                    "recycling and refinement policies need. Needs the trace's models (ids from "
                    "run.json unless given).\n\n"
                    "On a trace that has an oracle, the block sizes and probes given are ADDED: "
                    "what is recorded is kept and only what is missing is computed. --replace "
                    "drops what is not given.",
        epilog="examples:\n"
               "  specreplay oracle traces/he-fixed16\n"
               "  specreplay oracle traces/he-fixed16 --block-sizes 6,10 --probes recycle,refine\n"
               "  specreplay oracle traces/he-fixed16 --block-sizes 8,16 --replace")
    p.add_argument("trace", metavar="TRACE", help="trace directory")
    p.add_argument("--block-sizes",
                   help="comma-separated block sizes to add (a trace without an oracle: "
                        "default 4,8,12,16)")
    p.add_argument("--probes", action="append",
                   help="recycle, refine, or probe keys to add, comma-separated (the flag may repeat)")
    p.add_argument("--probe-block-sizes",
                   help="block sizes that get the probes (default: the recorded ones; every "
                        "block size when the recording gave probes to all)")
    p.add_argument("--top-k", type=int,
                   help="k kept per offset (default: run.json's, else 4); a larger k "
                        "recomputes every block size")
    p.add_argument("--replace", action="store_true",
                   help="make the given --block-sizes/--probes/--probe-block-sizes/--top-k the "
                        "whole oracle, dropping recorded ones not given; run.json records what "
                        "was dropped, and a replay that needs it says so")
    p.add_argument("--target", help="target model (default: run.json's)")
    p.add_argument("--draft", help="draft model (default: run.json's)")
    p.add_argument("--dtype", help="model dtype (default: the recording's)")
    p.add_argument("--attn", help="attention implementation")
    p.add_argument("--device", help="cuda, cuda:N or cpu")
    add_backend_flag(p, "the recording's backend (run.json setup), else graph on CUDA for the targets it "
                        "runs, hf otherwise")
    p.set_defaults(func=_oracle)
