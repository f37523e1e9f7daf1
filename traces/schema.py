"""The trace format: every table, column, dtype and unit, in one place.

A trace is a directory:

    run.json                 run metadata (see RUN_KEYS)
    samples/part-*.parquet   one row per prompt
    cycles/part-*.parquet    one row per live cycle
    cycle_logits/part-*.parquet  one row per live cycle position
    oracle/part-*.parquet    one row per (sample, start, block size, probe, previous offset)
    oracle_target/part-*.parquet one row per output position: the target's top-k along S
    profile.parquet + profile.json   optional: a latency profile of the recording setup

Each table may also be a single file ``<table>.parquet`` (a compacted trace); readers
accept both. Part files are written one finished sample at a time, to a temporary name,
fsynced, then renamed, so a killed recording leaves only whole parts behind.

Positions. Output tokens S[0], S[1], ... are the generated tokens (S[0] comes from
prefill). A cycle that "starts at p" has its anchor at S[p] (the last committed token, not
yet run through the target); drafted offset i (1 <= i <= b-1) proposes S[p+i]. The target
KV cache holds prompt + S[:p] when the cycle starts, so ``context_len = len(prompt) + p``.

Units: seconds for every ``*_s`` column, token ids as int32, natural-log probabilities.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

# Oracle rank codes (besides 0..k-1, the true token's rank among the kept top-k).
RANK_NOT_IN_TOPK = -1
RANK_BEYOND_END = -2  # the offset lies past the end of the recorded output

TABLES = ("samples", "cycles", "cycle_logits", "oracle", "oracle_target")

_i32_list = pa.list_(pa.int32())
_f32_list = pa.list_(pa.float32())
_f16_list = pa.list_(pa.float16())
_i8_list = pa.list_(pa.int8())

SCHEMAS: dict[str, pa.Schema] = {
    "samples": pa.schema([
        ("sample", pa.int32()),            # 0-based index within this trace
        ("dataset_index", pa.int32()),     # row of the dataset the prompt came from
        ("prompt_ids", _i32_list),
        ("output_ids", _i32_list),         # S, truncated at the stop token (included)
        ("stop_reason", pa.string()),      # "eos" | "max_new_tokens"
        ("prefill_s", pa.float64()),
        ("decode_s", pa.float64()),        # first cycle start to last commit
        ("n_cycles", pa.int32()),
        ("ar_divergence", pa.int32()),     # first index where S differs from plain AR; -1 none; null unchecked
    ]),
    "cycles": pa.schema([
        ("sample", pa.int32()),
        ("cycle", pa.int32()),             # 0-based within the sample
        ("start", pa.int32()),             # output index of the anchor
        ("context_len", pa.int32()),       # tokens in the target KV cache before the anchor
        ("block_size", pa.int16()),        # b: anchor + b-1 drafted positions (1 = no draft)
        ("verify_mode", pa.string()),      # "chain" | "batch" | "tree"
        ("verify_tokens", pa.int32()),     # query tokens of the verify pass (all rows)
        ("verify_batch", pa.int16()),      # rows of the verify pass (batch mode), else 1
        ("n_paths", pa.int16()),           # candidate paths verified
        ("drafted", _i32_list),            # top-1 draft tokens at offsets 1..b-1
        ("accepted", pa.int16()),          # drafted tokens accepted on the chosen path
        ("tau", pa.int16()),               # accepted + 1
        ("committed", pa.int16()),         # tokens appended to S this cycle
        ("bonus", pa.int32()),             # the target's token after the accepted prefix
        ("chosen_path", pa.int16()),
        ("probe", pa.string()),            # draft-input probe key used ("" plain draft)
        ("prev_offset", pa.int16()),       # for recycling: start - previous start; else 0
        ("n_seeds", pa.int16()),
        ("draft_s", pa.float64()),
        ("target_s", pa.float64()),
        ("overhead_s", pa.float64()),
        ("cycle_s", pa.float64()),
        ("policy_state", pa.string()),     # JSON object of the policy's plottable state
    ]),
    "cycle_logits": pa.schema([
        ("sample", pa.int32()),
        ("cycle", pa.int32()),
        ("offset", pa.int16()),            # 0..b-1 along the chosen path
        ("draft_ids", _i32_list),          # null at offset 0 (the anchor is not drafted)
        ("draft_logits", _f32_list),
        ("draft_lse", pa.float32()),       # log-sum-exp of the full draft logits
        ("target_ids", _i32_list),         # the target's prediction for offset+1; null past the verified path
        ("target_logits", _f32_list),
        ("target_lse", pa.float32()),
    ]),
    "oracle": pa.schema([
        ("sample", pa.int32()),
        ("start", pa.int32()),
        ("block_size", pa.int16()),
        ("probe", pa.string()),            # "" = plain draft; else a probe key, e.g. "recycle(mode=sparse)"
        ("prev_offset", pa.int16()),       # recycle probes: the previous cycle started at start - prev_offset
        ("true_rank", _i8_list),           # per offset 1..b-1: rank of S[start+i] in the draft top-k, or a RANK_* code
        ("draft_ids", _i32_list),          # (b-1) * k, row-major by offset
        ("draft_logprobs", _f16_list),     # (b-1) * k, log-softmax of the draft logits
    ]),
    "oracle_target": pa.schema([
        ("sample", pa.int32()),
        ("position", pa.int32()),          # output index i: the target's distribution for S[i]
        ("target_ids", _i32_list),         # k
        ("target_logprobs", _f16_list),    # k
    ]),
}

PROFILE_SCHEMA = pa.schema([
    ("kind", pa.string()),      # "target" | "tree_verify" | "draft" | "overhead"
    ("q", pa.int32()),          # query tokens per row (target), block size (draft); 0 for overhead
    ("context_len", pa.int32()),
    ("batch", pa.int32()),
    ("median_s", pa.float64()),
    ("p10_s", pa.float64()),
    ("p90_s", pa.float64()),
    ("n", pa.int32()),          # timed repetitions behind the median
])

# The host part of a cycle (the loop's own work between its GPU passes) is measured and
# costed per kind of cycle: plain autoregressive (block size 1, nothing drafted), a full
# chain, a gated chain, a packed tree, a batch of candidate rows, and a "probed" chain:
# one drafted from a probe input (refinement, recycling's seeds), whose proposals come to
# the host between the draft's passes, so its verify is planned there too.
HOST_MODES = ("ar", "chain", "gated", "tree", "batch", "probed")

# The shapes a captured graph backend runs (live/backend.py), recorded in a profile's
# and a run's setup as ``shapes``: a verify of q query rows runs padded to the first
# bucket >= q (past the last, to a multiple of it), and every captured pass attends
# over the cache rows it reads rounded up to ``kv_quantum``. Its time is then a step
# function of the padded sizes, flat between steps, which the cost model follows
# (sim/cost.py) instead of interpolating across a step.
QUERY_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
KV_QUANTUM = 256


def captured_shapes() -> dict:
    """The ``shapes`` entry of a setup whose passes a captured graph backend ran."""
    return {"query_buckets": list(QUERY_BUCKETS), "kv_quantum": KV_QUANTUM}


def setup_shapes(setup) -> dict | None:
    """A setup's ``shapes``; for one the graph backend wrote on a GPU before setups named
    them, the shapes that backend has always captured at; None where the passes ran at
    their exact sizes (hf, a CPU)."""
    if not isinstance(setup, dict):
        return None
    if setup.get("shapes") is not None:
        return setup["shapes"]
    if setup.get("backend") == "graph" and setup.get("device") == "cuda":
        return captured_shapes()
    return None


def padded_query(q: int, buckets=QUERY_BUCKETS) -> int:
    """The captured size that serves q query rows."""
    for b in buckets:
        if q <= b:
            return int(b)
    top = int(buckets[-1])
    return -(-int(q) // top) * top


def kv_rows(rows, quantum: int = KV_QUANTUM):
    """Cache rows a captured pass reading ``rows`` of them attends over (before the
    cache's capacity, which is itself a multiple of the quantum, caps it): an int for an
    int, an int64 array for an array of row counts (the cost model's)."""
    r = np.maximum(np.asarray(rows, dtype=np.int64), 1)
    out = -(-r // quantum) * quantum
    return int(out) if out.ndim == 0 else out


# Columns a profile may have beyond PROFILE_SCHEMA (profiles written before them lack
# them; readers keep them when present, writers always write them):
#   mode  overhead rows: the cycle kind whose host time the row holds (HOST_MODES,
#         named by policies.base.host_mode), measured over the live loop's
#         own cycles with q = their verify tokens; "" on every other row. A profile
#         without the column has overhead rows with q = 0 that time only the acceptance
#         step of a chain.
PROFILE_OPTIONAL = pa.schema([
    ("mode", pa.string()),
])

# run.json keys. Nested objects are documented by example in traces/README.md.
RUN_KEYS = (
    "schema_version",   # int, SCHEMA_VERSION of the writer
    "tool_version",     # specreplay version that wrote it
    "git_commit",       # of the writer's checkout, or null
    "git_dirty",        # whether that checkout had uncommitted changes, or null (no checkout)
    "created",          # ISO 8601 UTC
    "setup",            # {device, gpu, driver, torch, cuda, backend, dtype, attn}
    "target",           # {id, files: {name: sha256}}
    "draft",            # {id, files: {name: sha256}, block_size, mask_token_id}
    "sampling",         # {temperature, seed, max_new_tokens, stop_token_ids}
    "live_policy",      # spec string run live
    "dataset",          # {name, split, indices, template}
    "top_k_logits",     # k kept in cycle_logits
    "oracle",           # {block_sizes, top_k, probes: [keys]} or null before the oracle pass
    "complete",         # bool: every requested sample recorded
)

# profile.json keys: the setup a profile was measured on.
PROFILE_KEYS = ("schema_version", "setup", "target", "draft", "created")
