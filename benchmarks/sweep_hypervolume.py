"""Same trial budget, different search spaces: hypervolume of the accuracy-vs-MACs front.

Runs four sweeps on one baseline — ``uniform``, ``per_layer`` and ``concentration`` with NSGA-II,
and ``concentration`` with random sampling — each with the same number of trials, criterion
(l1), recovery recipe (the default reconstruction and BN recalibration, then one fine-tuning
epoch on a training subset) and seed. Reports each front's hypervolume (reference: accuracy 0,
the baseline's MACs; accuracy on the calibration split, MACs as a fraction of the baseline's),
and across all finished trials the Spearman correlation between the accuracy before fine-tuning
(``bn_accuracy``) and the accuracy after it.

    python benchmarks/sweep_hypervolume.py --checkpoint runs/bench/resnet20-fmnist.pt --trials 12 \
        --out benchmarks/results/sweep_hypervolume.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from scipy.stats import spearmanr

from orchestrator.sweeps import SweepConfig, run_sweep
from pruning.utils import atomic_write

SPACES = {
    "uniform": ("uniform", "nsga2", {"flops_reduction": [0.2, 0.8]}),
    "per_layer": ("per_layer", "nsga2", {"layer_ratio": [0.0, 0.8]}),
    "concentration": ("concentration", "nsga2", {"flops_reduction": [0.2, 0.8], "alpha": [0.0, 1.0],
                                                  "temperature": [0.0, 3.0]}),
    "concentration-random": ("concentration", "random", {"flops_reduction": [0.2, 0.8], "alpha": [0.0, 1.0],
                                                          "temperature": [0.0, 3.0]}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--finetune-subset", type=int, default=3000)
    parser.add_argument("--run-root", default="runs/bench/sweeps")
    parser.add_argument("--spaces", nargs="+", default=list(SPACES))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows, pairs = [], []
    for label in args.spaces:
        space, sampler, options = SPACES[label]
        run_dir = Path(args.run_root) / label
        shutil.rmtree(run_dir, ignore_errors=True)
        config = SweepConfig.from_dict({
            "name": f"bench-{label}", "checkpoint": args.checkpoint, "run_dir": str(run_dir),
            "data": {"calibration_images": 512},
            "recipe": {"finetune_subset": args.finetune_subset, "bn_batches": 20},
            "space": {"name": space, "criteria": ["l1"], "finetune_epochs": [1, 1],
                      "finetune_lr": [0.01, 0.01], "weight_decay": [5e-4, 5e-4], "flops_bounds": [0.1, 0.9], **options},
            "sweep": {"trials": args.trials, "concurrency": args.concurrency, "sampler": sampler, "seed": 0},
        })
        started = time.perf_counter()
        result = run_sweep(config, progress=False)
        seconds = time.perf_counter() - started
        base_macs = result.baseline["macs"]
        points = [{"accuracy": t.metrics["accuracy"], "macs": t.metrics["macs"] / base_macs,
                   "feasible": bool(t.metrics.get("feasible", 1.0))}
                  for t in result.trials if t.status == "FINISHED" and "accuracy" in t.metrics]
        # the sweep's own hypervolume has the baseline's MACs as reference: per unit of baseline MACs
        volume = result.hypervolume / base_macs if result.hypervolume is not None else None
        pairs += [(t.metrics["bn_accuracy"], t.metrics["accuracy"]) for t in result.trials
                  if t.status == "FINISHED" and t.metrics.get("feasible", 1.0) and "bn_accuracy" in t.metrics]
        row = {"space": label, "sampler": sampler, "trials": len(result.trials), "finished": len(points),
               "feasible": sum(p["feasible"] for p in points), "front_size": len(result.front),
               "hypervolume": volume, "seconds": seconds,
               "best_accuracy_at_50pct": max((p["accuracy"] for p in points if p["feasible"] and p["macs"] <= 0.5),
                                             default=None)}
        rows.append(row)
        print(json.dumps(row))
    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic if len(pairs) > 2 else None
    result = {"settings": vars(args), "rows": rows, "bn_vs_finetuned_spearman": rho, "pairs": len(pairs)}
    print(json.dumps({"bn_vs_finetuned_spearman": rho, "pairs": len(pairs)}))
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
