"""The break-even scheduler: move between ADJACENT block sizes when the
measured cycle times say the neighbour pays for itself."""
from __future__ import annotations

from typing import Any

from specreplay.policies.base import CycleContext, CycleOutcome, Policy
from specreplay.policies.ewma import block_candidates, ewma_update
from specreplay.policies.spec import register


@register
class Breakeven(Policy):
    """Switch on the measured break-even tau between adjacent block sizes.

    Per candidate b it keeps EWMAs (weight ``alpha``) of tau(b) and of the cycle's
    seconds t(b) (``outcome.cycle_s``). A larger size costs t(b_next) per cycle against
    t(b_cur), so it only pays when its tau reaches the break-even

        tau_needed(b_next) = tau_hat(b_cur) * t_hat(b_next) / t_hat(b_cur)

    (likewise for the smaller neighbour, which pays when it loses less tau than it
    saves time). After each observed cycle past warmup, the scheduler moves to the
    neighbour whose estimated tau exceeds its break-even by more than ``hysteresis``
    (relative), i.e. whose tau/t beats the current one's by that factor; when both
    do, the one with the higher tau/t. Neighbours are measured during the warmup
    (round robin over the candidates, as ``ewma``) and refreshed by probes: every
    ``probe`` cycles after warmup it tries one neighbour of the current size,
    alternating smaller and larger. It starts at the largest candidate.
    """
    name = "breakeven"
    role = "block"
    params = {"candidates": (8, 12, 16), "alpha": 0.1, "warmup": 2, "probe": 12,
              "hysteresis": 0.05}
    help = ("candidates: block sizes to move between (anchor included)\n"
            "alpha: EWMA weight of the newest tau and cycle time, in (0, 1]\n"
            "warmup: first cycles tried round robin over the candidates\n"
            "probe: every this many cycles after warmup, try a neighbour (0 = never)\n"
            "hysteresis: relative margin a neighbour's tau must clear over its break-even")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        k = self.kw
        k["candidates"] = block_candidates(k["candidates"])
        self.require_fraction("alpha")
        self.require_at_least(0, "warmup", "probe", "hysteresis")
        self.reset(0)

    def reset(self, sample: int) -> None:
        self.tau_hat: dict[int, float] = {}
        self.time_hat: dict[int, float] = {}
        self.current = self.kw["candidates"][-1]
        self.probe_count = 0
        self.last_probe = False

    def neighbours(self, b: int) -> tuple[int | None, int | None]:
        """The next smaller and next larger candidate (None at the ends)."""
        c = self.kw["candidates"]
        i = c.index(b)
        return (c[i - 1] if i > 0 else None), (c[i + 1] if i + 1 < len(c) else None)

    # -- choosing
    def choose_block(self, ctx: CycleContext) -> int:
        c, warmup, probe = self.kw["candidates"], self.kw["warmup"], self.kw["probe"]
        self.last_probe = False
        if ctx.cycle < warmup:
            return c[ctx.cycle % len(c)]
        if probe > 0 and (ctx.cycle - warmup) % probe == 0:
            nb = self._probe_neighbour()
            if nb is not None:
                self.last_probe = True
                return nb
        return self.current

    def _probe_neighbour(self) -> int | None:
        """Alternate smaller / larger neighbour; the one that exists at the ends."""
        lower, upper = self.neighbours(self.current)
        order = (lower, upper) if self.probe_count % 2 == 0 else (upper, lower)
        self.probe_count += 1
        return next((b for b in order if b is not None), None)

    # -- observing
    def observe(self, outcome: CycleOutcome) -> None:
        b = outcome.block_size
        if b not in self.kw["candidates"]:
            return
        a = self.kw["alpha"]
        self.tau_hat[b] = ewma_update(self.tau_hat.get(b), outcome.tau, a)
        self.time_hat[b] = ewma_update(self.time_hat.get(b), outcome.cycle_s, a)
        if outcome.cycle >= self.kw["warmup"]:
            self._move()

    def tau_needed(self, b: int) -> float | None:
        """The tau size ``b`` needs to match the current size's throughput, from the
        measured cycle times; None until both have been measured."""
        cur = self.current
        if cur not in self.tau_hat or b not in self.time_hat:
            return None
        return self.tau_hat[cur] * self.time_hat[b] / max(self.time_hat[cur], 1e-12)

    def _move(self) -> None:
        gains = {}
        for nb in self.neighbours(self.current):
            need = self.tau_needed(nb) if nb is not None else None
            if need is not None and self.tau_hat[nb] > need * (1.0 + self.kw["hysteresis"]):
                gains[nb] = self.tau_hat[nb] / max(self.time_hat[nb], 1e-12)
        if gains:
            self.current = max(gains, key=lambda b: (gains[b], b))

    # -- reporting
    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"breakeven_current": self.current,
                               "breakeven_probe": self.last_probe}
        lower, upper = self.neighbours(self.current)
        for side, nb in (("down", lower), ("up", upper)):
            need = self.tau_needed(nb) if nb is not None else None
            if need is not None:
                out[f"breakeven_tau_needed_{side}"] = need
                out[f"breakeven_tau_{side}"] = self.tau_hat.get(nb)
        if self.current in self.tau_hat:
            out["breakeven_tau_current"] = self.tau_hat[self.current]
        return out

    def uses_time(self) -> bool:
        return True
