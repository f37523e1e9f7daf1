"""The latency profiler: what one target or draft forward costs on this setup.

The simulator's cost model (traces/schema.py PROFILE_SCHEMA) reads four kinds of rows:

    target       target forward over q query tokens per row (a causal chain: verify or
                 AR step), KV cache holding context_len tokens, ``batch`` rows; with
                 logits at every query row and the draft's context features taken from
                 the hidden states, as the decode loop calls it
    tree_verify  the same forward with q nodes of a packed token tree (a binary trie,
                 node i the child of node (i-1)//2, position context_len + depth) under
                 an ancestor-only 4D attention mask; equal q to the target rows
    draft        the live loop's draft step with q = block size: the block (anchor + mask
                 tokens) built on the host, one pass with one new context row over a
                 draft cache of context_len - 1 rows, the target's LM head (float32
                 logits) on the b-1 drafted rows, and their top-4 ids and log-probs
                 (copied to the host on the hf backend; kept on the device on the graph
                 backend, as its loop keeps them until a policy or the verdict reads them)
    overhead     the host part of a live cycle (its seconds outside the draft and verify
                 passes: policy calls, the view, planning, acceptance, commit,
                 bookkeeping), taken from the cycles the live loop itself runs
                 (``measure_host``): short decodes of windows of the recorded text (random
                 prompts without one) at the grid's context
                 lengths, one policy per host mode (traces.schema HOST_MODES: ar, chain at
                 every block size, gated, trees of three sizes, a candidate batch), with
                 recording off as ``promote`` runs them; ``mode`` = the cycle's host
                 mode, q = its verify tokens

Every forward point runs ``warmup`` untimed calls, then ``repeats`` timed ones (round-robin over
the points that share a cache, so slow drifts of the host hit them alike): CUDA events on
a GPU, perf_counter on a CPU; rows hold the median and the 10th/90th percentiles. The KV
caches for a context length are built once per (context_len, batch) from random tokens
(cost does not depend on values) and cut back after every call, so each call sees the
same cache. Points past the model's position limit (context_len + q > max positions) are
skipped and reported.
"""
from __future__ import annotations

import gc
import math
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from specreplay.live.drafting import topk_logprobs
from specreplay.models.draft import crop_cache, new_cache
from specreplay.models.loading import cache_kwargs

KINDS = ("target", "tree_verify", "draft", "overhead")

# Prefill chunk when building a cache: bounds attention memory at long contexts.
_CHUNK = 1024
# k of the top-k a timed draft step computes: the recorder's default oracle top-k
DRAFT_TOP_K = 4


@dataclass(frozen=True)
class Grid:
    """The measured grid: query tokens, context lengths, batch sizes, block sizes, and
    the calls per point."""
    q: tuple[int, ...]
    context: tuple[int, ...]
    batch: tuple[int, ...]
    block_sizes: tuple[int, ...]
    repeats: int
    warmup: int
    # cycles of each host-time decode after its untimed first ``warmup`` + 1 (the first
    # cycle captures graphs), over ``min(repeats, HOST_PASSES)`` interleaved passes. How
    # well these decodes stand for promote's is the cost model's open question
    # (reports/ledger-notes.md: the twin study read them 51 % above its promoted cycles).
    host_cycles: int = 8


# Log-spaced so interpolation has a point per doubling. Sized for a target and draft of
# 8M-20M parameters through HF transformers (host-bound, ~10 ms a target forward): 324
# target + 324 tree + 144 draft + 36 overhead points, 12 calls each, took 160 s of
# measuring (3 min with loading) for a 19M target + 3M draft in bf16 on one H200.
DEFAULT_GRID = Grid(q=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                    context=(256, 512, 1024, 2048, 4096, 8192),
                    batch=(1, 2, 4, 8, 16, 32),
                    block_sizes=(4, 8, 12, 16),
                    repeats=10, warmup=2)

# Seconds, not minutes, on a CPU: for tests and a first look.
QUICK_GRID = Grid(q=(1, 4), context=(16, 48), batch=(1, 2), block_sizes=(4,), repeats=3, warmup=1,
                  host_cycles=3)
# passes over the host-time points: each is a whole decode, so a few passes suffice
HOST_PASSES = 3


@dataclass(frozen=True)
class Point:
    """One measured point, in PROFILE_SCHEMA terms."""
    kind: str
    q: int
    context_len: int
    batch: int


def max_positions(model) -> int | None:
    """The model's position limit, or None when its config sets none."""
    return getattr(model.config, "max_position_embeddings", None)


def plan_points(grid: Grid, target_max: int | None, draft_max: int | None) -> tuple[list[Point], list[Point]]:
    """All forward points of the grid in measuring order (grouped by context length and
    batch, which share KV caches), and the points skipped because they would run past
    the target's or the draft's position limit. (Overhead rows come from the loop's own
    cycles: ``measure_host``.)"""
    keep, skipped = [], []
    for L in grid.context:
        for B in grid.batch:
            group = [Point(kind, q, L, B) for kind in ("target", "tree_verify") for q in grid.q]
            group += [Point("draft", b, L, B) for b in grid.block_sizes]
            for p in group:
                limit = draft_max if p.kind == "draft" else target_max
                (skipped if limit is not None and L + p.q > limit else keep).append(p)
    return keep, skipped


def estimate_seconds(points: Iterable[Point], grid: Grid, probe: dict[str, tuple[float, float]]) -> float:
    """Expected seconds of the calls of a grid: per kind a call costs ``t0 + slope *
    tokens``, tokens = batch * q (``probe[kind] = (t0, slope)``, see Profiler.probe); the host-time
    decodes count as cycles of a verify of the largest block plus a draft pass. Building
    the KV caches is left out."""
    def cost(kind: str, tokens: int) -> float:
        t0, slope = probe[kind]
        return t0 + slope * tokens

    total = 0.0
    for p in points:
        total += (grid.warmup + grid.repeats) * cost(p.kind, p.batch * max(p.q, 1))
    b = max(grid.block_sizes)
    cycle = cost("target", b) + cost("draft", b)
    cycles = len(host_policies(grid.block_sizes)) * len(grid.context) * min(grid.repeats, HOST_PASSES) \
        * (grid.warmup + 1 + grid.host_cycles)
    return total + cycles * cycle


class Timer:
    """Times one call: CUDA events on a GPU (after draining earlier work), perf_counter
    on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3
        self.t0 = time.perf_counter()
        fn()
        return time.perf_counter() - self.t0

    def restart(self) -> None:
        """Called inside a timed call: the time counts from here (a verify's ``mark``,
        where the loop's verify span starts too)."""
        if self.cuda:
            self.start.record()
        else:
            self.t0 = time.perf_counter()


def summarize(times: list[float]) -> dict[str, float | int]:
    """Median and 10th/90th percentiles of the timed calls, in seconds."""
    p10, med, p90 = np.percentile(np.asarray(times, dtype=np.float64), [10, 50, 90])
    return {"median_s": float(med), "p10_s": float(p10), "p90_s": float(p90), "n": len(times)}


def measure(timer: Timer, calls: list[tuple[Callable, Callable, Callable | None]],
            warmup: int, repeats: int) -> list[list[float]]:
    """Time several points round-robin: each round runs every ``(call, reset, prepare)``
    once, ``prepare`` (before) and ``reset`` (after) untimed; the first ``warmup`` rounds
    are not kept. Interleaving spreads slow drifts of the host (clock, other load) over
    all points alike, so points measured together (chain vs tree at equal q) compare
    fairly. Returns the timed seconds per call."""
    times: list[list[float]] = [[] for _ in calls]
    gc_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside a timed call is host noise, not model cost
    try:
        for i in range(warmup + repeats):
            for j, (call, reset, prepare) in enumerate(calls):
                if prepare is not None:
                    prepare()
                t = timer(call)
                reset()
                if i >= warmup:
                    times[j].append(t)
    finally:
        if gc_enabled:
            gc.enable()
    return times


# --- the calls the decode loop makes -------------------------------------------------

def tree_layout(q: int) -> tuple[list[int], list[int]]:
    """A binary trie of q nodes in heap order: parent of node i is (i-1)//2 (-1 for the
    root, the anchor), depth floor(log2(i+1))."""
    parents = [(i - 1) // 2 if i else -1 for i in range(q)]
    depths = [int(math.log2(i + 1)) for i in range(q)]
    return parents, depths


def tree_mask(parents: list[int], context_len: int, batch: int, device) -> torch.Tensor:
    """Ancestor-only 4D boolean mask [batch,1,q,context_len+q]: every context column
    visible, each node sees itself and its ancestors."""
    q = len(parents)
    anc = torch.zeros(q, q, dtype=torch.bool)
    for i, p in enumerate(parents):
        anc[i, i] = True
        if p >= 0:
            anc[i] |= anc[p]
    mask = torch.cat([torch.ones(q, context_len, dtype=torch.bool), anc], dim=1)
    return mask.to(device).expand(batch, 1, q, context_len + q)


def target_cache(target, context_len: int, batch: int, vocab: int, gen: torch.Generator, device):
    """A target KV cache holding ``context_len`` random tokens per row, prefilled in
    chunks."""
    from transformers import DynamicCache

    cache = DynamicCache(config=target.config)
    for s in range(0, context_len, _CHUNK):
        n = min(_CHUNK, context_len - s)
        ids = torch.randint(0, vocab, (batch, n), generator=gen).to(device)
        target(input_ids=ids, **cache_kwargs(target, cache), use_cache=True, logits_to_keep=1)
    return cache


def draft_cache(draft, rows: int, batch: int, gen: torch.Generator, device, dtype):
    """A draft KV cache holding ``rows`` context rows of random features, appended in
    chunks (each pass with a one-token block, whose K/V the draft never keeps)."""
    cache = new_cache()
    width = draft.config.num_context_features
    anchor = torch.full((batch, 1), draft.config.mask_token_id, device=device)
    for s in range(0, rows, _CHUNK):
        n = min(_CHUNK, rows - s)
        ctx = torch.randn(batch, n, width, generator=gen).to(device=device, dtype=dtype)
        pos = torch.arange(s, s + n + 1, device=device)[None]
        draft(anchor, ctx, pos, past_key_values=cache)
    return cache


# --- the host part of a cycle, from the loop's own cycles ----------------------------

def host_policies(block_sizes: Iterable[int]) -> list[str]:
    """The policies whose live cycles the profiler times for host seconds: one per host
    mode (traces.schema HOST_MODES) and verify size a replay commonly asks for: ar,
    fixed chains at every block size, a gated chain, a refined (probed) chain, trees of
    three sizes and a batch of candidate rows at the largest block size."""
    sizes = sorted(set(int(b) for b in block_sizes if b > 1))
    if not sizes:
        return ["ar"]
    B = sizes[-1]
    specs = ["ar"] + [f"fixed(b={b})" for b in sizes] + [f"fixed(b={B})+gate(min_prob=0.2)",
                                                         f"fixed(b={B})+refine(steps=2)"]
    trees = [(2, 2), (2, 4), (3, 3)]
    specs += [f"fixed(b={B})+tree(topk={k}, depth={d})" for k, d in trees if d <= B - 1]
    specs.append(f"fixed(b={B})+candidates(mode=fixed_prefix_rank, prefix={min(2, B - 1)}, verify=batch)")
    return specs


def measure_host(target, draft, backend, grid: Grid, seed: int = 0,
                 progress: Callable[[int], None] | None = None,
                 text: list[int] | None = None) -> list[dict]:
    """Overhead rows from the live loop's own cycles (live/loop.py ``Decoder``, recording
    off as ``promote`` runs it): for every ``host_policies`` policy and grid context
    length, a decode of a prompt of that length: a window of ``text`` (the recorded
    samples' tokens, ``recorded_text``) at a random place, or random tokens without it.
    Real text matters because a cycle's host work grows with what it accepts (a tree
    moves its accepted path's K/V into place; random prompts accept almost nothing).
    Its first ``warmup`` + 1 cycles
    untimed (graph capture, warm caches), the next ``host_cycles`` timed by the loop
    itself (``overhead_s`` = cycle seconds outside the draft and verify spans). Points
    are run in a fresh shuffled order on each of ``min(repeats, HOST_PASSES)`` passes.
    One row per (host mode, verify tokens, context length): the median and spread of
    its cycles' overhead_s."""
    from specreplay.live.loop import Decoder, LoopConfig
    from specreplay.policies import parse_policy
    from specreplay.policies.base import host_mode

    specs = host_policies(grid.block_sizes)
    skip = grid.warmup + 1
    cycles = skip + grid.host_cycles
    longest = max(int(b) for b in (*grid.block_sizes, 1)) * (cycles + 1)
    limits = [m for m in (max_positions(target), max_positions(draft)) if m is not None]
    limit = min(limits) if limits else None
    contexts = [L for L in grid.context if L >= 1 and (limit is None or L + longest <= limit)]
    if not contexts:
        raise ValueError(f"no grid context leaves room for the host-time decodes ({longest} new tokens "
                         f"within the position limit {limit}); ask for shorter --context values")
    cfg = LoopConfig(max_new_tokens=longest, record=False)
    decoders = {s: Decoder(target, draft, parse_policy(s), cfg, backend=backend) for s in specs}
    vocab = target.get_input_embeddings().num_embeddings
    rng = np.random.default_rng(seed)
    points = [(s, L) for s in specs for L in contexts]
    seen: dict[tuple[str, int, int], list[float]] = {}
    gc_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside a timed cycle is host noise, not the loop's cost
    try:
        with torch.inference_mode():
            for _ in range(max(1, min(grid.repeats, HOST_PASSES))):
                for j in rng.permutation(len(points)):
                    spec, L = points[j]
                    dec = decoders[spec]
                    gated = dec.policy.verify is not None and dec.policy.verify.gates
                    state = dec.begin(0, _host_prompt(text, L, vocab, rng))
                    while len(state.cycles) < cycles and dec.step(state):
                        pass
                    dec.finish(state)
                    for c in state.cycles[skip:]:
                        key = (host_mode(c["block_size"], c["verify_mode"], gated, bool(c["probe"])),
                               c["verify_tokens"], L)
                        seen.setdefault(key, []).append(c["overhead_s"])
                    if progress is not None:
                        progress(1)
    finally:
        if gc_enabled:
            gc.enable()
    # a cycle whose host part read 0 s (clock resolution) says nothing about its cost
    seen = {k: [t for t in v if t > 0] for k, v in seen.items()}
    return [{"kind": "overhead", "q": int(q), "context_len": int(L), "batch": 1, "mode": mode,
             **summarize(t)} for (mode, q, L), t in sorted(seen.items()) if t]


def _host_prompt(text: list[int] | None, L: int, vocab: int, rng) -> list[int]:
    """L tokens: a window of ``text`` (repeated when shorter) or random ids."""
    if not text:
        return rng.integers(0, vocab, L).tolist()
    start = int(rng.integers(0, len(text)))
    reps = -(-(start + L) // len(text))
    return (text * reps)[start:start + L]


def recorded_text(folder) -> list[int] | None:
    """The recorded samples' prompt and output tokens of the trace in ``folder``, one
    after another (the host-time decodes' prompts), or None without a readable trace."""
    from specreplay.traces.reader import Trace
    if not (Path(folder) / "run.json").exists():
        return None
    try:
        samples = Trace.open(folder).samples.to_pylist()
    except Exception:  # not a readable trace: random prompts apply
        return None
    text = [int(t) for s in samples for t in (*s["prompt_ids"], *s["output_ids"])]
    return text or None


def host_summary(rows: list[dict]) -> dict[str, float]:
    """Median host seconds per host mode over a profile's overhead rows (for
    profile.json and the profile command's summary line)."""
    by: dict[str, list[float]] = {}
    for r in rows:
        if r["kind"] == "overhead":
            by.setdefault(r.get("mode") or "chain", []).append(r["median_s"])
    return {m: float(np.median(v)) for m, v in by.items()}


# --- the profile ---------------------------------------------------------------------

@dataclass
class ProfileRun:
    """What a profile run produced: PROFILE_SCHEMA rows, the skipped points, seconds."""
    rows: list[dict]
    skipped: list[Point]
    elapsed_s: float


class Profiler:
    """Measures every point of a grid for one bound target/draft pair on one device."""

    def __init__(self, target, draft, grid: Grid, device: torch.device, seed: int = 0):
        self.target, self.draft, self.grid = target, draft, grid
        self.device = torch.device(device)
        self.timer = Timer(self.device)
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab = target.get_input_embeddings().num_embeddings
        self.dtype = next(draft.parameters()).dtype
        self.points, self.skipped = plan_points(grid, max_positions(target), max_positions(draft))
        self.host_text: list[int] | None = None  # prompts of the host-time decodes (measure_host)

    def run(self, progress: Callable[[list[Point]], None] | None = None) -> ProfileRun:
        """Measure every planned point, one (context_len, batch) group at a time;
        ``progress`` is called with each finished group's points."""
        t0 = time.perf_counter()
        rows: list[dict] = []
        with torch.inference_mode():
            for (L, B), group in _groups(self.points):
                rows += self.measure_group(L, B, group, progress)
        rows += measure_host(self.target, self.draft, "hf", self.grid, self.seed, text=self.host_text)
        return ProfileRun(rows, self.skipped, time.perf_counter() - t0)

    def probe(self) -> dict[str, tuple[float, float]]:
        """Warm the kernels up and time each kind at its smallest and largest planned
        size in the first (context_len, batch) group, for ``estimate_seconds``:
        kind -> (seconds at zero tokens, seconds per token)."""
        out = {k: (0.0, 0.0) for k in KINDS}
        if not self.points:
            return out
        (L, B), first = _groups(self.points)[0]
        with torch.inference_mode():
            tc = target_cache(self.target, L, B, self.vocab, self.gen, self.device)
            dc = draft_cache(self.draft, max(L - 1, 0), B, self.gen, self.device, self.dtype)
            for kind in KINDS:
                sizes = sorted((p for p in first if p.kind == kind), key=lambda p: p.q)
                if not sizes:
                    continue
                lo, hi = sizes[0], sizes[-1]
                t_lo, t_hi = (min(measure(self.timer, [self.calls(p, tc, dc)], 2, 3)[0]) for p in (lo, hi))
                n_lo, n_hi = B * max(lo.q, 1), B * max(hi.q, 1)
                slope = max((t_hi - t_lo) / (n_hi - n_lo), 0.0) if n_hi > n_lo else 0.0
                out[kind] = (max(t_lo - slope * n_lo, 0.0), slope)
            del tc, dc
        return out

    def measure_group(self, L: int, B: int, group: list[Point],
                      progress: Callable[[list[Point]], None] | None) -> list[dict]:
        """Build the caches for (L, B) once and measure every point that uses them."""
        tc = target_cache(self.target, L, B, self.vocab, self.gen, self.device)
        dc = draft_cache(self.draft, max(L - 1, 0), B, self.gen, self.device, self.dtype)
        times = measure(self.timer, [self.calls(p, tc, dc) for p in group],
                        self.grid.warmup, self.grid.repeats)
        rows = [{"kind": p.kind, "q": p.q, "context_len": L, "batch": B, **summarize(t)}
                for p, t in zip(group, times)]
        if progress is not None:
            progress(group)
        del tc, dc
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return rows

    def calls(self, p: Point, tc, dc):
        """(call, reset, prepare) for a point: the timed call, the untimed cut-back after
        it, and the untimed setup before it (None when there is none)."""
        L, B, dev = p.context_len, p.batch, self.device
        if p.kind in ("target", "tree_verify"):
            ids = torch.randint(0, self.vocab, (B, p.q), generator=self.gen).to(dev)
            offsets = torch.arange(p.q)
            mask = None
            if p.kind == "tree_verify":
                parents, depths = tree_layout(p.q)
                offsets, mask = torch.tensor(depths), tree_mask(parents, L, B, dev)
            positions = (L + offsets.to(dev))[None].expand(B, -1)

            def call():
                out = self.target(input_ids=ids, position_ids=positions,
                                  **cache_kwargs(self.target, tc), use_cache=True,
                                  attention_mask=mask, output_hidden_states=True)
                return out.logits, self.draft.context_features(out.hidden_states)
            return call, lambda: crop_cache(tc, L), None
        if p.kind == "draft":
            new = min(L, 1)
            mask_id = self.draft.config.mask_token_id
            anchors = torch.randint(0, self.vocab, (B,), generator=self.gen).tolist()
            rows = [[a] + [mask_id] * (p.q - 1) for a in anchors]
            ctx = torch.randn(B, new, self.draft.config.num_context_features, generator=self.gen)
            ctx = ctx.to(device=dev, dtype=self.dtype)

            def call():
                # what the live loop's draft step does (live/drafting.py draft_block +
                # topk_logprobs): the block built on the host, the pass, and the top-k
                # proposals copied back to the host, which waits for the device
                block = torch.tensor(rows, dtype=torch.long, device=dev)
                pos = torch.arange(L - new, L + p.q, device=dev)[None]
                hidden = self.draft(block, ctx, pos, past_key_values=dc)
                logits = self.draft.logits(hidden[:, 1:]).float()
                return topk_logprobs(logits.reshape(-1, logits.shape[-1]), DRAFT_TOP_K)
            return call, lambda: crop_cache(dc, L - new), None
        raise ValueError(f"no forward call for a {p.kind} point")


def _groups(points: list[Point]) -> list[tuple[tuple[int, int], list[Point]]]:
    """Points grouped by (context_len, batch), keeping their order."""
    groups: dict[tuple[int, int], list[Point]] = {}
    for p in points:
        groups.setdefault((p.context_len, p.batch), []).append(p)
    return list(groups.items())


# --- provenance ----------------------------------------------------------------------

def describe_setup(target, device: torch.device, backend: str = "hf", stages: str | None = None) -> dict:
    """profile.json / run.json ``setup``: the hardware, software, backend ("hf" or
    "graph", and how it verifies batch plans: "rows" or "packed") and numerics a time was
    measured with; ``stages``: which elementwise stages the graph backend ran (compiled
    or eager, ``GraphBackend.fusion``), since they change its times; ``shapes``: the padded
    sizes a captured backend runs its passes at (traces/schema.py QUERY_BUCKETS)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    setup = {
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "driver": gpu_driver() if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "backend": backend,
        "batch_verify": "packed" if backend == "graph" else "rows",
        "dtype": str(next(target.parameters()).dtype).removeprefix("torch."),
        "attn": getattr(target.config, "_attn_implementation", None),
    }
    if stages is not None:
        setup["stages"] = stages
    if backend == "graph" and cuda:
        # the graph backend captures on a GPU, at padded shapes its times step with
        from specreplay.live.backend import graph_shapes
        setup["shapes"] = graph_shapes(True)
    return setup


def gpu_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi, or None when it cannot be asked."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def with_overrides(grid: Grid, **changes) -> Grid:
    """The grid with the given fields replaced (None values keep the grid's)."""
    return replace(grid, **{k: v for k, v in changes.items() if v is not None})


# --- the graph backend: the loop's own captured calls, interleaved over the grid ------

def tree_paths(nodes: int) -> tuple[tuple[int, ...], ...]:
    """Rank paths of a binary trie with ``nodes`` nodes in heap order (node i, 1-based
    after the anchor, is the child of node (i-1)//2 with rank (i-1)%2): every leaf's
    path. Its packed verify has 1 + nodes rows, like ``tree_layout(1 + nodes)``."""
    if nodes <= 0:
        return ((),)
    children = {i: [] for i in range(nodes + 1)}
    for i in range(1, nodes + 1):
        children[(i - 1) // 2].append(i)
    paths = []

    def walk(i, ranks):
        if not children[i] and i:
            paths.append(tuple(ranks))
        for c in children[i]:
            walk(c, ranks + [(c - 1) % 2])
    walk(0, [])
    return tuple(paths)


# A point's cost may fall below its smaller neighbour's by this fraction of it before the
# monotonicity check calls it a violation (on top of the points' own p10-p90 spread).
MONOTONE_SLACK = 0.03


def monotonicity(rows: list[dict], slack: float = MONOTONE_SLACK) -> dict:
    """Cost must not decrease with q (same kind, context, batch) nor with context (same
    kind, q, batch) beyond noise: a step down larger than ``slack`` of the smaller
    point's median plus both points' half p10-p90 spreads is a violation. Returns
    {"checked": pairs compared, "violations": [{kind, axis, batch, at, from, to,
    from_s, to_s}]} for profile.json; the rows are not changed."""
    by: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if r["kind"] == "overhead":
            continue
        by.setdefault(("q", r["kind"], r["context_len"], r["batch"]), {})[r["q"]] = r
        by.setdefault(("context", r["kind"], r["q"], r["batch"]), {})[r["context_len"]] = r
    checked, bad = 0, []
    for (axis, kind, at, batch), series in sorted(by.items(), key=lambda kv: str(kv[0])):
        xs = sorted(series)
        for a, b in zip(xs, xs[1:]):
            ra, rb = series[a], series[b]
            checked += 1
            noise = 0.5 * ((ra["p90_s"] - ra["p10_s"]) + (rb["p90_s"] - rb["p10_s"]))
            if rb["median_s"] < ra["median_s"] * (1 - slack) - noise:
                bad.append({"kind": kind, "axis": axis, "batch": batch, "at": at, "from": a, "to": b,
                            "from_s": ra["median_s"], "to_s": rb["median_s"]})
    return {"checked": checked, "slack": slack, "violations": bad}


def context_grid(shortest: int, longest: int) -> tuple[int, ...]:
    """Context lengths from the shortest recorded prompt up to the longest context a
    recording reached: the shortest itself, then doublings of it, the last at or past
    ``longest`` (so an ordinary replay never extrapolates)."""
    shortest = max(1, int(shortest))
    grid = [shortest]
    while grid[-1] < longest:
        grid.append(grid[-1] * 2)
    return tuple(grid)


class GraphProfiler:
    """The profile of the graph backend, measured through the backend's own calls (the
    ones live/loop.py makes, replayed from the same captured graphs): ``target`` = a
    chain verify of q rows at cache length context_len (padded to its bucket and cache
    span exactly as in the loop), ``tree_verify`` = a packed binary-trie verify of q
    rows, ``draft`` = a draft pass of a block of q with one new context row plus its
    top-k, kept on the device as the loop keeps them; ``overhead`` rows come from the
    loop's own cycles on this
    backend (``measure_host``). Batch plans are packed rows on this backend, so batch is
    1.

    Points are measured interleaved across the whole grid: each pass runs every point
    once in a fresh shuffled order (seeded), the first ``warmup`` passes untimed (they
    capture the graphs), so one slow phase of the machine spreads over every point."""

    def __init__(self, target, draft, grid: Grid, device: torch.device, seed: int = 0, backend=None):
        from specreplay.live.backend import GraphBackend
        self.target, self.draft = target, draft
        self.grid = replace(grid, batch=(1,))
        self.device = torch.device(device)
        self.timer = Timer(self.device)
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab = target.get_input_embeddings().num_embeddings
        self.backend = backend or GraphBackend(target, draft, capture=self.device.type == "cuda")
        self.points, self.skipped = plan_points(self.grid, max_positions(target), max_positions(draft))
        self.host_text: list[int] | None = None  # prompts of the host-time decodes (measure_host)
        longest = max([p.context_len + max(p.q, max(self.grid.block_sizes)) for p in self.points] or [1])
        self.tc, self.dc = self.backend.start(longest, 0)

    def calls(self, p: Point):
        """(call, reset, prepare) of a point, as in ``Profiler.calls``."""
        from specreplay.live.drafting import block_input
        be, tc, dc, L = self.backend, self.tc, self.dc, p.context_len
        rand = lambda n: torch.randint(0, self.vocab, (n,), generator=self.gen).tolist()  # noqa: E731

        def at_length():
            tc.length = L
        if p.kind in ("target", "tree_verify"):
            if p.kind == "target":
                mode, paths = "chain", ((0,) * (p.q - 1),)
            else:
                mode, paths = "tree", tree_paths(p.q - 1)
            from specreplay.policies.base import trie_nodes
            tokens = rand(len(trie_nodes(paths)))
            anchor = rand(1)[0]

            def call():  # timed from the pass's launch, as the loop's verify span is
                return be.verify(tc, mode, paths, anchor, tokens, L, True, mark=self.timer.restart)
            return call, at_length, at_length
        if p.kind == "draft":
            new = min(L, 1)
            ctx = torch.randn(1, new, self.draft.config.num_context_features, generator=self.gen)
            ctx = ctx.to(device=self.device, dtype=self.backend.fdraft.dtype)
            block = block_input(rand(1)[0], p.q, self.draft.config.mask_token_id)

            def prepare():
                dc.length = L - new

            # the DraftView's top-k as the loop takes them: left on the device where the
            # backend can (the loop's draft phase then ends without a host copy; a policy
            # that reads the proposal waits for it in its host time)
            topk = getattr(be, "view_packed", None) or be.view_topk

            def call():
                return topk(be.draft_pass(dc, block, ctx, L - new, L), DRAFT_TOP_K)
            return call, prepare, prepare
        raise ValueError(f"no forward call for a {p.kind} point")

    def probe(self) -> dict[str, tuple[float, float]]:
        """(seconds at zero tokens, seconds per token) per kind from its smallest and
        largest point at the smallest context, for ``estimate_seconds``."""
        out = {k: (0.0, 0.0) for k in KINDS}
        if not self.points:
            return out
        L0 = min(p.context_len for p in self.points)
        with torch.inference_mode():
            for kind in KINDS:
                sizes = sorted((p for p in self.points if p.kind == kind and p.context_len == L0), key=lambda p: p.q)
                if not sizes:
                    continue
                lo, hi = sizes[0], sizes[-1]
                t_lo, t_hi = (min(measure(self.timer, [self.calls(p)], 2, 3)[0]) for p in (lo, hi))
                n_lo, n_hi = max(lo.q, 1), max(hi.q, 1)
                slope = max((t_hi - t_lo) / (n_hi - n_lo), 0.0) if n_hi > n_lo else 0.0
                out[kind] = (max(t_lo - slope * n_lo, 0.0), slope)
        return out

    def run(self, progress: Callable[[list[Point]], None] | None = None) -> ProfileRun:
        t0 = time.perf_counter()
        g = self.grid
        rng = np.random.default_rng(self.seed)
        with torch.inference_mode():
            calls = [self.calls(p) for p in self.points]
            times: list[list[float]] = [[] for _ in calls]
            gc_enabled = gc.isenabled()
            gc.collect()
            gc.disable()
            try:
                for i in range(g.warmup + g.repeats):
                    for j in rng.permutation(len(calls)):
                        call, reset, prepare = calls[j]
                        if prepare is not None:
                            prepare()
                        t = self.timer(call)
                        reset()
                        if i >= g.warmup:
                            times[j].append(t)
                    if progress is not None and i >= g.warmup:
                        progress(self.points if i == g.warmup + g.repeats - 1 else [])
            finally:
                if gc_enabled:
                    gc.enable()
        rows = [{"kind": p.kind, "q": p.q, "context_len": p.context_len, "batch": 1, **summarize(t)}
                for p, t in zip(self.points, times)]
        rows += measure_host(self.target, self.draft, self.backend, g, self.seed, text=self.host_text)
        return ProfileRun(rows, self.skipped, time.perf_counter() - t0)

    def meta(self, rows: list[dict]) -> dict:
        """profile.json additions: the checks, host seconds per mode, capture."""
        return {"checks": {"monotone": monotonicity(rows)},
                "host_s": host_summary(rows),
                "measured": {"order": "interleaved over the whole grid, shuffled per pass",
                             "passes": self.grid.repeats, "warmup_passes": self.grid.warmup,
                             "statistic": "median", "host_cycles_per_decode": self.grid.host_cycles},
                "capture_s": dict(self.backend.capture_s)}
