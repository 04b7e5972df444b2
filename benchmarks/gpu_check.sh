#!/usr/bin/env bash
# One short GPU session: pre-train the built-in backbone on CUDA and time
# prompt-tuning steps. Writes into $OUT (or ./gpu_out).
set -euo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$(pwd)
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
python3 -m rayfed_bpt.cli backbone pretrain --device cuda \
  --out "$OUT/rfbpt_vit_digits.safetensors" 2>&1 | tee "$OUT/pretrain.log"
mkdir -p rayfed_bpt/assets && cp "$OUT/rfbpt_vit_digits.safetensors" rayfed_bpt/assets/
python3 benchmarks/step_speed.py --device cuda --batch 32 256 1024 2>&1 | tee "$OUT/step_speed.log"
