#!/usr/bin/env bash
# The longvu-synth-tiny v2 recipe, end to end, on CPU: base checkpoint (towers and connector pretrained on
# objects and letter strings), training data, two `longvu train` passes (the word alone; then the mix),
# `longvu merge` after each, then the held-out check on fresh seeds. Deterministic from its seeds;
# every stage prints its time.
#
#   bash recipes/synth_tiny_v2/run.sh [WORK_DIR] [MODEL_DIR]
#
# WORK_DIR (default work/synth-tiny-v2) holds the base, the data and the training runs; MODEL_DIR
# (default models/longvu-synth-tiny-v2) receives the merged checkpoint. See README.md for its time on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-work/synth-tiny-v2}
MODEL=${2:-models/longvu-synth-tiny-v2}
PY=${PYTHON:-.venv/bin/python}
LONGVU=${LONGVU:-.venv/bin/longvu}
STEPS=${STEPS:-1500}
DATA=(--cast 1 --minutes 0.2 0.4)  # one object (drawn large), word needles in the training styles
start=$(date +%s)
stage() { echo "[$(( $(date +%s) - start )) s] $*"; }
train() {  # train BASE DATA OUT [longvu train options]: the projector and the decoder, batches of 16 lines
  "$LONGVU" train --model "$1" --data "$2" --out "$3" --train projector,llm --batch-size 16 --no-cache \
    --logging-steps 10 --save-steps 100 --seed 0 --resume -q "${@:4}"
}
merge() {  # merge BASE RUN OUT: a full checkpoint, once (a later run finds it there)
  [[ -f "$3/config.json" ]] || "$LONGVU" merge --model "$1" --adapter "$2" --out "$3" -q
}

stage "1/6 base: tokenizer and random decoder; towers, then the SVA connector, pretrained on objects and letter strings"
if [[ -f "$WORK/base/towers_pretraining.json" ]]; then echo "  (done: $WORK/base)"; else
  "$PY" recipes/synth_tiny_v2/build_base.py --out "$WORK/base" --seed 0 --tower-videos 800 --tower-steps 5000 \
    --dinov2-steps 1000
fi
stage "2/6 training data: 1500 videos that show a word in every frame; 3000 videos, 3 questions each (one conversation per video, and its word asked again)"
if [[ -f "$WORK/words/data.jsonl" ]]; then echo "  (done: $WORK/words)"; else
  "$PY" recipes/synth_tiny_v2/word_videos.py "$WORK/words" --n 1500 --seed 31
fi
if [[ -f "$WORK/train/data_single.jsonl" ]]; then echo "  (done: $WORK/train)"; else
  rm -rf "$WORK/train"  # an interrupted synth: start it again
  "$LONGVU" synth --out "$WORK/train" --n 3000 --seed 21 --questions-per-video 3 --families colour shape word \
    "${DATA[@]}" -q
  "$PY" recipes/synth_tiny_v2/multi_turn.py "$WORK/train"
fi
stage "3/6 longvu train, pass 1: the projector and the decoder on the word alone, 250 steps of 16 lines"
if [[ -f "$WORK/pass1/config.json" ]]; then echo "  (done: $WORK/pass1)"; else
  train "$WORK/base" "$WORK/words" "$WORK/run-words" --lr 1e-3 --warmup-steps 40 --max-steps 250
  merge "$WORK/base" "$WORK/run-words" "$WORK/pass1"
fi
stage "4/6 pass 2: the mix (colour, shape, and finding the word frame among the object's), $STEPS steps"
train "$WORK/pass1" "$WORK/train" "$WORK/run" --lr 7e-4 --warmup-steps 20 --max-steps "$STEPS"
stage "5/6 longvu merge -> $MODEL"
rm -rf "$MODEL.tmp"
merge "$WORK/pass1" "$WORK/run" "$MODEL.tmp"
cp recipes/synth_tiny_v2/MODEL_CARD.md "$MODEL.tmp/README.md"
cp "$WORK/base/towers_pretraining.json" "$MODEL.tmp/"
for pass in run-words:1 run:2; do cp "$WORK/${pass%:*}/train_log.jsonl" "$MODEL.tmp/train_log-pass${pass#*:}.jsonl"; done
rm -rf "$MODEL" && mv "$MODEL.tmp" "$MODEL"
stage "6/6 held-out check on fresh seeds: colour and shape (seed 9001), words (9002), words in held-out styles (9003)"
"$LONGVU" synth --out "$WORK/held/cs" --n 200 --seed 9001 --families colour shape "${DATA[@]}" -q
"$LONGVU" synth --out "$WORK/held/word" --n 100 --seed 9002 --families word "${DATA[@]}" -q
"$LONGVU" synth --out "$WORK/held/word-heldout" --n 100 --seed 9003 --families word "${DATA[@]}" --render heldout -q
for set in cs word word-heldout; do
  "$LONGVU" eval synthetic --data "$WORK/held/$set" --out "$WORK/held/$set-eval" --model "$MODEL" --device cpu -q
  "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], s['accuracy'], s['per_category'])" \
    "$WORK/held/$set-eval/summary.json" "$set"
done
stage "done"
