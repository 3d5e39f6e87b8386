#!/usr/bin/env bash
# tools/gpu/build.sh — the CUDA build of persona, packed for a GPU machine: dist/persona.xz.
#
#   tools/gpu/build.sh            # ≈ 15 min cold on 2 cores (8 of them nvcc on candle's kernels); relink ~1 min
#
# Installs (once) a build-only CUDA 13.0 toolchain from PyPI wheels (tools/gpu/cuda-toolchain.sh; CUDA_COMPUTE_CAP
# defaults to 90 = H100/H200), builds `cargo build --release -p persona-cli --features cuda` into target/cuda
# (apart from the plain build, so neither rebuilds the other), strips it and compresses it with `xz -9`
# (≈ 13 MB). Run it on the GPU machine with tools/gpu/check.sh (or tools/gpu/gpu-run.sh BINARY …).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
eval "$(tools/gpu/cuda-toolchain.sh --env)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/cuda}"
cargo build --release -p persona-cli --features cuda
mkdir -p dist
strip -o dist/persona "$CARGO_TARGET_DIR/release/persona"
xz -9 -f -T1 dist/persona
ls -l dist/persona.xz
echo "dist/persona.xz: sha256 $(sha256sum dist/persona.xz | cut -d' ' -f1)"
