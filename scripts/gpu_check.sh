#!/usr/bin/env bash
# One command for a GPU machine without internet: check everything only a GPU can check, and
# measure every benchmark at its GPU shapes. Results: benchmarks/results/*_gpu.md (device,
# versions, command in each). Budget: under 10 minutes on one H100 (each step has a time cap;
# a capped step records what it printed and that it ran out of time).
#
#   scripts/gpu_check.sh [WHEEL_DIR]        # WHEEL_DIR default: ./wheels
#
# Environment: keeps the machine's CUDA torch (and the triton that came with it): the venv
# .venv-gpu sees the system site-packages, and everything else is installed offline from
# WHEEL_DIR (`pip install --no-index --find-links`). Packages already importable are not
# reinstalled, so a machine that has them needs no wheels at all.
#
# Collecting the wheels on a CPU machine with internet (match the GPU machine's Python and
# platform; torch, triton and the nvidia-* packages are NOT needed):
#   pip download -d wheels --only-binary=:all: --python-version 3.11 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#       "transformers>=4.51" "datasets>=2.19" numpy pyyaml tqdm "math-verify>=0.7" matplotlib \
#       "liger-kernel>=0.6" "trl>=0.20" "pytest>=8" pytest-xdist
#   pip download -d wheels --no-deps --only-binary=:all: --python-version 3.11 \
#       --platform manylinux2014_x86_64 setuptools wheel
# pip download also fetches their dependencies; if it insists on torch, add `--no-deps` and
# list the dependencies it reports missing instead. flash-attn is optional: its wheel must be
# built for the machine's torch, CUDA and Python (pick the matching prebuilt wheel from
# flash-attn's GitHub releases and drop it in WHEEL_DIR); without it the flash_attn checks are
# skipped with that reason. Then carry WHEEL_DIR to the GPU machine with the checkout.
#
# Exit status: 1 without CUDA (it says so), when the environment cannot be prepared, when a
# test fails or a benchmark crashes; 0 otherwise (a benchmark stopped at its cap is reported,
# not failed).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-wheels}
RESULTS=benchmarks/results
LOGS=$(mktemp -d)
START=$(date +%s)

if ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False, or no torch): run it on a GPU machine" >&2
  exit 1
fi

# ---------------------------------------------------------------------------- environment
VENV=.venv-gpu
[ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q --no-index --find-links "$WHEELS")
missing=$("$PY" - <<'EOF'
import importlib.util
mods = {"transformers": "transformers>=4.51", "datasets": "datasets>=2.19", "yaml": "pyyaml", "tqdm": "tqdm",
        "math_verify": "math-verify>=0.7", "matplotlib": "matplotlib", "liger_kernel": "liger-kernel>=0.6",
        "trl": "trl>=0.20", "pytest": "pytest>=8", "xdist": "pytest-xdist"}
print(" ".join(req for mod, req in mods.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "gpu_check: installing from $WHEELS: $missing"
  "${PIP[@]}" $missing || { echo "gpu_check: cannot install $missing from $WHEELS (see the header)" >&2; exit 1; }
fi
if [ -d "$WHEELS" ] && ls "$WHEELS"/flash_attn-*.whl >/dev/null 2>&1 && ! "$PY" -c 'import flash_attn' 2>/dev/null; then
  "${PIP[@]}" --no-deps "$WHEELS"/flash_attn-*.whl || echo "gpu_check: the flash-attn wheel does not install here"
fi
"$PY" -m pip install --disable-pip-version-check -q --no-index --no-deps --no-build-isolation -e . \
  || { echo "gpu_check: cannot install g2rpo_fast itself" >&2; exit 1; }
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET G2RPO_FAST_BACKEND

header() {  # $1: title, $2: command
  "$PY" - "$1" "$2" <<'EOF'
import importlib.metadata as md, platform, sys, torch
def v(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"
p = torch.cuda.get_device_properties(0)
print(f"# {sys.argv[1]}\n")
print(f"- device: {p.name} ({p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}), CUDA {torch.version.cuda}")
print(f"- torch {torch.__version__}, triton {v('triton')}, transformers {v('transformers')}, "
      f"liger-kernel {v('liger-kernel')}, flash-attn {v('flash-attn')}, python {platform.python_version()}")
print(f"- command: `{sys.argv[2]}` (from scripts/gpu_check.sh)\n")
EOF
}

# run NAME CAP_SECONDS OUTPUT_MD REPORT_GLOB COMMAND...: OUTPUT_MD gets the header and the report the
# command wrote (REPORT_GLOB), or the tail of its output when it wrote none (failed or capped)
FAILED=0
run() {
  local name=$1 cap=$2 out=$3 report=$4; shift 4
  local log="$LOGS/$name.log" t0 rc found
  t0=$(date +%s)
  echo "gpu_check: $name (cap ${cap}s)"
  timeout "$cap" "$@" >"$log" 2>&1
  rc=$?
  found=$(compgen -G "$report" | head -n 1)
  {
    header "$name" "$*"
    echo "- wall time: $(( $(date +%s) - t0 )) s, exit status $rc$([ $rc -eq 124 ] && echo " (stopped at the ${cap}s cap)")"
    echo
    if [ -n "$found" ]; then cat "$found"; else echo '```'; tail -n 60 "$log"; echo '```'; fi
  } >"$out"
  # a failing test or a crashing benchmark fails the check; a benchmark stopped at its cap does not
  if [ $rc -ne 0 ] && { [ "$name" = tests ] || [ $rc -ne 124 ]; }; then FAILED=1; fi
  tail -n 3 "$log"
}

# ---------------------------------------------------------------------------- tests
# the gpu-marked tests, and the ops' own tests, whose Triton path runs on CUDA when there is one
TESTS="tests/test_gpu.py tests/test_ops_logps.py tests/test_loss.py tests/test_ops_advantages.py
tests/test_fused_linear.py tests/test_fused_linear_loss.py tests/test_ops_paged_attention.py"
run tests 210 "$RESULTS/tests_gpu.md" "$LOGS/none" "$PY" -m pytest -q -rs -p no:cacheprovider $TESTS

# ---------------------------------------------------------------------------- benchmarks
# (bench_code_reward.py and memory_fused_linear.py measure CPU-only paths: not run here)
# bench_loss: its GPU grid's V = 151936 column up to N = 32k (N = 131k alone needs 40 GB of logits
# per copy and would take the whole budget)
run loss 75 "$RESULTS/loss_gpu.md" "$LOGS/loss/loss_*.md" "$PY" benchmarks/bench_loss.py \
  --shapes 8192x32768,8192x151936,32768x151936 --out "$LOGS/loss"
run fused_linear 90 "$RESULTS/fused_linear_gpu.md" "$LOGS/fused_linear.md" \
  "$PY" benchmarks/bench_fused_linear.py --out "$LOGS/fused_linear.md"
run rollout 90 "$RESULTS/rollout_gpu.md" "$LOGS/rollout.md" "$PY" benchmarks/bench_rollout.py --device cuda \
  --dtype bfloat16 --preset qwen3-0.6b --new-tokens 1024 --repeats 2 --out "$LOGS/rollout"
run packed_forward 60 "$RESULTS/packed_forward_gpu.md" "$LOGS/packed_forward.md" \
  "$PY" benchmarks/bench_packed_forward.py --out "$LOGS/packed_forward.md"
run prefix_shared 60 "$RESULTS/prefix_shared_gpu.md" "$LOGS/prefix_shared.md" \
  "$PY" benchmarks/bench_prefix_shared.py --repeats 3 --out "$LOGS/prefix_shared.md"
run engine_memory 30 "$RESULTS/engine_memory_gpu.md" "$LOGS/engine_memory.md" \
  "$PY" benchmarks/memory_engine_dtype.py --out "$LOGS/engine_memory.md"

echo "gpu_check: done in $(( $(date +%s) - START )) s; reports in $RESULTS/*_gpu.md; logs in $LOGS"
exit $FAILED
