"""``prunesweep compare``: a criterion x FLOPs target x seed grid as Tune trials, tabulated in MLflow."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from orchestrator.cli.options import add_model_source, add_output, add_ray_network, add_trial_device, trial_gpus
from orchestrator.cli.recipe_args import add_recipe_arguments, recipe_from_args
from orchestrator.cli.result import CommandResult
from pruning.errors import InputError

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="criterion x FLOPs target x seed grid as Tune trials, tabulated in MLflow")
    add_output(p)
    add_model_source(p)
    p.add_argument("--dataset", default=None, help="the dataset of --model (default: fashion-mnist)")
    p.add_argument("--criteria", nargs="+", required=True, help="criteria to compare (see `prunesweep info`)")
    p.add_argument("--flops-reductions", nargs="+", type=float, required=True, help="fractions of MACs to remove")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="seeds, each seeding a cell's criterion and recovery (default: 0)")
    p.add_argument("--strategy", default="full", help="full or inner (default: full)")
    p.add_argument("--calibration-images", type=int, default=512,
                   help="calibration images for statistics, criteria and reconstruction (default: 512)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size of calibration and recovery (default: 128)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    add_trial_device(p, "0")
    p.add_argument("--address", default=None, help="Ray cluster address to join (default: start Ray locally)")
    add_ray_network(p)
    p.add_argument("--tracking-uri", default=None, help="default: sqlite:////RUN_DIR/mlflow.db")
    p.add_argument("--experiment", default="prunesweep-compare", help="MLflow experiment (default: prunesweep-compare)")
    p.add_argument("--name", default=None, help="name of the comparison (default: compare-<time>)")
    p.add_argument("--run-dir", default=None, help="default: runs/compare/<name>")
    add_recipe_arguments(p)
    return p


def run(args: argparse.Namespace) -> CommandResult:
    from orchestrator.cli.options import check_model_source, model_kwargs
    from orchestrator.sweeps import CompareConfig, DataSettings, TrackingSettings, run_compare  # torch, Ray, MLflow: only when run
    from orchestrator.sweeps.model_settings import ModelSettings

    name = args.name or time.strftime("compare-%Y%m%d-%H%M%S")
    data = DataSettings.from_dict({"calibration_images": args.calibration_images, "batch_size": args.batch_size,
                                   "data_root": args.data_root, "test_subset": args.test_subset})
    run_dir = str(Path(args.run_dir).absolute()) if args.run_dir else str(Path("runs", "compare", name).absolute())
    tracking = TrackingSettings.from_dict({"uri": args.tracking_uri, "experiment": args.experiment})
    check_model_source(args)
    if args.dataset is not None and args.model is None:
        raise InputError("--dataset goes with --model (a checkpoint records its dataset)")
    source: dict = {"checkpoint": str(Path(args.checkpoint).absolute())} if args.checkpoint else {"model": ModelSettings(
        args.model, weights=str(Path(args.weights).absolute()) if args.weights else None, kwargs=model_kwargs(args),
        dataset=args.dataset or "fashion-mnist")}
    config = CompareConfig(
        **source, criteria=tuple(args.criteria),
        flops_reductions=tuple(args.flops_reductions), seeds=tuple(args.seeds), run_dir=run_dir,
        strategy=args.strategy, recipe=recipe_from_args(args), data=data, concurrency=args.concurrency,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=trial_gpus(args, 0.0), tracking=tracking, name=name,
    )
    result = run_compare(config, address=args.address, progress=not args.quiet)
    return CommandResult(result.text(), result.to_dict())
