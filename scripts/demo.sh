#!/usr/bin/env bash
# The README's main job (interim form until training/ and export/ land): build the published
# ResNets, convert an official-format PyTorch checkpoint fixture, and print the model profile.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p runs/demo
$PY -m pf_keras.convert --model resnet50_max --checkpoint tests/fixtures/pth/resnet_max_small.pth \
  --output runs/demo/resnet_max_small.weights.h5 \
  --model_kwargs '{"depths": [1, 2, 1, 1], "width_mult": 0.125, "classes": 10, "input_shape": [64, 64, 3]}'
$PY -m pf_keras.profiling
