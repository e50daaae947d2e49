"""Device resolution and mixed precision (:mod:`pruning.devices`) and the training loops on a
device: CPU behaviour is exactly today's; the CUDA paths run only where CUDA is."""
from __future__ import annotations

import pytest
import torch

from pruning.data import Augmentation, make_loader
from pruning.devices import CPU_PASS_PIXELS, Precision, check_amp, eval_batch_size, images_per_pass, resolve_device, valid_devices
from pruning.errors import InputError
from pruning.training import TrainConfig, evaluate, train
from tiny_models import TinyCNN, with_random_bn_stats

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")


def _data(n: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return with_random_bn_stats(TinyCNN(), 1)


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert valid_devices()[:2] == ["auto", "cpu"]


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_one_line(name):
    with pytest.raises(InputError) as err:
        resolve_device(name)
    here = ", ".join(valid_devices())  # "auto, cpu" (plus mps on a Mac)
    assert str(err.value) == f"--device {name}: CUDA is not available on this machine; valid here: {here}"
    assert "\n" not in str(err.value)


@needs_cuda
def test_cuda_index_beyond_the_device_count():
    count = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(InputError, match=f"cuda:{count}: this machine has {count} CUDA device"):
        resolve_device(f"cuda:{count}")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(InputError) as err:
        resolve_device("tpu")
    message = str(err.value)
    assert message.startswith("unknown --device 'tpu'; valid: auto, cpu, cuda, cuda:N, mps")
    assert "\n" not in message
    with pytest.raises(InputError, match="unknown --device 'cuda:x'"):
        resolve_device("cuda:x")


@pytest.mark.skipif(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                    reason="MPS is available here")
def test_mps_without_mps():
    with pytest.raises(InputError, match="--device mps: MPS is not available on this machine"):
        resolve_device("mps")


def test_amp_needs_cuda():
    check_amp(None, torch.device("cpu"))  # off: fine anywhere
    with pytest.raises(InputError) as err:
        check_amp("bf16", torch.device("cpu"))
    assert str(err.value) == "--amp needs a CUDA device; got --device cpu"
    with pytest.raises(InputError, match="unknown --amp 'fp8'; valid: bf16, fp16"):
        check_amp("fp8", torch.device("cpu"))
    with pytest.raises(InputError, match="unknown amp 'int8'"):
        Precision("int8")


def test_amp_on_a_cpu_model_is_refused_by_train_and_evaluate():
    model, data = _model(), _data(16)
    loader = make_loader(data, 8, shuffle=False)
    with pytest.raises(InputError, match="amp needs a CUDA device; got a model on cpu"):
        evaluate(model, loader, amp="bf16")
    with pytest.raises(InputError, match="amp needs a CUDA device"):
        train(model, loader, TrainConfig(epochs=1, lr=0.01), progress=False, amp="fp16")


def test_cpu_training_and_evaluation_are_unchanged_by_the_defaults():
    """``amp=None`` / ``Precision()`` and an explicit CPU device give bit-identical results."""
    data = _data()
    config = TrainConfig(epochs=1, lr=0.05, batch_size=16, seed=3, max_batches_per_epoch=2)
    runs = []
    for kwargs in ({}, {"amp": None}, {"amp": Precision()}):
        model = _model().to(resolve_device("cpu"))
        history = train(model, make_loader(data, 16, shuffle=True, seed=3), config, progress=False, **kwargs)
        result = evaluate(model, make_loader(data, 16, shuffle=False), **kwargs)
        runs.append((history, result, [p.detach().clone() for p in model.parameters()]))
    for history, result, params in runs[1:]:
        assert history == runs[0][0] and result == runs[0][1]
        assert all(torch.equal(a, b) for a, b in zip(params, runs[0][2]))


def test_the_evaluation_batch_changes_no_accuracy():
    """The CPU's and the accelerators' evaluation batches give the same accuracy (the loss up to
    float summation order): the batch is a speed setting."""
    data, model = _data(n=600), _model()
    sizes = {eval_batch_size("cpu"), eval_batch_size(torch.device("cuda")), eval_batch_size("mps")}
    assert len(sizes) == 2
    results = [evaluate(model, make_loader(data, size, shuffle=False)) for size in sorted(sizes)]
    assert results[0].score == results[1].score and results[0].samples == results[1].samples == 600
    assert results[0].loss == pytest.approx(results[1].loss, rel=1e-6)


def test_loader_workers_keep_order_and_unaugmented_batches():
    data = _data(40)
    single = list(make_loader(data, 8, shuffle=True, seed=5))
    parallel = list(make_loader(data, 8, shuffle=True, seed=5, num_workers=2, pin_memory=True))
    assert len(single) == len(parallel) == 5
    for (x, y), (px, py) in zip(single, parallel):
        assert torch.equal(x, px) and torch.equal(y, py)
    with pytest.raises(InputError, match="num_workers must be an integer >= 0"):
        make_loader(data, 8, shuffle=False, num_workers=-1)


def test_augmenting_loader_workers_repeat_and_do_not_copy_each_other():
    data = _data(32)
    augmentation = Augmentation(padding=4, flip=True)

    def draw():
        return [x for x, _ in make_loader(data, 8, shuffle=False, seed=1, augment=augmentation, num_workers=2)]

    first, second = draw(), draw()
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # same seed, same workers: same crops
    # workers do not share one augmentation stream: the same images get different crops
    same_images = torch.utils.data.TensorDataset(data.tensors[0][:8].repeat(4, 1, 1, 1), data.tensors[1][:8].repeat(4))
    batches = [x for x, _ in make_loader(same_images, 8, shuffle=False, seed=1, augment=augmentation, num_workers=2)]
    assert not torch.equal(batches[0], batches[1])


@needs_cuda
@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_train_and_evaluate_on_cuda(amp):
    device = resolve_device("cuda")
    model = _model().to(device)
    data = _data(64)
    config = TrainConfig(epochs=2, lr=0.05, batch_size=16, seed=0)
    history = train(model, make_loader(data, 16, shuffle=True, pin_memory=True), config, progress=False, amp=amp,
                    eval_loader=make_loader(data, 32, shuffle=False))
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert "eval_accuracy" in history[-1]
    result = evaluate(model, make_loader(data, 32, shuffle=False), amp=amp)
    assert result.samples == 64 and 0 <= result.score <= 1 and result.loss > 0
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in model.parameters())


@needs_cuda
def test_cuda_evaluation_matches_the_cpu():
    data = _data(64)
    model = _model()
    on_cpu = evaluate(model, make_loader(data, 32, shuffle=False))
    on_gpu = evaluate(model.to("cuda"), make_loader(data, 32, shuffle=False))
    assert on_gpu.score == pytest.approx(on_cpu.score, abs=1 / 64)
    assert on_gpu.loss == pytest.approx(on_cpu.loss, rel=1e-3)


def test_a_cpu_pass_holds_a_bounded_number_of_pixels():
    """Small images keep the whole batch; 224-px images are cut to CPU_PASS_PIXELS; accelerators keep it."""
    assert images_per_pass("cpu", (1, 28, 28), 128) == 128
    assert images_per_pass("cpu", (3, 224, 224), 128) == CPU_PASS_PIXELS // (224 * 224) == 32
    assert images_per_pass("cpu", (3, 4096, 4096), 128) == 1
    assert images_per_pass(torch.device("cuda"), (3, 224, 224), 128) == 128
    assert eval_batch_size("cpu", (3, 224, 224)) == 32 and eval_batch_size("cpu", (1, 28, 28)) == eval_batch_size("cpu")
