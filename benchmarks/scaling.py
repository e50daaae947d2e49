"""The cost of every stage of a pruning trial on ImageNet-size models, as ratios to one plain
forward pass of the unpruned model over the same calibration images, timed in the same process.

Per model (random init, seeded; 1000 classes) and calibration-image count (random tensors: cost
only), in a fresh process each (its memory is its own; a crash or a hang costs one entry):

* ``forward``: a plain ``torch.no_grad`` forward pass over the images (warm-up first, the median
  of ``--repeats``); every other stage is divided by it. Taken again after the stages
  (``forward_after_seconds``) to show how much the machine's load drifted meanwhile.
* ``graph``: ``PruningSpace.build``.
* ``statistics``: ``collect_activation_stats`` with the optional statistics the statistics
  criteria ask for at their defaults (``statistics_options``), as ``prunesweep prune`` runs it.
* ``score_<criterion>``: each criterion's scoring of every group (statistics precomputed).
* ``reconstruction_targets``: the unpruned model's outputs at the rows the reconstruction fits
  (``reconstruction_targets``); a sweep computes them once and shares them with every trial.
* ``prune``: planning (L1 scores, uniform ratios at -50% MACs) + ``prune_model``.
* ``reconstruct``: the recovery recipe's reconstruction stage on the calibration batches, given
  the targets, as a sweep's trial runs it.
* ``bn_recalibration``: the recipe's BN stage, one pass over the calibration batches.
* ``evaluate``: scoring the pruned model on the calibration images.

``trial`` is a screening trial: prune + reconstruct + BN recalibration + evaluate. A sampling
thread reads the resident set size (``/proc/self/statm``) during every stage: its peak and its
increase over the stage's start. A stage that fails, is refused or runs past ``--stage-timeout``
records one line instead, and the benchmark goes on. The result file is rewritten after every
model; ``--resume`` skips the entries it already holds.

``--device cuda`` (default ``cpu``) puts the model, the batches and every stage on the GPU, waits
for its kernels before each clock read and records, next to the RSS, each stage's peak
``torch.cuda.max_memory_allocated`` (``peak_cuda_mib``) and its increase over the stage's start;
``--amp bf16|fp16`` (CUDA only) runs the forward unit and the evaluation stage under autocast, as
the product's mixed precision does (``AMP_STAGES``; the other stages stay float32). The result
file names the device (``machine.device_name``: the card, ``torch.cuda.get_device_name``) and
the settings its ``device``, ``amp`` and ``amp_stages``.

``--sweep``: a screening sweep of MobileNetV2 through ``prunesweep sweep`` on an imagefolder of
random PNGs (``search_spaces/mobilenetv2_imagefolder.yaml``): trials per hour and where a trial's
seconds go, read back from the sweep's MLflow runs.

    python benchmarks/scaling.py --models resnet18 mobilenet_v2 --calibration-images 64 \\
        --out benchmarks/results/scaling.json
    python benchmarks/scaling.py --device cuda --amp bf16 --models resnet18 mobilenet_v2 \\
        --calibration-images 64 --out benchmarks/results/scaling_cuda.json
    python benchmarks/scaling.py --sweep --out benchmarks/results/scaling_sweep.json
    python benchmarks/scaling_report.py benchmarks/results/scaling.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, also when run as a script

from benchmarks.scaling_stages import (  # noqa: E402
    MIB, StageRecorder, device_name, one_line, resolve_placement, synchronize,
)

#: short name -> the model source ``pruning.models.create_model`` builds
MODELS = {
    "resnet18": "torchvision:resnet18",
    "resnet50": "torchvision:resnet50",
    "mobilenet_v2": "torchvision:mobilenet_v2",
    "efficientnet_b0": "torchvision:efficientnet_b0",
    "convnext_tiny": "torchvision:convnext_tiny",
    "resnext50": "torchvision:resnext50_32x4d",
    "deit_tiny": "timm:deit_tiny_patch16_224",
}
CRITERIA = ("l1", "taylor", "entropy", "hrank", "shapley", "snpfi")
STAGES = ("graph", "statistics", *(f"score_{c}" for c in CRITERIA), "reconstruction_targets", "prune", "reconstruct",
          "bn_recalibration", "evaluate")
#: the stages a screening trial runs, in order
TRIAL = ("prune", "reconstruct", "bn_recalibration", "evaluate")
#: the product's aims, as ratios to one forward pass
AIM_STAGE, AIM_TRIAL = 2.0, 6.0
#: --quick: what the test runs (one thread: oversubscribed threads slow tiny ops down by far more
#: than they gain; a short stage limit: Shapley and SNPFI take minutes even here)
QUICK = {"models": ["resnet18", "mobilenet_v2"], "image_size": 64, "calibration_images": [8], "threads": 1,
         "repeats": 1, "stage_timeout": 3.0}
CLASSES = 1000
#: the stages ``--amp`` runs under autocast: the product's mixed precision covers the forward
#: passes of training and evaluation only (statistics, scoring, reconstruction and BN stay float32)
AMP_STAGES = ("forward", "evaluate")


def calibration(images: int, size: int, batch_size: int, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(images, 3, size, size, generator=generator)
    y = torch.randint(0, CLASSES, (images,), generator=generator)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, images, batch_size)]


def plain_forward(model, batches, amp: str | None = None) -> None:
    import torch

    from pruning.devices import Precision
    from pruning.utils import model_device

    with torch.no_grad(), Precision(amp).autocast(model_device(model)):
        for x, _ in batches:
            model(x)


def timed_forward(model, batches, amp: str | None = None) -> float:
    """Seconds of :func:`plain_forward`, its CUDA kernels waited for before each clock read."""
    from pruning.utils import model_device

    device = model_device(model)
    synchronize(device)
    started = time.perf_counter()
    plain_forward(model, batches, amp)
    synchronize(device)
    return time.perf_counter() - started


@dataclass(frozen=True)
class StageRun:
    """What every stage of one model reads: the unpruned model, its example input and calibration
    batches (on the stages' device), the stages asked for, the recorder of their results and the
    mixed precision of the stages that take one (``AMP_STAGES``)."""

    model: object
    example: object
    batches: list
    wanted: frozenset
    recorder: StageRecorder
    amp: str | None = None

    def run(self, stage: str, fn):
        """``fn()`` as ``stage``, recorded only when it was asked for (else it is a prerequisite)."""
        return self.recorder.run(stage, fn, stage in self.wanted)

    def skip(self, stages, reason: str) -> None:
        for stage in stages:
            if stage in self.wanted and stage not in self.recorder.stages:
                self.recorder.skip(stage, reason)


def measure_one(args, name: str, images: int) -> dict:
    """Every selected stage of model ``name`` over ``images`` calibration images, in this process,
    on ``--device`` (model, batches and every stage)."""
    import torch

    from pruning.models import create_model
    from pruning.structure import PruningSpace, count_macs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_placement(args)
    entry = {"model": name, "source": MODELS[name], "images": images, "device": str(device),
             "device_name": device_name(device), "amp": args.amp, "stages": {}}
    model = create_model(MODELS[name], num_classes=CLASSES, in_channels=3).eval().to(device)
    example = torch.zeros(1, 3, args.image_size, args.image_size, device=device)
    batches = [(x.to(device), y.to(device)) for x, y in calibration(images, args.image_size, args.batch_size)]
    entry["macs"] = count_macs(model, example)
    timed_forward(model, batches[:1], args.amp)  # warm-up (on CUDA: cuDNN's algorithm choice, the allocator)
    forwards = [timed_forward(model, batches, args.amp) for _ in range(args.repeats)]
    entry["forward_seconds"] = statistics.median(forwards)
    entry["forward_repeats"] = forwards

    recorder = StageRecorder(args.stage_timeout, entry["stages"], device=device)
    run = StageRun(model, example, batches, frozenset(args.stages), recorder, args.amp)
    space = run.run("graph", lambda: PruningSpace.build(model, example))
    if space is None:
        run.skip(STAGES, "no pruning graph")
    else:
        l1_scores = score_stages(run, space, entry)
        if run.wanted & set(TRIAL):
            trial_stages(run, space, l1_scores, entry)
    return finish(entry, model, batches, args.amp)


def score_stages(run: StageRun, space, entry: dict):
    """The statistics pass and each criterion's scoring; returns L1's scores (None: failed)."""
    from pruning.criteria import ScoringContext, create_criterion, statistics_options
    from pruning.statistics import collect_activation_stats

    groups = space.select("full")
    criteria = {c: create_criterion(c) for c in CRITERIA}
    options = statistics_options([c for c in criteria.values() if c.needs_stats])
    entry["statistics_options"] = {k: getattr(options, k) for k in ("chip", "map_entropy", "read_inputs", "per_class")}
    stats = None
    if "statistics" in run.wanted or any(criteria[c].needs_stats and f"score_{c}" in run.wanted for c in CRITERIA):
        stats = run.run("statistics", lambda: collect_activation_stats(run.model, space.groups, run.batches, options))
    context = ScoringContext(calibration=run.batches, stats=stats)
    l1_scores = None
    for c, criterion in criteria.items():
        stage = f"score_{c}"
        if stage not in run.wanted and not (c == "l1" and run.wanted & set(TRIAL)):
            continue
        if criterion.needs_stats and stats is None:
            run.skip([stage], "no statistics")
            continue
        scores = run.run(stage, lambda criterion=criterion: criterion.score(run.model, groups, context))
        l1_scores = scores if c == "l1" else l1_scores
    return l1_scores


def trial_stages(run: StageRun, space, l1_scores, entry: dict) -> None:
    """A screening trial's stages: prune at -50% MACs by L1, reconstruct, recalibrate BN, evaluate."""
    from pruning.criteria import create_criterion
    from pruning.pipeline import prune_with_criterion
    from pruning.planning import PruningConfig
    from pruning.recovery import RecoveryData, RecoveryRecipe, reconstruction_targets, recover
    from pruning.training import evaluate

    if l1_scores is None:
        run.skip(TRIAL, "no l1 scores")
        return
    reconstruct = RecoveryRecipe(reconstruct=True, bn_batches=0)
    # once per sweep (the unpruned model's outputs, shared by every trial), so not part of a trial
    targets = run.run("reconstruction_targets",
                      lambda: reconstruction_targets(run.model, space, run.batches, reconstruct))
    outcome = run.run("prune", lambda: prune_with_criterion(run.model, run.example, create_criterion("l1"),
                                                            PruningConfig(flops_reduction=0.5), space=space,
                                                            scores=l1_scores))
    if outcome is None:
        run.skip(TRIAL, "pruning failed")
        return
    entry["pruned_macs_reduction"] = outcome.planned_reduction
    data = RecoveryData(calibration=run.batches, targets=targets)
    bn = RecoveryRecipe(reconstruct=False, bn_batches=len(run.batches), bn_data="calibration")
    run.run("reconstruct", lambda: recover(run.model, outcome, reconstruct, data))
    run.run("bn_recalibration", lambda: recover(run.model, outcome, bn, data))
    run.run("evaluate", lambda: evaluate(outcome.model, run.batches, amp=run.amp))


def finish(entry: dict, model, batches, amp: str | None) -> dict:
    """Ratios to the forward pass, the trial's sum, the drift of the forward, the process peak."""
    entry["forward_after_seconds"] = timed_forward(model, batches, amp)
    for stage in entry["stages"].values():
        if "error" not in stage or stage["timed_out"]:
            stage["ratio"] = stage["seconds"] / entry["forward_seconds"]
    trial = [entry["stages"].get(s, {}) for s in TRIAL]
    if all("error" not in s and "ratio" in s for s in trial):
        seconds = sum(s["seconds"] for s in trial)
        entry["trial"] = {"seconds": seconds, "ratio": seconds / entry["forward_seconds"],
                          "peak_rss_mib": max(s["peak_rss_mib"] for s in trial)}
        if all("peak_cuda_mib" in s for s in trial):
            entry["trial"]["peak_cuda_mib"] = max(s["peak_cuda_mib"] for s in trial)
    entry["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB
    return entry


def child_command(args, name: str, images: int, out: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", "--models", name, "--calibration-images",
            str(images), "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
            "--threads", str(args.threads), "--repeats", str(args.repeats), "--stage-timeout",
            str(args.stage_timeout), "--stages", *args.stages, "--device", args.device,
            *(["--amp", args.amp] if args.amp else []), "--out", out]


def child_environment() -> dict:
    """This environment with the checkout first on ``PYTHONPATH`` (what was there stays: packages
    installed into a folder of their own, e.g. wheels on a machine without a package index)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *([path] if path else [])])}


def measure_in_child(args, name: str, images: int) -> dict:
    """:func:`measure_one` in a fresh interpreter: its memory is its own, a crash is one entry."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "entry.json")
        try:
            # the child's stage lines go to this stderr as they happen
            done = subprocess.run(child_command(args, name, images, out), cwd=ROOT, timeout=args.model_timeout,
                                  env=child_environment())
        except subprocess.TimeoutExpired:
            return {"model": name, "images": images, "error": f"stopped after {args.model_timeout:g} s (--model-timeout)"}
        if done.returncode != 0 or not os.path.exists(out):  # killed (e.g. out of memory) or crashed
            return {"model": name, "images": images, "error": f"its process ended with exit status {done.returncode}"}
        return json.loads(Path(out).read_text())


def write_json(path: str, data: dict) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def settings_of(args) -> dict:
    settings = {"image_size": args.image_size, "batch_size": args.batch_size, "threads": args.threads,
                "repeats": args.repeats, "stage_timeout": args.stage_timeout, "classes": CLASSES,
                "aim_stage_ratio": AIM_STAGE, "aim_trial_ratio": AIM_TRIAL, "quick": args.quick}
    if args.device != "cpu" or args.amp:  # only then: CPU result files written before still --resume
        settings.update(device=args.device, amp=args.amp, amp_stages=list(AMP_STAGES) if args.amp else [])
    return settings


def run_grid(args) -> dict:
    """Every model x image count, each in its own process; the file rewritten after each."""
    result = {"settings": settings_of(args), "stages": list(STAGES), "trial_stages": list(TRIAL), "runs": {}}
    device = resolve_placement(args)
    if os.path.exists(args.out):
        previous = json.loads(Path(args.out).read_text())
        if previous.get("settings") == result["settings"]:  # entries measured the same way are kept
            result["runs"] = previous.get("runs", {})
        else:
            print(f"{args.out} was measured with other settings: its entries are replaced", file=sys.stderr)
    for images in args.calibration_images:
        for name in args.models:
            key = f"{name}@{images}"
            if args.resume and "error" not in result["runs"].get(key, {"error": None}):
                continue
            load = os.getloadavg()[0]
            print(f"{key}:", file=sys.stderr, flush=True)
            entry = measure_in_child(args, name, images)
            entry["load_average_1min_before"] = load
            result["runs"][key] = entry
            result["machine"] = {"cpus": os.cpu_count(), "load_average_1min_at_end": os.getloadavg()[0],
                                 "device": str(device), "device_name": device_name(device)}
            write_json(args.out, result)
            print(f"{key}: {summary_line(entry)}", file=sys.stderr, flush=True)
    return result


def summary_line(entry: dict) -> str:
    if "error" in entry:
        return entry["error"]
    parts = [f"forward {entry['forward_seconds']:.2f} s"]
    for stage, value in entry["stages"].items():
        parts.append(f"{stage} " + (f"{value['ratio']:.2f}x" if "ratio" in value else "error"))
    if "trial" in entry:
        parts.append(f"trial {entry['trial']['ratio']:.2f}x (aim {AIM_TRIAL:g}x)")
    return ", ".join(parts)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--calibration-images", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128, help="of the calibration batches (the product's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or cuda:N: where the model, the batches and every stage run (default: cpu)")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                        help="CUDA only: autocast of the forward unit and the evaluation stage (default: off)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes (the median is the unit)")
    parser.add_argument("--stage-timeout", type=float, default=900.0, help="seconds before a stage is stopped")
    parser.add_argument("--model-timeout", type=float, default=3600.0, help="seconds before a model's process is killed")
    parser.add_argument("--resume", action="store_true", help="keep the entries --out already holds without an error")
    parser.add_argument("--quick", action="store_true",
                        help="tiny defaults: resnet18 and mobilenet_v2 at 64 px, 8 images, 1 thread, 3 s per stage")
    parser.add_argument("--sweep", action="store_true", help="run the MobileNetV2 screening sweep instead")
    parser.add_argument("--trials", type=int, default=16, help="--sweep: screening trials")
    parser.add_argument("--measured", default=None, metavar="RUN_DIR",
                        help="--sweep: summarise this finished or interrupted sweep instead of running one")
    parser.add_argument("--out", default=None,
                        help="result file (default: benchmarks/results/scaling.json, --sweep: scaling_sweep.json)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    if parser.parse_known_args(argv)[0].quick:  # the quick values are defaults: explicit options still win
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    args.out = args.out or f"benchmarks/results/scaling{'_sweep' if args.sweep else ''}.json"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device != "cpu" or args.amp:  # checked up front: one line, before any child starts
        from pruning.errors import InputError

        try:
            resolve_placement(args)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    if args.child:
        name, images = args.models[0], args.calibration_images[0]
        try:
            entry = measure_one(args, name, images)
        except Exception as error:  # the model cannot be built or run: its entry says why in one line
            entry = {"model": name, "source": MODELS[name], "images": images, "error": one_line(error)}
        write_json(args.out, entry)
    elif args.sweep:
        from benchmarks.scaling_sweep import run_screening_sweep

        run_screening_sweep(args)
    else:
        run_grid(args)


if __name__ == "__main__":
    main()
