#!/usr/bin/env bash
# Set up the environment and run the main job: G²RPO-A on the built-in arithmetic task with the
# built-in tiny Qwen3 model (shipped with the package: no download, no warm start; a few minutes
# on 2 CPU cores). Extra arguments go to `g2rpo-fast train`, e.g. --max-steps 10 --output-dir runs/x.
# Without --output-dir (or --resume) the run goes to g2rpo_output/ and replaces the previous
# default run there, so the command works every time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export TOKENIZERS_PARALLELISM=false
extra=()
case " $* " in
  *" --output-dir"*|*" --output_dir"*|*" --resume "*|*" --overwrite-output-dir "*|*" --overwrite_output_dir "*) ;;
  *) extra=(--overwrite-output-dir) ;;
esac
exec "${G2RPO_VENV:-.venv}/bin/g2rpo-fast" train "${extra[@]}" "$@"
