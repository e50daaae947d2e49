"""The recovery-recipe options, shared by every command that prunes (``prune``, ``compare``).

Defaults come from :class:`~pruning.recovery.RecoveryRecipe` itself, so the command line, a
sweep config and the Python API start from the same recipe.
"""
from __future__ import annotations

import argparse

from pruning.recovery import BN_DATA, RecoveryRecipe

__all__ = ["add_recipe_arguments", "recipe_from_args"]

_DEFAULT = RecoveryRecipe()


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recovery recipe (what runs after pruning, in this order)")
    group.add_argument(
        "--reconstruct", "--recover", dest="reconstruct", action=argparse.BooleanOptionalAction,
        default=_DEFAULT.reconstruct,
        help="least-squares reconstruction of the layers that read pruned channels, on the calibration "
             "images (default: on; --no-reconstruct / --no-recover switches it off)",
    )
    group.add_argument("--ridge", type=float, default=_DEFAULT.ridge,
                       help=f"reconstruction ridge, relative to the input energy (default: {_DEFAULT.ridge:g})")
    group.add_argument("--bn-batches", type=int, default=_DEFAULT.bn_batches,
                       help=f"batches for BN recalibration (0: off; default: {_DEFAULT.bn_batches})")
    group.add_argument("--bn-data", choices=BN_DATA, default=_DEFAULT.bn_data,
                       help=f"where BN recalibration batches come from (default: {_DEFAULT.bn_data})")
    group.add_argument("--finetune-epochs", type=int, default=_DEFAULT.finetune_epochs,
                       help=f"fine-tuning epochs (default: {_DEFAULT.finetune_epochs})")
    group.add_argument("--finetune-lr", type=float, default=_DEFAULT.finetune_lr,
                       help=f"fine-tuning learning rate (default: {_DEFAULT.finetune_lr:g})")
    group.add_argument("--weight-decay", type=float, default=_DEFAULT.weight_decay,
                       help=f"fine-tuning weight decay (default: {_DEFAULT.weight_decay:g})")
    group.add_argument("--finetune-subset", type=int, default=_DEFAULT.finetune_subset,
                       help="fine-tune on the first N training images only (default: all)")
    group.add_argument("--finetune-augment", action=argparse.BooleanOptionalAction, default=_DEFAULT.finetune_augment,
                       help="the dataset's standard augmentation while fine-tuning (default: on)")
    group.add_argument("--distill", type=float, default=_DEFAULT.distill,
                       help="weight of distillation from the unpruned model while fine-tuning, in [0, 1] (default: 0)")
    group.add_argument("--temperature", type=float, default=_DEFAULT.temperature,
                       help=f"distillation temperature (default: {_DEFAULT.temperature:g})")


def recipe_from_args(args: argparse.Namespace) -> RecoveryRecipe:
    """The recipe of parsed arguments (``--batch-size`` and ``--seed`` where the command has them);
    invalid values raise :class:`~pruning.errors.InputError` naming the option."""
    return RecoveryRecipe(
        reconstruct=args.reconstruct, ridge=args.ridge, bn_batches=args.bn_batches, bn_data=args.bn_data,
        finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr, weight_decay=args.weight_decay,
        finetune_subset=args.finetune_subset, finetune_augment=args.finetune_augment, distill=args.distill,
        temperature=args.temperature, batch_size=getattr(args, "batch_size", _DEFAULT.batch_size),
        seed=getattr(args, "seed", _DEFAULT.seed),
    )
