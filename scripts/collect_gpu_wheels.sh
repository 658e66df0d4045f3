#!/usr/bin/env bash
# Fetch, on a machine with a package registry, the wheels that the GPU machine's image lacks,
# for scripts/gpu_check.sh to install there offline (it has no registry).
#
#   bash scripts/collect_gpu_wheels.sh [WHEEL_DIR]      # default .whl (git-ignored)
#
# The image (Python 3.12, x86-64) has torch 2.11 (CUDA 13.0), triton, transformers, peft,
# accelerate, huggingface-hub, pandas, pyarrow, xxhash, sympy, tensorboard, pytest-xdist; it lacks
# datasets, liger-kernel, trl, math-verify and flash-attn. The wheels below close that gap at the
# versions CI passed with (requirements/constraints.txt), each without its dependencies (the
# image has them; `unzip -p WHEEL '*/METADATA' | grep ^Requires-Dist` lists a wheel's): about
# 3 MiB, far inside the 64 MiB that may travel with the checkout. flash-attn is not fetched: its
# wheel must be built for the image's torch, CUDA and Python (drop a matching one in WHEEL_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.whl}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
BUDGET_MIB=${GPU_WHEELS_BUDGET_MIB:-40}
# missing from the image, then their own dependencies that the image lacks too
PACKAGES=(datasets dill multiprocess liger_kernel trl math-verify latex2sympy2_extended antlr4-python3-runtime)

pinned() {  # NAME -> NAME==VERSION from the constraints (names compared as pip normalises them)
  local want
  want=$(echo "$1" | tr 'A-Z_.' 'a-z--')
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    if [ "$(echo "${line%%==*}" | tr 'A-Z_.' 'a-z--')" = "$want" ]; then echo "$line"; return; fi
  done < requirements/constraints.txt
  echo "collect_gpu_wheels: $1 is not pinned in requirements/constraints.txt" >&2
  exit 2
}

mkdir -p "$OUT"
grep -qx "/$OUT/" .git/info/exclude 2>/dev/null || { [ -d .git ] && echo "/$OUT/" >> .git/info/exclude; } || true
specs=()
for name in "${PACKAGES[@]}"; do specs+=("$(pinned "$name")"); done
"$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$OUT" "${specs[@]}"
total=$(du -sk "$OUT" | cut -f1)
ls -1 "$OUT"
echo "collect_gpu_wheels: ${#specs[@]} wheels, $(( total / 1024 )) MiB in $OUT (carry it: run(..., carry=[\"$OUT\"]))"
if [ $(( total / 1024 )) -gt "$BUDGET_MIB" ]; then
  echo "collect_gpu_wheels: over the ${BUDGET_MIB} MiB budget for wheels" >&2
  exit 1
fi
