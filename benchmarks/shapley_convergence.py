"""Shapley convergence on ResNet-20: the cost to the right kept set (``--measure cut``) or to a
good ranking (``--measure rank``, the earlier measurement), naive vs ours.

``--measure cut`` (what pruning needs). Each configuration (worth x calibration batch) is its own
game, so each gets its own long-run reference: 256 antithetic permutations without truncation.
Then, per seed, one run of the estimator (antithetic pairs, truncation at 2% of
|v(N) - v(empty)|, blocks of 8 permutations, up to ``--max-permutations``) records after every
block: coalition evaluations so far, the Jaccard index of its kept set at ``--ratio`` with the
reference's kept set, its largest standard error, and whether the boundary rule has fired.
Reported per configuration and group, over the seeds:

* ``match``: coalition evaluations until the kept set matches (Jaccard >= 0.95 from that block
  to the end of the run); an oracle count, independent of any stop rule;
* ``stderr`` stop: the naive rule (largest standard error below epsilon, epsilon relative to
  |v(N) - v(empty)|, the grid in ``--epsilons``): evaluations and Jaccard at its stop;
* ``boundary`` stop: our rule (:class:`pruning.games.BoundaryStop` at ``--ratio``, z = 2).

    python benchmarks/shapley_convergence.py --measure cut --checkpoint runs/bench/resnet20-fmnist.pt \\
        --groups layer2.2.conv1 layer3.2.conv1 --threads 1 --out benchmarks/results/shapley_cut.json
    python benchmarks/shapley_convergence.py --table benchmarks/results/shapley_cut.json  # markdown

``--measure rank``: for growing permutation budgets, the Spearman rank correlation with a long-run
reference (plain permutation sampling); the first budget reaching rho >= 0.9, its coalition
evaluations, image-forwards and wall time. Naive: plain sampling, full forward per coalition
(``mode="hooks"``), one coalition per forward; engineered: downstream-only re-execution,
batched coalitions, antithetic permutations, truncation at 2%.

    python benchmarks/shapley_convergence.py --checkpoint runs/bench/resnet20-fmnist.pt \\
        --out benchmarks/results/shapley_convergence.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from pruning.data import DataConfig, calibration_batches, load_data, make_loader
from pruning.games import (
    BlockMerge,
    BoundaryStop,
    GameSettings,
    LayerGame,
    PermutationSampling,
    ShapleyOptions,
    calibration_batch,
    estimate_block,
    permutation_shapley,
    shapley_blocks,
)
from pruning.structure import PruningSpace, load_checkpoint

BUDGETS = (2, 4, 8, 16, 32, 64)
#: (name, worth, stratified batch, stop rule); naive = what the criterion did before
CONFIGS = (
    ("naive", "logprob", False, "stderr"),
    ("kl", "kl", False, "boundary"),
    ("stratified", "logprob", True, "boundary"),
    ("ours", "kl", True, "boundary"),
)
MATCH = 0.95


# --- --measure rank (unchanged) ----------------------------------------------------------------


def run_rank(game_factory, reference, **options):
    for budget in BUDGETS:
        game = game_factory()
        started = time.perf_counter()
        estimate = permutation_shapley(game, PermutationSampling(max_permutations=budget, **options), seed=1)
        seconds = time.perf_counter() - started
        rho = float(spearmanr(estimate.values.numpy(), reference.numpy()).statistic)
        if rho >= 0.9:
            return {"permutations": budget, "rho": rho, "coalitions": estimate.evaluations,
                    "image_forwards": estimate.evaluations * game.batch_size, "seconds": seconds}
    return {"permutations": None, "rho": rho, "coalitions": estimate.evaluations,
            "image_forwards": estimate.evaluations * game.batch_size, "seconds": seconds}


def measure_rank(args, model, space, splits) -> list[dict]:
    x, y = next(iter(make_loader(splits.calibration, args.images, shuffle=False)))
    rows = []
    for name in args.groups:
        group = space[name]
        started = time.perf_counter()
        reference = permutation_shapley(
            LayerGame(model, group, x, y, GameSettings(mode="fx")),
            PermutationSampling(max_permutations=args.reference_permutations, batch_permutations=16), seed=12345)
        reference_seconds = time.perf_counter() - started
        naive = run_rank(lambda: LayerGame(model, group, x, y, GameSettings(mode="hooks", max_batch=args.images)),
                         reference.values,
                         batch_permutations=1)
        engineered = run_rank(lambda: LayerGame(model, group, x, y, GameSettings(mode="fx")), reference.values,
                              antithetic=True, truncation_tol=0.02 * abs(reference.v_full - reference.v_empty),
                              batch_permutations=8)
        row = {"group": name, "channels": group.size, "reference_seconds": reference_seconds,
               "naive": naive, "engineered": engineered}
        if naive["permutations"] and engineered["permutations"]:
            row["forward_ratio"] = naive["image_forwards"] / engineered["image_forwards"]
            row["time_ratio"] = naive["seconds"] / engineered["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# --- --measure cut ------------------------------------------------------------------------------


def kept_set(values: torch.Tensor, ratio: float) -> set[int]:
    """The channels pruning keeps: the ``n - round(ratio n)`` highest (ties: lower index)."""
    k = BoundaryStop(ratio).kept(len(values))
    return set(torch.argsort(values, descending=True, stable=True)[:k].tolist())


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b)


def mask_of(kept: set[int], size: int) -> torch.Tensor:
    mask = torch.zeros(1, size, dtype=torch.bool)
    mask[0, sorted(kept)] = True
    return mask


def trace(game: LayerGame, options: ShapleyOptions, seed: int, reference: set[int], ratio: float) -> list[dict]:
    """One estimator run, block by block: coalition evaluations, Jaccard with ``reference``,
    regret (worth of the reference's kept set minus this one's, per |v(N) - v(empty)|; one extra
    coalition per block, not counted), max stderr relative to |v(N) - v(empty)| and the boundary
    overlap at z = 2 in channel shares (the rule with margin m fires at the first block <= m)."""
    plan = shapley_blocks(options, seed, game.group.name)
    merge = BlockMerge(len(plan), None)
    rule = BoundaryStop(ratio)
    v_reference = float(game.values(mask_of(reference, game.size))[0])
    rows = []
    for k, (count, block_seed) in enumerate(plan):
        merge.add(k, estimate_block(game, options, count, block_seed))
        est = merge.estimate()
        span = abs(est.v_full - est.v_empty)
        kept = kept_set(est.values, ratio)
        regret = (v_reference - float(game.values(mask_of(kept, game.size))[0])) / span
        rows.append({"evaluations": est.evaluations, "permutations": est.permutations,
                     "jaccard": jaccard(kept, reference), "regret": regret,
                     "max_stderr": float(est.stderr.max()) / span, "overlap": rule.overlap(est.stats, span)})
    return rows


def summarise(runs: list[list[dict]], epsilons: list[float], margins: list[float]) -> dict:
    """Per seed: evaluations to a lasting match, and each stop rule's evaluations, Jaccard and
    regret at its stop (the last block when it never fired)."""
    def stop(rows, fired):
        row = next((r for r in rows if fired(r)), rows[-1])
        return {"evaluations": row["evaluations"], "jaccard": row["jaccard"], "regret": row["regret"],
                "fired": fired(row)}

    out = {"match": [], "stderr": {str(e): [] for e in epsilons}, "boundary": {str(m): [] for m in margins}}
    for rows in runs:
        lasting = None
        for row in reversed(rows):
            if row["jaccard"] < MATCH:
                break
            lasting = row["evaluations"]
        out["match"].append(lasting)
        for e in epsilons:
            out["stderr"][str(e)].append(stop(rows, lambda r, e=e: r["max_stderr"] < e))
        for m in margins:
            out["boundary"][str(m)].append(stop(rows, lambda r, m=m: r["overlap"] <= m))
    return out


def held_out(model, group, kept: set[int], images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy and log-probability of the model with only ``kept`` of the group's channels, on
    held-out test images: whether a game's kept set is a good one, in units every game shares."""
    mask = mask_of(kept, group.size)
    return {value: float(LayerGame(model, group, images, labels, GameSettings(value=value, mode="fx")).values(mask)[0])
            for value in ("accuracy", "logprob")}


def measure_cut(args, model, space, splits) -> list[dict]:
    batches = calibration_batches(splits, args.calibration_images, 128)
    test_x, test_y = next(iter(make_loader(splits.test, args.test_images, shuffle=False)))
    configs = [c for c in CONFIGS if c[0] in args.configs]
    rows = []
    for name in args.groups:
        group = space[name]
        row = {"group": name, "channels": group.size, "kept": BoundaryStop(args.ratio).kept(group.size), "configs": {}}
        references = {}
        for label, value, stratified, _ in configs:
            options = ShapleyOptions(max_permutations=args.max_permutations, value=value, batch_size=args.images,
                                     stratified=stratified, batch_permutations=8)
            x, y = calibration_batch(batches, args.images, stratified=stratified, seed=0)
            game = LayerGame(model, group, x, y, GameSettings(value=value, mode="fx"))
            started = time.perf_counter()
            ref = permutation_shapley(game,
                                      PermutationSampling(max_permutations=args.reference_permutations, antithetic=True,
                                                          batch_permutations=16), seed=12345)
            reference = kept_set(ref.values, args.ratio)
            references[label] = reference
            span = abs(ref.v_full - ref.v_empty)
            info = {"reference_seconds": time.perf_counter() - started, "v_full": ref.v_full, "v_empty": ref.v_empty,
                    "reference_overlap": BoundaryStop(args.ratio).overlap(ref.stats, span),
                    "reference_values": ref.values.tolist(), "reference_stderr": ref.stderr.tolist(),
                    "held_out": held_out(model, group, reference, test_x, test_y)}
            started = time.perf_counter()
            runs = [trace(game, options, seed, reference, args.ratio) for seed in range(args.seeds)]
            info["trace_seconds"] = time.perf_counter() - started
            info.update(summarise(runs, args.epsilons, args.margins))
            info["runs"] = runs
            row["configs"][label] = info
            brief = {k: v for k, v in info.items() if k not in ("runs", "reference_values", "reference_stderr")}
            print(json.dumps({"group": name, "config": label, **brief}), flush=True)
        if "naive" in references:
            row["reference_jaccard_vs_naive"] = {k: jaccard(v, references["naive"]) for k, v in references.items()}
        rows.append(row)
    return rows


def cut_table(path: str) -> str:
    """The markdown table of a ``--measure cut`` result: per group and configuration, means over
    the seeds (evaluations; Jaccard and regret at the stop) and how many seeds' rule fired."""
    data = json.loads(Path(path).read_text())
    lines = ["| group (kept/n) | config | reference overlap (shares) | held-out acc. of reference kept set "
             "| evaluations to Jaccard >= 0.95 | rule | stops at (evaluations) | fired | Jaccard at stop "
             "| regret at stop (x span) |", "|" + "---|" * 10]

    def mean(xs):
        return sum(xs) / len(xs)

    for row in data["rows"]:
        for label, info in row["configs"].items():
            match = info["match"]
            reached = [m for m in match if m is not None]
            match_text = f"{mean(reached):.0f} ({len(reached)}/{len(match)} seeds)" if reached else f"not in budget (0/{len(match)})"
            rules = [(f"stderr < {e}", info["stderr"][e]) for e in info["stderr"]]
            rules += [(f"boundary, margin {m}", info["boundary"][m]) for m in info["boundary"]]
            for rule, stops in rules:
                lines.append(
                    f"| {row['group']} ({row['kept']}/{row['channels']}) | {label} | {info['reference_overlap']:.2f} "
                    f"| {info['held_out']['accuracy']:.3f} | {match_text} | {rule} "
                    f"| {mean([s['evaluations'] for s in stops]):.0f} | {sum(s['fired'] for s in stops)}/{len(stops)} "
                    f"| {mean([s['jaccard'] for s in stops]):.3f} | {mean([s['regret'] for s in stops]):+.3f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(cut_table(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--measure", choices=("rank", "cut"), default="rank")
    parser.add_argument("--groups", nargs="+", default=["layer1.0.conv1", "layer2.1.conv1", "layer3.2.conv1"])
    parser.add_argument("--images", type=int, default=None, help="batch images (rank: 64, cut: 30)")
    parser.add_argument("--reference-permutations", type=int, default=None, help="rank: 400, cut: 256")
    parser.add_argument("--calibration-images", type=int, default=1000, help="cut: the pool a stratified batch draws from")
    parser.add_argument("--ratio", type=float, default=0.5, help="cut: the pruned fraction")
    parser.add_argument("--max-permutations", type=int, default=128, help="cut: one run's budget")
    parser.add_argument("--seeds", type=int, default=2, help="cut: runs per configuration")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.05, 0.02, 0.01],
                        help="cut: the stderr rule's epsilon, relative to |v(N) - v(empty)|")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5],
                        help="cut: the boundary rule's margin, in channel shares |v(N) - v(empty)| / n")
    parser.add_argument("--test-images", type=int, default=1000, help="cut: held-out images scoring each kept set")
    parser.add_argument("--configs", nargs="+", default=[c[0] for c in CONFIGS], choices=[c[0] for c in CONFIGS],
                        help="cut: which configurations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cut = args.measure == "cut"
    args.images = args.images or (30 if cut else 64)
    args.reference_permutations = args.reference_permutations or (256 if cut else 400)
    torch.set_num_threads(args.threads)
    model, spec = load_checkpoint(args.checkpoint)
    splits = load_data(DataConfig(**spec.meta["data"]))
    space = PruningSpace.build(model, torch.zeros(1, *spec.input_shape))
    rows = (measure_cut if cut else measure_rank)(args, model, space, splits)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
