"""Live engine speed: the graph backend's DFlash cycle against the memory floor, the hf
backend's cycle, a plain AR step and the cost of recording, all measured in one run on
one pair, interleaved (graph, graph without recording, hf, AR, repeated) so a slow
phase of the machine hits every figure alike.

    python benchmarks/live_speed.py                         # the fixture pair (CPU or GPU)
    python benchmarks/live_speed.py --random-shape qwen3-8b # random weights, Qwen3-8B shape (GPU)
    python benchmarks/live_speed.py --target ID --draft ID

Prints ``live_speed backend=graph cycle_ms=… hf_cycle_ms=… floor_ms=… floor_ratio=…
ar_step_ms=… record_overhead=…`` and, before it, the captured-vs-eager check (GPU), the
copy bandwidth behind the floor, capture seconds, GPU utilisation (nvidia-smi), and
where a target forward's device time goes, per kernel family, at q = 1 and q = B.

cycle_ms: median cycle seconds of ``fixed(b=B)`` through the graph backend, recording
on. floor_ms: bytes of the target's weights plus the draft's own, read once, at the
measured device copy bandwidth (read + write of a 1 GiB buffer, counted once each).
floor_ratio = floor_ms / cycle_ms (1.0 = at the floor). ar_step_ms: median cycle of
``ar``. record_overhead: (TPOT with recording - TPOT without) / TPOT without.
Every phase runs under a time guard (``--phase-timeout``).
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import statistics
import subprocess
import sys
import threading
from pathlib import Path


FIXTURES = Path(__file__).resolve().parents[1] / "models" / "fixtures"
# Qwen3-8B's published config (hidden, intermediate, layers, heads, kv heads, head dim,
# vocabulary) and the shape of its DFlash draft (5 layers, block 16).
SHAPES = {"qwen3-8b": dict(hidden=4096, intermediate=12288, layers=36, heads=32, kv_heads=8,
                           head_dim=128, vocab=151936, draft_layers=5)}


class PhaseTimeout(Exception):
    pass


@contextlib.contextmanager
def guard(name: str, seconds: float):
    """Raise PhaseTimeout when the block runs past ``seconds``."""
    def fire(*_):
        raise PhaseTimeout(f"phase {name} ran past its {seconds:.0f} s guard")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def random_pair(shape: str, device, dtype):
    """Random weights of a named shape, built straight on ``device`` in ``dtype``."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from specreplay.models.draft import DFlashDraftModel
    from specreplay.models.loading import tiny_draft_config
    s = SHAPES[shape]
    cfg = Qwen3Config(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                      num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"],
                      max_position_embeddings=40960, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                      tie_word_embeddings=False, dtype=str(dtype).removeprefix("torch."))
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            target = Qwen3ForCausalLM(cfg).eval()
            draft = DFlashDraftModel(tiny_draft_config(cfg, s["draft_layers"], 16, mask_token_id=s["vocab"] - 1))
            draft.init_weights(0.02)
    finally:
        torch.set_default_dtype(old)
    return target, draft.eval().bind_target(target)


def copy_bandwidth(device) -> float | None:
    """Bytes per second of a device-to-device copy (read + write counted), or None on a CPU."""
    import torch
    if device.type != "cuda":
        return None
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    return 2 * n / statistics.median(times)


class Utilisation:
    """Median GPU utilisation (%) sampled by nvidia-smi while the block runs."""

    def __init__(self):
        self.samples: list[float] = []
        self.proc = None

    def __enter__(self):
        smi = shutil.which("nvidia-smi")
        if smi:
            self.proc = subprocess.Popen([smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "200", "-i", "0"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def check_captured(target, draft, prompt: list[int], cycles: int) -> dict:
    """Captured vs eager graph backend on the same calls (prefill, then per cycle a draft
    pass and a chain verify of a block, committing 4 tokens), each eager call at exact
    sizes, each captured one padded and replayed. On a GPU both run in the model's dtype
    and are compared with a float32 copy of the same weights run eagerly: the captured
    calls pass when they are no further from float32 than the eager ones (max |logit
    diff| / max |logit| at most CHECK_RATIO times eager's, top-1 agreement with float32
    at most CHECK_TOP1_DROP below eager's); captured vs eager directly is reported too.
    On a CPU, where nothing is captured: the graph backend against the hf backend,
    within CHECK_REL_F32 and every top-1 equal. Returns the figures and ``ok``."""
    import copy

    import torch

    from specreplay.live.backend import GraphBackend, HFBackend
    cuda = target.get_input_embeddings().weight.device.type == "cuda"
    backends = {"eager": GraphBackend(target, draft, capture=False) if cuda else HFBackend(target, draft),
                "captured": GraphBackend(target, draft, capture=cuda)}
    if cuda:
        t32, d32 = copy.deepcopy((target, draft))
        t32.float()
        d32.float()
        backends["float32"] = GraphBackend(t32, d32, capture=False)
    states = {}
    for name, be in backends.items():
        tc, dc = be.start(len(prompt), 16 * cycles + 16)
        _, feats = be.prefill(tc, prompt, True)
        states[name] = [be, tc, dc, feats]
    L, cached = len(prompt), 0
    gen = torch.Generator().manual_seed(0)
    outs: dict[str, list] = {name: [] for name in backends}
    with torch.inference_mode():
        for _ in range(cycles):
            tokens = torch.randint(0, draft.config.vocab_size - 1, (15,), generator=gen).tolist()
            block = [tokens[0]] + [draft.mask_token_id] * 15
            for name, st in states.items():
                be, tc, dc, pending = st
                d = be.draft_pass(dc, block, pending, cached, L)
                v = be.verify(tc, "chain", ((0,) * 15,), tokens[0], tokens, L, True)
                st[3] = be.commit(tc, v, 0, 3, L)
                outs[name] += [d.float().clone(), v.node_logits.float().clone()]
            cached, L = L, L + 4

    def compare(x: str, y: str) -> tuple[float, float]:
        worst, agree, total = 0.0, 0, 0
        for a, b in zip(outs[x], outs[y]):
            worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-6)))
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a.shape[0]
        return worst, agree / total

    rel, top1 = compare("captured", "eager")
    out = {"rel": rel, "top1": top1}
    if not cuda:
        out["ok"] = rel <= CHECK_REL_F32 and top1 >= 1.0
        return out
    (out["eager_rel32"], out["eager_top1_32"]), (out["captured_rel32"], out["captured_top1_32"]) = \
        compare("eager", "float32"), compare("captured", "float32")
    # the recording's captured top-k: the same ids and values as the eager ops, and the
    # log-sum-exp to float32 rounding
    from specreplay.live.backend import topk_raw
    same = True
    with torch.inference_mode():
        for x in outs["captured"]:
            got, want = backends["captured"].record_topk(x, 8), topk_raw(x, 8)
            same &= bool(torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
                         and torch.allclose(got[2], want[2], rtol=1e-6, atol=0))
    out["record_topk_equal"] = same
    # a float32 model's eager pass is the float32 copy's own computation (distance 0):
    # the captured one then gets the float32 tolerance of the CPU check
    out["ok"] = (out["captured_rel32"] <= max(CHECK_RATIO * out["eager_rel32"], CHECK_REL_F32)
                 and out["captured_top1_32"] >= out["eager_top1_32"] - CHECK_TOP1_DROP and same)
    return out


# Kernel families of a target forward, by kernel name (first match wins): the cuBLAS /
# CUTLASS matmuls (weights, and attention's batched matmuls where the few-row kernel
# does not run), the generated kernels of the compiled elementwise stages,
# models/kernels.py's hand-written q/k norm + RoPE + cache write, softmax and few-row
# attention, the cache's index copies, plain copies; the rest (eager elementwise and
# reductions) is "other".
KERNEL_FAMILIES = (("matmul", ("gemm", "gemv", "nvjet", "xmma", "cutlass", "cublas", "splitk")),
                   ("compiled", ("triton",)),
                   ("handwritten", ("qk_rope_cache", "softmax_rows", "attend_split", "attend_merge")),
                   ("index", ("index", "scatter", "gather")),
                   ("copy", ("copy",)))


def kernel_family(name: str) -> str:
    low = name.lower()
    return next((fam for fam, keys in KERNEL_FAMILIES if any(k in low for k in keys)), "other")


def forward_kernels(backend, prompt: list[int], q: int = 16) -> dict:
    """What one target verify of q rows runs (torch.profiler over the eager call: a
    captured graph replays the same kernels, without the launch gaps between them): on
    a GPU the kernel count and the device milliseconds per kernel family
    (``kernel_family``); on a CPU the count of the aten operators it runs. The call
    attends over the span a captured verify of that context attends over: at the exact,
    unaligned length (513 keys) cuBLAS picks a GEMV kernel for q = 1's P@V that no
    captured call runs (18 us a layer against 4, measured on an H200)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from specreplay.live.backend import kv_span
    from specreplay.live.verify import pack
    cuda = backend.device.type == "cuda"
    tc, _ = backend.start(len(prompt), 64)
    span = kv_span(len(prompt) + q, tc.capacity) if backend.capture else len(prompt) + q
    with torch.inference_mode():
        backend.prefill(tc, prompt, True)
        tokens = list(range(1, q))
        call = lambda: backend.fast.forward(tc, *backend._verify_inputs(  # noqa: E731
            pack("chain", ((0,) * (q - 1),), 1, tokens), len(prompt), q, span), span)
        call()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            call()
            if cuda:
                torch.cuda.synchronize()
    if not cuda:
        n = sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)
        return {"n": n, "unit": "aten ops"}
    fams: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            fams.setdefault(kernel_family(e.name), []).append(e.time_range.elapsed_us() / 1e3)
    return {"n": sum(len(v) for v in fams.values()), "unit": "kernels",
            "ms": {k: sum(v) for k, v in fams.items()}, "count": {k: len(v) for k, v in fams.items()}}


def few_row_backend(target, draft):
    """A graph backend of its own (its own caches and graphs) whose captured calls take
    models/kernels.py's few-row attention, whatever models/fast.py FEW_ROW_KERNEL says:
    the other side of --compare-few-row-attention."""
    import dataclasses

    from specreplay.live.backend import GraphBackend
    from specreplay.models import kernels
    backend = GraphBackend(target, draft, capture=True)
    for model in (backend.fast, backend.fdraft):
        model.stages = dataclasses.replace(model.stages, few_rows=kernels.few_row_attention)
    backend.fusion += "; few-row attention kernel"
    return backend


def kernel_line(q: int, context: int, k: dict, weight_bytes: int) -> str:
    """One line of ``forward_kernels``' figures: where a forward's device time goes."""
    if "ms" not in k:
        return f"target forward (q={q}, eager): {k['n']} {k['unit']}"
    total = sum(k["ms"].values())
    parts = ", ".join(f"{fam} {k['ms'][fam]:.3f} ms ({k['count'][fam]})"
                      for fam in sorted(k["ms"], key=lambda f: -k["ms"][f]))
    mm = k["ms"].get("matmul", 0.0)
    rate = f"; target weights / matmul time = {weight_bytes / (mm / 1e3) / 1e9:.0f} GB/s" if mm > 0 else ""
    return (f"target forward (q={q}, context {context}, eager, torch.profiler): {k['n']} kernels, "
            f"{total:.3f} ms of kernel time: {parts}{rate}")


def syncs_per_cycle(dec, prompt: list[int]) -> float | None:
    """Host-device synchronisations per decode cycle (CUDA sync debug mode counts each
    one as a warning), or None on a CPU."""
    import warnings

    import torch
    if dec.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            state = dec.begin(0, prompt)
            before = len(caught)
            n = 0
            while dec.step(state):
                n += 1
            n += 1
            syncs = len(caught) - before
        finally:
            torch.cuda.set_sync_debug_mode("default")
    dec.finish(state)
    return syncs / n


# The captured pass attends over a padded, masked span with other kernels, so in bf16 its
# logits differ from the eager pass's by rounding; how much rounding is fine is set by the
# eager pass's own distance from float32 (the same weights): captured may be at most this
# much further from float32, with at most this much less top-1 agreement with it.
CHECK_RATIO, CHECK_TOP1_DROP = 1.25, 0.02
# float32 on a CPU: the graph backend's compact model against transformers' forward
CHECK_REL_F32 = 1e-5


def decode(dec, prompts) -> tuple[list[float], float, int]:
    """Cycle seconds, decode seconds, output tokens and cycle rows over ``prompts``."""
    cycles, decode_s, tokens, rows = [], 0.0, 0, []
    for i, p in enumerate(prompts):
        r = dec.run(i, p)
        cycles += [c["cycle_s"] for c in r.cycles]
        rows += r.cycles
        decode_s += r.decode_s
        tokens += len(r.output_ids) - 1
    return cycles, decode_s, tokens, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", help="target model (default: the fixture pair)")
    ap.add_argument("--draft", help="DFlash draft (default: the fixture pair)")
    ap.add_argument("--random-shape", choices=sorted(SHAPES), help="random weights of this shape instead")
    ap.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--dtype", help="default bfloat16 on a GPU, float32 on a CPU")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--context", type=int, default=512, help="prompt tokens (default 512)")
    ap.add_argument("--new-tokens", "--tokens", type=int, default=256, help="tokens per decode (default 256)")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per round (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--phase-timeout", type=float, default=300.0, help="seconds per phase (default 300)")
    # one or the other: the comparison's first side is the batched matmuls
    route = ap.add_mutually_exclusive_group()
    route.add_argument("--few-row-attention", action="store_true",
                       help="captured calls take models/kernels.py's few-row attention instead of the batched "
                            "matmuls (models/fast.py FEW_ROW_KERNEL; off by default)")
    route.add_argument("--compare-few-row-attention", action="store_true",
                       help="GPU: also run the cycle and the AR step through a second graph backend whose "
                            "captured calls take the few-row attention kernel, interleaved with the others, and "
                            "print both")
    ap.add_argument("--check", action="store_true",
                    help="only the agreement check: captured vs eager calls in bf16 on a GPU, each against "
                         f"a float32 copy (captured's max rel logit diff <= {CHECK_RATIO:g} x eager's, top-1 "
                         f"agreement at most {CHECK_TOP1_DROP:g} below eager's), the "
                         f"graph backend vs hf on a CPU (<= {CHECK_REL_F32:g}, all top-1 equal); exit 1 "
                         "when outside it")
    args = ap.parse_args()
    for flag in ("block_size", "context", "new_tokens", "prompts", "rounds"):
        if getattr(args, flag) < 1:
            print(f"live_speed: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2

    import torch

    import specreplay.models.fast as fast
    from specreplay.live.loop import Decoder, LoopConfig
    from specreplay.policies import parse_policy
    fast.FEW_ROW_KERNEL = args.few_row_attention or fast.FEW_ROW_KERNEL
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.compare_few_row_attention and device.type != "cuda":
        print("live_speed: --compare-few-row-attention needs a CUDA device (the kernel runs nowhere else)",
              file=sys.stderr)
        return 2
    try:
        with guard("load", args.phase_timeout):
            if args.random_shape:
                target, draft = random_pair(args.random_shape, device, dtype)
                pair = f"random {args.random_shape}"
            else:
                from specreplay.models.loading import load_draft, load_target
                t_id = args.target or str(FIXTURES / "target")
                d_id = args.draft or str(FIXTURES / "draft")
                target = load_target(t_id, dtype=dtype, device=device)
                draft = load_draft(d_id, target, device=device)
                pair = f"{t_id} + {d_id}"
        vocab = draft.config.vocab_size
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, vocab - 1, (args.context,), generator=gen).tolist() for _ in range(args.prompts)]
        cfg = dict(max_new_tokens=args.new_tokens)
        spec = f"fixed(b={args.block_size})"
        runs = {
            "graph": Decoder(target, draft, parse_policy(spec), LoopConfig(**cfg), backend="graph"),
            "graph_norec": Decoder(target, draft, parse_policy(spec), LoopConfig(record=False, **cfg), backend="graph"),
            "hf": Decoder(target, draft, parse_policy(spec), LoopConfig(**cfg), backend="hf"),
            "ar": Decoder(target, draft, parse_policy("ar"), LoopConfig(**cfg), backend="graph"),
        }
        if args.compare_few_row_attention:
            few = few_row_backend(target, draft)
            runs["graph_few_row"] = Decoder(target, draft, parse_policy(spec), LoopConfig(**cfg), backend=few)
            runs["ar_few_row"] = Decoder(target, draft, parse_policy("ar"), LoopConfig(**cfg), backend=few)
        with guard("agreement check", args.phase_timeout):
            chk = check_captured(target, draft, prompts[0], 4)
        ok = chk["ok"]
        if device.type == "cuda":
            print(f"captured_vs_eager max_rel_diff={chk['rel']:.2e} top1_agree={chk['top1']:.3f}; against float32: "
                  f"eager max_rel_diff={chk['eager_rel32']:.2e} top1_agree={chk['eager_top1_32']:.3f}, captured "
                  f"max_rel_diff={chk['captured_rel32']:.2e} top1_agree={chk['captured_top1_32']:.3f}; tolerance "
                  f"captured <= {CHECK_RATIO:g} x eager, top1 >= eager - {CHECK_TOP1_DROP:g}; recording top-k "
                  f"captured equal to eager: {chk['record_topk_equal']} {'ok' if ok else 'FAILED'}")
        else:
            print(f"graph_vs_hf max_rel_diff={chk['rel']:.2e} top1_agree={chk['top1']:.3f} tolerance "
                  f"rel<={CHECK_REL_F32:g} top1>=1 {'ok' if ok else 'FAILED'}")
        if args.check:
            return 0 if ok else 1
        with guard("warm-up (captures graphs)", args.phase_timeout):
            for dec in runs.values():
                dec.run(0, prompts[0])
        backend = runs["graph"].backend
        print(f"graph capture: {len(backend.graphs)} graphs, "
              f"{sum(backend.capture_s.values()):.2f} s (outside every timed figure); "
              f"{getattr(backend, 'fusion', 'eager')}")
        syncs = {name: syncs_per_cycle(runs[name], prompts[0]) for name in ("graph", "graph_norec", "ar")}
        got = {name: ([], 0.0, 0, []) for name in runs}
        with Utilisation() as util:
            for r in range(args.rounds):
                for name, dec in runs.items():
                    with guard(f"{name} round {r}", args.phase_timeout):
                        c, s, n, rows = decode(dec, prompts)
                    old = got[name]
                    got[name] = (old[0] + c, old[1] + s, old[2] + n, old[3] + rows)
        bw = copy_bandwidth(device)
        # last: once torch.profiler has traced the GPU, its tracing library stays attached
        # and every later CUDA call of the process costs more, so no timed figure may
        # follow it (measured in one process on an H200 host: the q = 16 verify graph's
        # launch took 67 us of host time before a profiled call and 544 us after it)
        with guard("kernel breakdown", args.phase_timeout):
            kernels = {q: forward_kernels(backend, prompts[0], q) for q in (1, args.block_size)}
            if "graph_few_row" in runs:
                few_kernels = forward_kernels(runs["graph_few_row"].backend, prompts[0], args.block_size)
    except PhaseTimeout as e:
        print(f"live_speed: {e}; lower --new-tokens/--rounds or raise --phase-timeout", file=sys.stderr)
        return 1
    med = {name: statistics.median(v[0]) * 1e3 for name, v in got.items()}
    tpot = {name: v[1] / v[2] for name, v in got.items()}
    own = [p for n, p in draft.named_parameters()]
    weight_bytes = sum(p.numel() * p.element_size() for p in target.parameters()) + \
        sum(p.numel() * p.element_size() for p in own)
    floor_ms = weight_bytes / bw * 1e3 if bw else float("nan")
    print(f"pair: {pair}; {device} {str(dtype).removeprefix('torch.')}; block {args.block_size}; "
          f"context {args.context}; {args.new_tokens} new tokens x {args.prompts} prompts x {args.rounds} rounds")
    if bw:
        print(f"copy bandwidth {bw / 1e9:.0f} GB/s; weights read per cycle {weight_bytes / 1e9:.2f} GB")
    print(f"gpu utilisation (median, nvidia-smi): {util.median() if util.median() is not None else 'n/a'}")
    print(f"speedup graph vs hf cycle: {med['hf'] / med['graph']:.1f}x; tpot graph {tpot['graph'] * 1e3:.2f} ms, "
          f"hf {tpot['hf'] * 1e3:.2f} ms, ar {tpot['ar'] * 1e3:.2f} ms")
    for name in ("graph", "hf", "ar"):
        rows = got[name][3]
        part = {k: 1e3 * statistics.fmean(c[k] for c in rows) for k in ("draft_s", "target_s", "overhead_s", "cycle_s")}
        tau = statistics.fmean(c["tau"] for c in rows)
        print(f"breakdown {name}: draft_ms={part['draft_s']:.3f} target_ms={part['target_s']:.3f} "
              f"host_ms={part['overhead_s']:.3f} (means per cycle; cycle_ms mean {part['cycle_s']:.3f}, "
              f"tau {tau:.2f})")
    # the bytes a forward's matmuls read: every target weight but an input embedding
    # that is not also the LM head (a forward gathers only its rows)
    emb, head = target.get_input_embeddings().weight, target.get_output_embeddings().weight
    target_bytes = sum(p.numel() * p.element_size() for p in target.parameters()) - \
        (0 if emb.data_ptr() == head.data_ptr() else emb.numel() * emb.element_size())
    for q, k in kernels.items():
        print(kernel_line(q, args.context, k, target_bytes))
    if "graph_few_row" in runs:
        print("with the few-row attention kernel: " + kernel_line(args.block_size, args.context, few_kernels,
                                                                 target_bytes))
        print(f"few-row attention A/B (interleaved in this run): cycle_ms {med['graph']:.3f} (batched matmuls) "
              f"-> {med['graph_few_row']:.3f} (kernel); ar_step_ms {med['ar']:.3f} -> {med['ar_few_row']:.3f}; "
              f"tau {statistics.fmean(c['tau'] for c in got['graph'][3]):.2f} / "
              f"{statistics.fmean(c['tau'] for c in got['graph_few_row'][3]):.2f}")
    print("host-device syncs per cycle: " +
          ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in syncs.items()))
    record_overhead = (tpot["graph"] - tpot["graph_norec"]) / tpot["graph_norec"]
    print(f"live_speed backend=graph cycle_ms={med['graph']:.3f} hf_cycle_ms={med['hf']:.3f} "
          f"floor_ms={floor_ms:.3f} floor_ratio={floor_ms / med['graph']:.3f} "
          f"ar_step_ms={med['ar']:.3f} record_overhead={record_overhead:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
