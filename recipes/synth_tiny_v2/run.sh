#!/usr/bin/env bash
# The longvu-synth-tiny v2 recipe (NOT yet run to completion; see README.md), end to end, on CPU: base checkpoint, training data, `longvu train`,
# `longvu merge`, then a held-out check. Deterministic from its seeds; every stage prints its time.
#
#   bash recipes/synth_tiny_v2/run.sh [WORK_DIR] [MODEL_DIR]
#
# WORK_DIR (default work/synth-tiny-v2) holds the base, the data and the training run; MODEL_DIR
# (default models/longvu-synth-tiny-v2) receives the merged checkpoint. Stage 3 is the long one: it ran at
# about 12 s a step on 2 cores shared with other work (so about 3.5 h for its 1000 steps).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-work/synth-tiny-v2}
MODEL=${2:-models/longvu-synth-tiny-v2}
PY=${PYTHON:-.venv/bin/python}
LONGVU=${LONGVU:-.venv/bin/longvu}
DATA=(--cast 1 --families colour shape word --minutes 0.2 0.4)
start=$(date +%s)
stage() { echo "[$(( $(date +%s) - start )) s] $*"; }

stage "1/5 base: tokenizer, random decoder and connector, tower stand-ins pretrained on objects and letter strings"
"$PY" recipes/synth_tiny_v2/build_base.py --out "$WORK/base" --seed 0 --tower-videos 800 --tower-steps 500
stage "2/5 training data: 2000 videos, 3 questions each, word questions also asked as V-NIAH asks them"
"$LONGVU" synth --out "$WORK/train" --n 2000 --seed 21 --questions-per-video 3 "${DATA[@]}" -q
"$PY" recipes/synth_tiny/add_needle_questions.py "$WORK/train"
stage "3/5 longvu train: the connector (SVA sampler, projections, projector) and the decoder, 1000 steps of 16"
"$LONGVU" train --model "$WORK/base" --data "$WORK/train" --out "$WORK/run" --train connector,llm \
  --batch-size 16 --lr 1e-3 --warmup-steps 60 --max-steps 1000 --no-cache \
  --logging-steps 10 --save-steps 250 --seed 0 -q
stage "4/5 longvu merge -> $MODEL"
rm -rf "$MODEL.tmp"
"$LONGVU" merge --model "$WORK/base" --adapter "$WORK/run" --out "$MODEL.tmp" -q
cp recipes/synth_tiny_v2/README.md "$MODEL.tmp/README.md"
cp "$WORK/base/towers_pretraining.json" "$WORK/run/train_log.jsonl" "$MODEL.tmp/"
rm -rf "$MODEL" && mv "$MODEL.tmp" "$MODEL"
stage "5/5 held-out check: 60 new videos (seed 1000), then 40 word needles in held-out styles (seed 1001)"
"$LONGVU" synth --out "$WORK/held" --n 60 --seed 1000 "${DATA[@]}" -q
"$LONGVU" eval synthetic --data "$WORK/held" --out "$WORK/held-eval" --model "$MODEL" --device cpu -q
cat "$WORK/held-eval/summary.json"
"$LONGVU" synth --out "$WORK/held-render" --n 40 --seed 1001 --cast 1 --families word --minutes 0.2 0.4 \
  --render heldout -q
"$LONGVU" eval synthetic --data "$WORK/held-render" --out "$WORK/held-render-eval" --model "$MODEL" --device cpu -q
cat "$WORK/held-render-eval/summary.json"
stage "done"
