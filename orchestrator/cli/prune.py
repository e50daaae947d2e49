"""``prunesweep prune``: prune a checkpoint (or a ``--model`` with ``--weights``) to a ratio or FLOPs
target, run the recovery recipe and report cost, latency and accuracy before and after (each
recipe stage scored on the test split)."""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.cli.options import (
    add_data, add_device, add_distributed, add_model_source, add_output, add_seed, check_minimum, check_model_source,
    check_output_files, check_workers, show_progress,
)
from orchestrator.cli.recipe_args import add_recipe_arguments, recipe_from_args
from orchestrator.cli.result import CommandResult
from pruning.errors import InputError

__all__ = ["add_parser", "list_ratio_sources", "run"]

#: ratio sources that are layer-wise priors rather than allocations
_PRIORS = ("concentration", "snpfi")


def list_ratio_sources() -> list[str]:
    """Every ``--ratios`` name (a JSON schedule file is accepted too)."""
    from pruning.planning import ALLOCATIONS

    return [*ALLOCATIONS, *_PRIORS]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("prune", help="prune a checkpoint to a ratio or FLOPs target, recover and report")
    add_output(p, bars=True)
    add_seed(p)
    add_data(p, None)
    add_model_source(p)
    p.add_argument("--criterion", default="l1", help="channel criterion (default: l1; see `prunesweep info`)")
    p.add_argument("--strategy", default="full", help="full (every group) or inner (ResNets: inside residual blocks)")
    p.add_argument("--ratios", default="uniform",
                   help="layer-wise ratios: uniform, global, concentration, snpfi, or a JSON file {layer: ratio}")
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
    from pruning.planning import ratios_of
    from pruning.structure.groups import SOURCES
    from pruning.recovery import recover, recovery_data_for
    from pruning.statistics import ActivationStats
    from pruning.structure import PruningSpace
    from pruning.training import evaluate

    _check_arguments(args)
    device = command_device(args)
    recipe = recipe_from_args(args)
    config, ratio_source = _pruning_config(args)
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
    needs_stats = criterion_class(args.criterion).needs_stats or ratio_source == "concentration"
    # before the model: an unreadable file fails first; one nothing reads is not loaded
    stats_file = ActivationStats.load(args.stats) if needs_stats and args.stats else None
    criterion = distribute_criterion(criterion, args)
    loaded = load_fitting(args)
    model, shape, splits = loaded.model, loaded.shape, loaded.splits
    example = torch.zeros(1, *shape)
    space = PruningSpace.build(model, example)
    if stats_file is not None:  # before the base accuracy: a file that cannot serve fails first
        stats_file.check_holds(criterion.required_statistics(), groups=space.groups,
                               what=f"the statistics in --stats {args.stats}")
    model.to(device)  # pruning copies the model: the pruned one and every recipe stage run there too
    example = example.to(device)
    progress = show_progress(args)
    scoring = make_test_loader(splits, args, device)
    base_accuracy = evaluate(model, scoring, progress=progress, amp=args.amp).accuracy

    batches = calibration_batches(splits, args.calibration_images, args.batch_size, progress=progress)
    stats = stats_file
    if needs_stats and stats is None:
        stats = _collect_stats(args, model, space, batches, criterion)
    context = ScoringContext(calibration=batches, stats=stats, progress=progress)
    ratio_weights, config, scores = _ratio_prior(args, ratio_source, criterion, model, space, config, context)
    outcome = prune_with_criterion(model, example, criterion, config, context, ratio_weights=ratio_weights,
                                   space=space, scores=scores)
    del context, stats, stats_file  # the statistics (Gram matrices, histograms) are not needed by the recovery
    recovery = recover(model, outcome, recipe, recovery_data_for(splits, batches, scoring), progress=progress,
                       amp=args.amp)

    base = measure(model, shape, base_accuracy, progress=progress)
    after = measure(outcome.model, shape, recovery.final_accuracy, progress=progress)
    pruning = {
        "criterion": args.criterion, "strategy": config.strategy, "ratios": args.ratios,
        "flops_reduction_target": args.flops_reduction, "ratio": args.ratio, "round_to": args.round_to,
        "macs_reduction": 1 - after["macs"] / base["macs"], "params_reduction": 1 - after["params"] / base["params"],
        "speedup_batch1": base["latency_ms"] / after["latency_ms"],
        "speedup_batch64": base["latency_ms_batch64"] / after["latency_ms_batch64"],
        "recipe": recipe.to_dict(), "accuracy_stages": recovery.accuracy,
        "channels": {n: [k, space[n].size] for n, k in outcome.keep.items()},
    }
    _write_outputs(args, loaded, outcome.model, {**pruning, "schedule": ratios_of(space, outcome.keep)})
    data = {"base": base, "pruned": after, "pruning": pruning, "checkpoint": args.out}
    return CommandResult(_summary(args, loaded, base, after, pruning), data)


def _check_arguments(args: argparse.Namespace) -> None:
    """Every check that needs no data, before anything is loaded."""
    check_output_files(args, "--out", "--schedule-out")
    check_model_source(args)
    check_minimum(args, "--calibration-images", 1)
    check_minimum(args, "--batch-size", 1)
    check_minimum(args, "--round-to", 1)
    check_workers(args)
    if not 0 <= args.alpha <= 1:
        raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")
    if not 0 < args.tau <= 1:
        raise InputError(f"--tau must be in (0, 1], got {args.tau}")
    if args.snpfi_interactions < 0:
        raise InputError(f"--snpfi-interactions must be >= 0, got {args.snpfi_interactions}")
    if args.stats is not None and not Path(args.stats).is_file():
        raise InputError(f"--stats file {args.stats!r} does not exist")


def _pruning_config(args: argparse.Namespace):
    """The pruning config and the ratio source (allocation name, prior name, or 'file')."""
    from pruning.planning import PruningConfig, load_schedule
    from pruning.structure import PruningError

    common = dict(strategy=args.strategy, max_layer_ratio=args.max_layer_ratio, min_channels=args.min_channels,
                  round_to=args.round_to)
    source = args.ratios
    if source.endswith(".json") or Path(source).is_file():
        if args.flops_reduction is not None or args.ratio is not None:
            raise PruningError("--ratios FILE.json is an explicit schedule: drop --flops-reduction/--ratio")
        return PruningConfig(schedule=load_schedule(source), **common), "file"
    sources = list_ratio_sources()
    if source not in sources:
        raise PruningError(f"unknown --ratios {source!r}; valid: {', '.join(sources)}, or a JSON file")
    if source == "snpfi" and args.flops_reduction is None and args.ratio is None:
        return PruningConfig(ratio=0.0, **common), source  # SNPFI sets every layer's sparsity itself
    if args.flops_reduction is None and args.ratio is None:
        raise PruningError("give --flops-reduction or --ratio (or --ratios FILE.json)")
    if source == "concentration" and args.flops_reduction is None:
        raise PruningError("--ratios concentration scales layer ratios to a FLOPs target: give --flops-reduction")
    allocation = "global" if source == "global" else "uniform"
    return PruningConfig(allocation=allocation, ratio=args.ratio, flops_reduction=args.flops_reduction, **common), source


def _snpfi_options(args: argparse.Namespace) -> dict:
    """The SNPFI criterion's interaction window and budget from ``--snpfi-interactions/--snpfi-budget``."""
    return {"interactions": args.snpfi_interactions, "budget": args.snpfi_budget}


def _collect_stats(args, model, space, batches, criterion):
    from orchestrator.cli.common import collect_stats
    from pruning.criteria import statistics_options

    return collect_stats(args, model, space.groups, batches, statistics_options([criterion]))


def _ratio_prior(args, source, criterion, model, space, config, context):
    """Layer-wise ratio weights (concentration) or SNPFI's automatic per-layer sparsity, plus the
    channel scores when computing the prior already produced them (criterion snpfi)."""
    from dataclasses import replace

    from orchestrator.cli.common import distribute_criterion
    from pruning.criteria import create_criterion

    groups = space.select(config.strategy)
    if source == "concentration":
        from pruning.planning import concentration_weights

        return concentration_weights(context.stats, groups, alpha=args.alpha), config, None
    if source == "snpfi":
        snpfi = criterion
        if criterion.name != "snpfi":
            snpfi = distribute_criterion(create_criterion("snpfi", seed=args.seed, **_snpfi_options(args)), args)
        if snpfi.budget == "global" and config.ratio is None:  # layers compete: a plan
            scores, sparsity = snpfi.score_and_sparsity(model, groups, context, tau=args.tau, space=space, plan=config)
            scores = scores if snpfi is criterion else None
            return None, replace(config, ratio=None, flops_reduction=None, schedule=sparsity), scores
        scores, sparsity = snpfi.score_and_sparsity(model, groups, context, tau=args.tau)
        scores = scores if snpfi is criterion else None
        if config.flops_reduction is None:
            capped = {n: min(s, config.max_layer_ratio) for n, s in sparsity.items()}
            return None, replace(config, ratio=None, schedule=capped), scores
        return sparsity, config, scores
    return None, config, None


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
    from orchestrator.report import format_table

    rows = [(k, base[k], after[k], _change(base[k], after[k], difference=k == "accuracy"))
            for k in ("macs", "params", "accuracy", "latency_ms", "latency_ms_batch64")]
    return (
        f"{loaded.spec.name} on {loaded.splits.name}: criterion {args.criterion}, strategy {pruning['strategy']}, "
        f"ratios {args.ratios}\n"
        + format_table(rows, ("", "base", "pruned", "change"))
        + "\naccuracy by stage: " + ", ".join(f"{k} {v:.4f}" for k, v in pruning["accuracy_stages"].items())
        + f"\nMACs -{pruning['macs_reduction']:.1%}, params -{pruning['params_reduction']:.1%}, "
        f"measured speedup {pruning['speedup_batch1']:.2f}x (batch 1), {pruning['speedup_batch64']:.2f}x (batch 64)"
        + (f"\n-> {args.out}" if args.out else "")
    )


def _change(before, after, difference: bool = False) -> str:
    """``after - before`` for accuracies (``difference``), else the ratio ``after / before``."""
    if before is None or after is None:
        return ""
    if difference:
        return f"{after - before:+.4f}"
    return f"x{after / before:.3f}" if before else ""
