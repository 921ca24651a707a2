#!/usr/bin/env bash
# The study's big models at their native sizes on one GPU, about 10 minutes in all:
# ResNet50V2, AL-ResNet (ResNet50V2 trunk) and VGG19 at 224 px, InceptionV3 at 299 px.
# Usage (repo root, ../shared beside it): bash scripts/gpu_full_size.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
mkdir -p work
test -f work/utk224.h5 || "$BIN/deepage" ingest ../shared/data/UTKFace.tar.gz -o work/utk224.h5 --size 224
"$BIN/deepage" split work/utk224.h5 --seed 0
for spec in resnet50v2:224 alresnet:224 vgg19:224 inceptionv3:299; do
  model=${spec%%:*}; size=${spec##*:}
  "$BIN/deepage" train --config configs/gpu_full_size.yaml model="$model" input_size="$size" name="gpu-$model"
  "$BIN/deepage" evaluate "runs/gpu-$model/best.pt" --data work/utk224.h5 --split test
done
"$BIN/deepage" compare runs/gpu-* --out runs/leaderboard-gpu
