#!/usr/bin/env bash
# One short GPU session at paper scale (about 6 minutes on an H100): ViT-B/16 prompt
# steps fp32 vs bf16, batched groups, the memory budget's sizes, `rayfed-bpt
# size-actors` for the domainnet10 preset, and a 10-client x 2-round ViT-B run on
# 4 actors x 0.25 GPU with the GPU's busy share per round. Writes into $OUT.
set -euo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=${PYTHONPATH:-}:$(pwd)
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 benchmarks/vit_gpu.py --out "$OUT" --run 2>&1 | tee "$OUT/vit_gpu.log"
python3 -m rayfed_bpt.cli size-actors --config domainnet10 --set \
  "data.dataset=$OUT/d.arrow" "backbone.checkpoint=$OUT/vit_b16_random.safetensors" \
  data.num_clients=10 2>&1 | tee "$OUT/size_actors.log"
