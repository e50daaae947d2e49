"""Which zoo architectures the engine prunes: build the space -> L1 at a FLOPs target -> forward.

Each model runs in its own subprocess under an address-space limit (``--memory-gb``) and a
wall-clock limit (``--timeout``), so one model that exhausts memory cannot take the machine
down. Random init, one image of ``--size`` pixels; prints one JSON line per model: ``pruned``
(with the planned and measured MAC reduction), ``refused`` (the one-line ``InputError``) or
``failed`` (any other exception, a bug) / ``killed`` (a limit was hit). ``--out FILE`` keeps the
lines in a result file (entries of other models kept, the same model's replaced); ``--report
FILE`` renders one as a Markdown table (``--write DOC --key KEY``: into DOC's generated block).

    python benchmarks/engine_coverage.py --out benchmarks/results/engine_coverage.json
    python benchmarks/engine_coverage.py --report benchmarks/results/engine_coverage.json \
        --write docs/scale.md --key engine-coverage
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.docs_blocks import add_block_arguments, write_or_print  # noqa: E402
from pruning.utils import atomic_write  # noqa: E402

DEFAULT_MODELS = (
    "resnext50_32x4d regnet_x_400mf regnet_y_400mf shufflenet_v2_x1_0 vit_b_16 "
    "timm:deit_tiny_patch16_224 timm:ghostnet_100 swin_t maxvit_t timm:rexnet_100 "
    "resnet18 resnet50 wide_resnet50_2 vgg16_bn alexnet squeezenet1_0 densenet121 googlenet "
    "inception_v3 mobilenet_v2 mobilenet_v3_small mnasnet1_0 efficientnet_b0 efficientnet_v2_s convnext_tiny"
).split()


#: models that need an input size of their own: MaxViT's window partition 224 px, Inception-v3's
#: stem at least 75 px
FIXED_SIZES = {"maxvit_t": 224, "inception_v3": 96}


def build(name: str, size: int):
    import torch
    if name.startswith("timm:"):
        import timm
        return timm.create_model(name[5:], pretrained=False, num_classes=10, img_size=size) \
            if "deit" in name or "vit" in name else timm.create_model(name[5:], pretrained=False, num_classes=10)
    import torchvision
    kwargs = {"image_size": size} if name.startswith("vit_") else {"input_size": (size, size)} if name == "maxvit_t" else {}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)


def run_one(name: str, size: int, target: float) -> dict:
    import torch
    from pruning.criteria import create_criterion
    from pruning.errors import InputError
    from pruning.pipeline import prune_with_criterion
    from pruning.planning import PruningConfig
    from pruning.structure import PruningSpace, count_macs

    torch.set_num_threads(2)
    size = FIXED_SIZES.get(name, size)
    model = build(name, size).eval()
    x = torch.randn(1, 3, size, size)
    start = time.perf_counter()
    try:
        space = PruningSpace.build(model, x)
        built = time.perf_counter() - start
        outcome = prune_with_criterion(model, x, create_criterion("l1"), PruningConfig(flops_reduction=target),
                                       space=space)
        with torch.no_grad():
            out = outcome.model(x)
    except InputError as err:
        return {"model": name, "size": size, "outcome": "refused", "error": str(err),
                "seconds": round(time.perf_counter() - start, 1)}
    measured = 1 - count_macs(outcome.model, x) / count_macs(model, x)
    return {"model": name, "size": size, "outcome": "pruned", "planned": round(outcome.planned_reduction, 4),
            "measured": round(measured, 4), "output": list(out.shape), "groups": len(space.groups),
            "excluded": len(getattr(space, "excluded", ())), "build_s": round(built, 1),
            "seconds": round(time.perf_counter() - start, 1)}


def measure(name: str, args: argparse.Namespace) -> dict:
    """One model's entry, from its own limited subprocess."""
    cmd = [sys.executable, __file__, "--one", name, "--size", str(args.size), "--target", str(args.target),
           "--memory-gb", str(args.memory_gb)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "outcome": "killed", "error": f"over {args.timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"model": name, "outcome": "failed", "error": last[:300]}


def render(result: dict) -> str:
    """The result file as a Markdown table, one row per model."""
    rows = ["| model | px | outcome | planned | measured MACs red. | groups | excluded | seconds | one-line reason |",
            "|---|---|---|---|---|---|---|---|---|"]
    for run in result["runs"].values():
        cells = [run["model"], run.get("size", result["size"]), run["outcome"], _percent(run.get("planned")), _percent(run.get("measured")),
                 run.get("groups", "-"), run.get("excluded", "-"), _seconds(run.get("seconds")),
                 run.get("error", "").replace("|", "\\|")]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return (f"One image, L1 at -{result['target']:.0%} MACs, random init; `px`: the input size.\n\n"
            + "\n".join(rows))


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--memory-gb", type=float, default=6.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", default=None, help="result file the entries are merged into")
    parser.add_argument("--report", default=None, metavar="FILE", help="render a result file instead of measuring")
    add_block_arguments(parser)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        write_or_print(parser, args, render(json.loads(Path(args.report).read_text())))
        return
    if args.one:
        limit = int(args.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(run_one(args.one, args.size, args.target)), flush=True)
        return
    result = {"size": args.size, "target": args.target, "runs": {}}
    if args.out and Path(args.out).exists():
        result = json.loads(Path(args.out).read_text())
        if (result["size"], result["target"]) != (args.size, args.target):
            parser.error(f"{args.out} holds size {result['size']} / target {result['target']}; use another --out")
    for name in args.models:
        entry = measure(name, args)
        print(json.dumps(entry), flush=True)
        result["runs"][name] = entry
        if args.out:
            atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))


if __name__ == "__main__":
    main()
