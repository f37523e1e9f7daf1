"""Per-cycle clocks: CUDA events on a GPU (no host sync until the cycle ends), the host
clock on a CPU."""
from __future__ import annotations

import time

import torch


class CycleClock:
    """Named marks inside one cycle; ``seconds(a, b)`` after ``sync()``."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.marks: dict[str, object] = {}

    def mark(self, name: str) -> object:
        """Set mark ``name`` now; returns it (for ``put`` into a later cycle's clock)."""
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
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


def wall_sync(device: torch.device) -> float:
    """perf_counter after the device finished its queued work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
