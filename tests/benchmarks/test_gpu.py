"""The GPU benchmark and its prepared check, on the CPU: gpu.py refuses without CUDA in one line
and builds a valid 2-trial sweep at gpus_per_trial 0.5; gpu_check.sh parses, and where neither a
.venv nor the package index is there it says so in one line and still logs every step's status."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks.gpu import main, parse_args, sweep_config
from orchestrator.sweeps import SweepConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")


@no_cuda
def test_gpu_py_refuses_without_cuda_in_one_line(capsys):
    assert main(["--out", "unused.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: benchmarks/gpu.py compares a CUDA GPU")
    assert not os.path.exists("unused.json")


def test_the_sweep_is_two_screening_trials_sharing_a_gpu_on_the_given_checkpoint(tmp_path):
    args = parse_args(["--run-dir", str(tmp_path)])
    config = SweepConfig.from_dict(sweep_config(args, tmp_path / "base.pt", args.gpus_per_trial))
    assert (config.sweep.trials, config.sweep.concurrency, config.sweep.gpus_per_trial) == (2, 2, 0.5)
    assert config.sweep.refine.candidates == 0
    assert config.checkpoint == str(tmp_path / "base.pt")
    assert Path(config.run_dir) == tmp_path / "gpus-0.5"


def test_the_check_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_offline_without_a_venv_the_check_says_so_in_one_line_and_logs_every_step(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(SCRIPT, tmp_path / "benchmarks")
    results = tmp_path / "results"
    # no pip configuration, no index: as on a machine that reaches no package index
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "OUT": str(results),
           "GPU_CHECK_SECONDS": "60", "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}
    done = subprocess.run(["bash", str(tmp_path / "benchmarks" / "gpu_check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    log = (results / "gpu_check.log").read_text()
    offline = [line for line in log.splitlines() if line.startswith("setup: the package index is unreachable")]
    assert len(offline) == 1 and "cannot run offline" in offline[0]
    for step in ("environment", "gpu", "sweep", "scaling"):
        assert f"== {step}: " in log, step
    assert "GPU check: failed or skipped: " in log
