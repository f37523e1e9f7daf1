"""Sampling replay error: at temperature > 0 the simulator replays acceptance by Monte
Carlo along the recorded sequence (labelled approximate). This script measures how far
that is from live decoding, on the tiny random test pair on a CPU (float32, vocabulary 12,
oracle top-k = the whole vocabulary, so the stored distributions are exact and the only
approximation left is replaying along the recorded path).

    python benchmarks/sampling_replay_error.py [--prompts 24] [--tokens 48] [--temperature 1]

Prints, per block size, the tau predicted from a trace recorded with fixed(b=6) and the
tau measured live (other seeds), with their relative error.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path



@dataclass
class Prompt:
    dataset_index: int
    ids: list


def record(target, draft, policy: str, prompts, out: Path, temperature: float, seed: int,
           oracle: bool) -> Path:
    from specreplay.live.recorder import ModelInfo, RecordSettings, Recorder
    vocab = target.config.vocab_size
    settings = RecordSettings(out=out, policy=policy, max_new_tokens=ARGS.tokens,
                              temperature=temperature, seed=seed, oracle_top_k=vocab,
                              top_k_logits=vocab, oracle=oracle, oracle_block_sizes=(4, 6, 8),
                              record_logits=False)
    info = ModelInfo(target={"id": "tiny-random-target", "files": {}},
                     draft={"id": "tiny-random-draft", "files": {}, "block_size": 8,
                            "mask_token_id": vocab - 1},
                     setup={"device": "cpu", "backend": "hf", "dtype": "float32"},
                     dataset={"name": "random", "indices": [p.dataset_index for p in prompts]})
    Recorder(target, draft, settings, info).record(prompts, progress=False)
    return out


def main() -> int:
    import numpy as np
    import torch

    from specreplay.sim.replay import measured, replay
    from tests.live_pair import tiny_pair
    torch.manual_seed(0)
    target, draft = tiny_pair()
    rng = np.random.default_rng(0)
    prompts = [Prompt(i, rng.integers(0, 11, size=12).tolist()) for i in range(ARGS.prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        trace = record(target, draft, "fixed(b=6)", prompts, Path(tmp) / "trace",
                       ARGS.temperature, seed=1, oracle=True)
        print(f"tiny random pair, CPU float32, T={ARGS.temperature}, {ARGS.prompts} prompts x "
              f"{ARGS.tokens} tokens; trace recorded with fixed(b=6)")
        print("block  predicted_tau  measured_tau  rel_error  fidelity")
        for b in (4, 6, 8):
            spec = f"fixed(b={b})"
            preds = [replay(trace, [spec], seed=s, bootstrap=10)[0] for s in range(5)]
            pred = float(np.mean([p.tau_mean for p in preds]))
            live = [measured(record(target, draft, spec, prompts, Path(tmp) / f"live-{b}-{s}",
                                    ARGS.temperature, seed=100 + s, oracle=False))["tau_mean"]
                    for s in range(3)]
            meas = float(np.mean(live))
            print(f"{b:5d}  {pred:13.3f}  {meas:12.3f}  {(pred - meas) / meas:+9.1%}  {preds[0].fidelity}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0)
    ARGS = ap.parse_args()
    sys.exit(main())
