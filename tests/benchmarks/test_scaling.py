"""The stage-cost benchmark (benchmarks/scaling.py) and its report: a quick run records every stage
with a ratio to the forward pass, a failing or stopped stage is one line and the rest goes on, and
the report renders the result file."""
import json
import os
import time

import pytest

from benchmarks.scaling import (
    AMP_STAGES, ROOT, STAGES, TRIAL, StageRecorder, child_command, child_environment, main, parse_args, run_grid,
    settings_of,
)
from benchmarks.scaling_report import render


@pytest.mark.slow
def test_a_quick_run_records_every_stage_as_a_ratio_to_the_forward_pass_and_renders(tmp_path):
    out = tmp_path / "scaling.json"
    main(["--quick", "--models", "mobilenet_v2", "--out", str(out)])
    result = json.loads(out.read_text())
    entry = result["runs"]["mobilenet_v2@8"]
    assert set(entry["stages"]) == set(STAGES)
    for name, stage in entry["stages"].items():
        assert stage["ratio"] == pytest.approx(stage["seconds"] / entry["forward_seconds"]), name
        assert stage["peak_rss_mib"] >= stage["rss_increase_mib"] >= 0
        assert "error" not in stage or stage["timed_out"]  # Shapley and SNPFI may be stopped at 3 s
    if "trial" in entry:  # unless a trial stage was stopped on a loaded machine
        assert entry["trial"]["seconds"] == pytest.approx(sum(entry["stages"][s]["seconds"] for s in TRIAL))
    assert entry["pruned_macs_reduction"] == pytest.approx(0.5, abs=0.01)
    text = render(result)
    assert "| stage | aim | mobilenet_v2 |" in text and "| score_snpfi | 2 |" in text
    assert "| process peak |" in text


def test_a_failing_or_stopped_stage_is_one_line_and_the_next_stage_runs():
    recorder = StageRecorder(timeout=0.2)
    assert recorder.run("broken", lambda: 1 / 0) is None
    assert recorder.run("slow", lambda: time.sleep(5)) is None
    assert recorder.run("fine", lambda: 7) == 7
    recorder.run("untimed", lambda: 1 / 0, record=False)
    broken, slow, fine = (recorder.stages[k] for k in ("broken", "slow", "fine"))
    assert broken["error"] == "ZeroDivisionError: division by zero" and not broken["timed_out"]
    assert slow["timed_out"] and "--stage-timeout" in slow["error"] and 0.2 <= slow["seconds"] < 5
    assert "error" not in fine and fine["peak_rss_mib"] > 0
    assert "untimed" not in recorder.stages


def test_a_model_whose_process_fails_is_recorded_and_the_grid_goes_on(tmp_path):
    out = tmp_path / "scaling.json"
    args = parse_args(["--quick", "--model-timeout", "0.01", "--out", str(out)])
    run_grid(args)
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"resnet18@8", "mobilenet_v2@8"}
    assert all("--model-timeout" in r["error"] for r in runs.values())
    assert "* resnet18: stopped after" in render(json.loads(out.read_text()))


def test_the_report_renders_the_sweep_throughput_and_where_a_trial_goes():
    result = {"settings": {"image_size": 224, "threads": 2, "aim_stage_ratio": 2.0, "aim_trial_ratio": 6.0},
              "stages": list(STAGES), "trial_stages": list(TRIAL), "runs": {}}
    sweep = {"model": "torchvision:mobilenet_v2", "image_size": 224, "trials": 16, "feasible": 15, "concurrency": 2,
             "trials_per_hour": 40.0, "sweep_seconds": 1800.0, "trials_wall_seconds": 1440.0,
             "tune_and_ray_seconds_per_trial": 4.0,
             "per_trial_seconds": {"prune_seconds": 1.0, "reconstructed_seconds": 5.0, "bn_recalibrated_seconds": 2.0,
                                   "score_seconds": 2.0, "trial_seconds": 10.0}}
    text = render(result, sweep)
    assert "**40 trials per hour**" in text
    assert "| least-squares reconstruction | 5.00 | 50% |" in text
    assert "| **trial (its wall time)** | **10.00** | 100% |" in text


def test_device_cpu_runs_every_stage_there_and_records_the_device_without_cuda_memory(tmp_path):
    out = tmp_path / "entry.json"
    main(["--child", "--models", "resnet18", "--calibration-images", "4", "--image-size", "32", "--threads", "1",
          "--repeats", "1", "--stages", "graph", "evaluate", "--device", "cpu", "--out", str(out)])
    entry = json.loads(out.read_text())
    assert (entry["device"], entry["amp"]) == ("cpu", None) and entry["device_name"]
    assert set(entry["stages"]) == {"graph", "evaluate"}
    assert all("ratio" in s and "peak_cuda_mib" not in s for s in entry["stages"].values())


def test_the_cpu_settings_are_unchanged_and_a_child_gets_the_device_and_amp():
    cpu = parse_args(["--quick", "--device", "cpu"])
    assert "device" not in settings_of(cpu) and settings_of(cpu) == settings_of(parse_args(["--quick"]))
    command = child_command(cpu, "resnet18", 8, "e.json")
    assert command[command.index("--device") + 1] == "cpu" and "--amp" not in command
    gpu = parse_args(["--quick", "--device", "cuda", "--amp", "bf16"])
    command = child_command(gpu, "resnet18", 8, "e.json")
    assert command[command.index("--amp") + 1] == "bf16"
    assert settings_of(gpu)["amp_stages"] == list(AMP_STAGES) and settings_of(gpu)["device"] == "cuda"


@pytest.mark.parametrize("argv, message", [
    (["--amp", "bf16"], "error: --amp needs a CUDA device; got --device cpu"),
    (["--device", "tpu"], "error: unknown --device 'tpu'"),
])
def test_an_unusable_device_or_amp_is_one_line_before_any_model_runs(tmp_path, capsys, argv, message):
    out = tmp_path / "scaling.json"
    with pytest.raises(SystemExit) as stop:
        main(["--quick", *argv, "--out", str(out)])
    assert stop.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(message)


def test_a_child_finds_this_checkout_first_and_keeps_the_packages_already_on_the_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/opt/wheels-site")
    assert child_environment()["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/opt/wheels-site"]
    monkeypatch.delenv("PYTHONPATH")
    assert child_environment()["PYTHONPATH"] == str(ROOT)
