"""Render benchmark JSON results from criteria_accuracy.py as markdown tables.

    python benchmarks/to_markdown.py FILE...           # one table per file (mean over seeds)
    python benchmarks/to_markdown.py --aim FILE...     # every criterion against random
    python benchmarks/to_markdown.py --aim FILE... --write docs/benchmarks.md --key KEY
                                                       # ... into the doc's generated block KEY

``--aim``: the rows of all files grouped by recipe (the last stage each row's recipe ran:
"bn" without reconstruction, "reconstruct+bn" with it; the file's recipe unless the row says),
criterion (with its options, e.g. ``entropy (source=consumer)``), ratios (information
concentration with its fusion) and target; each cell is the mean ± sample standard
deviation over seeds, set against ``random`` of the same recipe and target (from any of the
files), with the difference and whether the criterion's mean is above random's.

The in-run latencies are left out: they were taken on a shared machine; benchmarks/latency.py
measures speedups on a quiet one."""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

from docs_blocks import add_block_arguments, criterion_label, write_or_print


def render(path: str) -> str:
    result = json.loads(open(path).read())
    base = result["base"]
    # "recovered": what older result files call the reconstruction stage
    stages = [s for s in ("pruned", "recovered", "reconstructed", "bn_recalibrated", "finetuned") if s in result["rows"][0]]
    lines = [
        f"Base {result['model']} on {result['dataset']}: accuracy {base['accuracy']:.4f}, "
        f"{base['macs'] / 1e6:.2f} M MACs, {base['params'] / 1e3:.1f} k params.",
        "",
        "| criterion | ratios | target | MACs red. | params red. | " + " | ".join(stages) + " |",
        "|---|---|---|---|---|" + "---|" * len(stages),
    ]
    grouped = defaultdict(list)
    for row in result["rows"]:
        grouped[(row["criterion"], row["ratios"], row["target"])].append(row)
    for (criterion, ratios, target), rows in grouped.items():
        def cell(key):
            values = [r[key] for r in rows]
            mean = statistics.mean(values)
            return f"{mean:.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")
        lines.append(
            f"| {criterion}{' (%d seeds)' % len(rows) if len(rows) > 1 else ''} | {ratios} | {target:.0%} | "
            f"{statistics.mean(r['macs_reduction'] for r in rows):.1%} | {statistics.mean(r['params_reduction'] for r in rows):.1%} | "
            + " | ".join(cell(s) for s in stages)
            + " |"
        )
    return "\n".join(lines)


def _label(name: str, result: dict) -> str:
    return criterion_label(name, result.get("settings", {}).get("criterion_options", {}).get(name))


def _mean_sd(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def render_aim(paths: list[str], reference: str = "random") -> str:
    cells = defaultdict(list)  # (recipe, label, ratios, target) -> accuracies
    for path in paths:
        result = json.loads(open(path).read())
        settings = result["settings"]  # files from before the recipe existed say "recover"
        reconstructed = settings.get("recipe", {}).get("reconstruct", settings.get("recover", False))
        for row in result["rows"]:  # a --both-reconstructions row says which it ran
            recipe = "reconstruct+bn" if row.get("reconstruct", reconstructed) else "bn"
            ratios = row["ratios"]
            if ratios == "concentration" and "fusion" in settings:  # two fusions are two pipelines
                ratios = f"concentration ({settings['fusion']})"
            cells[(recipe, _label(row["criterion"], result), ratios, row["target"])].append(row["bn_recalibrated"])
    lines = []
    for recipe in sorted({k[0] for k in cells}):
        lines += [f"After {recipe} (test accuracy, mean ± sd over seeds; n = seeds):", "",
                  f"| criterion | ratios | target | accuracy | n | {reference} | difference | above {reference} |",
                  "|---|---|---|---|---|---|---|---|"]
        for (r, label, ratios, target), values in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3])):
            if r != recipe or label == reference:
                continue
            ref = next((v for k, v in cells.items() if k[0] == recipe and k[1] == reference and k[3] == target), None)
            diff = statistics.mean(values) - statistics.mean(ref) if ref else None
            lines.append(
                f"| {label} | {ratios} | {target:.0%} | {_mean_sd(values)} | {len(values)} | "
                + (f"{_mean_sd(ref)} | {diff:+.4f} | {'yes' if diff > 0 else '**no**'} |" if ref else "- | - | - |")
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--aim", action="store_true", help="every criterion against random")
    add_block_arguments(parser)
    args = parser.parse_args()
    write_or_print(parser, args, render_aim(args.files) if args.aim else "\n\n".join(render(p) for p in args.files))


if __name__ == "__main__":
    main()
