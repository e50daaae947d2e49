"""The segmentation benchmark's report (benchmarks/segmentation.py): the one-shot grid per criterion
and options, each refined sweep trial against the best one-shot cell removing as many MACs."""
import json

from benchmarks.segmentation import report


def _cell(criterion, target, miou, reduction=None, options=None):
    return {"criterion": criterion, "options": options or {}, "target": target, "macs": 1.0,
            "macs_reduction": target + 0.001 if reduction is None else reduction,
            "test": {"miou": miou, "pixel_accuracy": 0.9}}


def test_refined_trials_meet_the_best_one_shot_cell_that_removes_as_many_macs(tmp_path):
    oneshot = tmp_path / "oneshot.json"
    oneshot.write_text(json.dumps({
        "base_test": {"miou": 0.5, "pixel_accuracy": 0.9}, "base_macs": 8.4e7, "test_images": 100,
        "calibration_images": 64, "machine": "test",
        "rows": [_cell("taylor", 0.3, 0.49), _cell("taylor", 0.5, 0.46), _cell("entropy", 0.5, 0.47),
                 _cell("shapley", 0.3, 0.30, options={"value": "distill"})]}))
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({
        "sweep": {"trials": 4, "refine": {"recipe": {"finetune_epochs": 1}}},
        "rows": [{"trial": "refine-001", "criterion": "entropy", "macs_reduction": 0.505, "test": {"miou": 0.48}},
                 {"trial": "refine-002", "criterion": "taylor", "macs_reduction": 0.75, "test": {"miou": 0.40}}]}))
    text = report(str(oneshot), str(sweep))
    assert "| taylor | 30.1%, 0.4900 (-1.00) | 50.1%, 0.4600 (-4.00) | - |" in text
    assert "| shapley (value=distill) | 30.1%, 0.3000 (-20.00) | - | - |" in text
    # 50.5% removed: the -50% cells count (within 1 point), entropy's is the best of them
    assert "| refine-001 | entropy | 50.5% | 0.4800 | entropy -50%: 0.4700 | +1.00 |" in text
    assert "| refine-002 | taylor | 75.0% | 0.4000 | none removes as much | - |" in text
