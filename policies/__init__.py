"""Policies: plain Python objects shared by the live loop and the simulator.

    from specreplay.policies import parse_policy
    policy = parse_policy("ewma(candidates=8|12|16)+gate(min_prob=0.2)")

Adding a policy means adding one module here with a ``@register``ed subclass of
``Policy``; the parser, the live loop and the simulator find it without other changes.
"""
from specreplay.policies.base import (Composite, CycleContext, CycleOutcome, DraftRequest, DraftView,
                           Policy, VerifyPlan, trie_nodes)
from specreplay.policies.spec import REGISTRY, PolicyError, parse_policy, register


def known_policies() -> dict[str, type[Policy]]:
    from specreplay.policies.spec import _load_all
    _load_all()
    return dict(REGISTRY)


__all__ = ["Composite", "CycleContext", "CycleOutcome", "DraftRequest", "DraftView", "Policy",
           "PolicyError", "REGISTRY", "VerifyPlan", "known_policies", "parse_policy", "register",
           "trie_nodes"]
