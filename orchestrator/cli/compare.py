"""``prunesweep compare``: a criterion comparison study (``--config study.yaml``), its resume and
its report; or, from flags, a one-checkpoint, uniform-ratio, one-recipe study."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from orchestrator.cli.options import (
    add_image_size, add_model_source, add_output, add_ray_network, add_task_options, add_trial_device, trial_gpus,
)
from orchestrator.cli.recipe_args import add_recipe_arguments, recipe_from_args
from orchestrator.cli.result import CommandResult, experiment_result
from pruning.errors import InputError

__all__ = ["add_parser", "run"]

#: flags that build the study themselves: refused with --config, --resume and --report
_STUDY_FLAGS = ("checkpoint", "model", "task", "task_kwargs", "dataset", "criteria", "flops_reductions", "seeds", "strategy",
                "calibration_images", "batch_size", "data_root", "test_subset", "image_size", "cpus_per_trial", "experiment",
                "name")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="criterion comparison study as Tune trials: intervals, paired tests, ranks, MLflow")
    add_output(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--config", default=None, help="study YAML (see studies/criteria_benchmark.yaml)")
    mode.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the interrupted study in RUN_DIR")
    mode.add_argument("--report", default=None, metavar="RUN_DIR", help="print the study's tables again, from MLflow")
    p.add_argument("--verbose", action="store_true", help="Ray Tune's status tables too (default: one progress bar)")
    p.add_argument("--address", default=None, help="Ray cluster address to join (default: start Ray locally)")
    add_ray_network(p)
    p.add_argument("--concurrency", type=int, default=None, help="cells at once (default: 2; overrides the config)")
    p.add_argument("--tracking-uri", default=None, help="default: sqlite:////RUN_DIR/mlflow.db")
    p.add_argument("--run-dir", default=None, help="default: runs/studies/<name>")
    add_trial_device(p, "execution.gpus_per_trial, 0 unless set")
    flags = p.add_argument_group("a study from flags (instead of --config): one checkpoint, uniform ratios, one recipe")
    add_model_source(flags, required=False)
    add_task_options(flags, default="the checkpoint's, else classification")
    flags.add_argument("--dataset", default=None, help="the dataset of --model (default: fashion-mnist)")
    flags.add_argument("--criteria", nargs="+", default=None, help="criteria to compare (see `prunesweep info`)")
    flags.add_argument("--flops-reductions", nargs="+", type=float, default=None, help="fractions of MACs to remove")
    flags.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 0)")
    flags.add_argument("--strategy", default=None, help="full or inner (default: full)")
    flags.add_argument("--calibration-images", type=int, default=None, help="calibration images (default: 512)")
    flags.add_argument("--batch-size", type=int, default=None, help="batch size of the calibration batches (default: 128)")
    flags.add_argument("--data-root", default=None)
    flags.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    add_image_size(flags)
    flags.add_argument("--cpus-per-trial", type=float, default=None)
    flags.add_argument("--experiment", default=None, help="MLflow experiment (default: prunesweep-compare)")
    flags.add_argument("--name", default=None, help="name of the study (default: compare-<time>)")
    add_recipe_arguments(p)
    return p


def _flag_study(args: argparse.Namespace) -> dict:
    """The study of the flags: --checkpoint/--model (for --task) x --criteria x uniform x the recipe
    flags x --flops-reductions x --seeds; the reference is ``random`` where compared, else the first."""
    from orchestrator.cli.options import check_model_source, model_kwargs, task_kwargs
    from orchestrator.experiment.checks import recipe_section

    if args.checkpoint is None and args.model is None:
        raise InputError("give --config FILE.yaml, --resume/--report RUN_DIR, or --checkpoint/--model with --criteria")
    check_model_source(args)
    if args.dataset is not None and args.model is None:
        raise InputError("--dataset goes with --model (a checkpoint records its dataset)")
    if not args.criteria or not args.flops_reductions:
        raise InputError("a study from flags needs --criteria and --flops-reductions")
    name = args.name or time.strftime("compare-%Y%m%d-%H%M%S")
    baseline = {"checkpoint": args.checkpoint} if args.checkpoint else {
        "model": args.model, "weights": args.weights, "model_kwargs": model_kwargs(args),
        "dataset": args.dataset or "fashion-mnist"}
    data = {k: v for k, v in {"calibration_images": args.calibration_images, "batch_size": args.batch_size,
                              "data_root": args.data_root, "test_subset": args.test_subset,
                              "image_size": args.image_size}.items() if v is not None}
    kwargs = task_kwargs(args)  # refuses --task-kwargs without --task
    task = {"task": args.task, "task_kwargs": kwargs} if args.task is not None else {}
    return {
        **task,
        "name": name, "checkpoints": [{k: v for k, v in baseline.items() if v is not None}],
        "criteria": list(args.criteria), "ratios": ["uniform"], "recipes": {"default": recipe_section(recipe_from_args(args))},
        "flops_reductions": list(args.flops_reductions), "seeds": list(args.seeds or [0]),
        "pruning": {"strategy": args.strategy or "full"}, "data": data,
        "significance": {"reference": "random" if "random" in args.criteria else args.criteria[0]},
        "execution": {"cpus_per_trial": args.cpus_per_trial or 1, "concurrency": args.concurrency or 2},
        "tracking": {"uri": args.tracking_uri, "experiment": args.experiment or "prunesweep-compare"},
        "run_dir": args.run_dir or str(Path("runs", "studies", name)),
    }


def run(args: argparse.Namespace) -> CommandResult:
    from orchestrator.studies import StudyConfig, load_study_config, resume_study, run_study, study_report
    from orchestrator.experiment import ConfigError  # torch, Ray, MLflow: only when run

    progress = not args.quiet
    given = [f"--{k.replace('_', '-')}" for k in _STUDY_FLAGS if getattr(args, k, None) is not None]
    if args.resume or args.report:
        kept = given + [f"--{k.replace('_', '-')}" for k in ("concurrency", "tracking_uri", "run_dir", "gpus_per_trial")
                        if getattr(args, k, None) is not None]
        if kept:
            raise ConfigError("resume" if args.resume else "report",
                              f"a recorded study keeps its config: drop {', '.join(kept)}")
        result = (resume_study(args.resume, address=args.address, progress=progress, verbose=args.verbose)
                  if args.resume else study_report(args.report))
        return experiment_result(result)
    if args.config is not None:
        if given:
            raise ConfigError("config", f"the study file sets what {', '.join(given)} would: drop them")
        config = load_study_config(args.config, {"execution.concurrency": args.concurrency,
                                                 "tracking.uri": args.tracking_uri, "run_dir": args.run_dir})
    else:
        config = StudyConfig.from_dict(_flag_study(args))
    gpus = trial_gpus(args, config.execution.gpus_per_trial)
    if gpus != config.execution.gpus_per_trial:
        from dataclasses import replace

        config = replace(config, execution=replace(config.execution, gpus_per_trial=gpus))
    result = run_study(config, address=args.address, progress=progress, verbose=args.verbose)
    return experiment_result(result)
