#!/usr/bin/env bash
# The GPU campaign (issue 6) as resumable steps, one device-tool command each; see
# ../shared/notes/gpu-machine.md for the machine's limits. Every step is idempotent: a step cut off
# at the 10-minute limit is simply run again and continues from the run's last checkpoint.
#
#   bash scripts/gpu_campaign.sh stage-part PART [NAME] # append a part to $STAGE/NAME (default cifar.tgz)
#   bash scripts/gpu_campaign.sh stage-data             # check SHA-256, extract to $STAGE/data
#   bash scripts/gpu_campaign.sh install [WHEEL_NAME]   # pip install --no-deps -e . (no network there);
#                                                       # with the joined onnxruntime-gpu wheel's name in
#                                                       # $STAGE, also that wheel into /root/ortgpu
#   bash scripts/gpu_campaign.sh train [MODEL...]       # fast recipe, resuming where a run stopped
#   bash scripts/gpu_campaign.sh validate [MODEL...]    # eval + ONNX export/validation + bench (CUDA)
#   bash scripts/gpu_campaign.sh collect                # small outputs -> $OUT/outputs.tgz
#   bash scripts/gpu_campaign.sh collect-weights MODEL...  # weights split into <16 MiB parts in $OUT
#                                                       # (2 parts a model: at most 4 models a command)
# Back here: `cat resnet22.safetensors.part* > model_cards/resnet22/model.safetensors`, check the
# printed SHA-256, unpack outputs.tgz, then `aperture card resnet22 --run ...`.
#
# Environment: STAGE (default /root/stage), RUNS (default /root/runs), OUT (the device tool's),
# DEVICE (default cuda; cpu for a smoke run here), BENCH_BATCHES (default 1,1024), and
# TRAIN_ARGS / EXPORT_ARGS / BENCH_ARGS (extra flags, split on spaces).
# /root survives only while the machine stays warm (30 s after a command): chain the steps.
set -euo pipefail
cd "$(dirname "$0")/.."

STAGE=${STAGE:-/root/stage}
RUNS=${RUNS:-/root/runs}
OUT=${OUT:-$RUNS/out}
ALL_MODELS="resnet22 resnet10 resnet18 resnet20 resnet24 resnet32"
DEVICE=${DEVICE:-cuda}
PROVIDER=$([ "$DEVICE" = cuda ] && echo cuda || echo cpu)
CIFAR_SHA256=0a54792d270bb8bf1a1544e5e3f2c880da2ec0cf66d1a8b97b0400150bf7ae9e
export PYTHONUNBUFFERED=1
mkdir -p "$STAGE" "$RUNS" "$OUT"

[ -d /root/ortgpu ] && export PYTHONPATH="/root/ortgpu${PYTHONPATH:+:$PYTHONPATH}"

models() { if [ $# -gt 0 ]; then echo "$@"; else echo "$ALL_MODELS"; fi; }

log_machine() {
  { date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    python3 -c 'import torch, sys; print("torch", torch.__version__, "python", sys.version.split()[0])'
  } | tee -a "$OUT/machine.txt"
}

step=${1:?"usage: $0 stage-part|stage-data|install|train|validate|collect|collect-weights [ARGS]"}
shift
case "$step" in
  stage-part)
    cat "${1:?part file}" >> "$STAGE/${2:-cifar.tgz}"
    ls -l "$STAGE/${2:-cifar.tgz}" ;;
  stage-data)
    echo "$CIFAR_SHA256  $STAGE/cifar.tgz" | sha256sum -c -
    mkdir -p "$STAGE/data" && tar xzf "$STAGE/cifar.tgz" -C "$STAGE/data"
    ls "$STAGE/data/cifar-10-batches-py" ;;
  install)
    python3 -m pip install -q --no-deps --no-build-isolation -e .
    if [ $# -gt 0 ]; then
      python3 -m pip install -q --no-deps --target /root/ortgpu "$STAGE/$1"
      PYTHONPATH="/root/ortgpu${PYTHONPATH:+:$PYTHONPATH}" python3 -c \
        'import torch, onnxruntime as ort; print(ort.__version__, ort.get_available_providers())'
    fi
    aperture list ;;
  train)
    log_machine
    for m in $(models "$@"); do
      run="$RUNS/$m"
      if [ -f "$run/checkpoint.safetensors" ]; then
        aperture train --resume "$run" --no-progress ${TRAIN_ARGS:-} 2>&1 | tee -a "$OUT/train-$m.log"
      else
        aperture train "$m" --recipe fast --data-dir "$STAGE/data" --no-download --device "$DEVICE" \
          --out "$run" --no-progress ${TRAIN_ARGS:-} 2>&1 | tee -a "$OUT/train-$m.log"
      fi
    done ;;
  validate)
    log_machine
    for m in $(models "$@"); do
      run="$RUNS/$m"
      aperture eval "$m" --weights "$run/model.safetensors" --data-dir "$STAGE/data" --no-download \
        --device "$DEVICE" --out "$run" 2>&1 | tee -a "$OUT/validate-$m.log"
      aperture export "$m" --weights "$run/model.safetensors" --onnx --fp16 --provider "$PROVIDER" \
        --data-dir "$STAGE/data" --out "$run/onnx" ${EXPORT_ARGS:-} 2>&1 | tee -a "$OUT/validate-$m.log" \
        || echo "$m: ONNX validation FAILED (report in $run/onnx); going on" | tee -a "$OUT/validate-$m.log"
      aperture bench "$m" --weights "$run/model.safetensors" --device "$DEVICE" --batch-sizes "${BENCH_BATCHES:-1,1024}" \
        ${BENCH_ARGS:-} --json > "$run/bench-$DEVICE.json"
    done ;;
  collect)
    (cd "$RUNS" && find . -maxdepth 3 -type f ! -name '*.safetensors' ! -name '*.onnx' -print0 \
      | tar czf "$OUT/outputs.tgz" --null -T -)
    ls -l "$OUT" ;;
  collect-weights)
    [ $# -ge 1 ] && [ $# -le 4 ] || { echo "collect-weights takes 1 to 4 models (8 files a command)" >&2; exit 2; }
    for m in "$@"; do
      split -b 15M -d "$RUNS/$m/model.safetensors" "$OUT/$m.safetensors.part"
    done
    for m in "$@"; do sha256sum "$RUNS/$m/model.safetensors"; done
    ls -l "$OUT" ;;
  *)
    echo "unknown step $step" >&2; exit 2 ;;
esac
