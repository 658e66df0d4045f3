#!/usr/bin/env bash
# Set up the environment and run the main job: G²RPO-A on the built-in arithmetic task with the
# built-in tiny Qwen3 model (no download; a few minutes on 2 CPU cores). Extra arguments go to
# `g2rpo-fast train`, e.g. --max-steps 10 --output-dir runs/x.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/g2rpo-fast train "$@"
