#!/usr/bin/env bash
# One command for a GPU machine without internet: check everything only a GPU can check, and
# measure every benchmark at its GPU shapes. Results: benchmarks/results/*_gpu.md (device,
# versions, command, status in each). Budget: the whole script stops within GPU_CHECK_BUDGET
# seconds (default 570, for a 10-minute slot on one H100): each step has its own cap, cut to what
# is left of the budget.
#
#   scripts/gpu_check.sh [WHEEL_DIR]        # WHEEL_DIR default: ./wheels
#
# Tests: two pytest runs, each spread over several processes (pytest-xdist): the first launch of
# every Triton kernel compiles it (a cold cache: ~1-5 s per kernel variant, hundreds of
# variants over the ops' tests), which is CPU work that the 16 cores do in parallel. The ops'
# tests (cap 240 s) and the GPU-only tests of tests/test_gpu.py (cap 200 s) run separately, so
# a slow one does not starve the other and each gets its own report.
#
# Environment: keeps the machine's CUDA torch (and the triton that came with it): the venv
# .venv-gpu sees the system site-packages, and everything else is installed offline from
# WHEEL_DIR (`pip install --no-index --find-links`). Packages already installed at a version
# that satisfies the requirement are not reinstalled, so a machine that has them needs no
# wheels at all.
#
# Collecting the wheels on a CPU machine with internet (match the GPU machine's Python and
# platform; torch, triton and the nvidia-* packages are NOT needed):
#   pip download -d wheels --only-binary=:all: --python-version 3.11 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#       "transformers>=4.53.1" "datasets>=2.19" numpy pyyaml tqdm "math-verify>=0.7" matplotlib \
#       "liger-kernel>=0.6" "trl>=0.20" "pytest>=8" pytest-xdist
#   pip download -d wheels --no-deps --only-binary=:all: --python-version 3.11 \
#       --platform manylinux2014_x86_64 setuptools wheel
# pip download also fetches their dependencies; if it insists on torch, add `--no-deps` and
# list the dependencies it reports missing instead. flash-attn is optional: its wheel must be
# built for the machine's torch, CUDA and Python (pick the matching prebuilt wheel from
# flash-attn's GitHub releases and drop it in WHEEL_DIR); without it (or with one that does not
# import) the flash_attn checks are skipped with that reason. Then carry WHEEL_DIR to the GPU
# machine with the checkout.
#
# Status of each step (in its report and on stdout): passed, failed, capped (stopped at its
# cap: the report keeps what it printed, for pytest the tests run so far) or skipped (no budget
# left). Exit status: 1 without CUDA (it says so), when the environment cannot be prepared,
# when a test fails or a benchmark crashes; 3 when no test failed but a test run was capped
# or skipped (incomplete: nothing is claimed for the tests it did not reach); 0 otherwise. A
# capped or skipped benchmark is reported as such, never as failed.
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
import importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:  # a bare venv: pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement
reqs = ["transformers>=4.53.1", "datasets>=2.19", "pyyaml", "tqdm", "math-verify>=0.7", "matplotlib",
        "liger-kernel>=0.6", "trl>=0.20", "pytest>=8", "pytest-xdist"]
def satisfied(req):
    r = Requirement(req)
    try:
        return r.specifier.contains(md.version(r.name), prereleases=True)
    except md.PackageNotFoundError:
        return False
print("\n".join(req for req in reqs if not satisfied(req)))
EOF
)
if [ -n "$missing" ]; then
  mapfile -t wanted <<<"$missing"
  echo "gpu_check: installing from $WHEELS: ${wanted[*]}"
  "${PIP[@]}" "${wanted[@]}" || { echo "gpu_check: cannot install ${wanted[*]} from $WHEELS (see the header)" >&2; exit 1; }
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

# run KIND NAME CAP_SECONDS OUTPUT_MD REPORT_GLOB COMMAND...: KIND is "tests" or "bench". OUTPUT_MD gets
# the header, the status and the report the command wrote (REPORT_GLOB), or the tail of its
# output when it wrote none (failed, capped, or pytest). The cap is cut to what is left of the
# budget. At the cap the command gets SIGINT (pytest then prints the results so far), SIGKILL
# 15 s later.
BUDGET=${GPU_CHECK_BUDGET:-570}
FAILED=0
TESTS_INCOMPLETE=0
run() {
  local kind=$1 name=$2 cap=$3 out=$4 report=$5; shift 5
  local log="$LOGS/$name.log" t0 rc found status left
  t0=$(date +%s)
  left=$(( BUDGET - (t0 - START) - 20 ))  # 20 s: the SIGKILL grace and the report
  if [ "$left" -lt "$cap" ]; then cap=$left; fi
  if [ "$cap" -lt 10 ]; then
    status="skipped (no time left in the ${BUDGET}s budget)"
    { header "$name" "$*"; echo "- status: $status"; } >"$out"
    echo "gpu_check: $name: $status"
    if [ "$kind" = tests ]; then TESTS_INCOMPLETE=1; fi
    return
  fi
  echo "gpu_check: $name (cap ${cap}s)"
  timeout -s INT -k 15 "$cap" "$@" >"$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then status=passed
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="capped (stopped at the ${cap}s cap)"
  else status="failed (exit status $rc)"; fi
  # a capped pytest run still prints its results so far: a test that failed before the cap fails the check
  if [ "$kind" = tests ] && [[ $status == capped* ]] && tail -n 5 "$log" | grep -Eq '[0-9]+ (failed|errors?)'; then
    status="$status, with failures"
  fi
  case $status in
    *failures|failed*) FAILED=1 ;;
    capped*) if [ "$kind" = tests ]; then TESTS_INCOMPLETE=1; fi ;;
  esac
  found=$(compgen -G "$report" | head -n 1)
  {
    header "$name" "$*"
    echo "- status: $status; wall time $(( $(date +%s) - t0 )) s"
    echo
    if [ -n "$found" ]; then cat "$found"; else echo '```'; tail -n 80 "$log"; echo '```'; fi
  } >"$out"
  echo "gpu_check: $name: $status"
  tail -n 3 "$log"
}

# ---------------------------------------------------------------------------- tests
# the ops' own tests, whose Triton path runs on CUDA when there is one, then the gpu-marked tests
OPS_TESTS=(tests/test_ops_logps.py tests/test_loss.py tests/test_ops_advantages.py tests/test_ops_fused_linear.py
           tests/test_fused_linear_loss.py tests/test_ops_paged_attention.py tests/test_kernel_launch_device.py)
PYTEST=("$PY" -m pytest -q -rs -p no:cacheprovider)
run tests tests_ops 240 "$RESULTS/tests_ops_gpu.md" "$LOGS/none" "${PYTEST[@]}" -n 8 "${OPS_TESTS[@]}"
run tests tests_gpu 200 "$RESULTS/tests_gpu.md" "$LOGS/none" "${PYTEST[@]}" -n 4 tests/test_gpu.py

# ---------------------------------------------------------------------------- benchmarks
# (bench_code_reward.py and memory_fused_linear.py measure CPU-only paths: not run here)
# bench_loss: its GPU grid's V = 151936 column up to N = 32k (N = 131k alone needs 40 GB of logits
# per copy and would take the whole budget)
run bench loss 75 "$RESULTS/loss_gpu.md" "$LOGS/loss/loss_*.md" "$PY" benchmarks/bench_loss.py \
  --shapes 8192x32768,8192x151936,32768x151936 --out "$LOGS/loss"
run bench fused_linear 90 "$RESULTS/fused_linear_gpu.md" "$LOGS/fused_linear.md" \
  "$PY" benchmarks/bench_fused_linear.py --out "$LOGS/fused_linear.md"
run bench rollout 90 "$RESULTS/rollout_gpu.md" "$LOGS/rollout.md" "$PY" benchmarks/bench_rollout.py --device cuda \
  --dtype bfloat16 --preset qwen3-0.6b --new-tokens 1024 --repeats 2 --out "$LOGS/rollout"
run bench packed_forward 60 "$RESULTS/packed_forward_gpu.md" "$LOGS/packed_forward.md" \
  "$PY" benchmarks/bench_packed_forward.py --out "$LOGS/packed_forward.md"
run bench prefix_shared 60 "$RESULTS/prefix_shared_gpu.md" "$LOGS/prefix_shared.md" \
  "$PY" benchmarks/bench_prefix_shared.py --repeats 3 --out "$LOGS/prefix_shared.md"
run bench engine_memory 30 "$RESULTS/engine_memory_gpu.md" "$LOGS/engine_memory.md" \
  "$PY" benchmarks/memory_engine_dtype.py --out "$LOGS/engine_memory.md"

echo "gpu_check: done in $(( $(date +%s) - START )) s; reports in $RESULTS/*_gpu.md; logs in $LOGS"
if [ $FAILED -ne 0 ]; then exit 1; fi
if [ $TESTS_INCOMPLETE -ne 0 ]; then
  echo "gpu_check: a test run was capped or skipped: incomplete, not failed (see $RESULTS/tests_*_gpu.md)" >&2
  exit 3
fi
exit 0
