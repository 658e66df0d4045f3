#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh) and run the whole test suite on the CPU:
# the PyTorch paths directly, the Triton kernels under TRITON_INTERPRET=1 (see tests/conftest.py).
# G2RPO_FAST_DEPS=latest: against the newest releases of every dependency (docs/CONTRIBUTING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh test
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec "${G2RPO_VENV:-.venv}/bin/python" -m pytest -q -rs -n "${PYTEST_WORKERS:-2}" tests "$@"  # -rs: every skip with its reason
