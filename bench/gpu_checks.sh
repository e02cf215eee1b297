#!/bin/bash
# The GPU issue's checks in one command (run on the accelerator machine from the repository root;
# its image has torch, torchvision, timm and pandas, which is all these two scripts import).
#   OUT=/tmp/out bash bench/gpu_checks.sh
# 1. the training step: fp32 bs16 vs bf16 autocast + channels_last bs128, five models (JSON lines)
# 2. duo throughput at bs 256 and 32: eager sequential, CUDA graph, CUDA graph + second stream, analytic
set -euo pipefail
OUT=${OUT:-.}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python bench/bench_train_step.py --device cuda --steps 30 | tee "$OUT/train_step.jsonl"
python evaluate/extra_eval_throughput.py --device cuda --precision bf16 --channels_last \
    --models ConvNeXt_Base ViT_B_16 ResNet50 ResNet18 EfficientNet_B0 ShuffleNet_V2_X1_0 \
    --pairs ConvNeXt_Base:ResNet18 ViT_B_16:EfficientNet_B0 ResNet50:ShuffleNet_V2_X1_0 \
    --duo_batch 256 32 --max_batch 256 --output "$OUT/throughput.csv" | tee "$OUT/throughput.txt"
