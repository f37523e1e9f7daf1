"""The arrays replay needs from a trace, read once through ``traces.reader``.

Positions of all samples are laid end to end: the position ``p`` of sample ``s`` has the
global index ``base[s] + p``. Every per-position lookup (oracle rows, target
distributions, Monte Carlo uniforms, recorded cycle times) is an array over global
indices, so a cycle's lookup is one array read and a whole fixed-block replay is a
handful of vector gathers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from specreplay.traces.io import TraceError
from specreplay.traces.reader import Profile, Trace


def _lengths(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False),
                      dtype=np.int64)


@dataclass
class TraceData:
    """A trace in the shape replay uses. ``trace`` is the reader's object (tables on
    demand); the arrays are per sample, indexed by sample id 0..n-1."""
    trace: Trace
    prompt_len: np.ndarray          # int64 [samples]
    out_len: np.ndarray             # int64 [samples] = len(S)
    prefill_s: np.ndarray           # float64 [samples]
    decode_s: np.ndarray            # float64 [samples]
    base: np.ndarray                # int64 [samples + 1]: global index of position 0

    @property
    def path(self) -> Path:
        return self.trace.dir

    @property
    def run(self) -> dict[str, Any]:
        return self.trace.run

    @property
    def n_samples(self) -> int:
        return int(self.out_len.shape[0])

    @property
    def n_positions(self) -> int:
        return int(self.base[-1])

    @property
    def temperature(self) -> float:
        return float((self.run.get("sampling") or {}).get("temperature") or 0.0)

    @property
    def sampling_seed(self) -> int:
        return int((self.run.get("sampling") or {}).get("seed") or 0)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return tuple(int(t) for t in (self.run.get("sampling") or {}).get("stop_token_ids") or ())

    @property
    def max_new_tokens(self) -> int:
        """The live run's output limit (S[0] included); the longest output if unset."""
        m = (self.run.get("sampling") or {}).get("max_new_tokens")
        return int(m) if m else int(self.out_len.max())

    @property
    def default_block_size(self) -> int:
        return int((self.run.get("draft") or {}).get("block_size") or 16)

    @property
    def oracle_meta(self) -> dict[str, Any]:
        return self.run.get("oracle") or {}

    def profile(self) -> Profile | None:
        return self.trace.profile()


def load_trace(trace: str | Path | Trace) -> TraceData:
    """Open a trace (or take an opened one) and read its per-sample arrays."""
    if not isinstance(trace, Trace):
        trace = Trace.open(trace)
    samples = trace.samples.sort_by("sample")
    ids = samples["sample"].to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise TraceError(f"{trace.dir} (table samples) must number samples 0..n-1 without "
                         "gaps; merge or re-record the trace")
    out_len = _lengths(samples["output_ids"])
    base = np.zeros(len(out_len) + 1, dtype=np.int64)
    np.cumsum(out_len, out=base[1:])

    def seconds(name: str) -> np.ndarray:
        return np.nan_to_num(samples[name].to_numpy(zero_copy_only=False).astype(np.float64))

    return TraceData(trace=trace, prompt_len=_lengths(samples["prompt_ids"]), out_len=out_len,
                     prefill_s=seconds("prefill_s"), decode_s=seconds("decode_s"), base=base)
