#!/usr/bin/env bash
# Rewrite requirements/constraints.txt from the packages installed in .venv (after
# `G2RPO_FAST_DEPS=latest bash scripts/test.sh` passed): every distribution but torch, the
# nvidia-* CUDA wheels and g2rpo_fast itself. See docs/CONTRIBUTING.md ("Dependencies").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${G2RPO_VENV:-.venv}/bin/python
{
  echo "# The dependency set CI passed with (scripts/setup_env.sh installs with pip -c this file)."
  echo "# torch is never pinned here (a GPU machine keeps its CUDA build; the CPU machine takes 2.13.0 from local disk);"
  echo "# triton is pinned for the CPU machine only (setup_env.sh drops the pin where torch brought its own)."
  echo "# Update: docs/CONTRIBUTING.md (\"Dependencies\"). Frozen $(date -u +%F) from Python $("$PY" -c 'import platform; print(platform.python_version())'), torch $("$PY" -c 'import torch; print(torch.__version__)')."
  "$PY" -m pip freeze --disable-pip-version-check 2>/dev/null | grep -vE '^(torch==|-e |#|nvidia-|g2rpo)' | LC_ALL=C sort -f
} >requirements/constraints.txt.new
mv requirements/constraints.txt.new requirements/constraints.txt
echo "requirements/constraints.txt: $(grep -vc '^#' requirements/constraints.txt) pins"
