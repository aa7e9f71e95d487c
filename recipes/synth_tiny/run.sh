#!/usr/bin/env bash
# The longvu-synth-tiny recipe, end to end, on CPU: base checkpoint, training data, `longvu train`,
# `longvu merge`, then a held-out check. Deterministic from its seeds; every stage prints its time.
#
#   bash recipes/synth_tiny/run.sh [WORK_DIR] [MODEL_DIR]
#
# WORK_DIR (default work/synth-tiny) holds the base, the data and the training run; MODEL_DIR
# (default models/longvu-synth-tiny) receives the merged checkpoint. About 40 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-work/synth-tiny}
MODEL=${2:-models/longvu-synth-tiny}
PY=${PYTHON:-.venv/bin/python}
LONGVU=${LONGVU:-.venv/bin/longvu}
# the data this model was trained on: the plain needle, and a lone object at the usual size
DATA=(--cast 1 --families colour shape word --minutes 0.2 0.4 --render plain --object-scale 1)
start=$(date +%s)
stage() { echo "[$(( $(date +%s) - start )) s] $*"; }

stage "1/5 base: tokenizer, random decoder and connector, pretrained tower stand-ins"
"$PY" recipes/synth_tiny/build_base.py --out "$WORK/base" --seed 0
stage "2/5 training data: 2000 videos, 3 questions each, word questions also asked as V-NIAH asks them"
"$LONGVU" synth --out "$WORK/train" --n 2000 --seed 21 --questions-per-video 3 "${DATA[@]}" -q
"$PY" recipes/synth_tiny/add_needle_questions.py "$WORK/train"
stage "3/5 longvu train: the decoder, 1400 steps of 16"
"$LONGVU" train --model "$WORK/base" --data "$WORK/train" --out "$WORK/run" --train llm \
  --batch-size 16 --lr 1e-3 --warmup-steps 100 --max-steps 1400 --no-cache \
  --logging-steps 20 --save-steps 350 --seed 0 -q
stage "4/5 longvu merge -> $MODEL"
rm -rf "$MODEL.tmp"
"$LONGVU" merge --model "$WORK/base" --adapter "$WORK/run" --out "$MODEL.tmp" -q
cp recipes/synth_tiny/MODEL_CARD.md "$MODEL.tmp/README.md"
cp "$WORK/base/towers_pretraining.json" "$WORK/run/train_log.jsonl" "$MODEL.tmp/"
rm -rf "$MODEL" && mv "$MODEL.tmp" "$MODEL"
stage "5/5 held-out check: 60 new videos (seed 1000)"
"$LONGVU" synth --out "$WORK/held" --n 60 --seed 1000 "${DATA[@]}" -q
"$LONGVU" eval synthetic --data "$WORK/held" --out "$WORK/held-eval" --model "$MODEL" --device cpu -q
cat "$WORK/held-eval/summary.json"
stage "done"
