#!/usr/bin/env bash
# tools/gpu/diffusers-wheel.sh PYTHON SITE — gives PYTHON diffusers on a host that lacks it (the GPU host has torch
# and transformers but no diffusers and no network): installs .whl/diffusers-*.whl into SITE and prints SITE, the
# PYTHONPATH entry to add; prints nothing when PYTHON has diffusers already. tools/bench/README.md says how to fetch
# the wheel. Used by tools/gpu/check.sh and tools/world/device.sh.
set -euo pipefail
py="$1" site="$2"
"$py" -c 'import diffusers' 2>/dev/null && exit 0
whl=(.whl/diffusers-*.whl)
[ -e "${whl[0]}" ] || { echo "no diffusers and no .whl/diffusers-*.whl" >&2; exit 1; }
"$py" -m pip install --quiet --no-index --no-deps --target "$site" "${whl[0]}" >&2
echo "$site"
