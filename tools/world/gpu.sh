#!/usr/bin/env bash
# tools/world/gpu.sh — the world's models on one GPU (about 9 minutes on an H200; docs/world.md).
#
#   tools/world/gpu.sh                 # writes world/ and docs/world_samples.png, as `train.py all` does
#                                      # (revision 1, the committed world's people; WORLD_ARGS="--revision 2": the next)
#
# The GPU profile of train.py (`--gpu`: bf16 autocast, four times the CPU profile's data, larger batches), each
# training stage for a wall-clock budget rather than a step count, so the run fits the time a lent GPU has:
#   data                          rendering on every core
#   recognizer ∥ clip ∥ vae       at once: each model is small enough that alone it leaves the GPU mostly idle
#   encode, unet, assemble, samples
# Environment: PYTHON (default python3; needs torch, transformers, diffusers, onnx), WORK (default
# /tmp/persona-world), LOGS (default WORK/logs), BUDGET_RECOGNIZER / BUDGET_CLIP / BUDGET_VAE / BUDGET_UNET
# (seconds; defaults 100 / 150 / 150 / 240), DEADLINE_S (the whole run's seconds: the UNet's budget shrinks to
# end in time, leaving 45 s for the last stages), UNET_COMPILE=1 (torch.compile the UNet's training forward:
# fewer, larger kernels; not yet tried on a GPU), WORLD_ARGS (more train.py flags; a CPU smoke test of this script:
# `WORLD_ARGS="--device cpu --quick" WORK=/tmp/wq PYTHON=/work/venv-ref/bin/python tools/world/gpu.sh`, which
# writes its world to WORK/world).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
WORK="${WORK:-/tmp/persona-world}"
LOGS="${LOGS:-$WORK/logs}"
mkdir -p "$WORK" "$LOGS"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
# shellcheck disable=SC2086
train() { "$PY" tools/world/train.py --gpu --work "$WORK" --workers "$(nproc)" --threads 4 ${WORLD_ARGS:-} "$@"; }
say() { echo "world/gpu: $* at $(( $(date +%s) - T0 )) s" >&2; }

train data > "$LOGS/data.log" 2>&1
say "data done"
pids=()
train recognizer --budget "recognizer=${BUDGET_RECOGNIZER:-100}" > "$LOGS/recognizer.log" 2>&1 & pids+=($!)
train clip --budget "clip=${BUDGET_CLIP:-150}" > "$LOGS/clip.log" 2>&1 & pids+=($!)
train vae --budget "vae=${BUDGET_VAE:-150}" > "$LOGS/vae.log" 2>&1 & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
say "recognizer, clip, vae done"
train encode > "$LOGS/encode.log" 2>&1
say "encode done"
unet=${BUDGET_UNET:-240}
if [ -n "${DEADLINE_S:-}" ]; then
  left=$(( DEADLINE_S - ($(date +%s) - T0) - 45 ))
  (( left < unet )) && unet=$left
  (( unet < 30 )) && unet=30  # past the deadline already: a short round, so that the world is still assembled
fi
say "unet for $unet s"
train unet --budget "unet=$unet" ${UNET_COMPILE:+--compile} > "$LOGS/unet.log" 2>&1
say "unet done"
train assemble samples > "$LOGS/assemble.log" 2>&1
say "assemble, samples done"
