"""The recovery-recipe options, shared by every command that prunes (``prune``, ``compare``) and
by the criteria benchmark.

Defaults come from :class:`~pruning.recovery.RecoveryRecipe` itself, so the command line, a
sweep config and the Python API start from the same recipe. The parser is built before
``prunesweep`` may re-execute itself in a private network namespace, where importing torch
(which ``pruning.recovery`` does) would cost seconds twice; so an option left out is left out of
the parsed namespace too (``argparse.SUPPRESS``) and :func:`recipe_from_args` lets the recipe fill
it in, and ``--help`` reads the defaults from the recipe only when it is printed. A caller with
other defaults (a benchmark reproducing documented runs) sets them with ``parser.set_defaults``.
"""
from __future__ import annotations

import argparse

from pruning.errors import InputError

__all__ = ["RECIPE_OPTIONS", "RENAMED_OPTIONS", "add_recipe_arguments", "recipe_from_args"]

#: recipe field -> its option, for every field the command line sets
RECIPE_OPTIONS = {
    "reconstruct": "--reconstruct", "ridge": "--ridge", "reconstruct_rows": "--reconstruct-rows", "bn_batches": "--bn-batches", "bn_data": "--bn-data",
    "finetune_epochs": "--finetune-epochs", "finetune_lr": "--finetune-lr", "weight_decay": "--weight-decay",
    "finetune_subset": "--finetune-subset", "finetune_augment": "--finetune-augment",
    "finetune_max_grad_norm": "--finetune-max-grad-norm", "distill": "--distill",
    "distill_temperature": "--distill-temperature", "steps": "--steps", "step_order": "--step-order",
    "step_finetune_batches": "--step-finetune-batches", "batch_size": "--batch-size", "seed": "--seed",
}
#: options that are gone -> what to give instead (each is refused with that hint)
RENAMED_OPTIONS = {
    "--temperature": "--distill-temperature (the distillation temperature)",
    "--recover": "--reconstruct (recover() is the whole recipe; this switches the reconstruction stage)",
    "--no-recover": "--no-reconstruct (recover() is the whole recipe; this switches the reconstruction stage)",
}
# the commands' own --batch-size and --seed feed the recipe too, but are not recipe options
_OWN_OPTIONS = ("batch_size", "seed")


class _RecipeHelpFormatter(argparse.HelpFormatter):
    """Appends each recipe option's default, read from the recipe only when help is printed."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.dest not in RECIPE_OPTIONS or action.dest in _OWN_OPTIONS:
            return super()._get_help_string(action)
        default = action.default
        if default is argparse.SUPPRESS:
            from pruning.recovery import RecoveryRecipe

            default = getattr(RecoveryRecipe(), action.dest)
        return f"{action.help} (default: {_shown(default)})"


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "all"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _RecipeHelpFormatter
    group = parser.add_argument_group("recovery recipe (what runs after pruning, in this order)")
    unset = {"default": argparse.SUPPRESS}
    group.add_argument(
        "--reconstruct", dest="reconstruct", action=argparse.BooleanOptionalAction, **unset,
        help="least-squares reconstruction of the layers that read pruned channels, on the calibration "
             "images; --no-reconstruct: off",
    )
    group.add_argument("--ridge", type=float, **unset, help="reconstruction ridge, relative to the input energy")
    group.add_argument("--reconstruct-rows", type=float, **unset,
                       help="rows per weight column each reconstruction fit samples at least (default 16: the "
                            "accuracy of the exact fit; fewer are cheaper for late layers at large inputs)")
    group.add_argument("--bn-batches", type=int, **unset, help="batches for BN recalibration (0: off)")
    group.add_argument("--bn-data", **unset, help="where BN recalibration batches come from: train or calibration")
    group.add_argument("--finetune-epochs", type=int, **unset, help="fine-tuning epochs")
    group.add_argument("--finetune-lr", type=float, **unset, help="fine-tuning learning rate")
    group.add_argument("--weight-decay", type=float, **unset, help="fine-tuning weight decay")
    group.add_argument("--finetune-subset", type=int, **unset, help="fine-tune on the first N training images only")
    group.add_argument("--finetune-augment", action=argparse.BooleanOptionalAction, **unset,
                       help="the dataset's standard augmentation while fine-tuning")
    group.add_argument("--finetune-max-grad-norm", **unset,
                       help="clip every fine-tuning step's gradients to this global norm ('none': never)")
    group.add_argument("--distill", type=float, **unset,
                       help="weight of distillation from the unpruned model while fine-tuning, in [0, 1]")
    group.add_argument("--distill-temperature", type=float, **unset,
                       help="temperature that softens the unpruned and the pruned model's outputs in distillation")
    group.add_argument("--steps", type=int, **unset,
                       help="prunings that reach the planned widths, the channels re-scored on the partly pruned "
                            "model between them (1: one shot)")
    group.add_argument("--step-order", **unset,
                       help="which layers each step prunes: together (all, a little each step) or from_input "
                            "(blocks of layers from the input side)")
    group.add_argument("--step-finetune-batches", type=int, **unset,
                       help="SGD batches of fine-tuning after each step but the last (0: none)")
    for old in RENAMED_OPTIONS:  # accepted by the parser only to be refused with the new name
        parser.add_argument(old, dest="renamed_option", nargs="?", action=_Renamed, help=argparse.SUPPRESS, **unset)


class _Renamed(argparse.Action):
    """Records which renamed option was given; :func:`recipe_from_args` refuses it."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, option_string)


def _norm_or_none(text: str) -> float | None:
    """``--finetune-max-grad-norm``'s value: a number, or ``none``; anything else is one error line."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--finetune-max-grad-norm must be a number or none, got {text!r}") from None


def recipe_from_args(args: argparse.Namespace):
    """The :class:`~pruning.recovery.RecoveryRecipe` of parsed arguments (``--batch-size`` and
    ``--seed`` where the command has them); invalid values raise
    :class:`~pruning.errors.InputError` naming the option."""
    from pruning.recovery import RecipeError, RecoveryRecipe

    renamed = getattr(args, "renamed_option", None)
    if renamed is not None:
        raise InputError(f"{renamed} is gone: use {RENAMED_OPTIONS[renamed]}")
    # a command's own option left unset (None, e.g. compare's --batch-size) keeps the recipe's default
    given = {name: getattr(args, name) for name in RECIPE_OPTIONS
             if hasattr(args, name) and not (name in _OWN_OPTIONS and getattr(args, name) is None)}
    if "finetune_max_grad_norm" in given:
        given["finetune_max_grad_norm"] = _norm_or_none(given["finetune_max_grad_norm"])
    try:
        return RecoveryRecipe(**given)
    except RecipeError as err:
        raise InputError(f"{RECIPE_OPTIONS[err.field]} {err.reason}") from err
