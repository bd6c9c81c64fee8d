#!/usr/bin/env bash
# The README's main job, offline: train a small R50-hybrid on the built-in dataset, export it to a
# SavedModel and fp32/fp16/dynamic-range/int8 TFLite files (each loaded back and compared with the
# Keras model), and print latency tables: the exported files, then the three full-size ResNets.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN=${RUN:-runs/demo}
export TF_CPP_MIN_LOG_LEVEL=2
rm -rf "$RUN"
$PY training/train.py --recipe demo --model resnet50_hybrid --model_kwargs 'depths=[1,1,1,1],width_mult=0.25' \
  --dataset builtin --epochs 20 --model_dir "$RUN"
$PY training/evaluate.py --model_dir "$RUN" --dataset builtin
$PY export/export.py --model "$RUN/final" \
  --formats saved_model,fp32,fp16,dynamic,int8 --output_dir "$RUN/export"
$PY export/benchmark.py --export_dir "$RUN/export" --formats fp32,fp16,dynamic,int8 --threads 1,2 --runs 50 \
  --output_dir "$RUN/bench"
# The paper's speed claim at full size (224x224, random weights: latency does not depend on them).
$PY export/benchmark.py --model resnet50,resnet50_max,resnet50_hybrid --formats fp32 --threads 1 --runs 20 \
  --output_dir "$RUN/bench_full"
echo "Done: checkpoints and metrics in $RUN, exported files and report.json in $RUN/export, latency table in $RUN/bench"
