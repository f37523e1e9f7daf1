"""Per-cycle clocks: CUDA events on a GPU (no host sync until the cycle ends), the host
clock on a CPU."""
from __future__ import annotations

import time

import torch


class CycleClock:
    """Named marks inside one cycle; ``seconds(a, b)`` after ``sync()``.

    On a GPU the events are reused: a new CUDA event per mark adds its creation and,
    later, its destruction to the record (a mark took 24 us of host time inside the
    decode loop on an H200 host, six marks a cycle, time the device waits through after
    each cycle's sync). Two sets alternate by cycle (``reset``), so the mark a cycle hands to the next
    (``put``: where it ended) is not re-recorded before the next cycle has read it."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.marks: dict[str, object] = {}
        self._sets: tuple[dict, dict] = ({}, {})
        self._turn = 0

    def mark(self, name: str) -> object:
        """Set mark ``name`` now; returns it (for ``put`` into the next cycle's clock)."""
        if self.cuda:
            events = self._sets[self._turn]
            ev = events.get(name)
            if ev is None:
                ev = events[name] = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks[name] = ev
        else:
            self.marks[name] = time.perf_counter()
        return self.marks[name]

    def put(self, name: str, mark: object) -> None:
        """A mark set earlier (``mark``'s return value, possibly in an earlier cycle)."""
        self.marks[name] = mark

    def sync(self) -> None:
        """Wait for the device to reach the last mark (no-op on a CPU)."""
        if self.cuda and self.marks:
            list(self.marks.values())[-1].synchronize()

    def seconds(self, a: str, b: str) -> float:
        """Seconds from mark ``a`` to mark ``b`` (0 when either was not set)."""
        if a not in self.marks or b not in self.marks:
            return 0.0
        if self.cuda:
            return self.marks[a].elapsed_time(self.marks[b]) / 1000.0
        return float(self.marks[b] - self.marks[a])

    def reset(self) -> None:
        self.marks.clear()
        self._turn ^= 1


def wall_sync(device: torch.device) -> float:
    """perf_counter after the device finished its queued work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
