"""How the decode loop's tensors are computed: the ``hf`` backend (transformers, a
``DynamicCache``) and the ``graph`` backend (models/fast.py over static KV caches, each
step replayed from a CUDA graph on a GPU, run eagerly elsewhere).

Both give the loop (live/loop.py) the same five calls:

    start(prompt_len, max_new_tokens) -> (target cache, draft cache) for one request
    prefill(tc, prompt_ids, want_features) -> last logits [V], raw features [1, P, F]
    verify(tc, mode, paths, anchor, node_tokens, L, want_features) -> Verified
    commit(tc, verified, path_index, accepted, L) -> the kept tokens' features [1, a+1, F]
    draft_pass(dc, block_ids, context, cached, context_len) -> draft logits [b-1, V]

``batch_verify`` says how a batch plan is verified (traces/schema.py, profile.json
setup): "rows" = B rows of a batch over a repeated cache (hf), "packed" = one row of
disjoint paths under an ancestor-only mask (graph: no cache copies). ``capture_s``
accumulates the seconds spent capturing graphs, per phase ("target", "draft"), so the
loop can keep them out of every timed figure.
"""
from __future__ import annotations

import numpy as np
import torch

from specreplay.live.drafting import draft_block, pack_topk, topk_logprobs
from specreplay.live.profile_cli import BACKENDS
from specreplay.live.verify import Packed, Verified, keep_committed, pack, packed_verified, prefill, verify_nodes
from specreplay.models.draft import to_device
from specreplay.policies.base import trie_nodes
from specreplay.traces.schema import KV_QUANTUM, QUERY_BUCKETS, captured_shapes, kv_rows, padded_query


# Query lengths a captured verify or context append is padded up to (longer ones are
# rounded up to a multiple of the last bucket), and the multiple that cache capacity and
# the cache rows a captured pass attends over are rounded up to: a captured graph
# serves every context length of its span, and its cost follows the context in steps
# of that span. The contract lives in traces/schema.py, where the cost model reads it.
BUCKETS = QUERY_BUCKETS


def bucket(n: int) -> int:
    """The captured size that serves n rows."""
    return padded_query(n, BUCKETS)


def kv_span(rows: int, capacity: int) -> int:
    """Cache rows a captured pass reading ``rows`` of them attends over."""
    return min(capacity, kv_rows(rows, KV_QUANTUM))


def graph_shapes(capture: bool) -> dict | None:
    """The setup's ``shapes`` (traces/schema.py): the padding a captured backend runs
    its passes at; None when the passes run at their exact sizes."""
    return captured_shapes() if capture else None


class Staged:
    """A pass's host inputs (numpy arrays of fixed shapes and dtypes) uploaded in one copy:
    the arrays are laid out in one byte buffer, and ``views`` are typed views of its device
    copy, so a captured graph's static inputs are rewritten by one host-to-device copy
    where a copy per input and a device copy per static buffer took eight launches (each
    is host time the device waits through before the pass starts)."""

    ALIGN = 8  # every view starts at a multiple of the widest item (int64)

    def __init__(self, arrays, device):
        self.layout, off = [], 0
        for a in arrays:
            a = np.asarray(a)
            self.layout.append((off, a.shape, a.dtype))
            off += -(-a.nbytes // self.ALIGN) * self.ALIGN
        self.device = device
        # every byte is written by each ``write`` (padding from the zeroed host copy)
        self.buf = torch.empty(max(off, self.ALIGN), dtype=torch.uint8, device=device)
        self.views = tuple(
            self.buf[o:o + int(np.prod(shape, dtype=np.int64)) * dt.itemsize].view(_TORCH[dt]).view(shape)
            for o, shape, dt in self.layout)
        self.cuda = device.type == "cuda"
        if self.cuda:
            # one pinned host buffer for the life of the slot: pinning a fresh copy per
            # write cost about 60 us of host time a pass on an H200 host. ``copied`` marks
            # when the last copy out of it ran, so it is never rewritten under a copy
            # still queued (a pass replayed twice within one cycle)
            self.pinned = torch.zeros(self.buf.numel(), dtype=torch.uint8, pin_memory=True)
            self.host = self.pinned.numpy()
            self.copied = torch.cuda.Event()
            self.queued = False
        else:
            self.host = np.zeros(self.buf.numel(), dtype=np.uint8)

    def write(self, arrays) -> tuple[torch.Tensor, ...]:
        """Copy ``arrays`` (the same shapes and dtypes as at construction) into the views."""
        if self.cuda and self.queued:
            self.copied.synchronize()  # at once, unless the last copy has not run yet
        for (o, shape, dt), a in zip(self.layout, arrays, strict=True):
            a = np.asarray(a)
            if a.shape != shape or a.dtype != dt:
                raise ValueError(f"staged input {a.dtype}{list(a.shape)} does not fit its slot {dt}{list(shape)}")
            self.host[o:o + a.nbytes] = a.reshape(-1).view(np.uint8)
        if self.cuda:
            self.buf.copy_(self.pinned, non_blocking=True)  # asynchronously, from pinned memory
            self.copied.record()
            self.queued = True
        else:
            self.buf.copy_(torch.from_numpy(self.host))
        return self.views


_TORCH = {np.dtype(np.int64): torch.int64, np.dtype(np.bool_): torch.bool, np.dtype(np.int32): torch.int32,
          np.dtype(np.float32): torch.float32}


def rows_of(t: torch.Tensor, rows: list[int], dim: int = 0) -> torch.Tensor:
    """``t`` indexed by ``rows`` along ``dim``: a slice (no kernel, no index upload) when
    the rows are consecutive."""
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return t.narrow(dim, rows[0], len(rows))
    return t.index_select(dim, to_device(rows, torch.long, t.device))


def graph_unsupported(target, draft) -> str | None:
    """Why the graph backend cannot run this pair (one sentence), or None."""
    from specreplay.models.fast import unsupported_reason
    reason = unsupported_reason(target)
    if reason is None and draft is not None:
        kinds = {(l.self_attn.block_causal, l.self_attn.sliding_window) for l in draft.layers}
        if len(kinds) > 1:
            reason = ("the graph backend runs drafts whose layers share one attention pattern, and this "
                      "draft mixes causal/sliding layers; use --backend hf for this pair.")
    return reason


def resolve_backend(name: str | None, target, draft=None) -> str:
    """The backend to use: ``name`` when given ("hf" or "graph"; graph on a model it
    cannot run raises ValueError with one sentence naming hf); None or "auto": graph on
    CUDA for the architectures it runs, hf otherwise."""
    device = target.get_input_embeddings().weight.device
    if name in (None, "auto"):
        return "graph" if device.type == "cuda" and graph_unsupported(target, draft) is None else "hf"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; use hf or graph")
    if name == "graph":
        reason = graph_unsupported(target, draft)
        if reason:
            raise ValueError(reason)
    return name


def cli_backend(name: str | None, target, draft) -> str:
    """``resolve_backend`` for a command: a backend that cannot run the pair is a CLIError."""
    from specreplay.errors import CLIError
    try:
        return resolve_backend(name, target, draft)
    except ValueError as e:
        raise CLIError(str(e)) from None


def backend_for(name: str | None, target, draft, capture: bool | None = None):
    """The backend object for a (target, draft) pair, shared by every decoder of the pair
    in this process so graphs are captured once per shape. ``capture``: replay CUDA
    graphs (default: on a GPU); False runs the graph backend's same code eagerly."""
    name = resolve_backend(name, target, draft)
    if name == "hf":
        return HFBackend(target, draft)
    device = target.get_input_embeddings().weight.device
    capture = device.type == "cuda" if capture is None else bool(capture)
    if capture and device.type != "cuda":
        raise ValueError("graph capture needs a CUDA device")
    shared = draft.__dict__.setdefault("_live_backends", {})
    key = (id(target), capture)
    if key not in shared:
        shared[key] = GraphBackend(target, draft, capture)
    return shared[key]


def backend_stages(name: str, target, draft) -> str | None:
    """Which elementwise stages the shared graph backend of a pair runs (run.json's
    setup names them), or None for the hf backend."""
    return backend_for(name, target, draft).fusion if name == "graph" else None


class HFBackend:
    """transformers' own forward with a DynamicCache (any causal LM)."""
    name, batch_verify = "hf", "rows"

    def __init__(self, target, draft):
        self.target, self.draft = target, draft
        self.capture_s = {"target": 0.0, "draft": 0.0, "record": 0.0}

    def start(self, prompt_len: int, max_new_tokens: int):
        from transformers import DynamicCache

        from specreplay.models.draft import new_cache
        return DynamicCache(config=self.target.config), new_cache()

    def prefill(self, tc, prompt_ids, want_features):
        return prefill(self.target, self.draft, prompt_ids, tc, want_features)

    def verify(self, tc, mode, paths, anchor, node_tokens, L, want_features, mark=None):
        """``mark``: called once when the pass starts (transformers builds its inputs
        inside the call, so here that is at once)."""
        if mark is not None:
            mark()
        return verify_nodes(self.target, self.draft, tc, mode, paths, anchor, node_tokens, L, want_features)

    def commit(self, tc, verified, path_index, accepted, L):
        return keep_committed(tc, verified, path_index, accepted, L)

    def draft_pass(self, dc, block_ids, context, cached, context_len):
        return draft_block(self.draft, dc, block_ids, context, cached, context_len)

    def record_topk(self, logits: torch.Tensor, k: int):
        return topk_raw(logits, k)

    def view_topk(self, logits: torch.Tensor, k: int):
        return topk_logprobs(logits, k)


def topk_raw(logits: torch.Tensor, k: int):
    """Top-k raw logits per row with each row's log-sum-exp (tensors, left on the device):
    what a recorded cycle_logits row keeps."""
    logits = logits.float()
    k = min(k, logits.shape[-1])
    vals, ids = torch.topk(logits, k, dim=-1)
    return ids, vals, torch.logsumexp(logits, dim=-1)


class GraphBackend:
    """models/fast.py's target and draft over static caches owned by the backend (one
    request at a time: ``start`` hands the caches to a new request). With ``capture``
    every verify, context append and block pass replays a CUDA graph captured lazily
    for its padded size; without, the same functions run eagerly at exact sizes. Every
    call runs in inference mode, whatever the caller's: the backend writes its caches and
    captured inputs in place, which autograd refuses once a cache view carries the
    weights' gradient, and which an inference tensor (one made in inference mode) allows
    only inside it."""
    name, batch_verify = "graph", "packed"

    def __init__(self, target, draft, capture: bool):
        from specreplay.models.fast import FastTarget
        from specreplay.models.fast_draft import FastDraft
        self.target, self.draft = target, draft
        self.fast = FastTarget(target, draft.target_layer_ids)
        self.fdraft = FastDraft(draft)
        self.device = self.fast.device
        self.capture = capture
        self.tc = self.dc = None
        self.graphs: dict[tuple, object] = {}
        self.capture_s = {"target": 0.0, "draft": 0.0, "record": 0.0}
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        # captured runs take the compiled elementwise stages; ``fusion`` says which ran
        self.fusion = "eager elementwise stages (no graph capture)"
        if capture:
            from specreplay.models.fast import EAGER, fused_stages, stages_failed
            stages, self.fusion = fused_stages(self.device)
            self.fast.stages = self.fdraft.stages = stages
            try:
                self._warm_up()
            except Exception as err:  # noqa: BLE001 - a compiler failure leaves the eager stages
                self.fusion = stages_failed(self.device, err)
                self.fast.stages = self.fdraft.stages = EAGER
                self._warm_up()

    def _warm_up(self) -> None:
        """The model's own passes on scratch caches (a prefill, a one-token step, a draft
        block), so the stages compile here, in the model's dtype and shapes, outside
        every timed figure (in the capture seconds), and a compiler that cannot build
        them fails here rather than inside a recording; the captured steps' remaining
        variants compile in their capture warm-up."""
        import time
        t0 = time.perf_counter()
        dev = self.device
        with torch.inference_mode():
            kv = self.fast.new_cache(8)  # scratch caches: the backend's are sized per request
            rows = torch.arange(5, device=dev)
            mask = torch.ones(5, 5, dtype=torch.bool, device=dev).tril()[None, None]
            self.fast.forward(kv, rows[None, :4] + 1, rows[None, :4], rows[:4], mask[..., :4, :4], 4,
                              last_logits=True)
            self.fast.forward(kv, rows[None, 4:] + 1, rows[None, 4:], rows[4:], mask[..., 4:, :], 5)
            dkv = self.fdraft.new_cache(8)
            block = torch.arange(4, device=dev)[None] + 1
            self.fdraft.block_logits(dkv, block, block + 1, self.fdraft.block_mask(4, 2, 2, dev), 2)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        self.capture_s["target"] += time.perf_counter() - t0

    # ---- caches
    @torch.inference_mode()
    def start(self, prompt_len: int, max_new_tokens: int):
        self._ensure(prompt_len + max_new_tokens + 2 * BUCKETS[-1])
        for cache in (self.tc, self.dc):
            cache.length = 0
            cache.generation += 1
        return self.tc, self.dc

    def _ensure(self, rows: int) -> None:
        """Caches of at least ``rows`` rows; growing drops the graphs tied to the old ones."""
        if self.tc is not None and self.tc.capacity >= rows:
            return
        capacity = kv_rows(rows, KV_QUANTUM)
        if self.fast.max_positions:
            capacity = max(rows, min(capacity, self.fast.max_positions + 2 * BUCKETS[-1]))
        if self.tc is None:
            self.tc, self.dc = self.fast.new_cache(capacity), self.fdraft.new_cache(capacity)
        else:
            self.tc.grow(capacity)
            self.dc.grow(capacity)
            self.fast.ensure_positions(capacity)
            self.fdraft.ensure_positions(capacity + 2 * BUCKETS[-1])
            self.graphs.clear()
            if self.capture:
                # the dropped graphs held the only references to their memory pool, which
                # the allocator then frees: capturing into that handle again trips its
                # internal assert, so the new graphs get a pool of their own
                torch.cuda.synchronize()
                self.pool = torch.cuda.graph_pool_handle()

    def _check(self, cache) -> None:
        if cache is not self.tc and cache is not self.dc:
            raise RuntimeError("this cache does not belong to this graph backend")

    # ---- target
    @torch.inference_mode()
    def prefill(self, tc, prompt_ids, want_features):
        self._check(tc)
        P = len(prompt_ids)
        dev = self.device
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=dev)
        rows = torch.arange(P, device=dev)
        mask = torch.ones(P, P, dtype=torch.bool, device=dev).tril()[None, None]
        logits, feats = self.fast.forward(tc, ids, rows[None], rows, mask, P, last_logits=True)
        tc.length = P
        return logits[-1], feats[None]

    @torch.inference_mode()
    def full_pass(self, ids: list[int], keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One causal pass over ``ids`` in this backend's target cache (the oracle's
        target pass; it hands the cache to a new request): logits [keep, V] float32 of
        the last ``keep`` rows and raw features [1, len(ids), F]."""
        tc, _ = self.start(len(ids), 0)
        n = len(ids)
        dev = self.device
        rows = torch.arange(n, device=dev)
        mask = torch.ones(n, n, dtype=torch.bool, device=dev).tril()[None, None]
        logits, feats = self.fast.forward(tc, to_device([ids], torch.long, dev), rows[None], rows, mask, n,
                                          last_logits=keep)
        return logits, feats[None]

    @torch.inference_mode()
    def verify(self, tc, mode, paths, anchor, node_tokens, L, want_features, device_tokens=None, mark=None):
        """``device_tokens``: a chain's drafted tokens as a device tensor (offsets 1..),
        written into the pass's input ids on the device; ``node_tokens`` then holds
        placeholders that the caller replaces once the tokens reach the host. ``mark``:
        called once, after the inputs are built and uploaded and just before the pass
        runs, so the span it starts is the pass itself in every verify mode (the inputs'
        preparation is host work, overlapped with the draft or not)."""
        self._check(tc)
        packed = pack(mode, paths, anchor, node_tokens)
        q = len(packed.tokens)
        if device_tokens is not None and (mode != "chain" or device_tokens.numel() != q - 1):
            raise ValueError(f"device tokens serve a chain of {q - 1} drafted tokens, not {mode} "
                             f"with {device_tokens.numel()}")
        if self.capture:
            self._ensure(L + bucket(q))
            logits, feats = self._verify_captured(tc, packed, L, device_tokens, mark)
        else:
            self._ensure(L + q)
            ids, pos, rows, mask = self._verify_inputs(packed, L, q, L + q)
            if device_tokens is not None:
                ids[0, 1:q].copy_(device_tokens)
            if mark is not None:
                mark()
            logits, feats = self.fast.forward(tc, ids, pos, rows, mask, L + q)
        if mode == "batch":
            return packed_verified(mode, paths, node_tokens, packed, logits[:q], feats[:q])
        # chain and tree rows are the packed rows themselves: no index upload
        return Verified(mode, tuple(paths), trie_nodes(tuple(paths)), list(node_tokens), logits[:q],
                        feats[None, :q], packed=packed)

    def _verify_inputs(self, packed: Packed, L: int, q_pad: int, kv_len: int):
        """``_verify_arrays`` on the device (one upload)."""
        arrays = self._verify_arrays(packed, L, q_pad, kv_len)
        return Staged(arrays, self.device).write(arrays)

    @staticmethod
    def _verify_arrays(packed: Packed, L: int, q_pad: int, kv_len: int):
        """ids/positions [1, q_pad], write rows [q_pad], mask [1, 1, q_pad, kv_len] of a
        packed pass at cache length L, on the host. Padding rows write past the real ones
        and see only themselves (never seen by a real row)."""
        q = len(packed.tokens)
        pad = q_pad - q
        ids = np.asarray([packed.tokens + [0] * pad], dtype=np.int64)
        pos = np.asarray([[L + d for d in packed.depths] + [L] * pad], dtype=np.int64)
        rows = np.arange(L, L + q_pad, dtype=np.int64)
        mask = np.zeros((1, 1, q_pad, kv_len), dtype=bool)
        mask[0, 0, :q, :L] = True
        new = mask[0, 0, :, L:L + q_pad]
        new[np.arange(q_pad), np.arange(q_pad)] = True
        new[:q, :q] = packed.ancestors()
        return ids, pos, rows, mask

    def _verify_captured(self, tc, packed: Packed, L: int, device_tokens=None, mark=None):
        q = len(packed.tokens)
        q_pad = bucket(q)
        span = kv_span(L + q_pad, tc.capacity)
        key = ("verify", q_pad, span, tc.capacity)
        arrays = self._verify_arrays(packed, L, q_pad, span)
        step = self.graphs.get(key)
        staged = step.staged if step is not None else Staged(arrays, self.device)
        inputs = staged.write(arrays)  # the captured step's own input buffers
        if device_tokens is not None:
            inputs[0][0, 1:q].copy_(device_tokens)
        if step is None:
            if mark is not None:
                mark()  # the capture lands inside the span: the loop takes it out (capture_s)
            step = self._capture(key, "target", lambda *a: self.fast.forward(tc, *a, span), inputs)
            step.staged = staged
            return step.run()
        if mark is not None:
            mark()
        return step.run()

    @torch.inference_mode()
    def commit(self, tc, verified, path_index, accepted, L):
        rows = verified.packed.path_rows[path_index][:accepted + 1]
        if rows != list(range(accepted + 1)):
            tc.move_rows(to_device([L + r for r in rows], torch.long, self.device), L)
        tc.length = L + accepted + 1
        kept = rows_of(verified.features, rows, dim=1)
        # a captured verify's outputs are overwritten by the next replay, and these
        # features may wait in the loop past it (a cycle that drafts nothing)
        return kept.clone() if self.capture else kept

    # ---- draft
    @torch.inference_mode()
    def draft_pass(self, dc, block_ids, context, cached, context_len):
        self._check(dc)
        if context is not None and context.shape[1]:
            if dc.length != cached:
                raise RuntimeError(f"draft cache holds {dc.length} rows, the loop says {cached}")
            self._append(dc, context, cached)
            dc.length = context_len
        return self._block(dc, block_ids, context_len)

    def _append(self, dc, context: torch.Tensor, cached: int) -> None:
        T = context.shape[1]
        dev = self.device
        if not self.capture or T > BUCKETS[-1]:
            rows = torch.arange(cached, cached + T, device=dev)
            self.fdraft.append_context(dc, context, rows[None], rows)
            return
        T_pad = bucket(T)
        self._ensure(cached + T_pad)
        key = ("append", T_pad, dc.capacity)
        step = self.graphs.get(key)
        if step is None:
            ctx = torch.zeros(1, T_pad, context.shape[2], dtype=context.dtype, device=dev)
            ctx[:, :T] = context
            rows = torch.arange(cached, cached + T_pad, device=dev)
            self._capture(key, "draft", lambda *a: self.fdraft.append_context(dc, *a), (ctx, rows[None], rows))
            return
        # rewrite the captured inputs in place (device ops only; rows past T are padding
        # that later appends overwrite)
        ctx, _, rows = step.inputs  # the positions input is a view of the rows input
        ctx[:, :T].copy_(context)
        ctx[:, T:].zero_()
        torch.arange(cached, cached + T_pad, device=dev, out=rows)
        step.run()

    def _block_arrays(self, block_ids, context_len: int, span: int):
        """ids, positions [1, b] and mask [1, 1, b, span + b] of a block pass over ``span``
        cache rows, on the host (the mask by the draft's own rule, computed on the CPU)."""
        b = len(block_ids)
        ids = np.asarray([block_ids], dtype=np.int64)
        pos = np.arange(context_len, context_len + b, dtype=np.int64)[None]
        mask = self.fdraft.host_block_mask(b, context_len, span)
        return ids, pos, mask

    def _block(self, dc, block_ids, context_len: int) -> torch.Tensor:
        b = len(block_ids)
        dev = self.device
        if not self.capture:
            ids = to_device([block_ids], torch.long, dev)
            pos = torch.arange(context_len, context_len + b, device=dev)[None]
            mask = None if self.fdraft.plain else self.fdraft.block_mask(b, context_len, context_len, dev)
            return self.fdraft.block_logits(dc, ids, pos, mask, context_len)
        span = kv_span(max(context_len, 1), dc.capacity)
        key = ("block", b, span, dc.capacity)
        arrays = self._block_arrays(block_ids, context_len, span)
        step = self.graphs.get(key)
        if step is None:
            staged = Staged(arrays, dev)
            step = self._capture(key, "draft", lambda *a: self.fdraft.block_logits(dc, *a, span),
                                 staged.write(arrays))
            step.staged = staged
        else:
            step.staged.write(arrays)
        # a copy: refinement and recycling run the same captured pass again within the
        # cycle while the loop still holds the first pass's logits
        return step.run().clone()

    # ---- top-k over the vocabulary (the DraftView, the recording)
    @torch.inference_mode()
    def record_topk(self, logits: torch.Tensor, k: int):
        """``topk_raw`` of ``logits`` [n, V], for the recording. The outputs are copies:
        the loop keeps them until the sample ends, past later replays."""
        if not self.capture:
            return topk_raw(logits, k)
        return tuple(t.clone() for t in self._rowwise("record", lambda b: topk_raw(b, k), logits, k))

    @torch.inference_mode()
    def view_topk(self, logits: torch.Tensor, k: int):
        """``topk_logprobs`` of draft logits [n, V] (the DraftView's proposals); captured,
        the ids and log-probs come to the host in one copy (eagerly they waited for the
        device twice)."""
        if not self.capture:
            return topk_logprobs(logits, k)
        # the same graph as view_packed's (one key, one function)
        out = self._rowwise("draft", lambda b: pack_topk(b, k), logits, k).cpu().numpy()
        return out[:, :k].copy(), out[:, k:].view(np.float32).copy()

    @torch.inference_mode()
    def view_packed(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        """``pack_topk`` of draft logits [n, V], left on the device (a ``DeviceDraftView``
        fetches it when read); a copy, since later passes of the cycle replay the graph."""
        if not self.capture:
            return pack_topk(logits, k)
        return self._rowwise("draft", lambda b: pack_topk(b, k), logits, k).clone()

    def _rowwise(self, phase: str, fn, logits: torch.Tensor, k: int):
        """``fn`` of ``logits`` [n, V] replayed from a graph per (fn, padded row count):
        eagerly a top-k and a log-sum-exp over the vocabulary launch about twenty kernels
        from the host, 0.2 ms of host time each on an H200 host, which the GPU spends
        waiting (the whole cost of recording, and 0.4 ms of the draft step). ``fn`` must
        be row-wise, so padding rows change no real row; returns its outputs' first n
        rows (views of the graph's outputs, overwritten by its next replay)."""
        n, V = logits.shape
        key = (phase, "rowwise", bucket(n), V, k)
        step = self.graphs.get(key)
        if step is None:
            buf = torch.zeros(key[2], V, dtype=torch.float32, device=logits.device)
            buf[:n].copy_(logits)
            step = self._capture(key, phase, fn, (buf,))
        else:
            step.inputs[0][:n].copy_(logits)  # rows past n keep stale values, never read
        out = step.run()
        return tuple(t[:n] for t in out) if isinstance(out, tuple) else out[:n]

    def _capture(self, key, phase: str, fn, inputs):
        """Capture ``fn`` over ``inputs`` (they become its static buffers; the capture's
        warm-up runs compute this call's result too)."""
        from specreplay.models.fast import StepGraph
        step = StepGraph(fn, inputs, capture=True, pool=self.pool)
        self.graphs[key] = step
        self.capture_s[phase] += step.capture_s
        return step
