"""Render benchmark JSON results from criteria_accuracy.py as a markdown table (mean over seeds).

The in-run latencies are left out: they were taken on a shared machine; benchmarks/latency.py
measures speedups on a quiet one."""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


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


if __name__ == "__main__":
    print("\n\n".join(render(p) for p in sys.argv[1:]))
