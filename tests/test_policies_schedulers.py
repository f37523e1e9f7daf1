"""Block-size schedulers: ewma (step by step against hand-derived sequences), the ADL
mode without its ratchet, and breakeven."""
import math

import pytest

from specreplay.policies import parse_policy
from test_policies_helpers import ctx, drive, outcome

# Scores tau/cycle_s at alpha=1 (each estimate = the last observation): 8 -> 6,
# 12 -> 9, 16 -> 8. All tau/b stay >= 0.35 (no fallback) until stated.
STEADY = {8: (6, 1.0), 12: (9, 1.0), 16: (8, 1.0)}


def scripted(*phases):
    """env(cycle, b) from phases [(first_cycle, {b: (tau, seconds)}), ...]."""
    def env(cycle, b):
        table = [t for first, t in phases if cycle >= first][-1]
        return table[b]
    return env


def test_ewma_probe_switch_cooldown_fallback_sequence():
    policy = parse_policy("ewma(candidates=8|12|16, alpha=1.0, warmup=2, probe=4, margin=0.05,"
                          " streak=2, cooldown=2, low_accept=0.35, low_streak=2)")
    ewma = policy.block
    env = scripted((0, STEADY), (12, {**STEADY, 16: (16, 1.0)}),
                   (20, {**STEADY, 16: (4, 1.0)}))

    # c0, c1 warmup round robin (8, 12). c2: first post-warmup cycle is a probe; the
    # cursor starts at 8 (not current 16); 12 scores best and current 16 is unknown, so
    # 12 is pending (streak 1). c3: current 16 scores 8; 12 improves by 12.5% > 5%:
    # streak 2 -> switch to 12, cooldown 2. c4, c5: cooldown. c6: probe, cursor skips
    # 12 (current) -> 16. c10: probe, cursor wraps to 8.
    assert drive(policy, env, 12) == [8, 12, 8, 16, 12, 12, 16, 12, 12, 12, 8, 12]
    assert ewma.current == 12 and ewma.cooldown_left == 0

    # From c12, 16 accepts everything (score 16). c14: probe, cursor 12 (skipped) -> 16,
    # 16 is best by 78%: pending 16. c15: streak 2 -> switch to 16, cooldown 2 (c16,
    # c17). c18: probe -> 8.
    assert drive(policy, env, 8, first_cycle=12) == [12, 12, 16, 12, 16, 16, 8, 16]
    assert ewma.current == 16

    # From c20, 16 accepts tau 4 (4/16 < 0.35). c20: low count 1; 12 becomes pending.
    # c21: low count 2 -> fallback: step down to 12, clear pending, cooldown 2.
    # c22: probe (16; not current, so the low count resets), cooldown 2 -> 1. c23: 1 -> 0.
    assert drive(policy, env, 2, first_cycle=20) == [16, 16]
    assert ewma.current == 12 and ewma.pending is None and ewma.cooldown_left == 2
    assert drive(policy, env, 3, first_cycle=22) == [16, 12, 12]
    state = policy.state()
    assert state["ewma_current"] == 12 and state["ewma_cooldown"] == 0
    assert state["ewma_score_16"] == 4.0 and state["ewma_score_12"] == 9.0


def test_ewma_starts_at_largest_after_warmup_without_probes():
    policy = parse_policy("ewma(candidates=12|8|16, warmup=3, probe=0)")
    assert policy.block.kw["candidates"] == (8, 12, 16)
    assert drive(policy, lambda c, b: (b // 2, 1.0), 5) == [8, 12, 16, 16, 16]


def test_ewma_low_accept_fallback_fires_during_warmup():
    # warmup 4: 8, 12, 16, 8. At c2 the block is current (16) and tau/b = 2/16 < 0.35;
    # with low_streak 1 that steps current down to 12 although still in warmup.
    policy = parse_policy("ewma(candidates=8|12|16, warmup=4, probe=0, low_streak=1)")
    env = scripted((0, {8: (6, 1.0), 12: (9, 1.0), 16: (2, 1.0)}))
    assert drive(policy, env, 3) == [8, 12, 16]
    assert policy.block.current == 12
    assert drive(policy, env, 2, first_cycle=3) == [8, 12]


def test_ewma_estimates_are_exponential_means_of_tau_and_cycle_seconds():
    policy = parse_policy("ewma(alpha=0.5, warmup=10)")
    policy.observe(outcome(0, 8, 4, cycle_s=2.0))   # first observation initialises
    policy.observe(outcome(1, 8, 8, cycle_s=1.0))   # 0.5*4 + 0.5*8, 0.5*2 + 0.5*1
    assert policy.block.tau_hat[8] == 6.0 and policy.block.cycle_hat[8] == 1.5
    assert policy.state()["ewma_score_8"] == pytest.approx(4.0)
    policy.observe(outcome(2, 9, 9))                # not a candidate: ignored
    assert 9 not in policy.block.tau_hat
    assert policy.uses_time()


def seed_adl_target(lgen_hat, lacc_hat, delta, candidates):
    """The seed's formula (the ratchet), for comparison."""
    k = min(max(math.ceil(lgen_hat + (delta if lacc_hat >= lgen_hat else 0)),
                candidates[0]), candidates[-1])
    return min(candidates, key=lambda b: (abs(b - k), -b))


def test_adl_target_follows_acceptance_instead_of_ratcheting():
    policy = parse_policy("ewma(mode=adl, rho=0.3, delta=2.0, warmup=100)")
    ewma = policy.block
    targets, seed_targets = [], []
    # Blocks of 16 keep being drafted; acceptance collapses to tau 3, then recovers.
    for c, tau in enumerate([16, 3, 3, 3, 3, 16, 16]):
        policy.observe(outcome(c, 16, tau))
        targets.append(policy.state()["adl_target"])
        seed_targets.append(seed_adl_target(ewma.lgen_hat, ewma.lacc_hat, 2.0, (8, 12, 16)))
    # lacc_hat: 16, 12.1, 9.37, 7.459, 6.1213, 9.08491, 11.159437; ceil(lacc_hat + 2),
    # clipped to [8, 16]: 16, 15, 12, 10, 9, 12, 14; nearest candidate (ties larger):
    assert targets == [16, 16, 12, 12, 8, 12, 16]
    # the seed formula, driven by the sizes used (always 16), never comes down:
    assert seed_targets == [16] * 7
    assert policy.state()["adl_lgen_hat"] == 16.0


def test_adl_mode_keeps_choices_near_its_target():
    # Warmup measures 8 (score 6), 12 (11/2 = 5.5) and 16 (10/2 = 5). At c3 the ADL
    # target is ceil(10 + 2) = 12; 8 scores best but lies outside 12 +- 2, so the
    # restricted best is 12 (10% over current 16). Plain ewma goes to 8 instead.
    seen = [outcome(0, 8, 6), outcome(1, 12, 11, cycle_s=2.0), outcome(2, 16, 10, cycle_s=2.0),
            outcome(3, 16, 10, cycle_s=2.0)]
    knobs = "alpha=1.0, warmup=3, probe=0, streak=1, cooldown=0, low_accept=0.0"
    adl = parse_policy(f"ewma(mode=adl, rho=1.0, delta=2.0, neighborhood=2, {knobs})")
    plain = parse_policy(f"ewma({knobs})")
    for o in seen:
        adl.observe(o)
        plain.observe(o)
    assert adl.state()["adl_target"] == 12 and adl.block.current == 12
    assert plain.block.current == 8


def test_breakeven_moves_to_the_adjacent_size_that_beats_its_break_even():
    # tau/t: 8 -> 6/1.0 = 6, 12 -> 8/1.2 = 6.67, 16 -> 9/1.6 = 5.63.
    env = scripted((0, {8: (6, 1.0), 12: (8, 1.2), 16: (9, 1.6)}))
    policy = parse_policy("breakeven(candidates=8|12|16, alpha=1.0, warmup=3, probe=0,"
                          " hysteresis=0.05)")
    # c0-c2 warmup. c3 at 16: 12 needs tau 9 * 1.2/1.6 = 6.75 (x1.05 = 7.09) and has
    # 8 -> move down. c4 at 12: 8 needs 8 * 1.0/1.2 = 6.67 (has 6), 16 needs
    # 8 * 1.6/1.2 = 10.67 (has 9): stay.
    assert drive(policy, env, 6) == [8, 12, 16, 16, 12, 12]
    state = policy.state()
    assert state["breakeven_current"] == 12
    assert state["breakeven_tau_needed_up"] == pytest.approx(8 * 1.6 / 1.2)
    assert state["breakeven_tau_needed_down"] == pytest.approx(8 * 1.0 / 1.2)
    assert state["breakeven_tau_up"] == 9 and state["breakeven_tau_down"] == 6


def test_breakeven_hysteresis_and_only_adjacent_moves():
    policy = parse_policy("breakeven(alpha=1.0, warmup=0, probe=0, hysteresis=0.05)")
    be = policy.block
    policy.observe(outcome(0, 12, 8, cycle_s=1.2))
    assert be.current == 16                       # 16 not measured yet: no break-even
    # 12 needs 10.4 * 1.2/1.6 = 7.8; it has 8 > 7.8 but not > 7.8 * 1.05 = 8.19
    policy.observe(outcome(1, 16, 10.4, cycle_s=1.6))
    assert be.current == 16
    policy.observe(outcome(2, 16, 10, cycle_s=1.6))  # needs 7.5 (x1.05 = 7.875) < 8
    assert be.current == 12
    # 8 is far better than 16 at this point but only neighbours are compared
    policy = parse_policy("breakeven(alpha=1.0, warmup=0, probe=0)")
    policy.observe(outcome(0, 8, 8, cycle_s=0.5))
    policy.observe(outcome(1, 16, 8, cycle_s=1.6))
    assert policy.block.current == 16


def test_breakeven_probes_alternate_neighbours():
    policy = parse_policy("breakeven(candidates=8|12|16, warmup=0, probe=2)")
    # current 16 has only a smaller neighbour; the model keeps 16 ahead (tau = b).
    assert drive(policy, lambda c, b: (b, 1.0), 5) == [12, 16, 12, 16, 12]
    assert policy.uses_time()


def test_fixed_and_ar_blocks():
    assert parse_policy("fixed(b=8)").plan_draft(ctx(0)).block_size == 8
    assert parse_policy("fixed").plan_draft(ctx(0, default_block_size=10)).block_size == 10
    assert parse_policy("ar").plan_draft(ctx(0)).block_size == 1
    assert not parse_policy("fixed(b=8)").uses_time()
