"""A user's weights (a plain state_dict, never a pickled module) and the up-front check that the
pruning engine can handle a user's model."""
from __future__ import annotations

import pytest
import torch

from pruning.models import WeightsError, create_model, load_weights, read_weights
from pruning.structure.prunable import UnprunableModelError, check_prunable
from pruning.structure import ModelSpec, save_checkpoint
from user_models import UserCNN


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    source = UserCNN(width=4)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = load_weights(UserCNN(width=4), read_weights(tmp_path / "w.pt"))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(source.eval()(x), target.eval()(x))


def test_pickled_module_is_refused_with_how_to_save_a_state_dict(tmp_path):
    torch.save(UserCNN(), tmp_path / "module.pt")
    with pytest.raises(WeightsError) as raised:
        read_weights(tmp_path / "module.pt")
    message = str(raised.value)
    assert "torch.save(model.state_dict(), path)" in message and "\n" not in message


@pytest.mark.parametrize("write, needle", [
    (None, "does not exist"),
    (lambda p: p.write_text("hello"), "not a torch.save file"),
    (lambda p: torch.save([torch.zeros(1)], p), "holds a list, not a state_dict"),
    (lambda p: torch.save({"epoch": 3, "w": torch.zeros(1)}, p), "'epoch' is not a tensor"),
    (lambda p: save_checkpoint(p, UserCNN(), ModelSpec("user_models:tiny_cnn", 10, 1, (1, 28, 28))),
     "is a prunesweep checkpoint"),
])
def test_unreadable_weights(tmp_path, write, needle):
    path = tmp_path / "w.pt"
    if write is not None:
        write(path)
    with pytest.raises(WeightsError, match=needle.replace("(", r"\(")):
        read_weights(path)


def test_weights_of_another_architecture_name_the_first_mismatch():
    wide = UserCNN(width=8).state_dict()
    with pytest.raises(WeightsError) as raised:
        load_weights(UserCNN(width=4), wide, "model 'x'", "weights 'w.pt'")
    assert str(raised.value) == ("weights 'w.pt' do not fit model 'x': features.0.weight has shape 8x1x3x3 there, "
                                 "4x1x3x3 in the model")
    state = UserCNN().state_dict()
    del state["classifier.bias"]
    with pytest.raises(WeightsError, match="missing key classifier.bias$"):
        load_weights(UserCNN(), state)
    state = {**UserCNN().state_dict(), "extra.weight": torch.zeros(1), "more": torch.zeros(1)}
    with pytest.raises(WeightsError, match=r"unexpected key extra.weight \(and 1 more\)"):
        load_weights(UserCNN(), state)


def test_prunable_model_gives_its_space_and_is_not_modified():
    model = UserCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    space = check_prunable(model, (1, 28, 28), "mine")
    assert [g.name for g in space.groups] == ["features.0", "features.3"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_grouped_conv_prunes_one_channel_per_group():
    space = check_prunable(create_model("user_models:grouped_cnn", 10, 1), (1, 28, 28), "model 'g'")
    assert [g.units.width for g in space.groups] == [2, 2]


def test_channel_shuffle_fails_up_front_naming_the_layer():
    with pytest.raises(UnprunableModelError) as raised:
        check_prunable(create_model("user_models:shuffled_cnn", 10, 1), (1, 28, 28), "model 'g'")
    message = str(raised.value)
    assert message.startswith("model 'g' does not run once pruned at layer 'shuffle'") and "\n" not in message


def test_untraceable_torchvision_model_names_a_layer():
    """ShuffleNet's channel shuffle is a reshape Torch-Pruning cannot map."""
    model = create_model("torchvision:shufflenet_v2_x0_5", 10, 3)
    with pytest.raises(UnprunableModelError, match=r"cannot be traced for pruning after layer 'stage\d"):
        check_prunable(model, (3, 32, 32), "torchvision:shufflenet_v2_x0_5")


class TokensOfFixedWidth(torch.nn.Module):
    """Reshapes the stem's output to a width kept as an attribute, in the model's own forward
    (like torchvision's VisionTransformer): pruning the stem breaks the reshape outside any layer."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.width = width
        self.stem = torch.nn.Conv2d(1, width, 3, padding=1)
        self.mix = torch.nn.Conv2d(width, width, 1)
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix(self.stem(x))
        return self.head(x.reshape(x.shape[0], self.width, x.shape[2] * x.shape[3]).mean(2))


def test_failure_in_the_models_own_forward_names_the_last_layer_that_ran():
    with pytest.raises(UnprunableModelError) as raised:
        check_prunable(TokensOfFixedWidth(), (1, 8, 8), "model 't'")
    message = str(raised.value)
    assert message.startswith("model 't' does not run once pruned after layer 'mix': RuntimeError") and \
        "\n" not in message
