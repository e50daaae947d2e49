"""The command line as a whole: `info`, the console script, argparse's errors, and which
exceptions become one `error:` line (bad input, exit 2) and which stay a traceback (bugs, exit 1)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from cli_helpers import console_script, run_cli, run_json
from orchestrator import cli
from orchestrator.cli import info
from pruning.recovery import RecoveryRecipe


def test_info_json_lists_everything(capsys):
    data = run_json(capsys, "info")
    for key in ("models", "criteria", "datasets", "strategies", "ratios"):
        assert isinstance(data[key], list) and data[key], key
    assert "resnet20" in data["models"]
    assert {"l1", "entropy", "hrank"} <= set(data["criteria"])
    assert "fashion-mnist" in data["datasets"]
    assert data["strategies"] == ["full", "inner"]
    assert {"uniform", "concentration", "FILE.json"} <= set(data["ratios"])


def test_json_stdout_holds_the_result_only_when_a_library_prints(capsys, monkeypatch):
    """What is printed while a --json command runs (Ray prints its lost-node notices on stdout)
    reaches stderr; stdout is the one JSON line."""
    real = info.run

    def noisy(args):
        print("(raylet) a library notice")
        return real(args)

    monkeypatch.setattr(info, "run", noisy)
    data = run_json(capsys, "info")
    assert "resnet20" in data["models"]
    code, out, err = run_cli(capsys, "info", "--json")
    assert code == 0 and "(raylet) a library notice" in err and "(raylet)" not in out


def test_info_text(capsys):
    code, out, err = run_cli(capsys, "info")
    assert code == 0 and err == ""
    assert "resnet20" in out and "fashion-mnist" in out and "inner" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_console_script_info_json():
    proc = subprocess.run([console_script(), "info", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "resnet20" in json.loads(proc.stdout)["models"]


def test_console_script_bad_input_exits_2(tmp_path):
    out = tmp_path / "x.pt"
    proc = subprocess.run([console_script(), "train", "--model", "nope", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: unknown model 'nope'") and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    [],                                   # no command
    ["frobnicate"],                       # unknown command
    ["train"],                            # missing --out
    ["prune"],                            # missing --checkpoint
    ["stats", "--checkpoint", "x.pt"],    # missing --out
    ["prune", "--checkpoint", "x.pt", "--ratio", "0.2", "--flops-reduction", "0.2"],  # mutually exclusive
    ["prune", "--checkpoint", "x.pt", "--ratio", "half"],                          # not a float
    ["stats", "--checkpoint", "x.pt", "--out", "s.pt", "--value", "nope"],       # not a choice
])
def test_argparse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip()


@pytest.mark.parametrize("bug", [TypeError("an unexpected keyword argument"), KeyError("missing"),
                                 ValueError("a library invariant")])
def test_a_programming_error_keeps_its_traceback(bug, capsys, monkeypatch):
    """Only bad input is one `error:` line with exit 2; anything else is a bug: a traceback
    (the exception propagates; the console script then exits 1)."""
    def broken(args):
        raise bug

    monkeypatch.setattr(info, "run", broken)
    with pytest.raises(type(bug)):
        cli.main(["info"])
    assert "error:" not in capsys.readouterr().err


def test_a_programming_error_at_the_entry_point_exits_1():
    """What the console script runs, with `info` broken: a traceback and exit 1, no `error:` line."""
    program = textwrap.dedent('''
        import sys
        from orchestrator.cli import info, main

        def broken(args):
            raise KeyError("bug")

        info.run = broken
        sys.exit(main())
    ''')
    proc = subprocess.run([sys.executable, "-c", program, "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "KeyError: 'bug'" in proc.stderr
    assert "error:" not in proc.stderr


def test_prune_help_shows_the_recipe_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["prune", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    recipe = RecoveryRecipe()
    assert recipe.reconstruct and "reconstruct: off (default: on)" in text
    assert "--recover" not in text and "--temperature" not in text  # renamed: refused, not shown
    assert f"batches for BN recalibration (0: off) (default: {recipe.bn_batches})" in text
    assert f"where BN recalibration batches come from: train or calibration (default: {recipe.bn_data})" in text
    assert f"fine-tuning epochs (default: {recipe.finetune_epochs})" in text
    assert f"global norm ('none': never) (default: {recipe.finetune_max_grad_norm:g})" in text
