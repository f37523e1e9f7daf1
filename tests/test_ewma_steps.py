"""The EWMA scheduler's observe, written out for speed (it runs once per replayed
cycle), against the steps of its docstring taken one helper at a time: the same
estimates, switches, fallbacks and state after every observation, over random
configurations and outcomes (zero and NaN seconds, non-candidate sizes included)."""
import random

from specreplay.policies.base import CycleContext, CycleOutcome
from specreplay.policies.ewma import Ewma


def observe_by_steps(p: Ewma, outcome: CycleOutcome) -> None:
    """Ewma.observe as the class docstring lists it, one helper per step."""
    b = outcome.block_size
    if b not in p.obs_count:
        return
    p._update_estimates(b, outcome)
    if p.adl:
        p._update_adl(b, outcome)
    if p._low_accept_fallback(b, outcome.tau):
        return
    if outcome.cycle < p.warmup:
        return
    if p.cooldown_left > 0:
        p.cooldown_left -= 1
        return
    p._consider_switch()


def test_ewma_observe_equals_its_steps_one_by_one():
    rng = random.Random(7)
    steps = 0
    for _ in range(150):
        kw = dict(candidates=tuple(rng.sample([2, 4, 6, 8, 12, 16, 24], rng.randint(1, 4))),
                  alpha=rng.choice([0.05, 0.1, 0.5, 1.0]), warmup=rng.randint(0, 4),
                  probe=rng.choice([0, 1, 3, 12]), margin=rng.choice([0.0, 0.05, 0.2, -0.1]),
                  streak=rng.randint(1, 3), cooldown=rng.randint(0, 3),
                  low_accept=rng.choice([0.0, 0.35, 0.9]), low_streak=rng.randint(1, 3),
                  mode=rng.choice(["ewma", "adl"]))
        fast, slow = Ewma(**kw), Ewma(**kw)
        for sample in range(2):
            fast.reset(sample)
            slow.reset(sample)
            for cycle in range(150):
                ctx = CycleContext(sample, cycle, cycle, 100 + cycle, 1000, 16)
                b = fast.choose_block(ctx)
                assert slow.choose_block(ctx) == b
                if rng.random() < 0.1:
                    b = rng.choice([3, b])  # a size that may not be a candidate
                tau = rng.randint(1, b)
                # a few discrete values too: equal scores (ties go to the first candidate)
                secs = rng.choice([0.01, 0.02]) if kw["alpha"] == 1.0 else rng.random() * 0.05 + 0.001
                if kw["alpha"] == 1.0:
                    tau = rng.randint(1, min(b, 2))
                if rng.random() < 0.05:
                    secs = rng.choice([0.0, float("nan")])
                out = CycleOutcome(sample, cycle, cycle, b, tau - 1, tau, tau, 0, b, 0.001, secs,
                                   0.0, secs, b)
                fast.observe(out)
                observe_by_steps(slow, out)
                # repr: NaN estimates compare equal as text
                assert repr(fast.state()) == repr(slow.state()), (kw, sample, cycle)
                assert repr((fast.tau_hat, fast.cycle_hat, fast.obs_count, fast.pending,
                             fast.low_count, fast.adl_target)) == \
                    repr((slow.tau_hat, slow.cycle_hat, slow.obs_count, slow.pending,
                          slow.low_count, slow.adl_target))
                steps += 1
    assert steps == 150 * 2 * 150
