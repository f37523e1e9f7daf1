#!/usr/bin/env bash
# The project's own validation study on its fixture pair (predicted against measured):
# record the sample trace (oracle, probes, AR check) and a latency profile of the same
# setup, record the two extra live traces, then promote a matrix of policies on the same
# and on held-out prompts, appending predicted and measured to a ledger, and write the
# report. Every step is a specreplay command; each one's output lands under DIR.
#
#   scripts/validate_fixture_pair.sh DIR [TARGET DRAFT]
#
# Knobs (environment): SAMPLES (24 prompts), TOKENS (128 new tokens), LEDGER (DIR/ledger.csv),
# PROBES (recycle,refine), DTYPE (the checkpoint's; float32 makes CPU runs exact), DEVICE,
# REPORT (DIR/report), STEPS (which steps run: "sample extra same heldout report", all by
# default, so a study can be split across machine sessions), POLICIES (the promoted specs,
# separated by ";", default the matrix below), TIMING (promote's prediction timing: model or
# calibrated), REPEATS (live decodes of every prompt per promoted policy, 3), BACKEND (hf or
# graph; empty: the commands' default). Layout: DIR/humaneval-fixed16 (the sample trace with its profile),
# DIR/validation/ (the extra live traces and the promoted runs the ledger points to).
set -euo pipefail
DIR=${1:?usage: scripts/validate_fixture_pair.sh DIR [TARGET DRAFT]}
TARGET=${2:-models/fixtures/target}
DRAFT=${3:-models/fixtures/draft}
SAMPLES=${SAMPLES:-24}
TOKENS=${TOKENS:-128}
LEDGER=${LEDGER:-$DIR/ledger.csv}
PROBES=${PROBES:-recycle,refine}
MODEL_ARGS=(--dtype "${DTYPE:-auto}" ${DEVICE:+--device "$DEVICE"} ${BACKEND:+--backend "$BACKEND"})
REPEATS=${REPEATS:-3}
SR="python3 -m specreplay"
SAMPLE=$DIR/humaneval-fixed16
mkdir -p "$DIR"
STEPS=" ${STEPS:-sample extra same heldout report} "
step() { echo "=== $(date -u +%T) $*"; }
wanted() { [[ "$STEPS" == *" $1 "* ]]; }

if wanted sample; then
step "record the sample trace"
$SR record --target "$TARGET" --draft "$DRAFT" --dataset humaneval --policy 'fixed(b=16)' \
    --max-samples "$SAMPLES" --max-new-tokens "$TOKENS" --oracle-block-sizes 4,8,12,16 \
    --probes "$PROBES" --probe-block-sizes 16 --check-ar --out "$SAMPLE" --quiet "${MODEL_ARGS[@]}"
step "profile the same setup"
$SR profile --target "$TARGET" --draft "$DRAFT" --out "$SAMPLE" "${MODEL_ARGS[@]}" \
    --q 1,2,4,8,16,32,64 --context 32,64,128,256,512,1024 --batch 1,2,4,8 --block-sizes 4,8,12,16
$SR trace compact "$SAMPLE"
$SR trace check "$SAMPLE"
fi

if wanted extra; then
step "the extra live traces"
for spec in 'ewma(candidates=8|12|16)' 'fixed(b=16)+tree(topk=2, depth=4)'; do
    name=$(echo "$spec" | tr -c 'A-Za-z0-9' '-' | tr -s '-' | sed 's/-$//')
    $SR record --target "$TARGET" --draft "$DRAFT" --dataset humaneval --policy "$spec" \
        --max-samples "$SAMPLES" --max-new-tokens "$TOKENS" --oracle-block-sizes 4,8,12,16 \
        --no-logits --out "$DIR/validation/humaneval-$name" --quiet "${MODEL_ARGS[@]}"
    $SR trace compact "$DIR/validation/humaneval-$name"
done
fi

DEFAULT_POLICIES=(ar 'fixed(b=4)' 'fixed(b=8)' 'fixed(b=12)' 'fixed(b=16)' 'ewma(candidates=8|12|16)'
          'breakeven(candidates=8|12|16)' 'fixed(b=16)+gate(min_prob=0.2)'
          'fixed(b=16)+tree(topk=2, depth=4)' 'fixed(b=16)+candidates(mode=branch_beam, verify=tree)'
          'fixed(b=16)+recycle(mode=sparse)' 'fixed(b=16)+refine(steps=2)')
if [ -n "${POLICIES:-}" ]; then IFS=';' read -r -a PROMOTED <<< "$POLICIES"
else PROMOTED=("${DEFAULT_POLICIES[@]}"); fi
ARGS=()
for p in "${PROMOTED[@]}"; do ARGS+=(--policy "$p"); done
for prompts in same heldout; do
    wanted "$prompts" || continue
    step "promote on $prompts prompts"
    $SR promote --trace "$SAMPLE" --prompts "$prompts" --ledger "$LEDGER" --out "$DIR/validation/promoted" \
        --repeats "$REPEATS" ${DEVICE:+--device "$DEVICE"} ${BACKEND:+--backend "$BACKEND"} \
        ${TIMING:+--timing "$TIMING"} "${ARGS[@]}"
done

if wanted same || wanted heldout; then
    for d in "$DIR"/validation/promoted/*/; do $SR trace compact "$d" > /dev/null; done
fi

if wanted report; then
step "report"
$SR report "$SAMPLE" --ledger "$LEDGER" --out "${REPORT:-$DIR/report}"
fi
