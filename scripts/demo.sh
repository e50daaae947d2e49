#!/usr/bin/env bash
# The main job: a small Pareto sweep on real Fashion-MNIST. Trains a ResNet-20 baseline (cached
# in runs/demo/ after the first run), computes activation statistics once on Ray actors, runs a
# few Optuna (NSGA-II) trials through Ray Tune, each pruning the shared baseline and recovering it
# with the config's recipe (reconstruction, BN recalibration, fine-tuning), logs everything to
# MLflow (sqlite in the run directory), prints the accuracy-vs-MACs Pareto front and the
# `mlflow ui` command to browse it.
# Extra arguments go to `prunesweep sweep` (e.g. --trials 12 --concurrency 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ps=.venv/bin/prunesweep
base=runs/demo/resnet20-fmnist.pt
if [ ! -f "$base" ]; then
  "$ps" train --model resnet20 --dataset fashion-mnist --epochs 2 --train-subset 30000 --out "$base"
else
  echo "using the cached baseline $base (delete it to retrain)"
fi
"$ps" sweep --config search_spaces/demo_fmnist.yaml --run-dir "runs/sweeps/demo-$(date +%Y%m%d-%H%M%S)" "$@"
