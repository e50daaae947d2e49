"""Running ``prunesweep`` in-process (:func:`orchestrator.cli.main`) and reading what it printed."""
from __future__ import annotations

import io
import json
import shutil
import sys
from contextlib import redirect_stdout
from dataclasses import asdict
from pathlib import Path

from orchestrator import cli
from pruning.data import DataConfig

#: a quick data config for hand-built checkpoints (what the `trained_resnet20` fixture records)
#: quick data and recovery for the commands run on a model of one's own, so its modules stay fast
QUICK = ["--test-subset", "128", "--calibration-images", "64", "--batch-size", "64", "--bn-batches", "1"]
SMALL_DATA = asdict(DataConfig(name="fashion-mnist", calibration_size=256, train_subset=512, test_subset=256))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv) -> dict:
    """``--json --quiet`` output: exactly one line holding one JSON object."""
    code, out, err = run_cli(capsys, *argv, "--json", "--quiet")
    assert code == 0, err
    assert out.count("\n") == 1, f"--json must print exactly one line: {out!r}"
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def assert_bad_input(capsys, argv, *needles: str, no_files=()) -> str:
    """Exit 2, one `error:` line on stderr naming each needle, nothing on stdout, no files."""
    code, out, err = run_cli(capsys, *argv)
    assert code == cli.EXIT_BAD_INPUT == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    for path in no_files:
        assert not Path(path).exists(), f"{path} was written despite the error"
    return lines[0]


def console_script() -> str:
    """The installed ``prunesweep`` command."""
    script = Path(sys.executable).with_name("prunesweep")
    return str(script) if script.exists() else shutil.which("prunesweep") or "prunesweep"


def main_json(*argv) -> dict:
    """``run_json`` for module fixtures, which have no capsys: stdout captured by redirection."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = cli.main([str(a) for a in argv] + ["--json", "--quiet"])
    assert code == 0
    assert buffer.getvalue().count("\n") == 1
    return json.loads(buffer.getvalue())
