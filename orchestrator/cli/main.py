"""The ``prunesweep`` command line: info, train, eval, stats, prune, export, sweep, pareto, compare.

Every command prints a readable summary, or with ``--json`` exactly one JSON object on stdout
(progress goes to stderr: the bars of train, eval, stats and prune only on a terminal or with
``--progress``; ``--quiet`` silences it all). Bad input ends with a one-line
``error: ...`` on stderr and exit status 2, before anything is written, and so does a write that
a full disk or a read-only filesystem refused (naming the path); any other exception is a bug
and keeps its traceback (exit status 1).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

# Only light modules here: the parser is built, and the command chosen, before the process may
# re-execute itself in a private network namespace; the commands import torch in their run().
from orchestrator import distributed
from orchestrator.cli import compare, evaluate, export, info, pareto, prune, stats, sweep, train
from orchestrator.disk_errors import find_disk_error
from pruning.errors import InputError, first_line

EXIT_BAD_INPUT = 2
#: what ends in one ``error:`` line: bad input, and a file named on the command line that is missing
BAD_INPUT = (InputError, FileNotFoundError)
COMMANDS = (info, train, evaluate, stats, prune, export, sweep, pareto, compare)
#: commands that always start Ray (the others only with --workers N > 0)
_RAY_COMMANDS = ("sweep", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunesweep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # only the process entry point re-executes itself: an in-process caller (a test, a notebook)
    # keeps its process and its Ray
    if argv is None and _starts_private_ray(args):
        if getattr(args, "download", False):
            print(f"error: --download needs the network, which a --ray-network {args.ray_network} run has not; "
                  "download first (prunesweep eval --download) or pass --ray-network host", file=sys.stderr)
            return EXIT_BAD_INPUT
        distributed.exec_module("orchestrator.cli", sys.argv[1:], fallback=args.ray_network == "auto")
    try:
        # with --json, stdout holds the result only: what a library prints while the command runs
        # (Ray's notices of a lost node, printed by its driver threads) goes to stderr
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            result = args.run(args)
    except BAD_INPUT as err:
        message = first_line(err)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        full = find_disk_error(err)  # a full disk or a read-only filesystem is no bug: one line
        if full is None:
            raise
        print(f"error: {full.describe()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(result.data, default=_json_default), flush=True)
        if argv is None:
            # the process ends here: what Ray's driver threads still print (a lost node's raylet
            # lines arrive late) goes to stderr too, after the result, not into it
            sys.stdout = sys.stderr
    else:
        print(result.text)
    return result.exit_status


def _starts_private_ray(args: argparse.Namespace) -> bool:
    """Whether this command is about to start a local Ray that should live in a private network."""
    if getattr(args, "ray_network", None) not in ("auto", "private") or args.address is not None or distributed.decided():
        return False
    if getattr(args, "report", None):  # `compare --report` reads MLflow only
        return False
    return args.command in _RAY_COMMANDS or args.workers > 0


def _json_default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
