#!/usr/bin/env bash
# Issue 9's backbone study: one recipe (configs/backbone_study.yaml: DEX head, 112 px, AdamW, cosine over the
# time budget, EMA, augmentation), the same CPU minutes for every backbone, on the leak-free split; each
# run is judged on the validation split (best.pt holds its metrics). One thread pinned to one core
# (PIN_CPU, default 0), so that runs compare fairly while the other core does other work.
# Usage (repo root, after `deepage ingest` + `deepage split` into work/utk128.h5):
#   bash scripts/backbone_study.sh [MINUTES] [run ...]     runs: see the case below
# A run whose summary.json exists is skipped; a run cut short resumes (last.pt).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MINUTES=${1:-8}
shift || true
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(efficientnet_lite0 mobilenet_v2 al_mobilenet_v2 mobilenet_v2_dropconf)
PIN=(taskset -c "${PIN_CPU:-0}")
for run in "${runs[@]}"; do
  case "$run" in
    mobilenet_v2_dropconf) args=(model=mobilenet_v2 drop_conflicting_duplicates=true) ;;
    *) args=(model="$run") ;;
  esac
  dir="runs/study/$run"
  if [ -f "$dir/summary.json" ]; then continue; fi
  if [ -f "$dir/last.pt" ]; then
    "${PIN[@]}" "$BIN/deepage" train --resume "$dir"
  else
    "${PIN[@]}" "$BIN/deepage" train --config configs/backbone_study.yaml "${args[@]}" max_minutes="$MINUTES" \
      out_dir=runs/study name="$run"
  fi
done
