#!/usr/bin/env bash
# The GPU path on a GPU, as one prepared run with a global time limit (GPU_CHECK_SECONDS, default
# 480): the environment (nvidia-smi, torch's view of the card), benchmarks/gpu.py at small sizes
# (statistics, Shapley, a fine-tune epoch in float32 and bf16), the 2-trial sweep with
# gpus_per_trial 0.5 on a baseline the script trains itself, and benchmarks/scaling.py
# --device cuda --amp bf16 (ResNet-18 and MobileNetV2 at 224 px). Every step runs under its own
# `timeout`, its exit status is logged, and a failing step does not stop the next.
#
# Results go to $OUT when it is set, else benchmarks/results/: gpu_check.log (every step's output
# and exit status), gpu_env.json, gpu.json, gpu_sweep.json, scaling_cuda.json.
#
# Python: .venv/bin/python when it imports torch and torch_pruning; else scripts/setup.sh when the
# package index is reachable; else python3 with this checkout on PYTHONPATH, plus the wheels in
# .whl/ when there are any (installed offline into a temporary folder). Exit status: 0 when every
# step passed, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: >"$LOG"
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-480}))
FAILED=()
export PYTHONUNBUFFERED=1

say() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT COMMAND...: COMMAND under `timeout` (LIMIT seconds, or what is left of the
# global limit when that is less); its output and exit status go to the log
step() {
  local name=$1 limit=$2 left rc started=$SECONDS
  shift 2
  left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 10 ]; then
    say "== $name: skipped (the global time limit is spent)"
    FAILED+=("$name")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) say "== $name: exit status 0 after $((SECONDS - started)) s" ;;
    124 | 137) say "== $name: stopped at its time limit (${limit} s), exit status $rc"; FAILED+=("$name") ;;
    *) say "== $name: exit status $rc after $((SECONDS - started)) s"; FAILED+=("$name") ;;
  esac
}

skip() { say "== $1: skipped ($2)"; FAILED+=("$1"); }

choose_python() {
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, torch_pruning" 2>/dev/null; then
    PY=.venv/bin/python
    return
  fi
  local probe
  probe=$(mktemp -d)
  # setup.sh installs from the package index: a small package of ours shows whether it is reachable
  if python3 -m pip download --quiet --no-cache-dir --no-deps --retries 0 --timeout 5 -d "$probe" torch-pruning \
    >/dev/null 2>&1; then
    step setup 300 bash scripts/setup.sh
    PY=.venv/bin/python
    [ -x "$PY" ] || PY=python3
  else
    say "setup: the package index is unreachable, so scripts/setup.sh (a .venv with pip install -e .[test,timm]) cannot run offline: using python3 with PYTHONPATH=.$(ls .whl/*.whl >/dev/null 2>&1 && echo ' and the wheels in .whl/')"
    PY=python3
  fi
  rm -rf "$probe"
  if ls .whl/*.whl >/dev/null 2>&1; then
    step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/prunesweep-site .whl/*.whl
    export PYTHONPATH="/tmp/prunesweep-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
}

# missing MODULE...: the modules $PY cannot import, space-separated (empty: none)
missing() {
  "$PY" - "$@" <<'EOF' 2>/dev/null || echo "$*"
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}

say "GPU check of $(git rev-parse --short HEAD 2>/dev/null || echo 'a copy without git history'), $(date -u +%FT%TZ), results in $RESULTS"
say "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG" || say "nvidia-smi: not available"
choose_python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
say "python: $PY"
step environment 60 "$PY" -c "
import json, os, platform, sys, torch
cuda = torch.cuda.is_available()
facts = {'python': sys.version.split()[0], 'torch': torch.__version__, 'cuda': torch.version.cuda,
         'cuda_available': cuda, 'device_name': torch.cuda.get_device_name(0) if cuda else None,
         'device_count': torch.cuda.device_count(), 'cpus': os.cpu_count(), 'platform': platform.platform()}
open(sys.argv[1], 'w').write(json.dumps(facts, indent=2) + '\n')
print(json.dumps(facts))
" "$RESULTS/gpu_env.json"

CORE=$(missing torch torchvision torch_pruning numpy yaml tqdm PIL)
SWEEP=$(missing ray optuna mlflow)
if [ -n "$CORE" ]; then
  say "python $PY lacks $CORE: the benchmarks cannot run (carry their wheels in .whl/)"
  skip gpu "missing $CORE"
  skip sweep "missing $CORE"
  skip scaling "missing $CORE"
else
  step gpu 150 "$PY" benchmarks/gpu.py --images 512 --train-images 2048 --permutations 16 --skip sweep \
    --run-dir /tmp/prunesweep-gpu --out "$RESULTS/gpu.json"
  if [ -n "$SWEEP" ]; then
    skip sweep "python $PY lacks $SWEEP (ray[tune], optuna, mlflow: carry their wheels in .whl/)"
  else
    step sweep 200 "$PY" benchmarks/gpu.py --skip statistics shapley finetune --trials 2 --concurrency 2 \
      --gpus-per-trial 0.5 --no-cpu-sweep --run-dir /tmp/prunesweep-gpu --out "$RESULTS/gpu_sweep.json"
  fi
  step scaling 200 "$PY" benchmarks/scaling.py --device cuda --amp bf16 --models resnet18 mobilenet_v2 \
    --image-size 224 --calibration-images 64 --batch-size 64 --threads 8 --repeats 3 --stage-timeout 20 \
    --model-timeout 90 --out "$RESULTS/scaling_cuda.json"
fi

if [ ${#FAILED[@]} -eq 0 ]; then
  say "GPU check: every step passed"
  exit 0
fi
say "GPU check: failed or skipped: ${FAILED[*]}"
exit 1
