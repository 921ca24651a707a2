#!/usr/bin/env bash
# Full-resolution runs on one GPU, well inside 10 minutes: the best CPU recipe at its native size
# (EfficientNet-Lite2 at 260 px, offline ImageNet weights, and its AL variant), then the study's four big
# models (ResNet50V2, AL-ResNet and VGG19 at 224 px, InceptionV3 at 299 px), 1 minute of training each,
# evaluated on the test split of the leak-free split (seed 0, pixel check; copied across sizes).
# Usage (repo root, ../shared beside it):  bash scripts/gpu_full_size.sh
# Dry run on the CPU (one step each, on a slice):  SOURCE=slice.tar WORK=work/gpu-dry \
#     EXTRA="device=cpu max_steps=1 batch_size=8 eval_batch_size=16" bash scripts/gpu_full_size.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
SOURCE=${SOURCE:-../shared/data/UTKFace.tar.gz}
WORK=${WORK:-work}
read -r -a EXTRA <<< "${EXTRA:-}"
mkdir -p "$WORK"
# The split is made once at 128 px (the project's split) and copied to the 288 px file by content hash.
test -f "$WORK/utk128.h5" || "$BIN/deepage" ingest "$SOURCE" -o "$WORK/utk128.h5" --size 128
python_has_split=$("$BIN/python" -c "import h5py,sys; print(int('split' in h5py.File(sys.argv[1],'r')))" "$WORK/utk128.h5")
[ "$python_has_split" = 1 ] || "$BIN/deepage" split "$WORK/utk128.h5" --seed 0
test -f "$WORK/utk288.h5" || "$BIN/deepage" ingest "$SOURCE" -o "$WORK/utk288.h5" --size 288
"$BIN/deepage" split "$WORK/utk288.h5" --from "$WORK/utk128.h5"
for spec in efficientnet_lite2:260:true al_efficientnet_lite2:260:true resnet50v2:224:false alresnet:224:false \
            vgg19:224:false inceptionv3:299:false; do
  IFS=: read -r model size pretrained <<< "$spec"
  "$BIN/deepage" train --config configs/gpu_full_size.yaml data="$WORK/utk288.h5" model="$model" \
    input_size="$size" pretrained="$pretrained" out_dir="$WORK/runs" name="gpu-$model" "${EXTRA[@]}"
  "$BIN/deepage" evaluate "$WORK/runs/gpu-$model/best.pt" --data "$WORK/utk288.h5" --split test
done
"$BIN/deepage" compare "$WORK"/runs/gpu-* --out "$WORK/runs/leaderboard-gpu"
