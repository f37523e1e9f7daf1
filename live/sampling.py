"""Acceptance: which drafted tokens a verify pass commits, and the bonus token.

Greedy (temperature 0): a path's accepted length is its leading offsets whose token
equals the target's argmax; the chosen path is the longest (ties: the lowest index);
the bonus is the target's argmax after the accepted prefix.

Temperature T > 0, lossless in both variants (every committed token is distributed as
the target's own sample):

- ``chain_rejection``: standard speculative sampling for one path whose drafted tokens
  x_i were sampled from the draft's q_i. Offset i is accepted with probability
  min(1, p_i(x_i) / q_i(x_i)); at the first rejection the bonus is drawn from the
  residual max(p_i - q_i, 0) (normalised); after a fully accepted path, from p.
- ``multiround``: the exact multi-round scheme (recursive rejection sampling, the
  seed's Algorithm-1 study) over a trie of deterministic candidates. At a node with
  target distribution r (initially p), the children are tried in path order; child
  token t is a proposal with a point-mass distribution, so it is accepted with
  probability r(t); on rejection r loses t (r <- max(r - 1_t, 0), renormalised) and the
  next child is tried; when every child is rejected the bonus is drawn from what is
  left of r. An accepted child becomes the next node. Because the candidates are fixed
  before the target runs (top-k ranks of one draft pass), the point-mass proposal is
  what makes each round exact; using the draft's softmax as q there would bias it.

The cap (``cap_accepted``) then shortens the accepted prefix so the cycle never runs
past ``max_new_tokens`` or a stop token; the token at the cut becomes the bonus (it is
a valid target sample: greedy, it equals the argmax; sampled, it was accepted).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Acceptance:
    path: int          # chosen path index
    accepted: int      # drafted tokens accepted on it (after the cap)
    bonus: int         # the token committed after them


def greedy_accept(path_tokens: list[list[int]], path_argmax: list[list[int]]) -> Acceptance:
    """``path_tokens[i]`` the drafted tokens of path i (offsets 1..), ``path_argmax[i]``
    the target argmax after the anchor and after each of them (len + 1 entries)."""
    best, best_len = 0, -1
    for i, (toks, amax) in enumerate(zip(path_tokens, path_argmax)):
        n = 0
        while n < len(toks) and toks[n] == amax[n]:
            n += 1
        if n > best_len:
            best, best_len = i, n
    return Acceptance(best, best_len, int(path_argmax[best][best_len]))


def _draw(probs: torch.Tensor, gen: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=gen).item())


def _uniform(gen: torch.Generator, device) -> float:
    return float(torch.rand((), generator=gen, device=device).item())


def chain_rejection(tokens: list[int], p_rows: torch.Tensor, q_rows: torch.Tensor,
                    gen: torch.Generator) -> Acceptance:
    """Standard speculative sampling along one path. ``p_rows`` [len+1, V] target
    probabilities (row i predicts offset i+1), ``q_rows`` [len, V] the draft
    probabilities the tokens were sampled from."""
    for i, t in enumerate(tokens):
        p, q = p_rows[i], q_rows[i]
        ratio = float(p[t]) / max(float(q[t]), 1e-30)
        if _uniform(gen, p.device) < min(1.0, ratio):
            continue
        residual = torch.clamp(p - q, min=0.0)
        total = float(residual.sum())
        bonus = _draw(residual / total, gen) if total > 1e-12 else _draw(p, gen)
        return Acceptance(0, i, bonus)
    return Acceptance(0, len(tokens), _draw(p_rows[len(tokens)], gen))


def multiround(nodes: list[tuple[int, int, int]], node_tokens: list[int], probs: torch.Tensor,
               paths, gen: torch.Generator) -> Acceptance:
    """Recursive rejection over a trie of fixed candidates (see the module docstring).
    ``probs`` [1+N, V]: row 0 the anchor's target distribution, row j+1 node j's."""
    children: dict[int, list[int]] = {}
    for j, (parent, _, _) in enumerate(nodes):
        children.setdefault(parent, []).append(j)
    node, depth = -1, 0
    while True:
        r = probs[node + 1].clone()
        chosen = None
        for c in children.get(node, []):
            t = node_tokens[c]
            if _uniform(gen, r.device) < float(r[t]):
                chosen = c
                break
            r[t] = 0.0
            total = float(r.sum())
            if total <= 1e-12:
                break
            r = r / total
        if chosen is None:
            total = float(r.sum())
            bonus = _draw(r / total, gen) if total > 1e-12 else _draw(probs[node + 1], gen)
            return Acceptance(_path_through(nodes, paths, node), depth, bonus)
        node, depth = chosen, depth + 1


def _path_through(nodes, paths, node: int) -> int:
    """The first path that passes through trie node ``node`` (-1: the anchor -> 0)."""
    if node < 0:
        return 0
    key = []
    j = node
    while j >= 0:
        key.append(nodes[j][2])
        j = nodes[j][0]
    key = tuple(reversed(key))
    for i, p in enumerate(paths):
        if tuple(p[:len(key)]) == key:
            return i
    raise AssertionError("trie node on no path")


def cap_accepted(acc: Acceptance, path_tokens: list[int], remaining: int,
                 stop_ids: frozenset[int]) -> Acceptance:
    """Shorten the accepted prefix so accepted + 1 <= remaining and no accepted token is
    a stop token; the drafted token at the cut becomes the bonus."""
    limit = min(acc.accepted, remaining - 1)
    for i in range(limit):
        if path_tokens[i] in stop_ids:
            limit = i
            break
    if limit == acc.accepted:
        return acc
    return Acceptance(acc.path, limit, int(path_tokens[limit]))
