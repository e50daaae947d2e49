"""The ``prunesweep`` command line: info, train, eval, stats, prune, sweep, pareto, compare.

Every command prints a readable summary, or with ``--json`` exactly one JSON object on stdout
(progress bars go to stderr; ``--quiet`` silences them). Bad input ends with a one-line
``error: ...`` on stderr and exit status 2, before anything is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from orchestrator.cli import compare, pareto, sweep
from orchestrator.cli.options import add_ray_network
from orchestrator.distributed import network as private_network

EXIT_BAD_INPUT = 2


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _add_data(p: argparse.ArgumentParser, dataset_default: str | None) -> None:
    p.add_argument("--dataset", default=dataset_default,
                   help="dataset name (see `prunesweep info`)" + (f"; default: {dataset_default}" if dataset_default else
                                                                 "; default: the checkpoint's"))
    p.add_argument("--data-root", default=None, help="dataset folder (fashion-mnist: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--download", action="store_true", help="let torchvision download MNIST/CIFAR-10/SVHN into --data-root")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")


def _add_distributed(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--workers", type=int, default=0,
                   help=f"Ray actors for {what} (default: 0 = in-process, no Ray)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs each Ray actor reserves; its torch threads (default: 1)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: auto (on a cluster node) or ray://HOST:10001 "
                        "(default: start a local Ray without dashboard); see docs/cluster.md")
    add_ray_network(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunesweep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="list models, criteria, datasets, strategies and ratio allocations")
    _add_common(p)

    p = sub.add_parser("train", help="train a model and save a checkpoint")
    _add_common(p)
    _add_data(p, "fashion-mnist")
    p.add_argument("--model", default="resnet20", help="model name (default: resnet20)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-schedule", default="cosine", help="cosine or onecycle (default: cosine)")
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--calibration-size", type=int, default=2000,
                   help="training images held out as the calibration split (default: 2000)")
    p.add_argument("--out", required=True, help="checkpoint path to write")

    p = sub.add_parser("eval", help="evaluate a checkpoint: accuracy, MACs, parameters, latency")
    _add_common(p)
    _add_data(p, None)
    p.add_argument("--checkpoint", required=True)

    p = sub.add_parser("stats", help="compute activation statistics on the calibration split and save them")
    _add_common(p)
    _add_data(p, None)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--calibration-images", type=int, default=1024, help="images from the calibration split (default: 1024)")
    p.add_argument("--bins", type=int, default=32, help="histogram bins for entropy (default: 32)")
    p.add_argument("--value", default="gap", help="gap (per-image average, default) or spatial (all positions)")
    p.add_argument("--chip", action="store_true", help="also accumulate CHIP nuclear-norm statistics (slower)")
    p.add_argument("--out", required=True, help="statistics file to write")
    _add_distributed(p, "the statistics pass")

    p = sub.add_parser("prune", help="prune a checkpoint to a ratio or FLOPs target, recover and report")
    _add_common(p)
    _add_data(p, None)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--criterion", default="l1", help="channel criterion (default: l1; see `prunesweep info`)")
    p.add_argument("--strategy", default="full", help="full (every group) or inner (ResNets: inside residual blocks)")
    p.add_argument("--ratios", default="uniform",
                   help="layer-wise ratios: uniform, global, concentration, snpfi, or a JSON file {layer: ratio}")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--flops-reduction", type=float, default=None, help="fraction of MACs to remove, in [0, 1)")
    target.add_argument("--ratio", type=float, default=None, help="fraction of channels to remove, in [0, 1)")
    p.add_argument("--max-layer-ratio", type=float, default=0.9, help="most any one layer may lose (default: 0.9)")
    p.add_argument("--min-channels", type=int, default=1, help="fewest channels a layer keeps (default: 1)")
    p.add_argument("--alpha", type=float, default=0.5, help="entropy weight in information concentration (default: 0.5)")
    p.add_argument("--tau", type=float, default=0.95, help="SNPFI utilization retention level (default: 0.95)")
    p.add_argument("--calibration-images", type=int, default=512,
                   help="calibration images for data-driven criteria and statistics (default: 512)")
    p.add_argument("--stats", default=None, help="activation statistics from `prunesweep stats` (else computed)")
    p.add_argument("--recover", action="store_true", help="SNPFI recovery: least-squares refit of the layers after pruned ones")
    p.add_argument("--bn-batches", type=int, default=20, help="training batches for BN recalibration (0: off; default 20)")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--finetune-subset", type=int, default=None, help="fine-tune on the first N training images only")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--schedule-out", default=None, help="also write the resulting layer ratios as JSON")
    p.add_argument("--out", default=None, help="pruned checkpoint path to write")
    _add_distributed(p, "shapley/snpfi scoring and statistics")
    for module in (sweep, pareto, compare):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and _starts_private_ray(args):
        if getattr(args, "download", False):
            print("error: --download needs the network, which a --ray-network private run has not; "
                  "download first (prunesweep eval --download) or pass --ray-network host", file=sys.stderr)
            return EXIT_BAD_INPUT
        private_network.exec_module("orchestrator.cli", sys.argv[1:])
    from orchestrator.cli import commands  # torch and the rest: after the re-execution, not twice

    run = {"info": commands.info, "train": commands.train, "eval": commands.evaluate,
           "stats": commands.stats, "prune": commands.prune, "sweep": sweep.run, "pareto": pareto.run, "compare": compare.run}[args.command]
    try:
        result = run(args)
    except commands.BAD_INPUT as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(result.data, default=_json_default))
    else:
        print(result.text)
    return 0


def _starts_private_ray(args: argparse.Namespace) -> bool:
    """Whether this command is about to start a local Ray that should live in a private network.

    Only the process entry point re-executes itself into the namespace: an in-process caller
    (a test, a notebook) keeps its process and its Ray."""
    if getattr(args, "ray_network", "host") != "private" or args.address is not None or private_network.active():
        return False
    return args.command in ("sweep", "compare") or getattr(args, "workers", 0) > 0


def _json_default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")




if __name__ == "__main__":
    sys.exit(main())
