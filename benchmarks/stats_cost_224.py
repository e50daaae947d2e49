"""Cost of the activation-statistics pass at 224 px, and how the rank shortcuts agree with full ranks.

``ratio``: for each torchvision model (random init, 10 classes) and each image count, the
statistics pass with the default options (ranks included: ``collect_activation_stats`` as
``prunesweep stats`` runs it, over the groups the ``full`` strategy prunes) against a plain
forward pass over the same images (batches of ``--batch`` random 224x224 images), in one
process. Each pass is timed ``--repeats`` times, plain and statistics alternating, and the
minimum of each is kept (the machine may be shared); the load average is recorded.

``agreement``: per group, the Spearman correlation of each channel's mean map rank
(``channel_rank``, as HRank scores) under the default shortcuts against full ranks:

* ``map_side``: ResNet-18 at 224 px, the same ``--agree-images`` images, maps above
  ``RANK_MAP_SIDE`` ranked on evenly spaced rows and columns vs whole maps (groups whose maps
  exceed it);
* ``budget``: ResNet-20 (random init, 28 px, 1,024 random images), ranks on at most
  ``RANK_MAPS`` maps per output vs the first ``RANK_IMAGES`` images of every output (the
  previous default), and vs every image.

    python benchmarks/stats_cost.py ratio --models resnet18 resnet50 mobilenet_v2 efficientnet_b0 \
        convnext_tiny --images 64 256 --out benchmarks/results/stats_cost_224.json
    python benchmarks/stats_cost.py agreement --out benchmarks/results/stats_rank_agreement.json
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from unittest import mock

import torch
import torchvision
from scipy.stats import spearmanr

from pruning.models import create_model
from pruning.statistics import RANK_IMAGES, StatsOptions, collect_activation_stats
from pruning.structure import PruningSpace


@torch.no_grad()
def forward_all(model, batches) -> None:
    for x, _ in batches:
        model(x)


def random_batches(images: int, batch: int, shape: tuple[int, ...], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = [min(batch, images - i) for i in range(0, images, batch)]
    return [(torch.randn(n, *shape, generator=g), torch.zeros(n, dtype=torch.long)) for n in sizes]


def ratio(models: list[str], image_counts: list[int], batch: int, repeats: int) -> dict:
    rows = {}
    for name in models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(num_classes=10).eval()
        groups = PruningSpace.build(model, torch.zeros(1, 3, 224, 224)).select("full")
        for images in image_counts:
            batches = random_batches(images, batch, (3, 224, 224))
            forward_all(model, batches[:1])  # warm-up
            plain, stats = [], []
            load_before = os.getloadavg()
            for _ in range(repeats):
                started = time.perf_counter()
                forward_all(model, batches)
                plain.append(time.perf_counter() - started)
                started = time.perf_counter()
                collect_activation_stats(model, groups, batches)
                stats.append(time.perf_counter() - started)
            rows[f"{name}/{images}"] = {
                "model": name, "images": images, "groups": len(groups), "plain_seconds": plain,
                "stats_seconds": stats, "ratio": min(stats) / min(plain),
                "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            }
            print(name, images, f"plain {min(plain):.2f} s  stats {min(stats):.2f} s  "
                  f"ratio {min(stats) / min(plain):.2f}", flush=True)
    return rows


@contextlib.contextmanager
def full_ranks(map_side: bool = True, budget: bool = True):
    """Whole maps (``map_side``) and no per-output map budget (``budget``) in the pass."""
    with contextlib.ExitStack() as stack:
        if map_side:
            stack.enter_context(mock.patch("pruning.statistics._accumulator.RANK_MAP_SIDE", 10 ** 9))
        if budget:
            stack.enter_context(mock.patch("pruning.statistics._accumulator.RANK_MAPS", 10 ** 12))
        yield


def spearman_per_group(a_stats, b_stats, groups) -> dict:
    out = {}
    for g in groups:
        a, b = a_stats.channel_rank(g), b_stats.channel_rank(g)
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            continue
        # a constant rank vector (every channel full rank) has no ordering: Spearman undefined
        rho = float(spearmanr(a.numpy(), b.numpy()).statistic) if a.std() > 0 and b.std() > 0 else math.nan
        out[g.name] = {"spearman": rho, "channels": g.size,
                       "ranked_images": int(a_stats.layer_stats(g)[0].n_rank_images)}
    defined = [v["spearman"] for v in out.values() if not math.isnan(v["spearman"])]
    return {"spearman_mean": sum(defined) / max(1, len(defined)), "spearman_min": min(defined, default=math.nan),
            "undefined_groups": len(out) - len(defined), "groups": out}


def agreement(images: int) -> dict:
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(num_classes=10).eval()
    groups = PruningSpace.build(r18, torch.zeros(1, 3, 224, 224)).groups
    batches = random_batches(images, images, (3, 224, 224))
    with full_ranks(map_side=False):
        capped = collect_activation_stats(r18, groups, batches, StatsOptions(rank_images=None))
    with full_ranks():
        whole = collect_activation_stats(r18, groups, batches, StatsOptions(rank_images=None))
    large = [g for g in groups if int(whole.layer_stats(g)[0].map_size.max()) > 32]
    result = {"map_side": {"model": "resnet18", "px": 224, "images": images, **spearman_per_group(capped, whole, large)}}

    torch.manual_seed(0)
    r20 = create_model("resnet20")
    space = PruningSpace.build(r20, torch.zeros(1, 1, 28, 28))
    batches = random_batches(1024, 128, (1, 28, 28))
    budget = collect_activation_stats(r20, space.groups, batches)
    with full_ranks():
        previous = collect_activation_stats(r20, space.groups, batches)
        every = collect_activation_stats(r20, space.groups, batches, StatsOptions(rank_images=None))
    result["budget_vs_previous_default"] = {"model": "resnet20", "px": 28, "images": 1024,
                                            "rank_images": RANK_IMAGES,
                                            **spearman_per_group(budget, previous, space.groups)}
    result["budget_vs_every_image"] = spearman_per_group(budget, every, space.groups)
    result["previous_default_vs_every_image"] = spearman_per_group(previous, every, space.groups)
    for key in ("map_side", "budget_vs_previous_default", "budget_vs_every_image", "previous_default_vs_every_image"):
        print(key, {k: v for k, v in result[key].items() if k != "groups"}, flush=True)
    return result
