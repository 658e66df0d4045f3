#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the modules that hold the contract. Not part of CI: it reruns
# the covering tests once per mutant (minutes to hours). See docs/CONTRIBUTING.md.
#
# Usage: scripts/mutants.sh [target...]     (default: every target)
#   targets: guidance block_manager loss ops trainer
# Each target runs in its own scratch copy under .mutants/<target>/ (git-ignored), where a
# generated setup.cfg tells mutmut what to mutate and which tests to run. Afterwards:
#   cd .mutants/<target> && ../../.venv/bin/mutmut results        # surviving mutants
#   cd .mutants/<target> && ../../.venv/bin/mutmut show <name>    # the diff of one
# Environment: MUTANTS_JOBS (parallel workers, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MUTMUT="$ROOT/.venv/bin/mutmut"
[ -x "$MUTMUT" ] || { echo "mutmut is missing: scripts/setup_env.sh test" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

target_files() {
  case $1 in
    guidance) echo "g2rpo_fast/guidance.py" ;;
    block_manager) echo "g2rpo_fast/rollout/block_manager.py" ;;
    loss) echo "g2rpo_fast/loss/aggregation.py g2rpo_fast/loss/inputs.py g2rpo_fast/loss/objective.py g2rpo_fast/loss/metrics.py g2rpo_fast/ops/token_loss.py" ;;
    ops) echo "g2rpo_fast/ops/advantages.py g2rpo_fast/ops/logps.py g2rpo_fast/loss/layout.py" ;;
    trainer) echo "g2rpo_fast/trainer/trainer.py g2rpo_fast/trainer/components.py g2rpo_fast/trainer/state.py g2rpo_fast/trainer/batch.py g2rpo_fast/trainer/optimize.py g2rpo_fast/rollout/guided.py g2rpo_fast/rollout/composition.py g2rpo_fast/rewards/scoring.py g2rpo_fast/packing/layout.py g2rpo_fast/packing/policy_forward.py" ;;
    *) echo "unknown target $1 (guidance block_manager loss ops trainer)" >&2; exit 2 ;;
  esac
}

target_tests() {
  case $1 in
    guidance) echo "tests/test_guidance.py tests/test_trainer_contract.py" ;;
    block_manager) echo "tests/test_rollout_sharing.py tests/test_rollout.py::test_prefix_sharing_shares_blocks" ;;
    loss) echo "tests/test_loss_contract.py tests/test_loss_bad_input.py" ;;
    ops) echo "tests/test_ops_advantages.py tests/test_loss_contract.py tests/test_loss.py" ;;
    trainer) echo "tests/test_trainer_contract.py tests/test_composition.py tests/test_packing_forward.py" ;;
  esac
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(guidance block_manager loss ops trainer)
for target in "${targets[@]}"; do
  files=$(target_files "$target")
  tests=$(target_tests "$target")
  work="$ROOT/.mutants/$target"
  rm -rf "$work"
  mkdir -p "$work"
  git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$work"
  {
    echo "[mutmut]"
    echo "source_paths = g2rpo_fast"
    echo "only_mutate ="
    for f in $files; do echo "    $f"; done
    printf 'pytest_add_cli_args =\n    -p\n    no:cacheprovider\n'    # one argument per line
    echo "pytest_add_cli_args_test_selection ="
    for t in $tests; do echo "    $t"; done
  } >"$work/setup.cfg"
  echo "== $target: mutating $files; tests: $tests"
  (cd "$work" && "$MUTMUT" run --max-children "${MUTANTS_JOBS:-2}" && "$MUTMUT" results) || true
done
