#!/usr/bin/env bash
# The longvu-synth-tiny v2 recipe, end to end, on CPU: base checkpoint (towers and connector pretrained on
# objects and letter strings), training data, `longvu train`, `longvu merge`, then the held-out check on
# fresh seeds. Deterministic from its seeds; every stage prints its time.
#
#   bash recipes/synth_tiny_v2/run.sh [WORK_DIR] [MODEL_DIR]
#
# WORK_DIR (default work/synth-tiny-v2) holds the base, the data and the training run; MODEL_DIR
# (default models/longvu-synth-tiny-v2) receives the merged checkpoint. See README.md for its time on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-work/synth-tiny-v2}
MODEL=${2:-models/longvu-synth-tiny-v2}
PY=${PYTHON:-.venv/bin/python}
LONGVU=${LONGVU:-.venv/bin/longvu}
STEPS=${STEPS:-800}
DATA=(--cast 1 --minutes 0.2 0.4)  # one object (drawn large), word needles in the training styles
start=$(date +%s)
stage() { echo "[$(( $(date +%s) - start )) s] $*"; }

stage "1/5 base: tokenizer and random decoder; towers, then the SVA connector, pretrained on objects and letter strings"
if [[ -f "$WORK/base/towers_pretraining.json" ]]; then echo "  (done: $WORK/base)"; else
  "$PY" recipes/synth_tiny_v2/build_base.py --out "$WORK/base" --seed 0 --tower-videos 800 --tower-steps 2000 \
    --dinov2-steps 600
fi
stage "2/5 training data: 3000 videos, 3 questions each: one conversation per video, and its word asked again"
"$LONGVU" synth --out "$WORK/train" --n 3000 --seed 21 --questions-per-video 3 --families colour shape word \
  "${DATA[@]}" -q
"$PY" recipes/synth_tiny_v2/multi_turn.py "$WORK/train"
stage "3/5 longvu train: the projector and the decoder, $STEPS steps of 16 lines"
"$LONGVU" train --model "$WORK/base" --data "$WORK/train" --out "$WORK/run" --train projector,llm \
  --batch-size 16 --lr 1e-3 --warmup-steps 60 --max-steps "$STEPS" --no-cache \
  --logging-steps 10 --save-steps 200 --seed 0 --resume -q
stage "4/5 longvu merge -> $MODEL"
rm -rf "$MODEL.tmp"
"$LONGVU" merge --model "$WORK/base" --adapter "$WORK/run" --out "$MODEL.tmp" -q
cp recipes/synth_tiny_v2/MODEL_CARD.md "$MODEL.tmp/README.md"
cp "$WORK/base/towers_pretraining.json" "$WORK/run/train_log.jsonl" "$MODEL.tmp/"
rm -rf "$MODEL" && mv "$MODEL.tmp" "$MODEL"
stage "5/5 held-out check on fresh seeds: colour and shape (seed 7001), words (7002), words in held-out styles (7003)"
"$LONGVU" synth --out "$WORK/held/cs" --n 200 --seed 7001 --families colour shape "${DATA[@]}" -q
"$LONGVU" synth --out "$WORK/held/word" --n 100 --seed 7002 --families word "${DATA[@]}" -q
"$LONGVU" synth --out "$WORK/held/word-heldout" --n 100 --seed 7003 --families word "${DATA[@]}" --render heldout -q
for set in cs word word-heldout; do
  "$LONGVU" eval synthetic --data "$WORK/held/$set" --out "$WORK/held/$set-eval" --model "$MODEL" --device cpu -q
  "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], s['accuracy'], s['per_category'])" \
    "$WORK/held/$set-eval/summary.json" "$set"
done
stage "done"
