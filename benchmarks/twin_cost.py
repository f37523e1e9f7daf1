"""What a cost twin costs: the twin target's verify pass against a random-weight model of
the same shape, timed interleaved on one device.

    python benchmarks/twin_cost.py                      # twin:qwen3-8b on the GPU, bf16
    python benchmarks/twin_cost.py --shape test         # the small test shape (CPU: checks that it runs)
    python benchmarks/twin_cost.py --arms twin,random   # leave out the zero-padded arm

A twin (models/twin.py) claims that its forward passes cost what the real model's cost.
Cost is shape, and also a little the values: a GPU multiplying exact zeros switches
fewer bits and clocks higher. So the twin is compared with a model of the same shape
whose every matrix is random (normal(0, 0.02), norms ones: a fresh Qwen3), and with the
zero-padded twin (``fill_std=0``, the twin's own construction with zeros wherever it
does not pin a value) to show what the values are worth.

Each arm is the target pass the graph backend replays for a verify (models/fast.py's
FastTarget over a static cache, captured in a CUDA graph on a GPU, eager elsewhere; with
the eager elementwise stages, in both arms alike, where the backend may compile them): q
query rows, a chain, after a context of L rows prefilled from the same token ids in
every arm. Rounds alternate the arm order (A B C, C B A, ...) so a slow phase of the
machine hits every arm alike; each round times ``--iters`` replays with CUDA events
(perf_counter on a CPU). Prints, per q,

    twin_cost shape=qwen3-8b q=1 L=1024 twin_ms=.. random_ms=.. ratio=.. [zeros_ms=.. zeros_ratio=..]

(medians over rounds; ratio = twin / random, with the spread of the per-round ratios),
and before them the twin's build seconds, the parameter count and bytes of its target
and draft (with the published models' counts for the registered real shapes) and the
share of exact zeros in each arm's weights.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


# Parameter counts of the published models a shape copies: the target, and the DFlash
# draft without the target's embedding and LM head, which it borrows.
PUBLISHED = {"qwen3-8b": {"target": 8_190_735_360, "draft": 1_048_626_432},
             "qwen3-4b": {"target": 4_022_468_096, "draft": 537_427_200}}
ARMS = ("twin", "random", "zeros")


def random_target(plan, device, dtype, seed: int = 2):
    """A Qwen3 target of the twin's exact config, every matrix normal(0, 0.02) from a
    seeded generator on ``device``, every norm ones."""
    import torch
    from transformers import Qwen3ForCausalLM
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding
    from specreplay.models.twin import _filled

    config = plan.target_config(dtype)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    # the twin's own fill (normal(0, 0.02) matrices, unit norms), with nothing pinned
    _filled(model, device, dtype, seed, 0.02)
    model.model.rotary_emb = Qwen3RotaryEmbedding(config).to(device)
    return model.eval()


def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class VerifyStep:
    """One arm: a model's FastTarget over its own static cache, prefilled with ``context``
    ids, and per q a (captured) verify step of q chained rows at cache length L."""

    def __init__(self, model, taps, context, qs, capture: bool):
        import torch

        from specreplay.live.backend import KV_QUANTUM
        from specreplay.models.fast import FastTarget

        self.fast = FastTarget(model, taps)
        self.device = self.fast.device
        self.capture = capture
        L = len(context)
        self.L = L
        self.capacity = -(-(L + max(qs)) // KV_QUANTUM) * KV_QUANTUM
        self.cache = self.fast.new_cache(self.capacity)
        dev = self.device
        ids = torch.tensor([context], device=dev)
        rows = torch.arange(L, device=dev)
        mask = torch.ones(L, L, dtype=torch.bool, device=dev).tril()[None, None]
        with torch.no_grad():
            self.fast.forward(self.cache, ids, rows[None], rows, mask, L, last_logits=True)
        self.cache.length = L
        self.steps = {q: self._step(q, context) for q in qs}

    def _step(self, q: int, context):
        import torch

        from specreplay.live.backend import kv_span
        from specreplay.models.fast import StepGraph

        L, dev = self.L, self.device
        span = kv_span(L + q, self.capacity)
        ids = torch.tensor([[context[(i * 7) % L] for i in range(q)]], device=dev)
        pos = torch.arange(L, L + q, device=dev)[None]
        rows = torch.arange(L, L + q, device=dev)
        mask = torch.zeros(q, span, dtype=torch.bool)
        mask[:, :L] = True
        mask[:, L:L + q] = torch.ones(q, q, dtype=torch.bool).tril()
        mask = mask[None, None].to(dev)

        def fn(*inputs):
            with torch.no_grad():
                return self.fast.forward(self.cache, *inputs, span)
        return StepGraph(fn, (ids, pos, rows, mask), capture=self.capture)

    def time_ms(self, q: int, iters: int, warm: int = 3) -> float:
        """Milliseconds per pass, averaged over ``iters`` back-to-back replays."""
        import torch

        step = self.steps[q]
        for _ in range(warm):
            step.run()
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                step.run()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            step.run()
        return (time.perf_counter() - t0) * 1e3 / iters


def _share(shares: dict) -> str:
    zeros, total = shares["all"]
    top = sorted(((z / n, k) for k, (z, n) in shares.items() if k != "all" and n > 1 << 16), reverse=True)[:3]
    return f"{zeros / total:.4f} (most: " + ", ".join(f"{k} {s:.3f}" for s, k in top) + ")"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen3-8b", help="a registered twin shape (default qwen3-8b; test on a CPU)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on a CPU")
    ap.add_argument("--q", default="1,16", help="query rows per verify pass, comma-separated (default 1,16)")
    ap.add_argument("--context", type=int, default=None,
                    help="cache rows before the pass, L (default 1024 on a GPU, 64 on a CPU)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 12 on a GPU, 2 on a CPU)")
    ap.add_argument("--iters", type=int, default=None, help="passes per arm per round (default 40 on a GPU, 2 on a CPU)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"which of {', '.join(ARMS)} to time (default all)")
    args = ap.parse_args()

    import torch

    from specreplay.models import twin

    try:
        shape = twin.shape_of(args.shape)
    except twin.TwinError as e:
        print(f"twin_cost: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("twin_cost: --device cuda but no GPU is visible; pass --device cpu --shape test.", file=sys.stderr)
        return 2
    arms = [a for a in args.arms.split(",") if a]
    if not arms or any(a not in ARMS for a in arms):
        print(f"twin_cost: --arms takes a comma-separated subset of {', '.join(ARMS)}, not {args.arms!r}.",
              file=sys.stderr)
        return 2
    try:
        qs = sorted({int(q) for q in args.q.split(",")})
    except ValueError:
        qs = [0]
    gpu = device.type == "cuda"
    # a CPU run only checks that the benchmark works (its timings say nothing of a GPU)
    args.context = args.context or (1024 if gpu else 64)
    if min(qs) < 1 or args.context < 1:
        print(f"twin_cost: --q takes positive integers (e.g. 1,16) and --context a positive length.",
              file=sys.stderr)
        return 2
    if not gpu and shape.name != "test":
        print(f"twin_cost: the {shape.name} twin is too large for timing on a CPU; pass --shape test.",
              file=sys.stderr)
        return 2
    dtype = twin._dtype(args.dtype or ("bfloat16" if gpu else "float32"))
    rounds = args.rounds or (12 if gpu else 2)
    iters = args.iters or (40 if gpu else 2)
    if not gpu:
        torch.set_num_threads(min(torch.get_num_threads(), 4))

    from transformers import Qwen3ForCausalLM  # noqa: F401  (imports out of the build time)
    torch.zeros(1, device=device) @ torch.zeros(1, device=device)
    sync(device)

    plan = twin.plan_twin(shape)
    t0 = time.perf_counter()
    target, draft = twin.build_pair(shape, device, dtype)
    sync(device)
    build_s = time.perf_counter() - t0
    counts = {"target": sum(p.numel() for p in target.parameters()),
              "draft": sum(p.numel() for p in draft.parameters())}
    sizes = {"target": twin.nbytes(target), "draft": twin.nbytes(draft)}
    print(f"twin_cost shape={shape.name} device={torch.cuda.get_device_name(device) if gpu else 'cpu'} "
          f"dtype={str(dtype).removeprefix('torch.')} build_s={build_s:.2f} (target and draft, on the device)")
    published = PUBLISHED.get(shape.name, {})
    for part in ("target", "draft"):
        ref = published.get(part)
        note = (f" published={ref:,} equal={counts[part] == ref}" if ref else "")
        extra = " (without the borrowed embedding and LM head)" if part == "draft" else ""
        print(f"twin_cost {part}{extra}: params={counts[part]:,} bytes={sizes[part]:,}{note}")
    print(f"twin_cost zero share: twin target {_share(twin.zero_shares(target))}, "
          f"twin draft {_share(twin.zero_shares(draft))}")
    taps = list(draft.target_layer_ids)
    del draft

    models = {}
    if "twin" in arms:
        models["twin"] = target
    else:
        del target
    if "random" in arms:
        models["random"] = random_target(plan, device, dtype)
    if "zeros" in arms:
        models["zeros"] = twin.build_target(shape, device=device, dtype=dtype, plan=plan, fill_std=0.0)
    for name in ("random", "zeros"):
        if name in models:
            print(f"twin_cost zero share: {name} target {_share(twin.zero_shares(models[name]))}")

    # The same context in every arm: ids of the fixture's vocabulary (the twin's real rows)
    g = torch.Generator().manual_seed(0)
    context = torch.randint(3, plan.V, (args.context,), generator=g).tolist()
    t0 = time.perf_counter()
    steps = {name: VerifyStep(m, taps, context, qs, capture=gpu) for name, m in models.items()}
    sync(device)
    print(f"twin_cost prefill L={args.context} and {'capture' if gpu else 'setup'} of q={qs}: "
          f"{time.perf_counter() - t0:.1f} s; {rounds} rounds x {iters} passes per arm")

    for q in qs:
        times = {name: [] for name in steps}
        order = list(steps)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                times[name].append(steps[name].time_ms(q, iters))
        med = {name: statistics.median(t) for name, t in times.items()}
        line = f"twin_cost shape={shape.name} q={q} L={args.context}"
        for name in order:
            line += f" {name}_ms={med[name]:.3f}"
        if "random" in med:
            for name in ("twin", "zeros"):
                if name in med:
                    per_round = [a / b for a, b in zip(times[name], times["random"])]
                    key = "ratio" if name == "twin" else "zeros_ratio"
                    line += (f" {key}={med[name] / med['random']:.4f}"
                             f" ({name} per-round {min(per_round):.4f}..{max(per_round):.4f})")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
