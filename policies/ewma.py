"""The EWMA throughput scheduler: choose the block size whose measured tokens per
second, tau_hat(b) / cycle_hat(b), is best, with the seed script's
warmup, probes, switch margin, streak, cooldown, low-accept fallback and ADL mode."""
from __future__ import annotations

import math
from typing import Any

from specreplay.policies.base import CycleContext, CycleOutcome, Policy
from specreplay.policies.spec import register


def ewma_update(prev: float | None, x: float, alpha: float) -> float:
    """Exponentially weighted mean; the first observation initialises it."""
    return float(x) if prev is None else (1.0 - alpha) * prev + alpha * float(x)


def block_candidates(values: Any) -> tuple[int, ...]:
    """Sorted, deduplicated candidate block sizes, each >= 2."""
    sizes = tuple(sorted({int(v) for v in values}))
    if not sizes:
        raise ValueError("candidates needs at least one block size, e.g. candidates=8|12|16")
    if sizes[0] < 2:
        raise ValueError(f"candidates must all be >= 2, got {'|'.join(map(str, sizes))}")
    return sizes


def nearest_candidate(candidates: tuple[int, ...], k: float) -> int:
    """The candidate closest to k; a tie goes to the larger one."""
    return min(candidates, key=lambda b: (abs(b - k), -b))


@register
class Ewma(Policy):
    """Choose the block size with the best measured tau per second: the seed EWMA
    scheduler (``benchmark_dynamic_schedule.py``), step by step.

    Per candidate b it keeps EWMAs (weight ``alpha``) of tau and of the cycle's seconds
    (``outcome.cycle_s`` = draft + target + overhead), and score(b) = tau_hat / cycle_hat.
    It starts at the largest candidate (``current``).

    Choosing the block of cycle c:
      1. c < warmup: candidates[c % n] (round robin);
      2. probe > 0 and (c - warmup) % probe == 0: the next probe candidate, from a cursor
         rotating over the candidates and skipping ``current``;
      3. otherwise ``current``.

    Observing a cycle of block size b (sizes that are not candidates are ignored):
      1. update the EWMAs of b;
      2. mode=adl: update lgen_hat and lacc_hat (weight ``rho``) and the ADL target;
      3. low-accept fallback: tau/b < low_accept while b == current counts, anything
         else resets the count; ``low_streak`` in a row step ``current`` down one
         candidate, clear the pending switch and start the cooldown. This fires even
         during warmup, and that cycle takes no other decision;
      4. still in warmup: stop. Cooldown left: count it down and stop;
      5. the scored set = candidates with a score; mode=adl keeps only those within
         ``neighborhood`` of the ADL target (if any remain);
      6. best = argmax score (first candidate on ties); relative improvement over
         score(current) (an unknown current counts as -inf); eligible if > ``margin``;
      7. best == current or not eligible: clear the pending switch; else count a streak
         towards best, and after ``streak`` in a row switch and start the cooldown.

    ADL mode, fixed: the seed set the target to ceil(lgen_hat + (delta if lacc_hat >=
    lgen_hat else 0)), driven by the sizes it used (lgen_hat), so the target could only
    grow while everything was accepted and never came down when acceptance fell (it
    ratcheted). Here the target is driven by what was accepted: ceil(lacc_hat + delta),
    clipped to [k_min, k_max] and snapped to the nearest candidate (ties to the larger):
    a headroom of ``delta`` above the accepted length, so it grows when blocks fill up
    and shrinks when they do not. lgen_hat is still tracked for plotting.
    """
    name = "ewma"
    role = "block"
    params = {"candidates": (8, 12, 16), "alpha": 0.1, "warmup": 2, "probe": 12,
              "margin": 0.05, "streak": 2, "cooldown": 2, "low_accept": 0.35,
              "low_streak": 2, "mode": "ewma", "rho": 0.3, "delta": 2.0, "k_min": 0,
              "k_max": 0, "neighborhood": 4}
    help = ("candidates: block sizes to choose from (anchor included)\n"
            "alpha: EWMA weight of the newest tau and cycle time, in (0, 1]\n"
            "warmup: first cycles tried round robin over the candidates\n"
            "probe: every this many cycles after warmup, try another candidate (0 = never)\n"
            "margin: relative score improvement needed to switch\n"
            "streak: consecutive decisions for the same candidate before switching\n"
            "cooldown: cycles without switching after a switch or fallback\n"
            "low_accept: tau/b below this at the current size counts towards a fallback\n"
            "low_streak: that many low-accept cycles in a row step one candidate down\n"
            "mode: ewma | adl (restrict choices near the adaptive-draft-length target)\n"
            "rho: EWMA weight of the ADL accepted/drafted lengths\n"
            "delta: ADL headroom above the accepted length\n"
            "k_min, k_max: ADL target bounds (0 = smallest / largest candidate)\n"
            "neighborhood: ADL keeps candidates within this many tokens of its target")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        k = self.kw
        k["candidates"] = block_candidates(k["candidates"])
        self.require_fraction("alpha", "rho")
        self.require_at_least(0, "warmup", "probe", "cooldown", "neighborhood", "k_min", "k_max")
        self.require_at_least(1, "streak", "low_streak")
        if k["mode"] not in ("ewma", "adl"):
            raise ValueError(f"mode must be ewma or adl, got {k['mode']!r}")
        lo, hi = self._k_bounds()
        if lo > hi:
            raise ValueError(f"k_min ({lo}) must not exceed k_max ({hi})")
        # knobs read every cycle, as attributes (the replay loop runs this per cycle)
        self.candidates: tuple[int, ...] = k["candidates"]
        self._later = self.candidates[1:]  # those a tie with an earlier one loses to it
        self.alpha, self.warmup, self.probe = k["alpha"], k["warmup"], k["probe"]
        self.margin, self.adl = k["margin"], k["mode"] == "adl"
        self.keep = 1.0 - self.alpha  # the weight of the previous estimate
        self.low_accept, self.low_streak = k["low_accept"], k["low_streak"]
        self.streak, self.cooldown = k["streak"], k["cooldown"]
        self.reset(0)

    def _k_bounds(self) -> tuple[int, int]:
        c = self.kw["candidates"]
        return self.kw["k_min"] or c[0], self.kw["k_max"] or c[-1]

    def reset(self, sample: int) -> None:
        c = self.kw["candidates"]
        self.tau_hat: dict[int, float] = {}
        self.cycle_hat: dict[int, float] = {}
        self.score_hat: dict[int, float] = {}
        self.obs_count = {b: 0 for b in c}
        self.current = c[-1]
        self.pending: int | None = None
        self.pending_streak = 0
        self.cooldown_left = 0
        self.low_count = 0
        self.probe_cursor = 0
        self.lgen_hat: float | None = None
        self.lacc_hat: float | None = None
        self.adl_target: int | None = None
        self.last_choice = 0
        self.last_probe = False

    # -- choosing
    def choose_block(self, ctx: CycleContext) -> int:
        c, cycle = self.candidates, ctx.cycle
        self.last_probe = False
        if cycle < self.warmup:
            choice = c[cycle % len(c)]
        elif self.probe > 0 and (cycle - self.warmup) % self.probe == 0:
            choice = self._next_probe()
            self.last_probe = True
        else:
            choice = self.current
        self.last_choice = choice
        return choice

    def _next_probe(self) -> int:
        """Rotate the probe cursor over the candidates, skipping ``current``."""
        c = self.candidates
        for _ in range(len(c)):
            b = c[self.probe_cursor % len(c)]
            self.probe_cursor += 1
            if b != self.current:
                return b
        return self.current  # a single candidate: nothing else to probe

    # -- observing
    def score(self, b: int) -> float | None:
        """tau_hat(b) / cycle_hat(b), None until b has been observed."""
        return self.score_hat.get(b)

    def observe(self, outcome: CycleOutcome) -> None:
        # Runs once per replayed cycle: the steps of the class docstring written out (no
        # helper calls, knobs as attributes; ADL's steps 2 and 5 through their helpers).
        # ``_update_estimates``, ``_low_accept_fallback`` and ``_consider_switch`` are the
        # same steps one by one; a test compares the two.
        b = outcome.block_size
        count = self.obs_count.get(b)
        if count is None:
            return
        self.obs_count[b] = count + 1
        # 1. the EWMAs of b (ewma_update, inlined: the first observation initialises;
        # b has estimates exactly when it has been observed before)
        tau_in = outcome.tau
        if count:
            keep, alpha = self.keep, self.alpha
            tau = keep * self.tau_hat[b] + alpha * float(tau_in)
            secs = keep * self.cycle_hat[b] + alpha * float(outcome.cycle_s)
        else:
            tau, secs = float(tau_in), float(outcome.cycle_s)
        self.tau_hat[b], self.cycle_hat[b] = tau, secs
        # a zero-second cycle (no cost model) must not divide by zero (max(secs, 1e-12))
        score = self.score_hat
        score[b] = tau / (1e-12 if 1e-12 > secs else secs)
        if self.adl:
            self._update_adl(b, outcome)
        # 3. low-accept fallback
        current = self.current
        if b == current and tau_in / b < self.low_accept:
            self.low_count += 1
            if self.low_count >= self.low_streak:
                self._fall_back()
                return
        else:
            self.low_count = 0  # below low_streak (>= 1): no fallback
        # 4. warmup, cooldown
        if outcome.cycle < self.warmup:
            return
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            return
        # 5.-7. the best scored candidate (first on ties), a switch after a streak
        if self.adl:
            self._consider_switch()
            return
        candidates = self.candidates
        if len(score) == len(candidates):  # all scored (the rule after warmup): no gaps
            best = candidates[0]
            best_score = score[best]
            for c in self._later:
                s = score[c]
                if s > best_score:
                    best, best_score = c, s
        else:
            best = best_score = None
            for c in candidates:
                s = score.get(c)
                if s is not None and (best is None or s > best_score):
                    best, best_score = c, s
        if best is None:
            return
        if best == current:
            # _switch_to(best, True) clears the pending switch: a call only if one pends
            # (the common steady state has none, and this runs once per replayed cycle)
            if self.pending is not None or self.pending_streak:
                self._switch_to(best, True)
            return
        self._switch_to(best, _relative_improvement(best_score, score.get(current)))

    def _update_estimates(self, b: int, outcome: CycleOutcome) -> None:
        tau = ewma_update(self.tau_hat.get(b), outcome.tau, self.alpha)
        secs = ewma_update(self.cycle_hat.get(b), outcome.cycle_s, self.alpha)
        self.tau_hat[b], self.cycle_hat[b] = tau, secs
        # a zero-second cycle (no cost model) must not divide by zero
        self.score_hat[b] = tau / max(secs, 1e-12)
        self.obs_count[b] += 1

    def _update_adl(self, b: int, outcome: CycleOutcome) -> None:
        rho = self.kw["rho"]
        l_gen = outcome.l_gen or b
        self.lgen_hat = ewma_update(self.lgen_hat, l_gen, rho)
        self.lacc_hat = ewma_update(self.lacc_hat, outcome.tau, rho)
        self.adl_target = self.adl_target_size(self.lacc_hat)

    def adl_target_size(self, lacc_hat: float) -> int:
        """The candidate the ADL target points at: ceil(lacc_hat + delta), clipped to
        [k_min, k_max], snapped to the nearest candidate (ties to the larger)."""
        lo, hi = self._k_bounds()
        # round first: float noise must not push an exact integer up by one
        k = min(max(math.ceil(round(lacc_hat + self.kw["delta"], 9)), lo), hi)
        return nearest_candidate(self.kw["candidates"], k)

    def _low_accept_fallback(self, b: int, tau: int) -> bool:
        """Count low-acceptance cycles at the current size; step down after a streak.
        Returns True when the fallback fired."""
        if b == self.current and tau / b < self.low_accept:
            self.low_count += 1
        else:
            self.low_count = 0
        if self.low_count < self.low_streak:
            return False
        self._fall_back()
        return True

    def _fall_back(self) -> None:
        """Step ``current`` down one candidate, clear the pending switch, cool down."""
        c = self.candidates
        self.current = c[max(0, c.index(self.current) - 1)]
        self.pending, self.pending_streak = None, 0
        self.cooldown_left = self.cooldown
        self.low_count = 0

    def _scored_set(self) -> list[int]:
        scored = [b for b in self.candidates if b in self.score_hat]
        if self.adl and self.adl_target is not None:
            near = [b for b in scored
                    if abs(b - self.adl_target) <= self.kw["neighborhood"]]
            scored = near or scored
        return scored

    def _consider_switch(self) -> None:
        scored = self._scored_set()
        if not scored:
            return
        best = scored[0]
        for b in scored[1:]:  # first candidate wins ties
            if self.score_hat[b] > self.score_hat[best]:
                best = b
        self._switch_to(best, best == self.current or
                        _relative_improvement(self.score_hat[best], self.score_hat.get(self.current)))

    def _switch_to(self, best: int, improvement: "float | bool") -> None:
        """Steps 6-7: ``best`` becomes current once it has led by more than the margin
        for ``streak`` cycles in a row. ``improvement``: its relative lead over the
        current size, or True when it is the current size (nothing to switch)."""
        if improvement is True or improvement <= self.margin:
            self.pending, self.pending_streak = None, 0
            return
        if best == self.pending:
            self.pending_streak += 1
        else:
            self.pending, self.pending_streak = best, 1
        if self.pending_streak >= self.streak:
            self.current = best
            self.pending, self.pending_streak = None, 0
            self.cooldown_left = self.cooldown

    # -- reporting
    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ewma_current": self.current, "ewma_probe": self.last_probe,
                               "ewma_pending": self.pending or 0,
                               "ewma_streak": self.pending_streak,
                               "ewma_cooldown": self.cooldown_left,
                               "ewma_low_count": self.low_count}
        for b in self.candidates:
            if b in self.score_hat:
                out[f"ewma_score_{b}"] = self.score_hat[b]
                out[f"ewma_tau_{b}"] = self.tau_hat[b]
        if self.adl and self.adl_target is not None:
            out.update(adl_target=self.adl_target, adl_lgen_hat=self.lgen_hat,
                       adl_lacc_hat=self.lacc_hat)
        return out

    def uses_time(self) -> bool:
        return True


def _relative_improvement(best: float, current: float | None) -> float:
    """(best - current) / |current|; an unknown current scores -inf (any known best is
    an infinite improvement), a zero current any positive best."""
    if current is None:
        return math.inf
    if current == 0.0:
        return math.inf if best > 0 else 0.0
    return (best - current) / abs(current)
