#!/usr/bin/env bash
# Everything only a GPU can check, in two stages that each fit one command on the GPU machine
# this project is lent (one H100, at most 10 minutes a command and about 15 minutes of device
# time in all, no package registry, at most 64 MiB carried with the checkout):
#
#   bash scripts/gpu_check.sh --plan            # the stages, their caps and what travels: last line JSON
#   bash scripts/gpu_check.sh --stage 1 [WHEEL_DIR]   # correctness, <= 240 s
#   bash scripts/gpu_check.sh --stage 2 [WHEEL_DIR]   # benchmarks, <= 240 s
#
# Stage 1 (correctness): tests/test_gpu.py (every engine backend's real kernels against HF
# generate, CUDA graphs of the decode step against the eager step, the custom ops under
# torch.compile on CUDA, FSDP2 on one nccl rank, the memory plan against CUDA's measured peaks,
# the trainer in bf16 / fp16, resume) and the ops' own tests, whose Triton path runs on CUDA
# against float64 (one pytest run over 14 processes: the first launch of each Triton kernel
# compiles it, CPU work the 16 cores share).
# Stage 2 (benchmarks, each against its competitor in the same run): the loss vs Liger, the
# fused-linear loss vs Liger (both Triton backward paths: the measurement that chooses between
# them), the roll-out engine vs HF generate, one training step vs TRL's GRPOTrainer.
# Reports: benchmarks/results/*_gpu.md (device, versions, command, status); commit them.
#
# WHEEL_DIR (default .whl): what the GPU image lacks, as wheels (`scripts/collect_gpu_wheels.sh`
# fetches them on a machine with a registry; about 3 MiB). The image keeps its CUDA torch,
# triton, transformers, peft, pandas, pyarrow, tensorboard and pytest-xdist; flash-attn is
# optional (a wheel built for that torch/CUDA/Python may be dropped in WHEEL_DIR; without it its
# checks are skipped with that reason). With the device tool: carry WHEEL_DIR
# (`carry: [".whl"]`), one stage per `run`, timeout_s 300.
#
# Status of each step: passed, failed, capped (stopped at its cap: the report keeps what it
# printed) or skipped (no time left in the stage). Exit status: 1 without CUDA, when the
# environment cannot be prepared, a test fails or a benchmark crashes; 3 when no test failed but
# the test run was capped (incomplete); 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

STAGE_CAP=240  # seconds per stage (<= 4.5 min with the set-up and the transfer), both stages: 480
# name|cap seconds|what (one line per step; the stage is the first field)
STEPS='1|tests|225|tests/test_gpu.py and the ops tests on CUDA against float64
2|loss|50|bench_loss.py: G2RPOLoss (Triton) vs Liger vs compiled, V = 151936
2|fused_linear|60|bench_fused_linear.py: ours (chunked backward), ours_tiles, Liger, eager, compiled
2|rollout|60|bench_rollout.py: the engine vs HF generate, Qwen3-0.6B shapes, bf16
2|e2e_vs_trl|55|e2e_vs_trl.py: one training step vs TRL GRPOTrainer'

MODE=${1:-}
case "$MODE" in
  --plan)
    WHEELS=${2:-.whl}
    python3 - "$STAGE_CAP" "$STEPS" "$WHEELS" <<'EOF'
import json, os, subprocess, sys
cap, steps, wheels = int(sys.argv[1]), sys.argv[2], sys.argv[3]
stages = {}
for line in steps.strip().splitlines():
    stage, name, seconds, what = line.split("|", 3)
    stages.setdefault(int(stage), []).append({"name": name, "cap_s": int(seconds), "what": what})
# what travels with `run`: tracked and untracked-not-ignored files, plus the carried wheels
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True,
                       check=True).stdout.decode().split("\0")
size = sum(os.path.getsize(f) for f in files if f and os.path.isfile(f))
wheel_files = [os.path.join(wheels, f) for f in os.listdir(wheels)] if os.path.isdir(wheels) else []
wheel_size = sum(os.path.getsize(f) for f in wheel_files if os.path.isfile(f))
plan = {"stages": [{"stage": k, "name": "correctness" if k == 1 else "benchmarks", "time_cap_s": cap,
                    "command": f"bash scripts/gpu_check.sh --stage {k} {wheels}", "steps": v}
                   for k, v in sorted(stages.items())],
        "time_cap_s": cap * len(stages), "carry_mib": round((size + wheel_size) / 2**20, 2),
        "tree_mib": round(size / 2**20, 2), "wheels_mib": round(wheel_size / 2**20, 2), "wheel_dir": wheels}
for stage in plan["stages"]:
    print(f"stage {stage['stage']} ({stage['name']}, cap {stage['time_cap_s']} s): "
          + ", ".join(f"{s['name']} {s['cap_s']} s" for s in stage["steps"]))
print(f"carried: {plan['tree_mib']} MiB of checkout + {plan['wheels_mib']} MiB of wheels ({wheels})")
print(json.dumps(plan))
EOF
    exit $? ;;
  --stage) STAGE=${2:-}; WHEELS=${3:-.whl} ;;
  *) echo "usage: scripts/gpu_check.sh --plan [WHEEL_DIR] | --stage 1|2 [WHEEL_DIR]" >&2; exit 2 ;;
esac
if [ "$STAGE" != 1 ] && [ "$STAGE" != 2 ]; then
  echo "gpu_check: --stage must be 1 or 2, got '$STAGE'" >&2; exit 2
fi
START=$(date +%s)
RESULTS=benchmarks/results
LOGS=$(mktemp -d)

if ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False, or no torch): run it on a GPU machine" >&2
  exit 1
fi

# ---------------------------------------------------------------------------- environment
# The image's own Python (its CUDA torch, triton, transformers, ...; a venv made from that
# interpreter, itself a venv, would not see them), the carried wheels without their
# dependencies in a target directory on PYTHONPATH (the image has the dependencies), and
# g2rpo_fast itself as an editable install without its C++ CPU kernels (G2RPO_FAST_NATIVE=0:
# they serve the CPU only; their tests skip, saying so).
PY=python3
SITE=/tmp/g2rpo_gpu_site
PIP=("$PY" -m pip install --disable-pip-version-check -q --no-index --no-deps --no-build-isolation)
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "${PIP[@]}" --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "gpu_check: cannot install the wheels of $WHEELS" >&2; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_check: no wheels in $WHEELS (scripts/collect_gpu_wheels.sh): what needs datasets, trl, liger-kernel or math-verify fails or skips"
fi
if ! "$PY" -c 'import g2rpo_fast.kernels' 2>/dev/null; then
  G2RPO_FAST_NATIVE=0 "${PIP[@]}" -e . >"$LOGS/install.log" 2>&1 \
    || { echo "gpu_check: cannot install g2rpo_fast itself" >&2; tail -n 20 "$LOGS/install.log" >&2; exit 1; }
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
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
      f"liger-kernel {v('liger-kernel')}, trl {v('trl')}, flash-attn {v('flash-attn')}, python {platform.python_version()}")
print(f"- command: `{sys.argv[2]}` (from scripts/gpu_check.sh)\n")
EOF
}

# run KIND NAME CAP OUTPUT_MD REPORT_GLOB COMMAND...: the cap is cut to what is left of the stage;
# at the cap the command gets SIGINT (pytest prints its results so far), SIGKILL 10 s later.
FAILED=0
TESTS_INCOMPLETE=0
run() {
  local kind=$1 name=$2 cap=$3 out=$4 report=$5; shift 5
  local log="$LOGS/$name.log" t0 rc found status left
  t0=$(date +%s)
  left=$(( STAGE_CAP - (t0 - START) - 12 ))
  if [ "$left" -lt "$cap" ]; then cap=$left; fi
  if [ "$cap" -lt 10 ]; then
    status="skipped (no time left in the stage's ${STAGE_CAP} s)"
    { header "$name" "$*"; echo "- status: $status"; } >"$out"
    echo "gpu_check: $name: $status"
    if [ "$kind" = tests ]; then TESTS_INCOMPLETE=1; fi
    return
  fi
  echo "gpu_check: $name (cap ${cap}s)"
  timeout -s INT -k 10 "$cap" "$@" >"$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then status=passed
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="capped (stopped at the ${cap}s cap)"
  else status="failed (exit status $rc)"; fi
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

cap_of() { echo "$STEPS" | awk -F'|' -v s="$1" -v n="$2" '$1 == s && $2 == n {print $3}'; }

if [ "$STAGE" = 1 ]; then
  TESTS=(tests/test_gpu.py tests/test_ops_logps.py tests/test_loss.py tests/test_ops_advantages.py
         tests/test_ops_fused_linear.py tests/test_fused_linear_loss.py tests/test_ops_paged_attention.py
         tests/test_kernel_launch_device.py)
  run tests tests "$(cap_of 1 tests)" "$RESULTS/tests_gpu.md" "$LOGS/none" \
    "$PY" -m pytest -q -rs -p no:cacheprovider -n 14 "${TESTS[@]}"
else
  run bench loss "$(cap_of 2 loss)" "$RESULTS/loss_gpu.md" "$LOGS/loss/loss_*.md" "$PY" benchmarks/bench_loss.py \
    --shapes 8192x151936,32768x151936 --out "$LOGS/loss"
  run bench fused_linear "$(cap_of 2 fused_linear)" "$RESULTS/fused_linear_gpu.md" "$LOGS/fused_linear.md" \
    "$PY" benchmarks/bench_fused_linear.py --shapes 16384x2048x151936,65536x2048x151936 --reps 5 \
    --out "$LOGS/fused_linear.md"
  run bench rollout "$(cap_of 2 rollout)" "$RESULTS/rollout_gpu.md" "$LOGS/rollout.md" "$PY" benchmarks/bench_rollout.py \
    --device cuda --dtype bfloat16 --preset qwen3-0.6b --new-tokens 512 --repeats 2 --out "$LOGS/rollout"
  run bench e2e_vs_trl "$(cap_of 2 e2e_vs_trl)" "$RESULTS/e2e_vs_trl_gpu.md" "$LOGS/e2e_vs_trl.md" \
    "$PY" benchmarks/e2e_vs_trl.py --steps 4 --warmup 1 --runs 1 --out "$LOGS/e2e_vs_trl.md"
fi

echo "gpu_check: stage $STAGE done in $(( $(date +%s) - START )) s; reports in $RESULTS/*_gpu.md; logs in $LOGS"
if [ $FAILED -ne 0 ]; then exit 1; fi
if [ $TESTS_INCOMPLETE -ne 0 ]; then
  echo "gpu_check: the test run was capped: incomplete, not failed (see $RESULTS/tests_gpu.md)" >&2
  exit 3
fi
exit 0
