"""``prunesweep sweep``: search the accuracy-vs-FLOPs Pareto front (Ray Tune + Optuna, MLflow)."""
from __future__ import annotations

import argparse
from dataclasses import replace

from orchestrator.cli.result import CommandResult, experiment_result
from orchestrator.cli.options import add_output, add_ray_network, add_trial_device, trial_gpus


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="search the accuracy-vs-FLOPs Pareto front (Ray Tune + Optuna, MLflow)")
    add_output(p)
    p.add_argument("--config", default=None, help="sweep config YAML (see search_spaces/resnet20_fmnist.yaml)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the interrupted sweep in RUN_DIR")
    p.add_argument("--trials", type=int, default=None, help="override sweep.trials")
    p.add_argument("--concurrency", type=int, default=None, help="override sweep.concurrency")
    p.add_argument("--address", default=None, help="Ray cluster address to join (default: start Ray locally)")
    add_ray_network(p)
    p.add_argument("--tracking-uri", default=None, help="override tracking.uri (default: sqlite:////RUN_DIR/mlflow.db)")
    p.add_argument("--run-dir", default=None, help="override run_dir (default: runs/sweeps/<name>)")
    p.add_argument("--verbose", action="store_true",
                   help="Ray Tune's own status tables too (default: one line per ended trial on stderr)")
    add_trial_device(p, "sweep.gpus_per_trial, 0 unless set")
    return p


def run(args: argparse.Namespace) -> CommandResult:
    # torch, Ray, MLflow: only when run
    from orchestrator.experiment import ConfigError
    from orchestrator.sweeps import load_sweep_config, resume_sweep, run_sweep

    progress = not args.quiet
    if args.resume:
        extra = [f"--{k.replace('_', '-')}" for k in ("config", "trials", "concurrency", "tracking_uri", "run_dir",
                                                      "gpus_per_trial") if getattr(args, k, None) is not None]
        extra += ["--device"] if getattr(args, "device", "auto") != "auto" else []
        if extra:
            raise ConfigError("resume", f"a resumed sweep keeps its recorded config: drop {', '.join(extra)}")
        result = resume_sweep(args.resume, address=args.address, progress=progress, verbose=args.verbose)
    else:
        if args.config is None:
            raise ConfigError("config", "give --config FILE.yaml (or --resume RUN_DIR)")
        overrides = {"sweep.trials": args.trials, "sweep.concurrency": args.concurrency,
                     "tracking.uri": args.tracking_uri, "run_dir": args.run_dir}
        config = load_sweep_config(args.config, overrides)
        gpus = trial_gpus(args, config.sweep.gpus_per_trial)
        worker_gpus = 0 if args.device == "cpu" else config.sweep.gpus_per_worker
        if (gpus, worker_gpus) != (config.sweep.gpus_per_trial, config.sweep.gpus_per_worker):
            config = replace(config, sweep=replace(config.sweep, gpus_per_trial=gpus, gpus_per_worker=worker_gpus))
        result = run_sweep(config, address=args.address, progress=progress, verbose=args.verbose)
    return experiment_result(result)
