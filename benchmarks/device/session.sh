#!/usr/bin/env bash
# The GPU checks of one lent-device session, as one command of under 10 minutes (see README.md here).
# Runs on the device machine in the repository root, after `python benchmarks/device/pack.py` here and
# with `.device` carried.  Everything it makes goes under $OUT (at most 8 files come back):
#   session.log      this script's whole output
#   small_gpu.ckpt   the fine-tuned checkpoint (model weights and hyper-parameters; no optimizer state)
#   results.tar.gz   speed and whole-patient reports, training CSV log, validation output
# Each step has its own time limit, so a failing step leaves time to the others.
# DRY_RUN=1 rehearses it on a CPU machine (no wheels, CPU training for 2 min, two slices).
set -uo pipefail
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT/results"
exec > >(tee "$OUT/session.log") 2>&1
step() { echo; echo "=== $(date -u +%T) $*"; }

step "environment"
DRY_RUN=${DRY_RUN:-0}
if [ "$DRY_RUN" = 1 ]; then
  ACCEL=cpu; DEV=cpu; SLICES="--slices 4 5"; TRAIN_TIME=00:00:02:00; SHORT="--trainer.limit_train_batches 4 --trainer.limit_val_batches 2 --data.num_workers 2"
else
  ACCEL=gpu; DEV=cuda; SLICES=""; SHORT=""
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/wheels/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=offline MPLBACKEND=Agg
if [ ! -d ../shared/data/sunnybrook ]; then  # ../shared does not travel; the packed copy does
  mkdir -p ../shared/data && ln -sfn "$PWD/.device/shared/data/sunnybrook" ../shared/data/sunnybrook
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())" || exit 1
TRAIN_TIME=${TRAIN_TIME:-00:00:04:30}

step "CUDA tests"
timeout 90 python3 -m pytest -q -p no:cacheprovider -k "cuda or gpu" \
  tests/test_classical.py tests/test_coil_sensitivity.py tests/test_operators.py tests/test_fidelity.py

step "speed of the shipped checkpoint on the GPU (SCD0000301 slice, 20 frames, 10 coils, 256x256)"
timeout 120 python3 benchmarks/cardiomm_recon.py --stage speed --speed-threads --kt-threads --speed-repeats 3 \
  --out "$OUT/results/speed_shipped"

step "fine-tune the shipped checkpoint on the GPU (max_time $TRAIN_TIME)"
# TRAIN_CONFIGS picks another training (its configs must log to lightning_logs/small_gpu/csv, e.g. by ending
# with configs/small_gpu_finetune.yaml's trainer section); the default fine-tunes the shipped file.
CONFIGS=${TRAIN_CONFIGS:-"--config configs/small_cpu.yaml --config configs/small_cpu_view_sharing.yaml --config configs/small_cpu_finetune_real.yaml --config configs/small_cpu_gated.yaml --config configs/small_cpu_noise_free.yaml --config configs/small_gpu_finetune.yaml"}
rm -rf lightning_logs/small_gpu
timeout 420 python3 -m cardiomm.cli train fit $CONFIGS --trainer.max_time "$TRAIN_TIME" --trainer.accelerator $ACCEL $SHORT
CKPT=$(ls -t lightning_logs/small_gpu/csv/*/checkpoints/last.ckpt 2>/dev/null | head -1)
BEST=$(ls -t lightning_logs/small_gpu/csv/*/checkpoints/cardiomm-*.ckpt 2>/dev/null | head -1)
cp -r lightning_logs/small_gpu/csv "$OUT/results/train_csv" 2>/dev/null && rm -rf "$OUT"/results/train_csv/*/checkpoints
echo "last: ${CKPT:-none}  best: ${BEST:-none}"

if [ -n "${CKPT:-}" ]; then
  step "validate the last checkpoint (the same 12 batches as the CPU runs)"
  timeout 90 python3 -m cardiomm.cli train validate $CONFIGS --trainer.accelerator $ACCEL $SHORT --ckpt_path "$CKPT" 2>&1 | tee "$OUT/results/validate_last.txt"
  python3 - "$CKPT" "$OUT/small_gpu.ckpt" <<'EOF'
import sys, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
for key in ("optimizer_states", "lr_schedulers", "loops", "callbacks"):
    ckpt.pop(key, None)
torch.save(ckpt, sys.argv[2])
print("saved", sys.argv[2])
EOF
  step "whole patient SCD0000301 on the GPU, new checkpoint, against the noise-free truth"
  timeout 150 python3 benchmarks/recon_patient.py --device $DEV $SLICES --checkpoint "$OUT/small_gpu.ckpt" --reference noise-free \
    --methods cardiomm view-sharing --patterns kt_gaussian kt_radial uniform --accels 8 16 24 \
    --cache "$OUT/results/recon_patient.jsonl" --out "$OUT/results/recon_patient_new"
fi

step "pack"
tar -czf "$OUT/results.tar.gz" -C "$OUT" results && rm -rf "$OUT/results"
ls -la "$OUT"
