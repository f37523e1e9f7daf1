"""Oracle speed: the oracle pass (block sizes 4/8/12/16 plus the default recycle and
refine probes) against the live decode it follows, on the same prompts, in one run.

    python benchmarks/oracle_speed.py                              # the fixture pair, CPU or GPU
    python benchmarks/oracle_speed.py --device cuda --target twin:qwen3-8b --draft twin:qwen3-8b
    python benchmarks/oracle_speed.py --target ID --draft ID --dtype bfloat16

Prints ``oracle_speed decode_s=… oracle_s=… ratio=…``: decode_s sums the recorded decode
seconds of ``fixed(b=16)`` over the prompts (the samples table's ``decode_s``, prefill
excluded), oracle_s the wall seconds of ``Oracle.rows`` over the same outputs (target
pass, every block size, every probe, the rows built), ratio = oracle_s / decode_s.
floor_s is the matmul work of the draft's layer weights over every block row drafted and
of the LM head over every head row (2 x parameters x rows), at the rate of one matmul of
the draft's own MLP shape measured in the same run (``gemm_tflops``): the target pass,
attention and host work are left out, so an oracle that drafts these rows with these
weights takes longer unless its matmuls beat that rate. floor_ratio = floor_s / decode_s.
A first prompt runs untimed to warm both up (``--warmup``). The prompts are those of the shipped sample
trace (fixture token ids, which the cost twin shares).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "models" / "fixtures"
SAMPLE = ROOT / "traces" / "samples" / "humaneval-fixed16"


def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rate(draft, device) -> float:
    """FLOP/s of one matmul of the draft's MLP shape (rows x hidden by hidden x
    intermediate) in the draft's dtype: 8192 rows on a GPU (the most rows of one
    ``forward_blocks`` chunk), 256 on a CPU; the median of several timed repeats after a
    warm-up."""
    import torch
    cfg = draft.config
    rows = 8192 if device.type == "cuda" else 256
    dtype = draft.fc.weight.dtype
    x = torch.randn(rows, cfg.hidden_size, device=device, dtype=dtype)
    w = torch.randn(cfg.intermediate_size, cfg.hidden_size, device=device, dtype=dtype)
    times = []
    for r in range(8):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(5):
            x @ w.T
        sync(device)
        if r:
            times.append((time.perf_counter() - t0) / 5)
    return 2 * rows * cfg.hidden_size * cfg.intermediate_size / sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=str(FIXTURES / "target"))
    ap.add_argument("--draft", default=str(FIXTURES / "draft"))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--backend", default=None, help="live backend for the decode: graph or hf (default: the tool's)")
    ap.add_argument("--prompts", type=int, default=4, help="timed prompts")
    ap.add_argument("--warmup", type=int, default=1, help="untimed prompts run first")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--block-sizes", default="4,8,12,16")
    ap.add_argument("--probes", default="recycle,refine")
    ap.add_argument("--probe-block-sizes", default=None,
                    help="block sizes that get the probes (default: every oracle block size)")
    args = ap.parse_args(argv)

    import pyarrow.parquet as pq
    import torch

    from specreplay.live.backend import backend_for
    from specreplay.live.loop import Decoder, LoopConfig
    from specreplay.live.oracle import Oracle, default_probe_keys
    from specreplay.models.loading import load_draft, load_target
    from specreplay.policies import parse_policy
    from specreplay.policies.spec import split_top

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_target(args.target, dtype=args.dtype, device=device)
    draft = load_draft(args.draft, target)
    prompts = [list(map(int, p)) for p in pq.read_table(SAMPLE / "samples.parquet").column("prompt_ids").to_pylist()]
    prompts = prompts[:args.prompts + args.warmup]
    stop = (0,) if Path(args.target).resolve() == (FIXTURES / "target").resolve() or args.target.startswith("twin:") else ()
    cfg = LoopConfig(max_new_tokens=args.max_new_tokens, stop_token_ids=stop)
    dec = Decoder(target, draft, parse_policy("fixed(b=16)"), cfg,
                  backend=backend_for(args.backend, target, draft))
    sizes = [int(b) for b in args.block_sizes.split(",")]
    probes = default_probe_keys(split_top(args.probes, ",")) if args.probes else []
    probe_sizes = [int(b) for b in args.probe_block_sizes.split(",")] if args.probe_block_sizes else None
    oracle = Oracle(target, draft, sizes, 4, probes, args.max_new_tokens, probe_sizes)

    decode_s = oracle_s = 0.0
    tokens = rows = 0
    drafted = {}
    for i, prompt in enumerate(prompts):
        res = dec.run(i, prompt)
        sync(device)
        before = dict(oracle.drafted)
        t0 = time.perf_counter()
        out, _ = oracle.rows(i, res.prompt_ids, res.output_ids)
        sync(device)
        dt = time.perf_counter() - t0
        print(f"prompt {i}{' (warm-up)' if i < args.warmup else ''}: {len(res.output_ids)} tokens, "
              f"{len(res.cycles)} cycles, decode {res.decode_s:.3f} s, oracle {dt:.3f} s, {len(out)} rows",
              flush=True)
        if i < args.warmup:
            continue
        decode_s += res.decode_s
        oracle_s += dt
        for key, n in oracle.drafted.items():
            drafted[key] = drafted.get(key, 0) + n - before[key]
        tokens += len(res.output_ids)
        rows += len(out)
    print(f"setup: target={args.target} draft={args.draft} device={device} dtype={args.dtype} "
          f"backend={dec.backend.__class__.__name__} prompts={len(prompts) - args.warmup} tokens={tokens} "
          f"block_sizes={args.block_sizes} probes={probes} rows={rows}")
    layer_params = sum(p.numel() for p in draft.layers.parameters())
    head_params = target.get_output_embeddings().weight.numel()
    flops = 2 * layer_params * drafted.get("block_rows", 0) + 2 * head_params * drafted.get("head_rows", 0)
    peak = gemm_rate(draft, device)
    print(f"drafted: {drafted.get('block_rows', 0)} block rows through {layer_params / 1e6:.0f} M layer weights, "
          f"{drafted.get('head_rows', 0)} LM head rows through {head_params / 1e6:.0f} M; "
          f"{flops / 1e12:.2f} TFLOP; achieved {flops / oracle_s / 1e12:.3g} TFLOP/s")
    print(f"oracle_speed decode_s={decode_s:.3f} oracle_s={oracle_s:.3f} ratio={oracle_s / decode_s:.3f} "
          f"gemm_tflops={peak / 1e12:.3g} floor_s={flops / peak:.3f} floor_ratio={flops / peak / decode_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
