"""What the sweep tests share: a tiny sweep config, the CLI's JSON and the sweep's MLflow tracker."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

from orchestrator import cli
from orchestrator.experiment import Tracker

#: small but real: 64 calibration images; the default recipe (reconstruction on) with 2 BN
#: batches and fine-tuning on 64 images at most
TINY_DATA = {"calibration_images": 64, "batch_size": 64}
TINY_RECIPE = {"bn_batches": 2, "batch_size": 64, "finetune_subset": 64}


def main_json(argv: list) -> dict:
    """The one JSON line ``prunesweep ARGV --json --quiet`` prints (in this process; exit 0)."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = cli.main([str(a) for a in argv] + ["--json", "--quiet"])
    assert code == 0
    assert buffer.getvalue().count("\n") == 1, "--json prints exactly one line on stdout"
    return json.loads(buffer.getvalue())


def sweep_config(checkpoint: Path, run_dir: Path, *, name: str, space: dict, **sweep) -> dict:
    return {"name": name, "checkpoint": str(checkpoint), "data": dict(TINY_DATA), "recipe": dict(TINY_RECIPE),
            "space": space, "sweep": {"concurrency": 2, **sweep}, "run_dir": str(run_dir)}


def tracker_of(result_or_config) -> Tracker:
    tracker = Tracker(result_or_config.tracking_uri, "prunesweep", result_or_config.run_dir)
    assert tracker.find_parent() is not None
    return tracker


def file_digests(folder: Path) -> dict[str, str]:
    """{path relative to ``folder``: sha256 of its bytes} of every file under ``folder``."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_refused(capsys, argv: list, *needles: str) -> str:
    """``prunesweep ARGV`` (in this process) exits 2 with one ``error:`` line naming each needle."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == cli.EXIT_BAD_INPUT == 2 and out == "", (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]
