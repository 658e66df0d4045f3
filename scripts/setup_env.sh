#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install g2rpo_fast into it.
#   - GPU machine with a CUDA torch already installed: the venv sees the system packages,
#     so that torch (and its triton) are kept, never replaced by a download.
#   - CPU machine: torch==2.13.0, whose CPU build lies on local disk (a bare `torch` would
#     pull a multi-GB CUDA build).
# Usage: scripts/setup_env.sh [extra...]   e.g. scripts/setup_env.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${G2RPO_VENV:-.venv}
EXTRAS=${1:-}

if [ ! -x "$VENV/bin/python" ]; then
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    python3 -m venv --system-site-packages "$VENV"
  else
    python3 -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

if ! "$PY" -c 'import torch' 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0"
fi
# triton: kept when torch brought one (CUDA builds); else the registry's (CPU runs use TRITON_INTERPRET=1).
"$PY" -c 'import triton' 2>/dev/null || "${PIP[@]}" "triton>=3.2"

# The C++ CPU kernels (g2rpo_fast._C) build through CMake inside this editable install, against
# the venv's torch: hence no build isolation (pip's isolated build env has no torch), and a
# setuptools whose bdist_wheel is built in. No cmake or C++ compiler: the install skips them.
"$PY" -c 'import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1))' \
  2>/dev/null || "${PIP[@]}" "setuptools>=70.1"
start=$(date +%s)
"${PIP[@]}" --no-build-isolation -e ".${EXTRAS:+[$EXTRAS]}"
native=$("$PY" -W ignore -c 'from g2rpo_fast import _native as n; print(n.cpu_capability() or "not built")')
echo "environment ready: $VENV ($("$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'); C++ kernels: $native; install $(($(date +%s) - start)) s)"
# The code reward runs completions under bubblewrap (else user namespaces, else it refuses).
# For the tests, install it when we can (root + apt-get); a failure only skips the bwrap cases,
# with the reason in pytest's skip summary.
if ! command -v bwrap >/dev/null 2>&1; then
  if [[ ",$EXTRAS," == *",test,"* ]] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { timeout 300 apt-get install -y -qq bubblewrap || { timeout 300 apt-get update -qq &&
      timeout 300 apt-get install -y -qq bubblewrap; }; } >/dev/null 2>&1 ||
      echo "warning: could not install bubblewrap; its sandbox tests will be skipped" >&2
  fi
  command -v bwrap >/dev/null 2>&1 || echo "note: bubblewrap is not installed; for the code reward's sandbox:" \
    "apt-get install bubblewrap (Debian/Ubuntu) or dnf install bubblewrap (Fedora)" >&2
fi
