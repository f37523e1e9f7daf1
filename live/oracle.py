"""The oracle pass: for every output position p of a
recorded sample and every block size b, what the draft would propose if a cycle started
at p, without running the decode loop again.

One target forward over prompt + S gives the context features of every position (and
the target's own top-k along S, the ``oracle_target`` rows). Then ``forward_blocks``
drafts all blocks [S[p], MASK, ...] at anchors len(prompt) + p at once, each block seeing
the context before its anchor; the context K/V are projected once per sample and shared
by every block size, probe and refinement pass. Probes replay draft inputs that depend on the policy:

- recycle keys: for each p and previous offset d in 1..b-1, the seeds the SAME policy
  code (``draft_input`` of the parsed probe component) derives from the plain proposal
  at p - d with tau = d. Rows exist only where that gives seeds: a (p, d) without a row
  drafts plainly, so the plain row applies.
- refine keys: the proposal at p after the component's refinement passes, decided by
  the same ``refine_block`` / ``merge_refined`` the live loop runs.

Proposals are stored as the draft's top-k ids and float16-rounded log-probabilities
(``live.drafting.topk_logprobs``; on a GPU the head's rows go through
``models.kernels.topk_logsumexp``, whose log-probabilities may differ from it by one
float16 step and whose equal logits come in increasing id), with ``true_rank`` per offset.
"""
from __future__ import annotations

import numpy as np
import torch

from specreplay.live.drafting import block_input, merge_refined, refine_block, topk_logprobs, topk_on_device
from specreplay.models.draft import to_device
from specreplay.models.kernels import topk_fits, topk_logsumexp, topk_reads
from specreplay.policies.base import CycleContext, CycleOutcome, DraftRequest, DraftView
from specreplay.policies.spec import PolicyError, parse_policy
from specreplay.traces.schema import RANK_BEYOND_END, RANK_NOT_IN_TOPK

# Memory for the draft logits of one chunk of LM head rows (the head's output and the
# scaled copy ``logits`` returns, and the reference top-k's float32 copy where it runs).
_LOGIT_BYTES = 1 << 31


def default_probe_keys(groups: list[str]) -> list[str]:
    """``recycle`` -> recycle(mode=sparse) and recycle(mode=dense) with default knobs;
    ``refine`` -> refine(steps=2): canonical specs from the policy classes. Any other
    item must itself be a probe key (a recycle or refine component spec)."""
    keys: list[str] = []
    for g in groups:
        g = g.strip()
        if not g:
            continue
        if g == "recycle":
            keys += [parse_policy("recycle(mode=sparse)").inputs[0].spec(),
                     parse_policy("recycle(mode=dense)").inputs[0].spec()]
        elif g == "refine":
            keys.append(parse_policy("refine(steps=2)").inputs[0].spec())
        else:
            keys.append(_probe_component(g).spec())
    return list(dict.fromkeys(keys))


def _probe_component(key: str):
    comp = parse_policy(key)
    if len(comp.inputs) != 1 or comp.inputs[0].name not in ("recycle", "refine"):
        raise PolicyError(f"probe {key!r} is not a recycle or refine component; use e.g. "
                          "recycle(mode=sparse) or refine(steps=2)")
    return comp.inputs[0]


class Oracle:
    """Oracle rows for one (target, draft) pair."""

    def __init__(self, target, draft, block_sizes, top_k: int = 4, probes=(),
                 max_new_tokens: int | None = None, probe_block_sizes=None, only=None, backend=None):
        """``only``: the (block size, probe key) groups to return ("" = plain), e.g. a
        ``live.oracle_plan`` plan's ``compute``; None returns every group. ``backend``: a
        graph backend object (live/backend.py) computes the target pass; None: hf."""
        self.target, self.draft = target, draft
        self.only = None if only is None else {(int(b), str(p)) for b, p in only}
        self.backend = backend if hasattr(backend, "full_pass") else None
        self.block_sizes = list(dict.fromkeys(int(b) for b in block_sizes))
        if any(b < 2 for b in self.block_sizes):
            raise ValueError(f"oracle block sizes must be >= 2, got {self.block_sizes}")
        self.k = int(top_k)
        self.probes = [(key, _probe_component(key)) for key in probes]
        # probes multiply the oracle's size by up to b-1 rows per position: a recording
        # may keep them to the block sizes its policies will use
        self.probe_block_sizes = set(self.block_sizes if probe_block_sizes is None
                                     else (int(b) for b in probe_block_sizes))
        self.max_new_tokens = max_new_tokens
        self.device = target.get_input_embeddings().weight.device
        # block rows drafted and LM head rows computed so far (benchmarks/oracle_speed.py
        # turns them into the matmul work of the weights)
        self.drafted = {"block_rows": 0, "head_rows": 0}

    @torch.inference_mode()
    def rows(self, sample: int, prompt_ids: list[int], output_ids: list[int]):
        """(oracle rows, oracle_target rows) of one sample."""
        P, S = len(prompt_ids), [int(t) for t in output_ids]
        feats, t_ids, t_lps = self._target_pass(prompt_ids, S)
        # every block below, of every size and probe, reads the same context K/V
        kv = self.draft.context_kv(feats)
        del feats
        target_rows = [{"sample": sample, "position": i, "target_ids": t_ids[i].tolist(),
                        "target_logprobs": t_lps[i].astype(np.float16)} for i in range(len(S))]
        starts = list(range(max(0, len(S) - 1)))
        mask = self.draft.mask_token_id
        # The device works through a queue of passes while the host builds the blocks of
        # the next: every plain pass is queued first; a probe's blocks are built from its
        # plain proposals as they arrive and queued behind the others; a refinement step
        # is queued once the step before it is read back.
        plain_passes = {b: self._launch(kv, P, [(p, block_input(S[p], b, mask)) for p in starts], b)
                        for b in self.block_sizes}
        done: dict[tuple[int, str], list[dict]] = {}
        recycled: dict[tuple[int, str], tuple[list, _Pass]] = {}
        refined: dict[tuple[int, str], _Refinement] = {}
        for b in self.block_sizes:
            ids, lps = plain_passes.pop(b).result()
            plain = {p: (ids[j], lps[j]) for j, p in enumerate(starts)}
            if self._wanted(b, ""):  # computed regardless: every probe starts from them
                done[(b, "")] = self._rows(sample, b, "", starts, [0] * len(starts), ids, lps, S)
            for key, comp in (self.probes if b in self.probe_block_sizes else ()):
                if not self._wanted(b, key):
                    continue
                if comp.name == "recycle":
                    blocks, meta = self._recycle_blocks(sample, comp, P, S, b, plain, starts)
                    recycled[(b, key)] = (meta, self._launch(kv, P, blocks, b))
                elif starts:
                    refined[(b, key)] = _Refinement(self, sample, comp, kv, P, S, b, plain, starts)
        steps = list(refined.values())
        while steps:  # one step of every refinement queued, then each read back in turn
            for r in steps:
                r.launch()
            steps = [r for r in steps if r.collect()]
        for (b, key), (meta, passed) in recycled.items():
            ids, lps = passed.result()
            done[(b, key)] = self._rows(sample, b, key, [p for p, _ in meta], [d for _, d in meta], ids, lps, S)
        for (b, key), r in refined.items():
            done[(b, key)] = self._rows(sample, b, key, starts, [0] * len(starts), *r.proposals(), S)
        out: list[dict] = []
        for b in self.block_sizes:  # plain, then the probes in order, per block size
            for key in ["", *(k for k, _ in self.probes)]:
                out += done.get((b, key), [])
        return out, target_rows

    def _wanted(self, b: int, probe: str) -> bool:
        return self.only is None or (b, probe) in self.only

    def _target_pass(self, prompt_ids, S):
        if self.backend is not None:
            logits, feats = self.backend.full_pass(list(prompt_ids) + S, len(S) + 1)
            t_ids, t_lps = topk_logprobs(logits[:len(S)], self.k)
            return feats, t_ids, t_lps
        ids = torch.tensor([list(prompt_ids) + S], dtype=torch.long, device=self.device)
        res = self.target(input_ids=ids, output_hidden_states=True, use_cache=False,
                          logits_to_keep=len(S) + 1)
        feats = self.draft.context_features(res.hidden_states)
        t_ids, t_lps = topk_logprobs(res.logits[0, :len(S)], self.k)
        return feats, t_ids, t_lps

    def _propose(self, kv, P: int, blocks: list[tuple[int, list[int]]], b: int):
        """Top-k ids [n, b-1, k] and rounded log-probs for the blocks (p, ids) anchored at
        P + p, in order: ``_launch`` and its result."""
        return self._launch(kv, P, blocks, b).result()

    def _launch(self, kv, P: int, blocks: list[tuple[int, list[int]]], b: int) -> "_Pass":
        """Queue the draft pass of the blocks (p, ids) anchored at P + p; its ``result()``
        gives ``_propose``'s arrays. Equal blocks are drafted once. The draft runs all
        blocks in one ``forward_blocks`` call (it chunks them by attention memory); the LM
        head and top-k run over rows 1..b-1 of every block, in chunks that bound the
        logits' memory. On a GPU the top-k go to pinned host memory behind the pass, so
        reading them waits for this pass only, not for the ones queued after it."""
        unique: dict[tuple[int, tuple[int, ...]], int] = {}
        where = np.asarray([unique.setdefault((p, tuple(blk)), len(unique)) for p, blk in blocks],
                           dtype=np.int64)
        shape = (len(unique), b - 1, self.k)
        if not unique:
            return _Pass(where, shape)
        anchors = [P + p for p, _ in unique]
        ids = to_device([blk for _, blk in unique], torch.long, self.device)
        hidden = self.draft.forward_blocks(kv, anchors, ids)[:, 1:]
        hidden = hidden.reshape(-1, hidden.shape[-1])
        self.drafted["block_rows"] += ids.numel()
        self.drafted["head_rows"] += hidden.shape[0]
        V = self.draft.config.vocab_size
        fused = topk_reads(hidden.device, hidden.dtype, V, self.k)
        per_row = V * (2 * hidden.element_size() + (0 if fused else 4))
        chunk = max(1, _LOGIT_BYTES // per_row)
        top_ids, top_lps = [], []
        for lo in range(0, hidden.shape[0], chunk):
            logits = self.draft.logits(hidden[lo:lo + chunk])
            if topk_fits(logits, self.k):
                i, lp = topk_logsumexp(logits, self.k)
            else:
                i, lp = topk_on_device(logits, self.k)
            top_ids.append(i)
            top_lps.append(lp)
        top_ids, top_lps = torch.cat(top_ids), torch.cat(top_lps)
        if not top_ids.is_cuda:
            return _Pass(where, shape, top_ids, top_lps)
        host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in (top_ids, top_lps)]
        host[0].copy_(top_ids, non_blocking=True)
        host[1].copy_(top_lps, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(top_ids.device))
        return _Pass(where, shape, *host, ready)

    def _recycle_blocks(self, sample, comp, P, S, b, plain, starts):
        """The recycle probe's blocks and their (p, d): for each start p and previous
        offset d, the seeds the probe's ``draft_input`` derives from the plain proposal
        at p - d with tau = d (none: no row, the plain one applies)."""
        blocks, meta = [], []
        views = {q: DraftView(sample, q, b, *plain[q]) for q in starts}
        for p in starts:
            for d in range(1, b):
                if p - d < 0:
                    break
                prev = CycleOutcome(sample, 0, p - d, b, d - 1, d, d, 0, b, 0.0, 0.0, 0.0, 0.0, l_gen=b)
                req = comp.draft_input(self._context(sample, p, P, views[p - d], prev), DraftRequest(b))
                if req.seeds:
                    blocks.append((p, block_input(S[p], b, self.draft.mask_token_id, req.seeds)))
                    meta.append((p, d))
        return blocks, meta

    def _context(self, sample, p, P, view, prev):
        remaining = max(1, (self.max_new_tokens or (p + 2)) - p - 1)
        return CycleContext(sample, 1, p, P + p, remaining, self.draft.block_size, view, prev)

    def _rows(self, sample, b, probe, starts, prev_offsets, ids, lps, S):
        """Oracle rows of one (block size, probe) group: proposals ids/lps [n, b-1, k] of
        cycles starting at ``starts`` [n], each offset's true-token rank computed for all
        rows at once."""
        n = len(starts)
        if not n:
            return []
        st = np.asarray(starts, dtype=np.int64)
        pos = st[:, None] + np.arange(1, b)                      # output index of offset i
        truth = np.asarray(S + [-1] * b, dtype=np.int64)[pos]    # -1 past the end of S
        hit = ids == truth[..., None]
        ranks = np.where(hit.any(-1), hit.argmax(-1), RANK_NOT_IN_TOPK)
        ranks = np.where(pos >= len(S), RANK_BEYOND_END, ranks).tolist()
        flat_ids = ids.reshape(n, -1).tolist()
        flat_lps = lps.reshape(n, -1).astype(np.float16)
        return [{"sample": sample, "start": int(st[j]), "block_size": b, "probe": probe,
                 "prev_offset": int(prev_offsets[j]), "true_rank": ranks[j],
                 "draft_ids": flat_ids[j], "draft_logprobs": flat_lps[j]} for j in range(n)]


class _Pass:
    """A queued draft pass: ``result()`` waits for it (on a GPU, for its copy to the
    host) and returns the top-k ids [n, b-1, k] and log-probs of the blocks in order."""

    def __init__(self, where, shape, ids=None, lps=None, ready=None):
        self.where, self.shape, self.ids, self.lps, self.ready = where, shape, ids, lps, ready

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.ids is None:
            return (np.zeros(self.shape, np.int32)[self.where], np.zeros(self.shape, np.float32)[self.where])
        if self.ready is not None:
            self.ready.synchronize()
        ids = self.ids.numpy().reshape(self.shape)[self.where]
        lps = self.lps.numpy().reshape(self.shape)[self.where]
        return ids, lps


class _Refinement:
    """One refine probe at one block size, a step at a time: ``launch`` queues the
    redraft of every start whose proposal the component would refine, ``collect`` reads
    it back and merges it (``refine_block`` / ``merge_refined``, as live), and returns
    whether another step is due."""

    def __init__(self, oracle: Oracle, sample, comp, kv, P, S, b, plain, starts):
        self.oracle, self.kv, self.P, self.S, self.b, self.starts = oracle, kv, P, S, b, starts
        self.req = comp.draft_input(oracle._context(sample, starts[0], P, None, None), DraftRequest(b))
        self.current = {p: plain[p] for p in starts}
        self.steps_left = self.req.refine_steps
        self.todo: dict = {}
        self.passed = None

    def launch(self) -> None:
        req, mask = self.req, self.oracle.draft.mask_token_id
        self.todo = {}
        for p in self.starts if self.steps_left > 0 else ():
            block, redraft = refine_block(self.S[p], *self.current[p], req.refine_only_below, mask,
                                          req.refine_input)
            if redraft.any():
                self.todo[p] = (block, redraft)
        if self.todo:
            self.passed = self.oracle._launch(self.kv, self.P, [(p, blk) for p, (blk, _) in self.todo.items()],
                                              self.b)

    def collect(self) -> bool:
        if not self.todo:
            return False
        new_ids, new_lps = self.passed.result()
        for j, (p, (_, redraft)) in enumerate(self.todo.items()):
            self.current[p] = merge_refined(self.current[p], (new_ids[j], new_lps[j]), redraft)
        self.steps_left -= 1
        return self.steps_left > 0

    def proposals(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.stack([self.current[p][0] for p in self.starts]),
                np.stack([self.current[p][1] for p in self.starts]))
