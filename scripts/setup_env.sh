#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install g2rpo_fast into it.
#   - GPU machine with a CUDA torch already installed: the venv sees the system packages,
#     so that torch (and its triton) are kept, never replaced by a download.
#   - CPU machine: torch==2.13.0, whose CPU build lies on local disk (a bare `torch` would
#     pull a multi-GB CUDA build).
# Every other dependency comes at the versions CI passed with: requirements/constraints.txt
# (pip -c). G2RPO_FAST_DEPS=latest installs the newest releases instead (docs/CONTRIBUTING.md).
#
# Idempotent: a second run with nothing changed (same extras, dependency mode, setup.py,
# constraints, CMakeLists.txt, kernels/cpu/ sources and torch) checks a stamp and returns in
# seconds; a change to any of them reinstalls (the C++ build is incremental).
# Usage: scripts/setup_env.sh [extra...]   e.g. scripts/setup_env.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${G2RPO_VENV:-.venv}
EXTRAS=${1:-}
DEPS=${G2RPO_FAST_DEPS:-pinned}
CONSTRAINTS=requirements/constraints.txt
case "$DEPS" in
  pinned|latest) ;;
  *) echo "setup_env: G2RPO_FAST_DEPS must be 'pinned' (default) or 'latest', got '$DEPS'" >&2; exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    python3 -m venv --system-site-packages "$VENV"
  else
    python3 -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# What the installed environment was made from (the extras are kept apart: a set-up that asks
# for fewer extras than are installed, e.g. the main command after the test command, has
# nothing to do).
stamp_of() {
  {
    echo "deps=$DEPS venv=$VENV"
    "$PY" -c 'import sys, torch; print(sys.version, torch.__version__)' 2>/dev/null || echo "no torch"
    cat setup.py CMakeLists.txt "$CONSTRAINTS" 2>/dev/null
    find kernels/cpu -type f | LC_ALL=C sort | xargs cat 2>/dev/null
  } | sha256sum | cut -d' ' -f1
}
STAMP_FILE="$VENV/.g2rpo_fast_setup_stamp"
bwrap_note() {
  # The code reward runs completions under bubblewrap (else user namespaces, else it refuses).
  # For the tests, install it when we can (root + apt-get); a failure only skips the bwrap
  # cases, with the reason in pytest's skip summary.
  command -v bwrap >/dev/null 2>&1 && return 0
  if [[ ",$EXTRAS," == *",test,"* ]] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { timeout 300 apt-get install -y -qq bubblewrap || { timeout 300 apt-get update -qq &&
      timeout 300 apt-get install -y -qq bubblewrap; }; } >/dev/null 2>&1 ||
      echo "warning: could not install bubblewrap; its sandbox tests will be skipped" >&2
  fi
  command -v bwrap >/dev/null 2>&1 || echo "note: bubblewrap is not installed; for the code reward's sandbox:" \
    "apt-get install bubblewrap (Debian/Ubuntu) or dnf install bubblewrap (Fedora)" >&2
}

# The stamp: line 1 the hash, line 2 the installed extras (comma-separated). Extras once
# installed stay installed (pip never removes them), so every install asks for their union.
installed_extras=$([ -f "$STAMP_FILE" ] && sed -n 2p "$STAMP_FILE" || true)
missing=""
for e in ${EXTRAS//,/ }; do [[ ",$installed_extras," == *",$e,"* ]] || missing="$missing $e"; done
if [ "$DEPS" = pinned ] && [ -z "$missing" ] && [ "$(sed -n 1p "$STAMP_FILE" 2>/dev/null)" = "$(stamp_of)" ] &&
   "$PY" -W ignore -c 'import g2rpo_fast' 2>/dev/null; then
  echo "environment up to date: $VENV (nothing changed since the last set-up; extras: ${installed_extras:-none})"
  bwrap_note
  exit 0
fi
EXTRAS=$(echo "$installed_extras,$EXTRAS" | tr ',' '\n' | grep -v '^$' | LC_ALL=C sort -u | paste -sd, - || true)
rm -f "$STAMP_FILE"

if ! "$PY" -c 'import torch' 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0"
fi
# torch and triton are never pinned by the constraints: a GPU machine keeps the CUDA torch and
# the triton that came with it; the CPU machine takes triton from the constraints file. The
# install below is then held to the torch and triton in the venv (`pip -c`), so that neither
# the pins nor an eager upgrade (`latest`) ever replaces them.
if [ "$DEPS" = pinned ]; then
  triton_pin=$(grep -E '^triton==' "$CONSTRAINTS" | head -1)
else
  triton_pin="triton>=3.2"
fi
"$PY" -c 'import triton' 2>/dev/null || "${PIP[@]}" "$triton_pin"
{
  [ "$DEPS" = pinned ] && grep -vE '^(triton|torch)==' "$CONSTRAINTS"
  "$PY" -c 'import torch, triton; print(f"torch=={torch.__version__}\ntriton=={triton.__version__}")'
} >"$VENV/constraints.txt"
PINS=(-c "$VENV/constraints.txt")
[ "$DEPS" = latest ] && PINS+=(--upgrade --upgrade-strategy eager)

# The C++ CPU kernels (g2rpo_fast._C) build through CMake inside this editable install, against
# the venv's torch: hence no build isolation (pip's isolated build env has no torch), and a
# setuptools whose bdist_wheel is built in. No cmake or C++ compiler: the install skips them.
"$PY" -c 'import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1))' \
  2>/dev/null || "${PIP[@]}" "${PINS[@]}" "setuptools>=70.1"
start=$(date +%s)
"${PIP[@]}" "${PINS[@]}" --no-build-isolation -e ".${EXTRAS:+[$EXTRAS]}"
native=$("$PY" -W ignore -c 'from g2rpo_fast import _native as n; print(n.cpu_capability() or "not built")')
echo "environment ready: $VENV ($("$PY" -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'); dependencies: $DEPS; C++ kernels: $native; install $(($(date +%s) - start)) s)"
[ "$DEPS" = pinned ] && printf '%s\n%s\n' "$(stamp_of)" "$EXTRAS" >"$STAMP_FILE"
bwrap_note
