#!/usr/bin/env bash
# The main job: train ResNet-20 on real Fashion-MNIST (cached after the first run), prune it
# to 50% fewer FLOPs, recalibrate BN, fine-tune briefly and print the before/after table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ps=.venv/bin/prunesweep
base=runs/demo/resnet20-fmnist.pt
if [ ! -f "$base" ]; then
  "$ps" train --model resnet20 --dataset fashion-mnist --epochs 3 --out "$base"
else
  echo "using the cached baseline $base (delete it to retrain)"
fi
"$ps" prune --checkpoint "$base" --criterion "${CRITERION:-l1}" --flops-reduction 0.5 \
  --finetune-epochs 1 --finetune-subset 15000 --out runs/demo/resnet20-pruned.pt "$@"
