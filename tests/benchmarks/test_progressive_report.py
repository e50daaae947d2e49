"""The progressive-pruning benchmark's report (benchmarks/progressive.py): files of one checkpoint
merged, each progressive variant paired with one shot by seed, the other variants apart."""
import json

from benchmarks.progressive import report


def _row(steps, seed, accuracy, *, order="together", finetune="final", target=0.7):
    return {"criterion": "l1", "target": target, "steps": steps, "seed": seed, "order": order,
            "finetune": finetune, "test_accuracy": accuracy, "macs_reduction": 0.7, "recovery_seconds": steps * 2.0}


def _file(tmp_path, name, rows):
    settings = {"checkpoint": "runs/r20.pt", "test_subset": 100, "ratios": "uniform", "finetune_subset": 50,
                "distill": 0.5}
    path = tmp_path / name
    path.write_text(json.dumps({"settings": settings, "base_accuracy": 0.93, "base_macs": 3e7, "rows": rows}))
    return str(path)


def test_steps_are_paired_with_one_shot_by_seed_across_files(tmp_path):
    one_shot = _file(tmp_path, "a.json", [_row(1, 0, 0.90), _row(1, 1, 0.92), _row(4, 0, 0.91), _row(4, 1, 0.94)])
    split = _file(tmp_path, "c.json", [_row(4, 0, 0.88, finetune="split"), _row(4, 1, 0.90, finetune="split"),
                                       _row(4, 2, 0.99, finetune="split")])
    text = report([one_shot, split])
    main, other = text.split("Other step orders and fine-tunes:")
    assert "| criterion | target | MACs removed | one shot | 4 steps | recovery s (one shot / 4 steps) |" in main
    # 4 steps: mean 0.925, +1.5 points from one shot's seeds 0 and 1 (differences +1 and +2)
    assert "| l1 | -70% | 70.0% | 0.9100 (-2.00) | 0.9250 (-0.50), Δ +1.50 [" in main and "| 2 / 8 |" in main
    # the split variant's seed 2 has no one-shot twin: its mean counts it, the pairs do not
    assert "| one shot | 4 steps, split fine-tune |" in other
    assert "0.9233 (-0.67), Δ -2.00 [" in other
    assert "`a.json`, `c.json`" in text
