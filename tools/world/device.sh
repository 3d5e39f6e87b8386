#!/usr/bin/env bash
# tools/world/device.sh — a new UNet for the committed world in one call to a lent GPU, and its landing here.
#
#   tools/world/device.sh train          # on the GPU machine (device `run`, carry .whl, timeout_s 590); packs $OUT
#   tools/world/device.sh land DIR WORLD # here: DIR holds what came back; WORLD becomes the committed world with
#                                        # the new UNet, ready for `persona compare --manifest WORLD/quick.toml`
#
# Why not tools/world/gpu.sh: a lent GPU has about 15 minutes, a call at most 10, and gpu.sh spends four of them
# retraining the recogniser, CLIP and the VAE, which the committed world already has. This keeps them (train.py
# resume) and gives the UNet everything else, so only the UNet differs and every number compares directly with the
# committed world's (docs/world.md, "On a GPU"). The question it is for: does a UNet attending at 16², twice as
# wide there, trained on a GPU, let the methods learn more than the committed one does?
#
# train: revision 1's data in the GPU profile (4x the CPU's, the committed world's first 60 000 images among them),
# encoded with the committed VAE and text encoder, then the UNet until DEADLINE_S (default 540 s from the start,
# 75 s left for the rest), then assemble and samples. $OUT gets world-gpu.tar (the UNet in f16, the VAE config
# with the new scaling factor, training.json, the samples, the logs) and unet-f32.safetensors (to continue it).
# Environment: WORLD_ARGS (default "--attend-first --unet-channels 64,64,96"; "--continue-unet --seed N" instead
# continues the committed UNet), UNET_COMPILE=1, DEADLINE_S, PYTHON (default python3), WORK (default
# /tmp/persona-world), OUT (default WORK/out). diffusers is installed from .whl/ when the host lacks it
# (tools/bench/README.md says how to fetch the wheel). CPU smoke test, about 6 minutes here (bf16 autocast on a CPU
# without bf16 instructions is slow; DEADLINE_S bounds it):
#   WORLD_ARGS="--device cpu --quick --attend-first --unet-channels 64,64,96" DEADLINE_S=300 WORK=/tmp/wd \
#     PYTHON=/work/venv-ref/bin/python tools/world/device.sh train
#   tools/world/device.sh land /tmp/wd/out /tmp/wd/landed
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
WORK="${WORK:-/tmp/persona-world}"
T0=$(date +%s)
say() { echo "world/device: $* at $(( $(date +%s) - T0 )) s" >&2; }

train_on_device() {
  local out="${OUT:-$WORK/out}" logs="$WORK/logs" world="$WORK/world"
  mkdir -p "$out" "$logs" "$world"
  cp world/training.json "$world/"  # the kept stages' record; data, encode and unet are rewritten below
  export PYTHONUNBUFFERED=1
  if ! "$PY" -c "import diffusers" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-index --target "$WORK/site" .whl/diffusers-*.whl
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  # shellcheck disable=SC2086
  train() { "$PY" tools/world/train.py --gpu --work "$WORK" --out "$world" --workers "$(nproc)" --threads 4 \
    ${WORLD_ARGS:---attend-first --unet-channels 64,64,96} "$@"; }
  train data resume encode > "$logs/data-encode.log" 2>&1
  cp -r world/faces "$world/"
  say "data, resume, encode done"
  local unet=$(( ${DEADLINE_S:-540} - ($(date +%s) - T0) - 75 ))
  (( unet > 30 )) || { say "no time left for the UNet"; exit 1; }
  say "unet for $unet s"
  train unet --budget "unet=$unet" ${UNET_COMPILE:+--compile} > "$logs/unet.log" 2>&1
  say "unet done"
  train assemble samples --samples "$world/world_samples.png" > "$logs/assemble.log" 2>&1
  cp -r "$logs" "$world/logs"
  cp "$WORK/unet-f32/config.json" "$world/unet-f32-config.json"
  tar -cf "$out/world-gpu.tar" -C "$world" pipeline/unet pipeline/vae/config.json training.json \
    world_samples.png unet-f32-config.json logs
  cp "$WORK/unet-f32/diffusion_pytorch_model.safetensors" "$out/unet-f32.safetensors"
  say "packed into $out"
}

# The committed world (links resolved, so the copy stands alone) with the UNet and VAE config that came back, and
# WORLD/unet-f32 for `train.py unet --continue-unet` (copy it into a work folder as unet-f32).
land() {
  local from="$1" to="$2"
  [ -f "$from/world-gpu.tar" ] || { echo "device.sh land: $from/world-gpu.tar: not found" >&2; exit 2; }
  [ -e "$to" ] && { echo "device.sh land: $to exists; choose a new folder" >&2; exit 2; }
  cp -rL world "$to"
  rm -rf "$to/pipeline/unet"
  tar -xf "$from/world-gpu.tar" -C "$to"
  mkdir -p "$to/unet-f32"
  mv "$to/unet-f32-config.json" "$to/unet-f32/config.json"
  cp "$from/unet-f32.safetensors" "$to/unet-f32/diffusion_pytorch_model.safetensors"
  say "landed in $to"
}

case "${1:-}" in
  train) train_on_device ;;
  land) [ $# -eq 3 ] || { echo "usage: device.sh land DIR WORLD" >&2; exit 2; }; land "$2" "$3" ;;
  *) echo "usage: device.sh train | device.sh land DIR WORLD" >&2; exit 2 ;;
esac
