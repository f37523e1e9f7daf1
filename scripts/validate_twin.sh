#!/usr/bin/env bash
# The validation study on the Qwen3-8B cost twin (the fixture pair's acceptance with the
# real model's shapes), bf16, the graph backend, batch 1: record HumanEval prompts with
# the oracle, probes and AR check, profile the setup on a grid read from that trace,
# replay the policy matrix, promote every policy live (with repeats, interleaved with ar)
# on the same prompts and on held-out prompts of another kind (function headers and
# docstrings from the fixture corpus's held-out files), compact the promoted traces and
# write the ledger, its error summary and the report. Every step prints its elapsed time
# and runs under `timeout`, so that the study can be split over several machine sessions
# (STEPS); a promote step cut short continues with --resume when run again.
#
#   scripts/validate_twin.sh DIR
#
# Knobs (environment): TARGET, DRAFT (twin:qwen3-8b), BACKEND (graph; empty: the
# command's default), DTYPE (bfloat16), DEVICE, SAMPLES (24 HumanEval prompts), TOKENS
# (128 new tokens), PROBES (the oracle probes: the matrix's sparse recycling and the
# refinement default), REPEATS (3), HELDOUT (12 held-out prompts), POLICY_GROUPS (2: the policy
# matrix is promoted in this many groups, each a step of its own, each with its own ar
# baseline), POLICIES (the matrix, specs separated by ";"), TIMING (promote's prediction
# timing: model or calibrated), STEP_TIMEOUT (seconds per step, 530), PROFILE_ARGS
# (replaces the profile grid read from the trace), LEDGER (DIR/ledger.csv), STEPS
# (default "record profile replay same1 .. sameG heldout1 .. heldoutG compact summary").
# Layout: DIR/humaneval-fixed16 (trace + profile), DIR/heldout-prompts.jsonl,
# DIR/replay.txt, DIR/promoted/ (the live runs the ledger points to), DIR/ledger.csv,
# DIR/summary.json, DIR/report/.
set -euo pipefail
DIR=${1:?usage: scripts/validate_twin.sh DIR}
TARGET=${TARGET:-twin:qwen3-8b}
DRAFT=${DRAFT:-twin:qwen3-8b}
BACKEND=${BACKEND-graph}
SAMPLES=${SAMPLES:-24}
TOKENS=${TOKENS:-128}
REPEATS=${REPEATS:-3}
HELDOUT=${HELDOUT:-12}
POLICY_GROUPS=${POLICY_GROUPS:-2}
STEP_TIMEOUT=${STEP_TIMEOUT:-530}
LEDGER=${LEDGER:-$DIR/ledger.csv}
SAMPLE=$DIR/humaneval-fixed16
HELDOUT_FILE=$DIR/heldout-prompts.jsonl
MODEL_ARGS=(--dtype "${DTYPE:-bfloat16}" ${BACKEND:+--backend "$BACKEND"} ${DEVICE:+--device "$DEVICE"})
SR=(python3 -m specreplay)
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$DIR"

DEFAULT_POLICIES=(ar 'fixed(b=4)' 'fixed(b=8)' 'fixed(b=12)' 'fixed(b=16)' 'ewma(candidates=8|12|16)'
    'breakeven(candidates=8|12|16)' 'fixed(b=16)+gate(min_prob=0.2)'
    'fixed(b=16)+tree(topk=2, depth=4)' 'fixed(b=16)+tree(topk=3, depth=3)'
    'fixed(b=16)+candidates(mode=branch_beam, verify=tree)'
    'fixed(b=16)+candidates(mode=fixed_prefix_rank, prefix=2, verify=batch)'
    'fixed(b=16)+recycle(mode=sparse)' 'fixed(b=16)+refine(steps=2)')
if [ -n "${POLICIES:-}" ]; then IFS=';' read -r -a MATRIX <<< "$POLICIES"
else MATRIX=("${DEFAULT_POLICIES[@]}"); fi

ALL="record profile replay"
for g in $(seq 1 "$POLICY_GROUPS"); do ALL+=" same$g"; done
for g in $(seq 1 "$POLICY_GROUPS"); do ALL+=" heldout$g"; done
STEPS=" ${STEPS:-$ALL compact summary} "
wanted() { [[ "$STEPS" == *" $1 "* ]]; }

# run NAME: one step, in a fresh run of this script under the step timeout, with its
# elapsed time (a function cannot run under `timeout` itself)
run() {
    local name=$1
    echo "=== $(date -u +%T) step $name"
    local t0=$SECONDS rc=0
    _STEP=$name timeout --signal=INT --kill-after=20 "$STEP_TIMEOUT" bash "$HERE/$(basename "$0")" "$DIR" || rc=$?
    echo "=== step $name: $((SECONDS - t0)) s, exit $rc"
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -eq 124 ] && echo "step $name ran past ${STEP_TIMEOUT} s: run it again (it resumes)"
        exit "$rc"
    fi
}

# the specs of group G (1-based) of POLICY_GROUPS, round robin over the matrix
group_args() {
    local g=$1 i=0 out=()
    for p in "${MATRIX[@]}"; do
        [ $((i % POLICY_GROUPS + 1)) -eq "$g" ] && out+=(--policy "$p")
        i=$((i + 1))
    done
    printf '%s\0' "${out[@]}"
}

record_step() {
    "${SR[@]}" record --target "$TARGET" --draft "$DRAFT" --dataset humaneval --policy 'fixed(b=16)' \
        --max-samples "$SAMPLES" --max-new-tokens "$TOKENS" --oracle-block-sizes 4,8,12,16 \
        --probes "${PROBES:-recycle(mode=sparse),refine}" --probe-block-sizes 16 --check-ar --out "$SAMPLE" --quiet \
        "${MODEL_ARGS[@]}" --resume
    "${SR[@]}" trace compact "$SAMPLE"
    "${SR[@]}" trace check "$SAMPLE"
}

# the profile grid from the trace: context from its shortest prompt to its longest
# prompt + output (doubling), the verify widths and batch sizes the matrix uses
trace_grid() {
    python3 - "$SAMPLE" <<'PY'
import sys
from specreplay.traces.reader import Trace
t = Trace.open(sys.argv[1])
p = [len(x) for x in t.samples.column("prompt_ids").to_pylist()]
o = [len(x) for x in t.samples.column("output_ids").to_pylist()]
lo, hi = min(p), max(a + b for a, b in zip(p, o))
ctx = [lo]
while ctx[-1] * 2 < hi:
    ctx.append(ctx[-1] * 2)
ctx.append(hi)
print(f"--q 1,2,4,8,16,32,64 --context {','.join(map(str, ctx))} --batch 1,2,4 --block-sizes 4,8,12,16")
PY
}

profile_step() {
    local grid
    read -r -a grid <<< "${PROFILE_ARGS:-$(trace_grid)}"
    echo "profile grid: ${grid[*]}"
    "${SR[@]}" profile --target "$TARGET" --draft "$DRAFT" --out "$SAMPLE" "${MODEL_ARGS[@]}" "${grid[@]}"
    "${SR[@]}" trace check "$SAMPLE"
}

replay_step() {
    local args=()
    for p in "${MATRIX[@]}"; do args+=(--policy "$p"); done
    "${SR[@]}" replay "$SAMPLE" "${args[@]}" ${TIMING:+--timing "$TIMING"} | tee "$DIR/replay.txt"
}

promote_step() {  # promote_step same|heldout G
    local kind=$1 g=$2 args=()
    mapfile -d '' -t args < <(group_args "$g")
    [ "${#args[@]}" -gt 0 ] || { echo "group $g of $POLICY_GROUPS is empty"; return 0; }
    local prompts=(--prompts same)
    if [ "$kind" = heldout ]; then
        [ -f "$HELDOUT_FILE" ] || python3 "$HERE/heldout_prompts.py" "$HELDOUT_FILE" --n "$HELDOUT"
        prompts=(--prompts heldout --dataset "$HELDOUT_FILE" --heldout "$HELDOUT")
    fi
    "${SR[@]}" promote --trace "$SAMPLE" "${prompts[@]}" --ledger "$LEDGER" \
        --out "$DIR/promoted/group$g" --repeats "$REPEATS" --resume \
        ${BACKEND:+--backend "$BACKEND"} ${DEVICE:+--device "$DEVICE"} \
        ${TIMING:+--timing "$TIMING"} "${args[@]}"
}

compact_step() {
    shopt -s nullglob
    for d in "$DIR"/promoted/*/*/; do "${SR[@]}" trace compact "$d" > /dev/null; done
    du -sh "$DIR/promoted"
}

summary_step() {
    python3 - "$LEDGER" "$DIR/summary.json" <<'PY'
import json, sys
from specreplay.reports.findings import TARGETS
from specreplay.reports.ledger import ledger_summary, read_ledger, tau_bound, tau_inside_bound
rows = read_ledger(sys.argv[1])
s = ledger_summary(rows)
within = []  # on the recorded prompts: tau inside the printed bound (1 % when exact)
for r in rows:
    if r["prompts"] != "same":
        continue
    within.append({"policy": r["policy"], "prompts": r["prompts"], "label": r.get("label"),
                   "tau_error": abs(r["predicted_tau"] - r["measured_tau"]),
                   "tau_bound": tau_bound(r), "inside": tau_inside_bound(r, TARGETS["exact_tau"])})
s["tau_within_bound"] = within
json.dump(s, open(sys.argv[2], "w"), indent=1, default=str)
for g in s["groups"]:
    e = g["tokens_per_s_abs_error"]
    print(f"{g['prompts']:>8}: {g['policies']} policies, tokens/s |error| median "
          f"{100 * e['median']:.1f} % max {100 * e['max']:.1f} %, Kendall tau {g['kendall_tau']}")
sp = s["overall"]["speedup_abs_error"]
if sp["median"] is not None:
    print(f"speedup |error| median {100 * sp['median']:.1f} % max {100 * sp['max']:.1f} %")
print(f"same prompts: tau inside its bound {sum(w['inside'] for w in within)} of {len(within)} rows")
PY
    "${SR[@]}" report "$SAMPLE" --ledger "$LEDGER" --out "$DIR/report"
}

if [ -n "${_STEP:-}" ]; then  # inside run: one step
    case $_STEP in
        record) record_step ;;
        profile) profile_step ;;
        replay) replay_step ;;
        same*) promote_step same "${_STEP#same}" ;;
        heldout*) promote_step heldout "${_STEP#heldout}" ;;
        compact) compact_step ;;
        summary) summary_step ;;
        *) echo "unknown step $_STEP; steps are: $ALL compact summary" >&2; exit 2 ;;
    esac
    exit 0
fi
for name in $STEPS; do
    [[ " $ALL compact summary " == *" $name "* ]] || { echo "unknown step $name; steps are: $ALL compact summary" >&2; exit 2; }
done
for name in $ALL compact summary; do
    wanted "$name" && run "$name"
done
echo "=== $(date -u +%T) done:$STEPS"
