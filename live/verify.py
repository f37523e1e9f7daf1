"""Target passes of the decode loop: prefill, and the three verify shapes (chain, batch,
tree), each followed by keeping only the committed tokens' KV.

Shapes: q query tokens, L tokens in the target cache before the anchor, V vocabulary,
F raw context features (n taps x hidden).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from specreplay.models.draft import crop_cache
from specreplay.models.loading import cache_kwargs
from specreplay.policies.base import trie_nodes


@dataclass
class Verified:
    """One verify pass. ``node_logits`` [1+N, V]: row 0 = the anchor, row j+1 = trie node j;
    each row is the target's prediction for the next offset. ``rows`` (batch mode only)
    [n, q, V] per candidate row, ``features`` [n or 1, q, F]."""
    mode: str
    paths: tuple[tuple[int, ...], ...]
    nodes: list[tuple[int, int, int]]       # (parent, depth, rank) from trie_nodes
    node_tokens: list[int]
    node_logits: torch.Tensor
    features: torch.Tensor
    rows: torch.Tensor | None = None
    packed: "Packed | None" = None          # the graph backend's one-row layout

    def path_nodes(self, path_index: int) -> list[int]:
        """Trie node indices of a path, by depth 1..len."""
        index = {}
        for j, (parent, depth, rank) in enumerate(self.nodes):
            index[(parent, rank)] = j
        out, parent = [], -1
        for rank in self.paths[path_index]:
            parent = index[(parent, rank)]
            out.append(parent)
        return out


def _forward(target, ids, positions, cache, mask=None):
    out = target(input_ids=ids, position_ids=positions, **cache_kwargs(target, cache),
                 use_cache=True, attention_mask=mask, output_hidden_states=True)
    return out.logits, out.hidden_states


def prefill(target, draft, prompt_ids: list[int], cache, want_features: bool):
    """Run the prompt through the target. Returns the last position's logits [V] and the
    raw context features [1, P, F] of the prompt (None when not wanted)."""
    device = target.get_input_embeddings().weight.device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out = target(input_ids=ids, **cache_kwargs(target, cache), use_cache=True,
                 output_hidden_states=want_features, logits_to_keep=1)
    feats = draft.context_features(out.hidden_states) if want_features else None
    return out.logits[0, -1].float(), feats


def verify_nodes(target, draft, cache, mode: str, paths, anchor: int, node_tokens: list[int],
                 L: int, want_features: bool) -> Verified:
    """Verify the anchor plus the trie of ``paths`` (tokens per node given) in one target
    pass shaped by ``mode``. The cache then holds L + its query rows (batch: n rows)."""
    nodes = trie_nodes(tuple(paths))
    device = target.get_input_embeddings().weight.device
    if mode == "batch":
        return _verify_batch(target, draft, cache, paths, nodes, anchor, node_tokens, L, device,
                             want_features)
    ids = torch.tensor([[anchor] + list(node_tokens)], dtype=torch.long, device=device)
    depths = torch.tensor([0] + [d for _, d, _ in nodes], device=device)
    positions = (L + depths)[None]
    mask = None
    if mode == "tree" and any(parent != j - 1 for j, (parent, _, _) in enumerate(nodes)):
        mask = tree_mask([p for p, _, _ in nodes], L, device)
    elif mode not in ("chain", "tree"):
        raise ValueError(f"unknown verify mode {mode!r}")
    logits, hidden = _forward(target, ids, positions, cache, mask)
    feats = draft.context_features(hidden) if want_features else logits.new_zeros(1, ids.shape[1], 0)
    return Verified(mode, tuple(paths), nodes, list(node_tokens), logits[0].float(), feats)


def tree_mask(parents: list[int], L: int, device) -> torch.Tensor:
    """Boolean attention mask [1, 1, q, L+q] for the anchor (query row 0) and trie nodes
    (row j+1, parent index per node, -1 = anchor): every row sees the L cached tokens,
    itself and its ancestors, nothing else."""
    q = len(parents) + 1
    allowed = torch.zeros(q, q, dtype=torch.bool)
    allowed[0, 0] = True
    for j, parent in enumerate(parents):
        row = j + 1
        allowed[row] = allowed[parent + 1]
        allowed[row, row] = True
    mask = torch.cat((torch.ones(q, L, dtype=torch.bool), allowed), dim=1)
    return mask[None, None].to(device)


def _verify_batch(target, draft, cache, paths, nodes, anchor, node_tokens, L, device, want_features):
    """Each path is its own row [anchor, tokens...] (right-padded with the anchor token
    to the longest path; padding sits after every real token, so causal attention keeps
    it out of their logits), over the cache repeated along the batch."""
    index = {}
    for j, (parent, _, rank) in enumerate(nodes):
        index[(parent, rank)] = j
    width = max(len(p) for p in paths) + 1
    rows, first_row = [], {}
    for r, path in enumerate(paths):
        toks, parent = [anchor], -1
        for d, rank in enumerate(path, start=1):
            parent = index[(parent, rank)]
            first_row.setdefault(parent, (r, d))
            toks.append(node_tokens[parent])
        rows.append(toks + [anchor] * (width - len(toks)))
    ids = torch.tensor(rows, dtype=torch.long, device=device)
    positions = (L + torch.arange(width, device=device))[None].expand(len(paths), -1)
    cache.batch_repeat_interleave(len(paths))
    logits, hidden = _forward(target, ids, positions, cache)
    logits = logits.float()
    feats = draft.context_features(hidden) if want_features else logits.new_zeros(len(paths), width, 0)
    picks = [logits[0, 0]] + [logits[first_row[j][0], first_row[j][1]] for j in range(len(nodes))]
    return Verified("batch", tuple(paths), nodes, list(node_tokens), torch.stack(picks), feats, rows=logits)


@dataclass
class Packed:
    """Every verify mode as ONE row of query tokens under an ancestor-only mask (the graph
    backend's layout): a chain is a path, a tree its trie, a batch plan its paths side by
    side as disjoint chains that each start with their own copy of the anchor. Row lists
    index the packed row: ``node_rows`` [1+N] the anchor then each trie node (its first
    occurrence), ``path_rows`` per path the anchor's row then its tokens' rows."""
    tokens: list[int]
    depths: list[int]
    parents: list[int]          # packed parent row, -1 for a root (an anchor copy)
    node_rows: list[int]
    path_rows: list[list[int]]

    def ancestors(self):
        """Bool numpy [q, q]: row i sees row j iff j is i or one of its ancestors."""
        import numpy as np
        q = len(self.tokens)
        allowed = np.zeros((q, q), dtype=bool)
        for i, parent in enumerate(self.parents):
            if parent >= 0:
                allowed[i] = allowed[parent]
            allowed[i, i] = True
        return allowed


def pack(mode: str, paths, anchor: int, node_tokens: list[int]) -> Packed:
    """The packed layout of a verify pass (see ``Packed``)."""
    paths = tuple(tuple(p) for p in paths)
    nodes = trie_nodes(paths)
    index = {(parent, rank): j for j, (parent, _, rank) in enumerate(nodes)}

    def trie_path(path):
        out, parent = [], -1
        for rank in path:
            parent = index[(parent, rank)]
            out.append(parent)
        return out

    if mode in ("chain", "tree"):
        tokens = [int(anchor)] + [int(t) for t in node_tokens]
        depths = [0] + [d for _, d, _ in nodes]
        parents = [-1] + [p + 1 for p, _, _ in nodes]
        path_rows = [[0] + [j + 1 for j in trie_path(p)] for p in paths]
        return Packed(tokens, depths, parents, list(range(len(tokens))), path_rows)
    if mode != "batch":
        raise ValueError(f"unknown verify mode {mode!r}")
    tokens, depths, parents, path_rows, first = [], [], [], [], {}
    for path in paths:
        rows = [len(tokens)]
        tokens.append(int(anchor))
        depths.append(0)
        parents.append(-1)
        for d, j in enumerate(trie_path(path), start=1):
            first.setdefault(j, len(tokens))
            parents.append(rows[-1])
            rows.append(len(tokens))
            tokens.append(int(node_tokens[j]))
            depths.append(d)
        path_rows.append(rows)
    return Packed(tokens, depths, parents, [0] + [first[j] for j in range(len(nodes))], path_rows)


def packed_verified(mode: str, paths, node_tokens, packed: Packed, logits: torch.Tensor,
                    feats: torch.Tensor) -> Verified:
    """A Verified from one packed pass (logits [q, V], features [q, F]). Batch plans get
    ``rows`` [n, width, V] per path like the hf backend's (short paths padded with
    their last row, which no reader uses)."""
    nodes = trie_nodes(tuple(paths))
    node_logits = logits[torch.tensor(packed.node_rows, device=logits.device)]
    rows = None
    if mode == "batch":
        width = max(len(r) for r in packed.path_rows)
        grid = [r + [r[-1]] * (width - len(r)) for r in packed.path_rows]
        rows = logits[torch.tensor(grid, device=logits.device)]
    return Verified(mode, tuple(paths), nodes, list(node_tokens), node_logits, feats[None],
                    rows=rows, packed=packed)


def keep_committed(cache, verified: Verified, path_index: int, accepted: int, L: int) -> torch.Tensor:
    """Cut the target cache back to L + the anchor + the ``accepted`` tokens of the chosen
    path, and return those tokens' raw context features [1, accepted+1, F]."""
    keep = L + accepted + 1
    if verified.mode == "batch":
        cache.batch_select_indices(torch.tensor([path_index], device=verified.features.device))
        crop_cache(cache, keep)
        return verified.features[path_index:path_index + 1, :accepted + 1]
    if verified.mode == "tree":
        rows = [0] + [j + 1 for j in verified.path_nodes(path_index)[:accepted]]
        if rows != list(range(accepted + 1)):
            _gather_rows(cache, L, rows)
        crop_cache(cache, keep)
        idx = torch.tensor(rows, device=verified.features.device)
        return verified.features[:, idx]
    crop_cache(cache, keep)
    return verified.features[:, :accepted + 1]


def _gather_rows(cache, L: int, rows: list[int]) -> None:
    """Move the KV of query rows ``rows`` (relative to L) to positions L, L+1, ...;
    the caller crops what follows."""
    src = torch.tensor([L + r for r in rows])
    dst = torch.arange(L, L + len(rows))
    for layer in cache.layers:
        s, d = src.to(layer.keys.device), dst.to(layer.keys.device)
        layer.keys[:, :, d] = layer.keys[:, :, s]
        layer.values[:, :, d] = layer.values[:, :, s]
