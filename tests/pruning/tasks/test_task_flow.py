"""Everything that reads labels or outputs goes through the task: training and evaluation,
Taylor's loss, the games' worth, recovery; criteria a task cannot serve are refused in one line."""
from __future__ import annotations

import pytest
import torch

from pruning.criteria import ScoringContext, create_criterion, statistics_options
from pruning.data import DataConfig, calibration_batches, make_loader
from pruning.errors import InputError
from pruning.models import create_model
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.recovery import RecoveryRecipe, recover, recovery_data_for
from pruning.statistics import collect_activation_stats
from pruning.structure import PruningSpace
from pruning.tasks import create_task
from pruning.training import TrainConfig, evaluate, train

SMALL = DataConfig(calibration_size=96, train_subset=192, test_subset=96)


@pytest.fixture(scope="module")
def segmentation(fashion_mnist):
    task = create_task("segmentation", canvas_size=32, items=2)
    splits = task.load_data(SMALL)
    torch.manual_seed(0)
    model = create_model("unet-small", num_classes=splits.num_classes, in_channels=1, width=8).eval()
    return task, splits, model, calibration_batches(splits, 32, 16)


@pytest.fixture(scope="module")
def multilabel(fashion_mnist):
    task = create_task("user_tasks:multilabel")
    return task, task.load_data(SMALL)


def test_training_and_evaluation_report_the_tasks_metrics(multilabel):
    from user_models import tiny_cnn

    task, splits = multilabel
    torch.manual_seed(0)
    model = tiny_cnn(13, 1, 8)
    test = make_loader(splits.test, 48, False)
    before = evaluate(model, test, task=task)
    history = train(model, make_loader(splits.train, 32, True), TrainConfig(epochs=2, lr=0.05), progress=False,
                    eval_loader=test, task=task)
    metrics = {"label_accuracy", "exact_match", "bce"}
    assert set(history[0]) == {"epoch", "loss", "lr", "eval_loss", *metrics, *(f"eval_{m}" for m in metrics)}
    after = evaluate(model, test, task=task)
    assert set(after.metrics) == metrics and after.primary == "label_accuracy" and after.samples == 96
    assert after.loss < before.loss and after.score == after.metrics["label_accuracy"]
    assert history[-1]["eval_bce"] == pytest.approx(after.metrics["bce"], rel=1e-6)


def test_distillation_uses_the_tasks_loss(segmentation):
    task, splits, model, _ = segmentation
    student = create_model("unet-small", num_classes=splits.num_classes, in_channels=1, width=8)
    history = train(student, make_loader(splits.train, 16, True), TrainConfig(epochs=1, lr=0.01, distill=0.5,
                    max_batches_per_epoch=2), progress=False, teacher=model, task=task)
    assert set(history[0]) == {"epoch", "loss", "lr", "miou", "pixel_accuracy"}


@pytest.mark.parametrize(("criterion", "options"), [
    ("l1", {}), ("taylor", {}), ("entropy", {}),
    ("shapley", {"max_permutations": 2, "batch_size": 4}),
    ("shapley", {"max_permutations": 2, "batch_size": 4, "value": "distill"}),
    ("snpfi", {"max_permutations": 2, "batch_size": 4}),
])
def test_every_kind_of_criterion_prunes_a_segmenter_and_recovers_on_miou(segmentation, criterion, options):
    task, splits, model, batches = segmentation
    chosen = create_criterion(criterion, **options)
    example = task.example_inputs((1, 32, 32))
    stats = None
    if chosen.needs_stats:
        space = PruningSpace.build(model, example)
        stats = collect_activation_stats(model, space.groups, batches, statistics_options([chosen]))
    context = ScoringContext(calibration=batches, stats=stats, task=task)
    outcome = prune_with_criterion(model, example, chosen, PruningConfig(flops_reduction=0.3), context)
    assert outcome.model(example).shape == (1, 11, 32, 32)
    recipe = RecoveryRecipe(finetune_epochs=1, finetune_subset=32, bn_batches=2)
    result = recover(model, outcome, recipe, recovery_data_for(splits, batches, batches, task=task))
    assert result.metric == "miou" and set(result.scores) == {"pruned", "reconstructed", "bn_recalibrated", "finetuned"}
    assert all(0.0 <= s <= 1.0 for s in result.scores.values())
    assert result.final_metrics.keys() == {"miou", "pixel_accuracy"} and result.final_metrics["miou"] == result.final_score


@pytest.mark.parametrize(("criterion", "options", "message"), [
    ("apoz", {"class_scores": "max"}, "criterion 'apoz' reads per-class statistics, which need class labels; "
                                         "task 'segmentation' has none"),
    ("shapley", {"stratified": True}, "criterion 'shapley' reads class-stratified game batches"),
    ("shapley", {"stratified": True, "class_scores": "max"}, "criterion 'shapley' reads per-class games"),
    ("shapley", {"value": "logprob"}, "task 'segmentation' has no game value 'logprob'; valid: loss, distill"),
])
def test_a_criterion_the_task_cannot_serve_is_refused_in_one_line(segmentation, criterion, options, message):
    task, _, model, batches = segmentation
    chosen = create_criterion(criterion, **options)
    with pytest.raises(InputError, match=message) as raised:
        prune_with_criterion(model, task.example_inputs((1, 32, 32)), chosen, PruningConfig(flops_reduction=0.3),
                             ScoringContext(calibration=batches, task=task))
    assert "\n" not in str(raised.value)
