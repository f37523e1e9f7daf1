"""Recording: decode prompts live with a policy, write each finished sample to a trace
(crash-safe, resumable), optionally check against plain AR decoding and run the oracle
pass right after each sample.

Several GPUs: under ``torchrun`` (env RANK / WORLD_SIZE) rank r takes prompts r, r+W,
r+2W, ... and writes its own trace ``OUT/rank-<r>``; ``specreplay trace merge`` joins
them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from specreplay.live.loop import Decoder, LoopConfig, SampleResult
from specreplay.policies.base import Composite
from specreplay.policies.spec import parse_policy


@dataclass
class RecordSettings:
    """What a recording does (the ``record`` command's flags)."""
    out: Path
    policy: str
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    sampling: str = "rejection"
    top_k_logits: int = 8
    oracle_top_k: int = 4
    oracle_block_sizes: tuple[int, ...] = (4, 8, 12, 16)
    probes: tuple[str, ...] = ()          # probe keys (already expanded)
    probe_block_sizes: tuple[int, ...] | None = None  # None: every oracle block size
    oracle: bool = True
    check_ar: bool = False
    resume: bool = False
    record_logits: bool = True
    stop_token_ids: tuple[int, ...] = ()
    warmup: bool = True                   # one untimed decode before the first recorded one


@dataclass
class ModelInfo:
    """run.json entries of the models and the setup (filled by the CLI from the load)."""
    target: dict
    draft: dict
    setup: dict
    dataset: dict = field(default_factory=dict)


def shard() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) without it."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


def run_meta(settings: RecordSettings, info: ModelInfo, policy: Composite) -> dict:
    """The run.json keys the recorder knows."""
    oracle = None
    if settings.oracle:
        oracle = {"block_sizes": list(settings.oracle_block_sizes), "top_k": settings.oracle_top_k,
                  "probes": list(settings.probes),
                  "probe_block_sizes": list(settings.probe_block_sizes or settings.oracle_block_sizes)}
    return {
        "setup": info.setup, "target": info.target, "draft": info.draft,
        "sampling": {"temperature": settings.temperature, "seed": settings.seed,
                     "max_new_tokens": settings.max_new_tokens,
                     "stop_token_ids": list(settings.stop_token_ids), "mode": settings.sampling},
        "live_policy": policy.spec(), "dataset": info.dataset,
        "top_k_logits": settings.top_k_logits if settings.record_logits else 0,
        "oracle": oracle,
    }


def first_divergence(a: list[int], b: list[int]) -> int:
    """First index where two token sequences differ (a length difference counts at the
    shorter length); -1 when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return -1 if len(a) == len(b) else min(len(a), len(b))


class Recorder:
    """Records prompts into a trace directory with loaded models, decoding through
    ``backend`` (live/backend.py; None: graph on CUDA where it runs, else hf)."""

    def __init__(self, target, draft, settings: RecordSettings, info: ModelInfo, backend=None):
        self.policy = parse_policy(settings.policy)
        # the live policy's own probes are always recorded, so it can be replayed
        probes = tuple(dict.fromkeys([*settings.probes, *self.policy.probes()]))
        self.settings = settings = replace(settings, probes=probes)
        self.info = info
        cfg = LoopConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                         seed=settings.seed, stop_token_ids=tuple(settings.stop_token_ids),
                         oracle_top_k=settings.oracle_top_k, top_k_logits=settings.top_k_logits,
                         record=settings.record_logits, sampling=settings.sampling)
        self.decoder = Decoder(target, draft, self.policy, cfg, backend)
        self.ar = Decoder(target, draft, parse_policy("ar"), LoopConfig(
            max_new_tokens=settings.max_new_tokens, stop_token_ids=tuple(settings.stop_token_ids),
            record=False), backend) if settings.check_ar else None
        self.oracle = None
        if settings.oracle:
            from specreplay.live.oracle import Oracle
            self.oracle = Oracle(target, draft, settings.oracle_block_sizes, settings.oracle_top_k,
                                 probes, settings.max_new_tokens, settings.probe_block_sizes,
                                 backend=self.decoder.backend)

    def record(self, prompts, out_dir: Path | None = None, progress: bool = True,
               after_sample: Callable[[SampleResult], None] | None = None) -> dict:
        """Record ``prompts`` (objects with ``dataset_index`` and ``ids``) into
        ``out_dir`` (default settings.out); samples already on disk are skipped when
        resuming. Returns a summary {samples, recorded, skipped, tokens, tau_mean,
        divergent}."""
        session = self.open(len(prompts), out_dir)
        todo = [p for i, p in enumerate(prompts) if i not in session.done]
        if self.settings.warmup and todo:
            self.warm_up(todo[0])
        for sample, prompt in enumerate(prompts):
            session.add(sample, prompt, progress, after_sample)
        return session.finish()

    def warm_up(self, prompt) -> None:
        """Decode ``prompt`` once without recording it: kernel selection, allocator growth
        and lazy initialisation (on a GPU a cold first prefill and draft step take several
        times their steady seconds) then land on no recorded cycle, so they move neither
        the trace's timing nor a calibration fitted to it."""
        self.decoder.run(0, list(prompt.ids))

    def open(self, n_prompts: int, out_dir: Path | None = None) -> "RecordingSession":
        """A recording into ``out_dir`` that takes one prompt at a time (``add``), so that
        several recorders can take turns on the same prompts (promote interleaves them)."""
        from specreplay.traces.writer import TraceWriter
        out = Path(out_dir or self.settings.out)
        writer = TraceWriter(out, run_meta(self.settings, self.info, self.policy),
                             resume=self.settings.resume)
        return RecordingSession(self, writer, n_prompts)

    def _bar(self, sample: int, enabled: bool):
        """A per-prompt tqdm bar showing tokens, tokens/s and the running mean tau."""
        if not enabled:
            return None
        from tqdm import tqdm
        bar = tqdm(total=self.settings.max_new_tokens, desc=f"sample {sample}", unit="tok",
                   leave=False, dynamic_ncols=True)

        def update(state) -> None:
            n = len(state.output)
            bar.update(n - bar.n)
            taus = [c["tau"] for c in state.cycles]
            spent = sum(c["cycle_s"] for c in state.cycles)
            bar.set_postfix(tok_s=f"{n / spent:.1f}" if spent else "-",
                            tau=f"{sum(taus) / len(taus):.2f}" if taus else "-", refresh=False)
            if state.stop_reason:
                bar.close()
        return update


class RecordingSession:
    """One open recording (see ``Recorder.open``): ``add`` prompts in any order of
    turns with other sessions, then ``finish``."""

    def __init__(self, recorder: Recorder, writer, n_prompts: int):
        self.recorder, self.writer = recorder, writer
        self.done = writer.done_samples()
        self.summary = {"samples": n_prompts, "recorded": 0, "skipped": 0, "tokens": 0,
                        "cycles": 0, "tau_sum": 0, "divergent": 0, "block_sizes": set()}

    def add(self, sample: int, prompt, progress: bool = False,
            after_sample: Callable[[SampleResult], None] | None = None) -> None:
        """Decode one prompt (and its AR check and oracle pass when asked) into the trace;
        a sample already on disk (resuming) is skipped."""
        summary, rec = self.summary, self.recorder
        if sample in self.done:
            summary["skipped"] += 1
            return
        result = rec.decoder.run(sample, list(prompt.ids), rec._bar(sample, progress))
        ar_div = None
        if rec.ar is not None:
            ar_div = first_divergence(result.output_ids, rec.ar.run(sample, list(prompt.ids)).output_ids)
            summary["divergent"] += ar_div >= 0
        oracle_rows = target_rows = None
        if rec.oracle is not None:
            oracle_rows, target_rows = rec.oracle.rows(sample, result.prompt_ids, result.output_ids)
        self.writer.add_sample(result.sample_row(prompt.dataset_index, ar_div), result.cycles,
                               result.cycle_logits, oracle_rows, target_rows)
        summary["recorded"] += 1
        summary["tokens"] += len(result.output_ids)
        summary["cycles"] += len(result.cycles)
        summary["tau_sum"] += sum(c["tau"] for c in result.cycles)
        summary["block_sizes"].update(c["block_size"] for c in result.cycles if c["block_size"] > 1)
        if after_sample is not None:
            after_sample(result)

    def finish(self) -> dict:
        self.writer.finish(complete=True)
        summary = self.summary
        summary["tau_mean"] = summary["tau_sum"] / summary["cycles"] if summary["cycles"] else 0.0
        summary["block_sizes"] = sorted(summary["block_sizes"])
        return summary
