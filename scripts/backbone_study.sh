#!/usr/bin/env bash
# Issue 9's runs on the leak-free split, as they were made (docs/RESULTS.md, "Issue 9"): one recipe
# (configs/backbone_study.yaml), one thread pinned to one core per run so that runs compare fairly while
# the other core does other work. Usage (repo root, after `deepage ingest` + `deepage split` into
# work/utk128.h5):  bash scripts/backbone_study.sh
# A run whose summary.json exists is skipped; a run cut short resumes from its last.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}

run() {  # run CPU OUT_DIR NAME key=value...
  local cpu=$1 dir=$2/$3
  shift 3
  if [ -f "$dir/summary.json" ]; then return; fi
  if [ -f "$dir/last.pt" ]; then
    taskset -c "$cpu" "$BIN/deepage" train --resume "$dir"
  else
    taskset -c "$cpu" "$BIN/deepage" train --config configs/backbone_study.yaml "$@" out_dir="${dir%/*}" \
      name="${dir##*/}" progress=false
  fi
}

# The long run: EfficientNet-Lite0, 95 CPU minutes (core 0) ...
run 0 runs/long efficientnet_lite0_112 model=efficientnet_lite0 max_minutes=95 &
# ... while core 1 asks the attention question at equal steps: the trunk alone, then the AL model.
( run 1 runs/study mobilenet_v2-600 model=mobilenet_v2 max_steps=600 ema_decay=0.99
  run 1 runs/study al_mobilenet_v2-600 model=al_mobilenet_v2 max_steps=600 ema_decay=0.99 ) &
wait
"$BIN/deepage" evaluate runs/long/efficientnet_lite0_112/best.pt --data work/utk128.h5 --split test
"$BIN/python" scripts/study_curves.py runs/long/efficientnet_lite0_112 runs/study/*-600 \
  --out docs/results/study/curves.png
"$BIN/deepage" compare runs/long/efficientnet_lite0_112 runs/study/*-600 --out docs/results/study
