"""GPU vs CPU on ResNet-56: statistics pass, Shapley estimation, a fine-tune epoch, a sweep.

Each measurement runs on the CPU (``--threads`` torch threads) and on ``--device`` (default
``cuda``), and the JSON output has both wall times and the speedup (CPU / GPU):

1. **statistics**: ``collect_activation_stats`` of every prunable group over ``--images``
   random 3x32x32 images (a random-weight ResNet-56; the cost does not depend on the weights);
2. **shapley**: permutation Shapley values of ``--groups`` (default: the first three groups) with
   a fixed budget (``--permutations``, no truncation), one ``LayerGame`` per group;
3. **finetune**: one epoch of ``pruning.training.train`` over ``--train-images`` random images
   (SGD, batch ``--batch-size``), on the GPU in float32 and, with ``--amp``, in mixed precision;
4. **sweep**: a ``--trials`` (2) trial sweep of ``--checkpoint`` (a trained ResNet-56) with
   ``--config`` as the template (screening only), run with ``--gpus-per-trial`` (default 0.5: two
   trials share the GPU) and, unless ``--no-cpu-sweep``, with ``sweep.gpus_per_trial: 0``,
   ``--concurrency`` (2) trials at a time;
   per trial the device its model ran on and the GPUs Ray gave it (the ``device`` tag and
   ``trial_gpus`` metric of its MLflow run). Without ``--checkpoint`` the script makes its own
   baseline first, in seconds: an imagefolder of seeded noise (10 classes x 40 images, 32 px) and
   ``prunesweep train --model resnet56 --epochs 1`` on it, on the GPU with ``--amp``.

It refuses to run without CUDA (one line, exit status 2): there is nothing to compare. A part that
fails records its one-line error and the next part runs; ``--out`` is rewritten after each part.

    .venv/bin/python benchmarks/gpu.py --out benchmarks/results/gpu.json
    .venv/bin/python benchmarks/gpu.py --checkpoint runs/bench/resnet56-cifar10.pt --trials 16 \
        --gpus-per-trial 0.25 --concurrency 4 --out benchmarks/results/gpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, also when run as a script

from benchmarks.scaling_sweep import cli, write_imagefolder  # noqa: E402
from pruning.utils import atomic_write  # noqa: E402

#: the baseline made when no --checkpoint is given: seeded-noise images of this side, a split of
#: this many calibration images held out of the 400 training images
BASELINE_IMAGE_SIDE, BASELINE_CALIBRATION = 32, 128
PARTS = ("statistics", "shapley", "finetune", "sweep")


def timed(fn, device: torch.device) -> tuple[object, float]:
    """(result, seconds) of ``fn()``; CUDA kernels are waited for before the clock stops."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


def pair(cpu_s: float, gpu_s: float) -> dict:
    return {"cpu_seconds": cpu_s, "gpu_seconds": gpu_s, "speedup": cpu_s / gpu_s if gpu_s > 0 else None}


def random_batches(images: int, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(images, 3, 32, 32, generator=g), torch.randint(0, 10, (images,), generator=g)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, images, batch_size)]


def bench_statistics(model, space, batches, device) -> float:
    from pruning.statistics import collect_activation_stats

    collect_activation_stats(model.to(device), space.groups, batches[:1], progress=False)  # warm-up
    _, seconds = timed(lambda: collect_activation_stats(model, space.groups, batches, progress=False), device)
    return seconds


def bench_shapley(model, groups, batches, options, device) -> float:
    from pruning.games import GameSharing, LayerGame, calibration_batch, estimate_shapley, group_seed, trace_model

    model = model.to(device)
    inputs, targets = calibration_batch(batches, options.batch_size)
    traced = trace_model(model)

    def run():
        for group in groups:
            game = LayerGame(model, group, inputs, targets, sharing=GameSharing(traced=traced))
            estimate_shapley(game, options, group_seed(0, group.name))

    return timed(run, device)[1]


def bench_finetune(model, batches, device, amp) -> float:
    from pruning.training import TrainConfig, train

    model = model.to(device)
    config = TrainConfig(epochs=1, lr=0.01, batch_size=len(batches[0][1]))
    train(model, batches[:2], config, progress=False, amp=amp)  # warm-up (cuDNN autotuning, allocator)
    return timed(lambda: train(model, batches, config, progress=False, amp=amp), device)[1]


def make_baseline(args) -> Path:
    """A ResNet-56 checkpoint trained for one epoch on an imagefolder of seeded noise (the sweep
    needs a baseline; its accuracy does not matter to the timings)."""
    work = Path(args.run_dir).absolute() / "baseline"
    shutil.rmtree(work, ignore_errors=True)
    write_imagefolder(work / "images", side=BASELINE_IMAGE_SIDE)
    checkpoint = work / "resnet56-noise.pt"
    cli("train", "--model", "resnet56", "--dataset", "imagefolder", "--data-root", str(work / "images"),
        "--image-size", str(BASELINE_IMAGE_SIDE), "--calibration-size", str(BASELINE_CALIBRATION), "--epochs", "1",
        "--batch-size", "64", "--device", args.device, "--amp", args.amp, "--out", str(checkpoint), "--quiet",
        timeout=600)
    return checkpoint


def sweep_config(args, checkpoint: Path, gpus: float) -> dict:
    """The sweep config of one run: ``--config`` with the checkpoint, the run directory, the trial
    count, the concurrency and ``gpus`` per trial; screening only."""
    import yaml

    data = yaml.safe_load(Path(args.config).read_text())
    data.update(checkpoint=str(checkpoint.absolute()), run_dir=str((Path(args.run_dir) / f"gpus-{gpus:g}").absolute()),
                name=f"bench-gpu-{gpus:g}")
    data.setdefault("data", {}).update(calibration_images=min(data["data"].get("calibration_images", 512), 64),
                                       batch_size=64)
    data.setdefault("sweep", {}).update(trials=args.trials, concurrency=args.concurrency, gpus_per_trial=gpus,
                                        refine={"candidates": 0})
    return data


def bench_sweep(args, checkpoint: Path, gpus: float) -> dict:
    """Seconds of the sweep and, per trial, its status, device, GPUs and seconds."""
    from orchestrator.sweeps import SweepConfig, run_sweep

    data = sweep_config(args, checkpoint, gpus)
    shutil.rmtree(data["run_dir"], ignore_errors=True)
    started = time.perf_counter()
    result = run_sweep(SweepConfig.from_dict(data), progress=False)
    trials = [{"trial": t.name, "status": t.status, "device": t.tags.get("device"),
               "trial_gpus": t.metrics.get("trial_gpus"), "trial_seconds": t.metrics.get("trial_seconds"),
               "accuracy": t.metrics.get("accuracy"), "error": t.error} for t in result.trials]
    return {"seconds": time.perf_counter() - started, "gpus_per_trial": gpus, "trials": args.trials,
            "concurrency": args.concurrency, "per_trial": trials}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the GPU to compare with the CPU (default: cuda)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU torch threads (default: all)")
    parser.add_argument("--images", type=int, default=2048, help="statistics images (default: 2048)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--groups", nargs="*", default=None, help="Shapley groups (default: the first three)")
    parser.add_argument("--permutations", type=int, default=64, help="Shapley permutations per group (default: 64)")
    parser.add_argument("--shapley-images", type=int, default=64, help="images of the coalition worth (default: 64)")
    parser.add_argument("--train-images", type=int, default=10000, help="fine-tune epoch images (default: 10000)")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default="bf16", help="mixed precision run too (default: bf16)")
    parser.add_argument("--checkpoint", default=None,
                        help="a trained ResNet-56 checkpoint for the sweep (default: one made here, in seconds)")
    parser.add_argument("--config", default="search_spaces/demo_fmnist.yaml", help="sweep config template")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--gpus-per-trial", type=float, default=0.5)
    parser.add_argument("--cpu-sweep", action=argparse.BooleanOptionalAction, default=True,
                        help="run the sweep with gpus_per_trial 0 too, for the speedup (default: on)")
    parser.add_argument("--run-dir", default="runs/bench/gpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    parser.add_argument("--out", default=None, help="write the results as JSON (else printed)")
    return parser.parse_args(argv)


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run_part(results: dict, name: str, fn, out: str | None) -> None:
    """``results[name] = fn()``, or its one-line error (a part that fails does not stop the next);
    ``out`` rewritten after it."""
    started = time.perf_counter()
    try:
        results[name] = fn()
    except (Exception, SystemExit) as error:  # SystemExit: a prunesweep command that failed
        results[name] = {"error": one_line(error), "seconds": time.perf_counter() - started}
    print(f"{name}: {results[name].get('error', 'done')}", file=sys.stderr, flush=True)
    if out:
        text = json.dumps(results, indent=2)
        atomic_write(out, lambda tmp: tmp.write_text(text + "\n"))


def main(argv=None) -> int:
    args = parse_args(argv)

    from pruning.devices import resolve_device
    from pruning.errors import InputError

    try:
        device = resolve_device(args.device)
        if device.type != "cuda":
            raise InputError(f"--device {args.device} is not a CUDA device")
    except InputError as err:
        print(f"error: benchmarks/gpu.py compares a CUDA GPU with the CPU and needs CUDA: {err}", file=sys.stderr)
        return 2

    from pruning.games import ShapleyOptions
    from pruning.models import create_model
    from pruning.structure import PruningSpace

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = create_model("resnet56", num_classes=10, in_channels=3).eval()
    space = PruningSpace.build(model, torch.zeros(1, 3, 32, 32))
    batches = random_batches(args.images, args.batch_size, seed=1)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                    "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(device)},
        "settings": vars(args),
    }
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def statistics() -> dict:
        cpu_s = bench_statistics(model.to(cpu), space, batches, cpu)
        return {**pair(cpu_s, bench_statistics(model, space, batches, device)), "images": args.images}

    def shapley() -> dict:
        groups = [space[n] for n in args.groups] if args.groups else list(space.groups)[:3]
        options = ShapleyOptions(max_permutations=args.permutations, batch_permutations=min(16, args.permutations),
                                 antithetic=True, truncation=None, batch_size=args.shapley_images)
        cpu_s = bench_shapley(model.to(cpu), groups, batches, options, cpu)
        return {**pair(cpu_s, bench_shapley(model, groups, batches, options, device)),
                "groups": [g.name for g in groups], "permutations": args.permutations}

    def finetune() -> dict:
        train_batches = random_batches(args.train_images, args.batch_size, seed=2)
        cpu_s = bench_finetune(model.to(cpu), train_batches, cpu, None)
        model.load_state_dict(state)
        gpu_s = bench_finetune(model, train_batches, device, None)
        model.to(cpu).load_state_dict(state)
        amp_s = bench_finetune(model, train_batches, device, args.amp)
        model.to(cpu).load_state_dict(state)
        return {**pair(cpu_s, gpu_s), f"gpu_{args.amp}_seconds": amp_s, f"speedup_{args.amp}": cpu_s / amp_s,
                "images": args.train_images}

    def sweep() -> dict:
        checkpoint = Path(args.checkpoint) if args.checkpoint else make_baseline(args)
        on_gpu = bench_sweep(args, checkpoint, args.gpus_per_trial)
        if not args.cpu_sweep:
            return {"checkpoint": str(checkpoint), "gpu": on_gpu}
        on_cpu = bench_sweep(args, checkpoint, 0.0)
        return {"checkpoint": str(checkpoint), "cpu": on_cpu, "gpu": on_gpu,
                **pair(on_cpu["seconds"], on_gpu["seconds"])}

    parts = {"statistics": statistics, "shapley": shapley, "finetune": finetune, "sweep": sweep}
    for name in PARTS:
        if name not in args.skip:
            run_part(results, name, parts[name], args.out)
            model.to(cpu).load_state_dict(state)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
