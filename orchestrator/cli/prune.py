"""``prunesweep prune``: prune a checkpoint (or a ``--model`` with ``--weights``) to a ratio or FLOPs
target, run the recovery recipe and report cost, latency and the task's metrics before and after (each
recipe stage scored on the test split by the task's primary metric)."""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.cli.options import (
    add_data, add_device, add_distributed, add_model_source, add_output, add_seed, add_task_options, check_minimum,
    check_model_source, check_output_files, check_workers, show_progress,
)
from orchestrator.cli.recipe_args import add_recipe_arguments, recipe_from_args
from orchestrator.cli.result import CommandResult
from pruning.errors import InputError
from pruning.utils import check_finite

__all__ = ["add_parser", "list_ratio_sources", "run"]

#: the ratio source ``--ratios FILE.json`` names (its ``path``)
FILE_SOURCE = "schedule"
#: ratio-source option -> (argument, option) of the command line that sets it
SOURCE_OPTIONS = {"alpha": ("alpha", "--alpha"), "tau": ("tau", "--tau"), "budget": ("snpfi_budget", "--snpfi-budget")}
#: a target kind (``RatioTarget.kind``) in the command line's words
_TARGET_WORDS = {"flops_reduction": "--flops-reduction", "ratio": "--ratio", "none": "no target"}


def list_ratio_sources() -> list[str]:
    """Every ``--ratios`` name: the registered ratio sources (a JSON schedule file is accepted too)."""
    from pruning.planning import list_ratio_sources as registered

    return [name for name in registered() if name != FILE_SOURCE]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("prune", help="prune a checkpoint to a ratio or FLOPs target, recover and report")
    add_output(p, bars=True)
    add_seed(p)
    add_data(p, None)
    add_model_source(p)
    add_task_options(p, default="the checkpoint's, else classification")
    p.add_argument("--criterion", default="l1", help="channel criterion (default: l1; see `prunesweep info`)")
    p.add_argument("--strategy", default="full", help="full (every group) or inner (ResNets: inside residual blocks)")
    p.add_argument("--ratios", default="uniform",
                   help="layer-wise ratios: uniform, global, concentration, snpfi, or a JSON file {layer: ratio} "
                        "(an explicit schedule, or with --flops-reduction its shape scaled to the target)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--flops-reduction", type=float, default=None, help="fraction of MACs to remove, in [0, 1)")
    target.add_argument("--ratio", type=float, default=None, help="fraction of channels to remove, in [0, 1)")
    p.add_argument("--max-layer-ratio", type=float, default=0.9, help="most any one layer may lose (default: 0.9)")
    p.add_argument("--min-channels", type=int, default=1, help="fewest channels a layer keeps (default: 1)")
    p.add_argument("--round-to", type=int, default=1,
                   help="kept channel counts are multiples of this, e.g. 8 for fast inference (default: 1, any count)")
    p.add_argument("--alpha", type=float, default=0.5, help="entropy weight in information concentration (default: 0.5)")
    p.add_argument("--tau", type=float, default=0.95, help="SNPFI utilization retention level (default: 0.95)")
    p.add_argument("--snpfi-interactions", type=int, default=0, metavar="W",
                   help="SNPFI: order the utilization by pairwise interactions of the W channels around each "
                        "layer's cut (default: 0, off: Shapley order)")
    p.add_argument("--snpfi-budget", choices=("layer", "global"), default="layer",
                   help="SNPFI layer sparsity: each layer at its own threshold (layer, default) or layers "
                        "competing under one budget by utilization lost per MAC (global)")
    p.add_argument("--stats-source", default=None, metavar="{producer,consumer}",
                   help="statistics criteria (entropy, hrank, apoz, mean-activation, chip): read each residual "
                        "group's producer outputs (producer, default) or the tensors its consumers read "
                        "(consumer: after the additions)")
    p.add_argument("--class-scores", default=None, metavar="{pooled,max}",
                   help="hrank, apoz, mean-activation: the statistic over all calibration images (pooled, "
                        "default) or of each channel's most favourable class (max)")
    p.add_argument("--calibration-images", type=int, default=512,
                   help="calibration images for data-driven criteria, statistics and reconstruction (default: 512)")
    p.add_argument("--stats", default=None, help="activation statistics from `prunesweep stats` (else computed)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size of calibration and recovery (default: 128)")
    p.add_argument("--schedule-out", default=None, help="also write the resulting layer ratios as JSON")
    p.add_argument("--out", default=None, help="pruned checkpoint path to write")
    add_recipe_arguments(p)
    add_distributed(p, "shapley/snpfi scoring and statistics")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> CommandResult:
    import torch

    from orchestrator.cli.common import command_device, distribute_criterion, load_fitting, make_test_loader, measure
    from pruning.criteria import (
        ScoringContext, StatisticsCriterion, create_criterion, criteria_with_class_scores, criterion_class,
    )
    from pruning.data import calibration_batches
    from pruning.pipeline import prune_with_criterion
    from pruning.planning import RatioInputs, ratios_of
    from pruning.structure.groups import SOURCES
    from pruning.recovery import Rescorer, recover, recovery_data_for
    from pruning.statistics import ActivationStats
    from pruning.structure import PruningSpace
    from pruning.training import evaluate

    _check_arguments(args)
    device = command_device(args)
    recipe = recipe_from_args(args)
    source, target = _ratio_source(args)
    options = _snpfi_options(args) if args.criterion == "snpfi" else {}
    if args.stats_source is not None:
        if args.stats_source not in SOURCES:
            raise InputError(f"unknown --stats-source {args.stats_source!r}; valid: {', '.join(SOURCES)}")
        if not issubclass(criterion_class(args.criterion), StatisticsCriterion):
            raise InputError(f"--stats-source applies to statistics criteria, not {args.criterion!r}")
        options["source"] = args.stats_source
    if args.class_scores is not None:
        if args.criterion not in criteria_with_class_scores():
            raise InputError(f"--class-scores applies to {', '.join(criteria_with_class_scores())}, "
                             f"not {args.criterion!r}")
        options["class_scores"] = args.class_scores
    criterion = create_criterion(args.criterion, seed=args.seed, **options)
    needs_stats = criterion_class(args.criterion).needs_stats or source.needs_stats
    # before the model: an unreadable file fails first; one nothing reads is not loaded
    stats_file = ActivationStats.load(args.stats) if needs_stats and args.stats else None
    criterion = distribute_criterion(criterion, args)
    loaded = load_fitting(args)
    model, shape, splits, task = loaded.model, loaded.shape, loaded.splits, loaded.task
    check_finite(model, "the model to prune")  # before its metrics and any statistics or scores
    example = torch.zeros(1, *shape)
    space = PruningSpace.build(model, example)
    if stats_file is not None:  # before the base metrics: a file that cannot serve fails first
        stats_file.check_holds(criterion.required_statistics(), groups=space.groups,
                               what=f"the statistics in --stats {args.stats}")
    model.to(device)  # pruning copies the model: the pruned one and every recipe stage run there too
    example = example.to(device)
    progress = show_progress(args)
    scoring = make_test_loader(splits, args, device)
    base_metrics = evaluate(model, scoring, task=task, progress=progress, amp=args.amp).metrics

    batches = calibration_batches(splits, args.calibration_images, args.batch_size, progress=progress)
    stats = stats_file
    if needs_stats and stats is None:
        stats = _collect_stats(args, model, space, batches, criterion)
    context = ScoringContext(calibration=batches, stats=stats, progress=progress, task=task)
    utilization, scores = _utilization(args, source, criterion, model, space.select(target.strategy), context)
    plan = source.plan(target, RatioInputs(space, stats=stats, utilization=utilization))
    config = plan.config
    outcome = prune_with_criterion(model, example, criterion, config, context, ratio_weights=plan.ratio_weights,
                                   space=space, scores=scores)
    del context, stats, stats_file, utilization  # the statistics (Gram matrices, histograms) are not needed by the recovery
    # a progressive recipe's later steps score the partly pruned model (statistics collected afresh)
    rescorer = Rescorer(criterion, example, ScoringContext(calibration=batches, device=device, progress=progress,
                                                           task=task))
    recovery = recover(model, outcome, recipe, recovery_data_for(splits, batches, scoring, rescorer=rescorer, task=task),
                       progress=progress, amp=args.amp)
    outcome = recovery.outcome

    primary = task.primary
    base = measure(model, shape, base_metrics, progress=progress)
    after = measure(outcome.model, shape, recovery.final_metrics, progress=progress)
    pruning = {
        "criterion": args.criterion, "strategy": config.strategy, "ratios": args.ratios,
        "flops_reduction_target": args.flops_reduction, "ratio": args.ratio, "round_to": args.round_to,
        "macs_reduction": 1 - after["macs"] / base["macs"], "params_reduction": 1 - after["params"] / base["params"],
        "speedup_batch1": base["latency_ms"] / after["latency_ms"],
        "speedup_batch64": base["latency_ms_batch64"] / after["latency_ms_batch64"],
        "recipe": recipe.to_dict(), f"{primary}_stages": recovery.scores, "stage_seconds": dict(recovery.seconds),
        "channels": {n: [k, space[n].size] for n, k in outcome.keep.items()},
        "steps": [{"step": step.number, "macs_reduction": step.macs_reduction, "seconds": dict(step.seconds),
                   primary: step.score} for step in recovery.steps],
    }
    _write_outputs(args, loaded, outcome.model, {**pruning, "schedule": ratios_of(space, outcome.keep)})
    data = {"task": loaded.task_spec.to_dict(), "base": base, "pruned": after, "pruning": pruning,
            "checkpoint": args.out}
    return CommandResult(_summary(args, loaded, base, after, pruning), data)


def _check_arguments(args: argparse.Namespace) -> None:
    """Every check that needs no data, before anything is loaded."""
    check_output_files(args, "--out", "--schedule-out")
    check_model_source(args)
    check_minimum(args, "--calibration-images", 1)
    check_minimum(args, "--batch-size", 1)
    check_minimum(args, "--round-to", 1)
    check_workers(args)
    if args.snpfi_interactions < 0:
        raise InputError(f"--snpfi-interactions must be >= 0, got {args.snpfi_interactions}")
    if args.stats is not None and not Path(args.stats).is_file():
        raise InputError(f"--stats file {args.stats!r} does not exist")
    _ratio_source(args)


def _ratio_source(args: argparse.Namespace):
    """The ``--ratios`` source (a registered ratio source, or a JSON schedule file) with the options
    the command line sets, and its target (``--flops-reduction``/``--ratio``, ``--strategy`` and the
    width limits); every error names the option. Each source option's value is checked by every
    source that takes it, whichever ``--ratios`` is (``--tau`` is the snpfi criterion's too)."""
    from pruning.planning import RatioSourceError, RatioTarget, create_ratio_source
    from pruning.planning.ratio_sources import ratio_source_options

    def create(name: str, **options):
        try:
            return create_ratio_source(name, **options)
        except RatioSourceError as err:
            raise InputError(f"{SOURCE_OPTIONS.get(err.option, (None, '--ratios'))[1]} {err.reason}") from err

    def command_line_options(name: str) -> dict:
        return {o: getattr(args, SOURCE_OPTIONS[o][0]) for o in ratio_source_options(name) if o in SOURCE_OPTIONS}

    for name in list_ratio_sources():
        create(name, **command_line_options(name))
    given = args.ratios
    if given.endswith(".json") or Path(given).is_file():
        name, options, shown = FILE_SOURCE, {"path": given}, "FILE.json"
    else:
        names = list_ratio_sources()
        if given not in names:
            raise InputError(f"unknown --ratios {given!r}; valid: {', '.join(names)}, or a JSON file")
        name, options, shown = given, command_line_options(given), given
    target = RatioTarget(flops_reduction=args.flops_reduction, ratio=args.ratio, strategy=args.strategy,
                         max_layer_ratio=args.max_layer_ratio, min_channels=args.min_channels, round_to=args.round_to)
    source = create(name, **options)
    if target.kind not in source.targets:
        wanted = " or ".join(_TARGET_WORDS[kind] for kind in source.targets)
        if target.kind == "none":
            raise InputError(f"--ratios {shown} needs a target: give {wanted}")
        raise InputError(f"--ratios {shown} takes {wanted}, not {_TARGET_WORDS[target.kind]}")
    return source, target


def _snpfi_options(args: argparse.Namespace) -> dict:
    """The SNPFI criterion's interaction window and budget from ``--snpfi-interactions/--snpfi-budget``."""
    return {"interactions": args.snpfi_interactions, "budget": args.snpfi_budget}


def _collect_stats(args, model, space, batches, criterion):
    from orchestrator.cli.common import collect_stats
    from pruning.criteria import statistics_options

    return collect_stats(args, model, space.groups, batches, statistics_options([criterion]))


def _utilization(args, source, criterion, model, groups, context):
    """SNPFI's utilization curves where the ratio source reads them (else None), plus the channel
    scores when computing them already produced them (criterion snpfi)."""
    if not source.needs_utilization:
        return None, None
    from orchestrator.cli.common import distribute_criterion
    from pruning.criteria import create_criterion

    snpfi = criterion
    if criterion.name != "snpfi":
        snpfi = distribute_criterion(create_criterion("snpfi", seed=args.seed, **_snpfi_options(args)), args)
    scores, curves = snpfi.score_and_curves(model, groups, context, tau=args.tau)
    return curves, scores if snpfi is criterion else None


def _write_outputs(args, loaded, pruned, pruning: dict) -> None:
    """The pruned checkpoint (its meta records the pruning, the recipe and the schedule) and the
    schedule file, each only where asked for."""
    from dataclasses import replace

    from orchestrator.cli.common import spec_as_run
    from pruning.planning import save_schedule
    from pruning.structure import save_checkpoint

    if args.out:
        spec = spec_as_run(loaded)
        save_checkpoint(args.out, pruned, replace(spec, meta={**spec.meta, "pruning": pruning}))
    if args.schedule_out:
        save_schedule(args.schedule_out, pruning["schedule"])


def _summary(args, loaded, base: dict, after: dict, pruning: dict) -> str:
    from orchestrator.cli.common import describe_latency
    from orchestrator.report import format_table

    task = loaded.task
    names = [metric.name for metric in task.metrics]
    rows = [(k, base[k], after[k], _change(base[k], after[k], difference=k in names))
            for k in ("macs", "params", *names, "latency_ms", "latency_ms_batch64")]
    stages = pruning[f"{task.primary}_stages"]
    return (
        f"{loaded.spec.name} on {loaded.splits.name} ({loaded.task_spec.name}): criterion {args.criterion}, strategy {pruning['strategy']}, "
        f"ratios {args.ratios}\n"
        + format_table(rows, ("", "base", "pruned", "change"))
        + f"\n{task.primary} by stage: " + ", ".join(f"{k} {v:.4f}" for k, v in stages.items())
        + (f"\npruned in {len(pruning['steps'])} steps, MACs " + ", ".join(
            f"-{step['macs_reduction']:.1%}" for step in pruning["steps"]) if pruning["steps"] else "")
        + f"\nMACs -{pruning['macs_reduction']:.1%}, params -{pruning['params_reduction']:.1%}, "
        f"measured speedup {pruning['speedup_batch1']:.2f}x (batch 1), {pruning['speedup_batch64']:.2f}x (batch 64)"
        + f"\n{describe_latency(base['latency'])}"
        + (f"\n-> {args.out}" if args.out else "")
    )


def _change(before, after, difference: bool = False) -> str:
    """``after - before`` for the task's metrics (``difference``), else the ratio ``after / before``."""
    if before is None or after is None:
        return ""
    if difference:
        return f"{after - before:+.4f}"
    return f"x{after / before:.3f}" if before else ""
