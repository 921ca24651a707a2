#!/usr/bin/env bash
# Train and evaluate every model of the zoo under one CPU protocol (configs/zoo_cpu.yaml: 64 px input,
# DEX head, 4 minutes of training each, 1 thread), then build the leaderboard. See docs/RESULTS.md.
# Usage (repo root, after `deepage ingest` + `deepage split` into work/utk128.h5):
#   bash scripts/train_zoo.sh [model ...]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=(softmax dnn cnn rnn lenet alexnet levi_hassner vgg19 inceptionv3 resnet50v2 alresnet18 resnet18 mobilenet_v2)
fi
for model in "${models[@]}"; do
  extra=()
  [ "$model" = mobilenet_v2 ] && extra=(pretrained=true)   # the one backbone with ImageNet weights offline
  if [ ! -f "runs/zoo-$model/summary.json" ]; then
    "$BIN/deepage" train --config configs/zoo_cpu.yaml model="$model" name="zoo-$model" progress=false "${extra[@]}"
  fi
  "$BIN/deepage" evaluate "runs/zoo-$model/best.pt" --data work/utk128.h5 --split test
done
"$BIN/deepage" compare runs/zoo-* --out docs/results/zoo
