"""``specreplay twin``: write a cost twin of a real model built from the fixture pair.
Torch is imported only when the command runs."""
from __future__ import annotations

import argparse
from pathlib import Path

from specreplay.errors import CLIError

_DESCRIPTION = """\
Write a cost twin: a target and a DFlash draft whose every tensor has the shape of a
real model (Qwen3-8B and its published DFlash draft, for --shape qwen3-8b), and whose
function is the fixture pair's, embedded exactly in those tensors (the extra width,
heads, layers and vocabulary change nothing; models/twin.py derives the construction).
Every weight the construction does not pin is random, as in a fresh model, because a
GPU runs faster on zeros than on real weights.

What a twin is for: real acceptance at real cost. Its forward passes cost what the real
model's cost on the same GPU (same shapes, real-looking values: benchmarks/twin_cost.py
times it against random weights of the same shape), and it accepts exactly what the
fixture pair accepts, so a recording, profile or promotion with it times policies in
the regime users run (an 8B target at batch 1, memory-bound) with acceptance that is
measured, not assumed.

What it is not: Qwen3-8B. Its text, its quality and its acceptance are the fixture
pair's (a 13 M-parameter model trained on code), not the real model's or its published
draft's: acceptance lengths, the best block size or policy, and every output it writes
are the fixture's. Do not report its outputs or its acceptance as Qwen3-8B's; report
its timings as what a model of Qwen3-8B's shape costs.

The target is written in the Hugging Face Qwen3 layout (loadable with
AutoModelForCausalLM.from_pretrained), with the fixture's tokenizer; the draft in the
z-lab DFlash layout. To skip the disk, pass the id twin:SHAPE as --target and --draft
to record, profile, promote or oracle: the twin is then built straight on the GPU.
"""


def register(sub) -> None:
    from specreplay.models.twin import SHAPES

    shapes = "\n".join(f"  {s.name}: {s.about}" for s in SHAPES.values())
    p = sub.add_parser("twin", help="write a cost twin of a real model built from the fixture pair",
                       description=_DESCRIPTION, epilog=f"shapes:\n{shapes}\n\nexample:\n"
                       "  specreplay twin --shape qwen3-8b --target models/fixtures/target "
                       "--draft models/fixtures/draft --out twins/qwen3-8b",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", required=True, metavar="NAME",
                   help=f"the real model whose shapes the twin takes: {', '.join(SHAPES)}")
    p.add_argument("--target", default="models/fixtures/target", metavar="DIR",
                   help="the fixture target folder (default: models/fixtures/target)")
    p.add_argument("--draft", default="models/fixtures/draft", metavar="DIR",
                   help="the fixture draft folder (default: models/fixtures/draft)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="a new folder; the twin goes into DIR/target and DIR/draft")
    p.add_argument("--dtype", default="bfloat16", help="float32, bfloat16 (default) or float16")
    p.add_argument("--device", default="cpu", help="where to build it before writing (default: cpu)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default: 5GB)")
    p.set_defaults(func=_twin)


def _twin(args: argparse.Namespace) -> int:
    from specreplay.models.twin import shape_of, write_twin

    shape = shape_of(args.shape)
    for flag, folder in (("--target", args.target), ("--draft", args.draft)):
        if not Path(folder).is_dir():
            raise CLIError(f"{flag} {folder} is not a folder; pass the fixture pair's folders "
                           f"(models/fixtures/target and models/fixtures/draft).")
    info = write_twin(shape, args.out, args.target, args.draft, args.dtype, args.device,
                      args.max_shard_size)
    print(f"twin {info['shape']} ({shape.about}) written to {args.out} in {info['dtype']}: "
          f"built in {info['build_s']:.1f} s, written in {info['write_s']:.1f} s")
    print(f"target: {info['target_params']:,} parameters, {info['target_bytes']:,} bytes "
          f"-> {Path(args.out) / 'target'}")
    print(f"draft: {info['draft_params']:,} parameters (plus the target's embedding and head), "
          f"{info['draft_bytes']:,} bytes -> {Path(args.out) / 'draft'}")
    return 0
