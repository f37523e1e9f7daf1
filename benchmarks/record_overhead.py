"""Recording overhead: TPOT of the same decode loop with recording on (cycle_logits rows)
and off, on the same prompts. Goal: recording costs at most 3 % of TPOT.

    python benchmarks/record_overhead.py --target ID --draft ID [--dataset humaneval]
    python benchmarks/record_overhead.py --tiny          # the random test pair on CPU

Runs alternate (off, on, off, on, ...) so drift hits both; TPOT = decode seconds /
output tokens, summed over prompts (token-weighted), median over repeats.
"""
from __future__ import annotations

import argparse
import statistics
import time
import sys



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target")
    ap.add_argument("--draft")
    ap.add_argument("--tiny", action="store_true", help="use the tiny random pair (CPU)")
    ap.add_argument("--random", action="store_true",
                    help="random weights of a Qwen3-1.7B-like shape with a 5-layer block-16 draft")
    ap.add_argument("--dataset", default="humaneval")
    ap.add_argument("--policy", default="fixed")
    ap.add_argument("--max-samples", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device")
    args = ap.parse_args()

    import torch
    from specreplay.live.loop import Decoder, LoopConfig
    from specreplay.policies import parse_policy

    if args.tiny or args.random:
        from specreplay.models.loading import build_tiny_pair
        if args.tiny:
            target, draft = build_tiny_pair(seed=0, vocab=512, hidden=128, target_layers=4)
        else:
            target, draft = build_tiny_pair(seed=0, vocab=151936, hidden=2048, target_layers=28,
                                            draft_layers=5, heads=16, kv_heads=8, head_dim=128,
                                            intermediate=6144, block_size=16, std=0.02)
            device = torch.device(args.device or "cuda")
            target = target.to(device=device, dtype=getattr(torch, args.dtype))
            draft = draft.to(device=device, dtype=getattr(torch, args.dtype)).bind_target(target)
        prompts = [[(7 * i + j) % 500 for j in range(64)] for i in range(args.max_samples)]
    else:
        if not (args.target and args.draft):
            ap.error("pass --target and --draft, or --tiny")
        from specreplay.live.prompts import load_prompts
        from specreplay.models.loading import load_draft, load_target, load_tokenizer
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        target = load_target(args.target, dtype=args.dtype, device=device)
        draft = load_draft(args.draft, target, device=device)
        prompts = [p.ids for p in load_prompts(args.dataset, load_tokenizer(args.target),
                                               max_samples=args.max_samples)]

    def tpot(record: bool) -> tuple[float, float]:
        """(decode seconds per token, whole-run seconds per token): the second also counts
        turning the kept top-k into rows after each sample."""
        dec = Decoder(target, draft, parse_policy(args.policy),
                      LoopConfig(max_new_tokens=args.max_new_tokens, record=record))
        secs = wall = toks = 0.0
        for i, p in enumerate(prompts):
            t0 = time.perf_counter()
            res = dec.run(i, p)
            wall += time.perf_counter() - t0
            secs += res.decode_s
            toks += len(res.output_ids)
        return secs / toks, wall / toks

    tpot(False)  # warm-up
    off, on = [], []
    for _ in range(args.repeats):
        off.append(tpot(False))
        on.append(tpot(True))
    for i, what in enumerate(("TPOT", "run time per token (rows included)")):
        m_off, m_on = statistics.median(x[i] for x in off), statistics.median(x[i] for x in on)
        print(f"{what}: recording off {m_off * 1e3:.3f} ms, on {m_on * 1e3:.3f} ms: "
              f"overhead {100 * (m_on / m_off - 1):+.2f} % (goal <= 3 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
