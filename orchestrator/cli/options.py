"""Command-line options shared by several commands."""
from __future__ import annotations

import argparse

__all__ = ["RAY_NETWORKS", "add_output", "add_ray_network"]

RAY_NETWORKS = ("private", "host")


def add_ray_network(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray-network", choices=RAY_NETWORKS, default="private",
                   help="where a local Ray listens: private (default: a network namespace with only "
                        "loopback, unreachable from other hosts, no network access) or host (this "
                        "host's interfaces, guarded by Ray's auth token); see docs/cluster.md")


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress output")
