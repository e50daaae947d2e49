"""Classification through the task contract gives the numbers it gave before there were tasks:
training, evaluation, Taylor's and the games' scores, and a recovery with distillation (values
recorded with the code that hard-coded cross-entropy and accuracy, and identical bit for bit on the
machine that recorded them). Accuracies are counts and must match exactly; losses and score sums
to 1e-6, so that another CPU's float kernels do not fail a correct build."""
from __future__ import annotations

import pytest
import torch

from pruning.criteria import ScoringContext, create_criterion
from pruning.data import DataConfig, calibration_batches, load_data, make_loader
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.recovery import RecoveryRecipe, recover, recovery_data_for
from pruning.training import TrainConfig, evaluate, train
from user_models import tiny_cnn

PINNED = {
    ("taylor", ()): {"pruned": 0.13671875, "reconstructed": 0.16015625, "bn_recalibrated": 0.140625,
                     "finetuned": 0.1484375},
    ("shapley", ("logprob",)): {"pruned": 0.16015625, "reconstructed": 0.1640625, "bn_recalibrated": 0.1328125,
                                "finetuned": 0.1328125},
    ("shapley", ("kl",)): {"pruned": 0.1328125, "reconstructed": 0.15625, "bn_recalibrated": 0.12109375,
                           "finetuned": 0.125},
}
SCORE_SUMS = {("taylor", ()): 0.0006054691039025784, ("shapley", ("logprob",)): 0.037383779883384705,
              ("shapley", ("kl",)): 0.0036597391590476036}


@pytest.mark.fashion_mnist
def test_classification_numbers_are_pinned():
    torch.manual_seed(0)
    splits = load_data(DataConfig(calibration_size=128, train_subset=512, test_subset=256))
    model = tiny_cnn(10, 1, 8)
    test = make_loader(splits.test, 128, False)
    history = train(model, make_loader(splits.train, 64, True, seed=0), TrainConfig(epochs=1, lr=0.05),
                    progress=False, eval_loader=test)
    assert history == [{"epoch": 1, "loss": pytest.approx(2.3166178166866302, rel=1e-6), "accuracy": 0.0859375,
                        "lr": pytest.approx(0.0019030116872178317, rel=1e-9),
                        "eval_loss": pytest.approx(2.2785004377365112, rel=1e-6), "eval_accuracy": 0.16015625}]
    base = evaluate(model, test)
    assert (base.score, base.metrics) == (0.16015625, {"accuracy": 0.16015625})
    assert base.loss == pytest.approx(2.2785004377365112, rel=1e-6)
    batches = calibration_batches(splits, 128, 64)
    recipe = RecoveryRecipe(finetune_epochs=1, finetune_subset=256, distill=0.5, bn_batches=2)
    for (name, value), stages in PINNED.items():
        options = {"max_permutations": 4, "batch_size": 16, "value": value[0]} if name == "shapley" else {}
        outcome = prune_with_criterion(model, torch.zeros(1, 1, 28, 28), create_criterion(name, **options),
                                       PruningConfig(flops_reduction=0.4), ScoringContext(calibration=batches))
        assert float(sum(v.sum() for v in outcome.scores.values())) == pytest.approx(SCORE_SUMS[name, value], rel=1e-6)
        result = recover(model, outcome, recipe, recovery_data_for(splits, batches, test))
        assert result.scores == stages and result.metric == "accuracy"
