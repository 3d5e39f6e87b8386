#!/usr/bin/env bash
# tools/world/device.sh — a world trained in one call to a lent GPU, and its landing here.
#
#   tools/world/device.sh unet            # on the GPU machine: a new UNet for the committed world; packs $OUT
#   tools/world/device.sh world           # on the GPU machine: every model anew (tools/world/gpu.sh); packs $OUT
#   tools/world/device.sh land DIR WORLD  # here: DIR holds what came back; WORLD becomes a world folder, ready
#                                         # for `persona compare --manifest WORLD/quick.toml`
#
# A lent GPU has about 15 minutes a session and a call at most 10; the machine keeps nothing, and at most eight
# files of 16 MiB come back. So each mode is one call (device `run`, carry .whl, timeout_s 590), bounded by
# DEADLINE_S (default 540 s), that leaves the world in two files, and the logs in logs.tar even when it fails.
#
# unet: keeps the committed recogniser, CLIP and VAE (train.py resume) and gives the UNet everything else, so only
# the UNet differs and every number compares directly with the committed world's (docs/world.md, "On a GPU").
# Revision 1's data in the GPU profile (4x the CPU's, the committed world's 60 000 images the first of them),
# encoded with the committed VAE and text encoder, then the UNet until 75 s before the deadline, assemble and
# samples. Back: world-gpu.tar (the UNet in f16, the VAE config with the new scaling factor, training.json, the
# samples, the logs) and unet-f32.safetensors. WORLD_ARGS (default "--attend-first --unet-channels 64,64,96", the
# UNet the docs ask about; "--continue-unet --seed N" continues the committed UNet instead).
#
# world: tools/world/gpu.sh with WORLD_ARGS (e.g. "--revision 2"), the world written to WORK/world. Back:
# world.tar (the whole world folder, samples and logs) and unet-f32.safetensors.
#
# Environment: WORLD_ARGS, UNET_COMPILE=1, DEADLINE_S, PYTHON (default python3), WORK (default /tmp/persona-world),
# OUT (default WORK/out). diffusers is installed from .whl/ when the host lacks it (tools/gpu/diffusers-wheel.sh).
# CPU smoke test of the unet mode, about 6 minutes here (bf16 autocast on a CPU without bf16 instructions is slow):
#   WORLD_ARGS="--device cpu --quick --attend-first --unet-channels 64,64,96" DEADLINE_S=300 WORK=/tmp/wd \
#     PYTHON=/work/venv-ref/bin/python tools/world/device.sh unet
#   tools/world/device.sh land /tmp/wd/out /tmp/wd/landed
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
WORK="${WORK:-/tmp/persona-world}"
OUT="${OUT:-$WORK/out}"
WORLD="$WORK/world"
LOGS="$WORK/logs"
T0=$(date +%s)
say() { echo "world/device: $* at $(( $(date +%s) - T0 )) s" >&2; }

prepare() {
  mkdir -p "$OUT" "$LOGS" "$WORLD"
  export PYTHONUNBUFFERED=1 PYTHON="$PY" WORK LOGS
  # The stages' logs come back whatever happens: a failed call is then read from them, not guessed at.
  trap 'tar -cf "$OUT/logs.tar" -C "$LOGS" . 2>/dev/null || true' EXIT
  local site
  site=$(tools/gpu/diffusers-wheel.sh "$PY" "$WORK/site")
  [ -z "$site" ] || export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
}

unet_only() {
  prepare
  cp world/training.json "$WORLD/"  # the kept stages' record; data, encode and unet are rewritten below
  # shellcheck disable=SC2086
  train() { "$PY" tools/world/train.py --gpu --work "$WORK" --out "$WORLD" --workers "$(nproc)" --threads 4 \
    ${WORLD_ARGS:---attend-first --unet-channels 64,64,96} "$@"; }
  train data resume encode > "$LOGS/data-encode.log" 2>&1
  say "data, resume, encode done"
  local unet=$(( ${DEADLINE_S:-540} - ($(date +%s) - T0) - 75 ))
  (( unet > 30 )) || { say "no time left for the UNet"; exit 1; }
  say "unet for $unet s"
  train unet --budget "unet=$unet" ${UNET_COMPILE:+--compile} > "$LOGS/unet.log" 2>&1
  train assemble samples --samples "$WORLD/world_samples.png" > "$LOGS/assemble.log" 2>&1
  cp -r "$LOGS" "$WORLD/logs"
  cp "$WORK/unet-f32/config.json" "$WORLD/unet-f32-config.json"
  tar -cf "$OUT/world-gpu.tar" -C "$WORLD" pipeline/unet pipeline/vae/config.json training.json \
    world_samples.png unet-f32-config.json logs
  cp "$WORK/unet-f32/diffusion_pytorch_model.safetensors" "$OUT/unet-f32.safetensors"
  say "packed into $OUT"
}

whole_world() {
  prepare
  WORLD_ARGS="${WORLD_ARGS:-} --out $WORLD --samples $WORLD/world_samples.png" DEADLINE_S="${DEADLINE_S:-540}" \
    tools/world/gpu.sh
  cp -r "$LOGS" "$WORLD/logs"
  cp "$WORK/unet-f32/config.json" "$WORLD/unet-f32-config.json"
  # The tokenizer's links point into this checkout from WORK; land replaces them with the files.
  tar -cf "$OUT/world.tar" --exclude .training.lock -C "$WORK" world
  cp "$WORK/unet-f32/diffusion_pytorch_model.safetensors" "$OUT/unet-f32.safetensors"
  say "packed into $OUT"
}

# WORLD/unet-f32 is the f32 UNet, for `train.py unet --continue-unet` (copy it into a work folder as unet-f32).
land() {
  local from="$1" to="$2"
  [ -e "$to" ] && { echo "device.sh land: $to exists; choose a new folder" >&2; exit 2; }
  if [ -f "$from/world-gpu.tar" ]; then  # unet mode: the committed world (links resolved) with the new UNet
    cp -rL world "$to"
    rm -rf "$to/pipeline/unet"
    tar -xf "$from/world-gpu.tar" -C "$to"
  elif [ -f "$from/world.tar" ]; then  # world mode: the world that came back, its tokenizer files restored
    mkdir -p "$to"
    tar -xf "$from/world.tar" -C "$to" --strip-components 1
    for d in pipeline/tokenizer clip; do
      cp --remove-destination fixtures/clip-tokenizer/{vocab.json,merges.txt} "$to/$d/"
    done
    cp world/quick.toml world/compare.toml "$to/"
  else
    echo "device.sh land: $from holds neither world-gpu.tar nor world.tar" >&2; exit 2
  fi
  mkdir -p "$to/unet-f32"
  mv "$to/unet-f32-config.json" "$to/unet-f32/config.json"
  cp "$from/unet-f32.safetensors" "$to/unet-f32/diffusion_pytorch_model.safetensors"
  say "landed in $to"
}

case "${1:-}" in
  unet) unet_only ;;
  world) whole_world ;;
  land) [ $# -eq 3 ] || { echo "usage: device.sh land DIR WORLD" >&2; exit 2; }; land "$2" "$3" ;;
  *) echo "usage: device.sh unet | device.sh world | device.sh land DIR WORLD" >&2; exit 2 ;;
esac
