"""Few-row attention on the GPU: models/kernels.py's one-pass kernel against the batched
matmuls around the softmax kernel that captured calls run by default
(models/fast.py ``small_attention``), at the shapes of a verify or decode step.

    python benchmarks/attention_speed.py                    # Qwen3-8B shape, bf16
    python benchmarks/attention_speed.py --contexts 512,4096 --queries 1,16,32

Per (query tokens q, context): the keys a captured pass attends over (the context plus
q, rounded up as the graph backend's spans are: traces/schema.py), one CUDA graph per
route replaying the attention of every layer (each layer its own queries and K/V, the K/V
views of a cache as the engine reads them, so nothing stays in L2 that would not in a
forward), microseconds per layer of each, and each route's
largest distance from a float64 computation of the same inputs. Ends with one line,
``attention_speed q=16 context=512 few_row_us=… matmul_us=… ratio=…`` (ratio < 1: the
kernel is faster), at the first context and the largest q asked for.
"""
from __future__ import annotations

import argparse
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="512,1024,2048", help="context lengths (default 512,1024,2048)")
    ap.add_argument("--queries", default="1,16", help="query tokens per step (default 1,16)")
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--groups", type=int, default=4, help="query heads per KV head")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--replays", type=int, default=20)
    args = ap.parse_args()
    try:
        contexts = [int(x) for x in args.contexts.split(",")]
        queries = [int(x) for x in args.queries.split(",")]
    except ValueError:
        print("attention_speed: --contexts and --queries take comma-separated integers, e.g. 512,1024",
              file=sys.stderr)
        return 2
    if min(contexts + queries + [args.layers, args.kv_heads, args.groups, args.replays, args.head_dim]) < 1:
        print("attention_speed: every count and size must be at least 1", file=sys.stderr)
        return 2

    import importlib.util

    import torch
    if not torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        print("attention_speed: needs a CUDA GPU with Triton installed (the kernel runs nowhere else)",
              file=sys.stderr)
        return 2
    from specreplay.models import kernels
    from specreplay.models.fast import small_attention
    from specreplay.traces.schema import KV_QUANTUM, kv_rows

    dev = torch.device("cuda")
    KV, G, D = args.kv_heads, args.groups, args.head_dim
    scale = D ** -0.5
    print(f"{torch.cuda.get_device_name(dev)}; torch {torch.__version__}; {args.layers} layers x {KV} KV heads "
          f"x {G} query heads each, head dim {D}, bf16")
    last = None
    for context in contexts:
        for q in queries:
            R, S = G * q, kv_rows(context + q, KV_QUANTUM)
            gen = torch.Generator(device=dev).manual_seed(0)
            qs = [torch.randn(KV, R, D, device=dev, generator=gen).to(torch.bfloat16) for _ in range(args.layers)]
            # K/V as the engine reads them: one layer's rows 0..S-1 of a cache with room
            # for more, so heads sit at the cache's stride
            cache = torch.randn(args.layers, 2, KV, S + 256, D, device=dev, generator=gen).to(torch.bfloat16)
            ks, vs = [c[0, :, :S] for c in cache], [c[1, :, :S] for c in cache]
            # the verify mask's shape: every key up to the context, the new rows causal
            visible = torch.zeros(R, S, dtype=torch.bool, device=dev)
            rows = torch.arange(R, device=dev) % q
            visible[:, :context] = True
            visible[torch.arange(R, device=dev)[:, None], context + torch.arange(q, device=dev)[None]] = \
                torch.arange(q, device=dev)[None] <= rows[:, None]
            bias = torch.zeros(1, R, S, device=dev, dtype=torch.bfloat16).masked_fill_(~visible, float("-inf"))
            if not kernels.few_rows_fit(qs[0], ks[0], vs[0], bias):
                print(f"q={q:3d} context={context:5d}: the engine does not take the few-row kernel here "
                      f"({R} rows, {S} keys, head dim {D}); skipped")
                del cache
                continue
            routes = {"few_row": lambda qh, k, v: kernels.few_row_attention(qh, k, v, bias, scale),
                      "matmul": lambda qh, k, v: small_attention(qh, k, v, bias, scale, kernels.masked_softmax)}
            exact = torch.softmax(torch.einsum("hrd,hsd->hrs", qs[0].double(), ks[0].double()) * scale
                                  + bias.double(), -1) @ vs[0].double()
            us, err = {}, {}
            for name, fn in routes.items():
                err[name] = (fn(qs[0], ks[0], vs[0]).double() - exact).abs().max().item()
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for qh, k, v in zip(qs, ks, vs):
                        fn(qh, k, v)
                graph.replay()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(args.replays):
                    graph.replay()
                end.record()
                end.synchronize()
                us[name] = start.elapsed_time(end) * 1e3 / args.replays / args.layers
            print(f"q={q:3d} context={context:5d} keys={S:5d} rows={R:4d}: few_row {us['few_row']:6.2f} us/layer "
                  f"(max err {err['few_row']:.1e}), matmul {us['matmul']:6.2f} us/layer (max err "
                  f"{err['matmul']:.1e}), ratio {us['few_row'] / us['matmul']:.2f}")
            if context == contexts[0] and q == max(queries):
                last = (q, context, us)
            del cache, ks, vs
    if last is None:
        print("attention_speed: the engine takes the few-row kernel at none of these shapes", file=sys.stderr)
        return 1
    q, context, us = last
    print(f"attention_speed q={q} context={context} few_row_us={us['few_row']:.2f} matmul_us={us['matmul']:.2f} "
          f"ratio={us['few_row'] / us['matmul']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
