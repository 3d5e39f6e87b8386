#!/usr/bin/env bash
# tools/gpu/check.sh — persona on a GPU in one command (≤ 8 min on an H200): CPU-vs-GPU equality, then
# persona's figures next to diffusers' on SD 2.1-base random weights in bf16, as one table.
#
# On the GPU machine (x86-64, NVIDIA driver, python3 with torch + transformers, no Rust, no network), from a
# copy of the repository that carries dist/persona.xz (tools/gpu/build.sh) and .whl/ (the diffusers wheel,
# tools/bench/README.md):
#
#   tools/gpu/check.sh                      # OUT=DIR: logs and gpu-check.json there (default ./gpu-check*)
#
# CPU smoke test of the same script with a plain build (tiny sizes, device cpu, few steps; ~3 min here):
#
#   cargo build --release -p persona-cli && GPU_CHECK_SMOKE=1 tools/gpu/check.sh
#
# Stages (each under `timeout`, and all under one overall deadline, CHECK_BUDGET_S, default 470 s):
#   unpack      dist/persona.xz → $WORK/persona (smoke: $PERSONA_BIN or target/{release,debug}/persona)
#   equality    persona bench equality --model fixtures/sd2-tiny --devices cpu,cuda
#   gradcheck   persona bench gradcheck --device cuda   (every op's backward vs finite differences, bf16/f16 vs f32)
#   conv-grad   persona bench conv-grad: stride-2 input gradient, transposed vs dilated convolution, timed
#   unet        persona bench unet --batch 2 --size 64                  (s per UNet forward)
#   generate    persona bench generate --steps 50                       (s per 512² image, DDIM, guidance 7.5)
#   step-tokens persona bench train-step --method tokens --batch 8      (s per step, peak GPU memory)
#   step-idea   persona bench train-step --method idea --batch 8
#   make-model  persona bench make-model --arch sd21-base --dtype bf16  (random weights, diffusers layout)
#   train       persona train --method idea --steps 320 --batch-size 8 --resolution 512 on that folder, photos
#               fixtures/faces/photos, face models: the tiny stand-ins of fixtures/faces (wall clock incl. load)
#   diffusers   tools/bench/diffusers_gpu.py (diffusers from .whl/ installed into $WORK/site)
# CHECK_ONLY="equality gradcheck …" runs only the stages named (unpack always runs); the others are skipped;
# PEER_ONLY="unet,train_step" likewise limits the diffusers stage to those of its parts.
# Exit status: 0 when every stage ran and the equality check passed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

SMOKE="${GPU_CHECK_SMOKE:-0}"
LOGS="${OUT:-$ROOT/gpu-check-logs}"
RESULT="${OUT:+$OUT/gpu-check.json}"
RESULT="${RESULT:-$ROOT/gpu-check.json}"
WORK="$(mktemp -d /tmp/gpu-check.XXXXXX)"
mkdir -p "$LOGS"
BUDGET="${CHECK_BUDGET_S:-470}"
T0=$(date +%s)
STAGES="$LOGS/stages.tsv"
: > "$STAGES"

if [ "$SMOKE" = 1 ]; then
  MODE=smoke DEV=cpu DTYPE=f32 ARCH=tiny SIZE=16 RES=32 GEN_STEPS=3 RUN_STEPS=3 BATCH=2 UNET_BATCH=2
  EQ_DEVICES=cpu,cpu EQ_STEPS=3
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    if [ -x /work/venv-ref/bin/python ]; then PY=/work/venv-ref/bin/python; else PY=python3; fi
  fi
  PEER_ARGS="--device cpu --dtype f32 --tiny --run-steps $RUN_STEPS --steps-gen $GEN_STEPS --batch $BATCH"
else
  MODE=gpu DEV=cuda DTYPE=bf16 ARCH=sd21-base SIZE=64 RES=512 GEN_STEPS=50 RUN_STEPS=320 BATCH=8 UNET_BATCH=2
  EQ_DEVICES=cpu,cuda EQ_STEPS=10
  PY="${PYTHON:-/opt/torch/.venv/bin/python}"
  [ -x "$PY" ] || PY=python3
  PEER_ARGS="--device cuda --dtype bf16 --run-steps $RUN_STEPS --steps-gen $GEN_STEPS --batch $BATCH"
fi
[ -n "${PEER_ONLY:-}" ] && PEER_ARGS="$PEER_ARGS --only $PEER_ONLY"   # a subset of diffusers_gpu.py's parts
echo "gpu-check: mode $MODE, logs in $LOGS, python $PY" >&2
# What the stages' helper functions (run by `timeout` in a child bash) read.
export SMOKE WORK PY LOGS PEER_ARGS ROOT

# stage NAME SECONDS CMD…: stdout → $LOGS/NAME.out, stderr → $LOGS/NAME.log; within the overall deadline.
stage() {
  local name=$1 limit=$2; shift 2
  if [ -n "${CHECK_ONLY:-}" ] && [ "$name" != unpack ] && [[ " $CHECK_ONLY " != *" $name "* ]]; then
    printf '%s\t%s\t%s\n' "$name" skipped 0 >> "$STAGES"
    return 0
  fi
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  (( limit > left )) && limit=$left
  if (( limit < 5 )); then
    printf '%s\t%s\t%s\n' "$name" skipped 0 >> "$STAGES"
    echo "gpu-check: $name skipped (time budget spent)" >&2
    return 124
  fi
  local s=$(date +%s.%N) rc
  if declare -F "$1" > /dev/null; then set -- bash -c "$1" "$@"; fi   # a helper function: export -f'ed below
  timeout -k 10 "$limit" "$@" > "$LOGS/$name.out" 2> "$LOGS/$name.log"
  rc=$?
  local secs
  secs=$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')
  printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >> "$STAGES"
  echo "gpu-check: $name rc=$rc ${secs}s (limit ${limit}s)" >&2
  return $rc
}

# --- the binary -------------------------------------------------------------------------------------------
unpack() {
  # The smoke test runs on a machine without the NVIDIA driver, where the CUDA build cannot even load.
  if [ "$SMOKE" = 1 ]; then
    local b="${PERSONA_BIN:-}"
    [ -n "$b" ] || for c in target/release/persona target/debug/persona; do [ -x "$c" ] && { b=$c; break; }; done
    [ -n "$b" ] || { echo "no persona binary: cargo build --release -p persona-cli" >&2; return 1; }
    cp "$b" "$WORK/persona"
  else
    "$PY" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' \
      dist/persona.xz "$WORK/persona" || return 1
  fi
  chmod +x "$WORK/persona"
}
export -f unpack
stage unpack 30 unpack
if [ "$SMOKE" = 1 ]; then
  P=("$WORK/persona")
else
  P=(env PYTHON="$PY" "$ROOT/tools/gpu/gpu-run.sh" "$WORK/persona")
  GPU_RUN_CHECK=1 PYTHON="$PY" tools/gpu/gpu-run.sh "$WORK/persona" > "$LOGS/ldd.log" 2>&1
fi

# --- equality with the CPU --------------------------------------------------------------------------------
stage equality 150 "${P[@]}" bench equality --model fixtures/sd2-tiny --devices "$EQ_DEVICES" --steps "$EQ_STEPS"
stage gradcheck 60 "${P[@]}" bench gradcheck --device "$DEV"
stage conv-grad 40 "${P[@]}" bench conv-grad --batch "$BATCH" --size "$SIZE" --device "$DEV" --dtype "$DTYPE"

# --- persona's figures ------------------------------------------------------------------------------------
D=(--device "$DEV" --dtype "$DTYPE")
stage unet 60 "${P[@]}" bench unet --arch "$ARCH" --batch "$UNET_BATCH" --size "$SIZE" --runs 5 "${D[@]}"
stage generate 90 "${P[@]}" bench generate --arch "$ARCH" --steps "$GEN_STEPS" --size "$SIZE" --runs 2 "${D[@]}"
stage step-tokens 60 "${P[@]}" bench train-step --arch "$ARCH" --method tokens --batch "$BATCH" --size "$SIZE" --runs 3 "${D[@]}"
stage step-idea 60 "${P[@]}" bench train-step --arch "$ARCH" --method idea --batch "$BATCH" --size "$SIZE" --runs 3 "${D[@]}"
stage make-model 90 "${P[@]}" bench make-model --arch "$ARCH" --dtype "$DTYPE" --out "$WORK/model"

# The face models: the repository's tiny stand-ins under insightface's names (they find "faces" in the
# bundled photos, which is all ID-EA's face embedding needs here).
mkdir -p "$WORK/face-models"
cp fixtures/faces/tiny_scrfd.onnx "$WORK/face-models/det_10g.onnx"
cp fixtures/faces/tiny_arcface.onnx "$WORK/face-models/w600k_r50.onnx"
stage train 240 "${P[@]}" train --model "$WORK/model" --images fixtures/faces/photos --token '<p>' --method idea \
  --steps "$RUN_STEPS" --batch-size "$BATCH" --resolution "$RES" --models "$WORK/face-models" \
  --out "$WORK/identity.safetensors" "${D[@]}"

# --- diffusers' figures -----------------------------------------------------------------------------------
peer() {
  local site
  site=$(tools/gpu/diffusers-wheel.sh "$PY" "$WORK/site") || return 1
  # shellcheck disable=SC2086
  PYTHONPATH="${site:-$WORK/site}${PYTHONPATH:+:$PYTHONPATH}" "$PY" tools/bench/diffusers_gpu.py $PEER_ARGS --out "$LOGS/diffusers.json"
}
export -f peer
stage diffusers 300 peer

# --- the table --------------------------------------------------------------------------------------------
"$PY" tools/gpu/summarize.py --logs "$LOGS" --mode "$MODE" --batch "$BATCH" --gen-steps "$GEN_STEPS" \
  --run-steps "$RUN_STEPS" --out "$RESULT"
rc=$?
rm -rf "$WORK"
echo "gpu-check: $(( $(date +%s) - T0 )) s in all; $RESULT" >&2
exit $rc
