"""Memory of reconstruction: with a memory bound, the original's target pass and the pruned
model's streamed pass run over chunks of the calibration batches small next to the bound (at least
16 images), with the fit of one whole pass; a conv's target rows are those of its output."""
from __future__ import annotations

import copy

import pytest
import torch

from pruning.recovery import RowBudget, consumers_of, kept_outputs_of, original_targets, reconstruct_consumers
from pruning.structure import PruningSpace, prune_model


@pytest.fixture
def pruned_cnn(tiny_cnn):
    """``(original, pruned, consumer layers, their kept outputs)``: TinyCNN's inner groups at half
    width (L1 scores)."""
    example = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    space = PruningSpace.build(tiny_cnn, example)
    groups = space.select("inner")
    modules = dict(tiny_cnn.named_modules())
    scores = {g.name: modules[g.producers[0]].weight.detach().abs().flatten(1).sum(1) for g in groups}
    pruned, kept = prune_model(tiny_cnn, example, space, {g.name: max(1, g.size // 2) for g in groups}, scores)
    return tiny_cnn, pruned, consumers_of(space, [g.name for g in groups]), kept_outputs_of(space, kept)


def test_both_passes_run_chunks_of_the_batches_with_the_same_fit(pruned_cnn):
    original, pruned, layers, kept = pruned_cnn
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(40, 1, 28, 28, generator=generator), torch.zeros(40, dtype=torch.long))
               for _ in range(2)]
    seen: dict[object, dict[str, list[int]]] = {}
    results = {}
    for memory_mib in (None, 0, 1024):
        net = copy.deepcopy(pruned)
        calls = seen.setdefault(memory_mib, {"original": [], "pruned": []})
        handles = [dict(model.named_modules())[layers[0]].register_forward_pre_hook(
                       lambda m, args, sizes=calls[side]: sizes.append(args[0].shape[0]))
                   for side, model in (("original", original), ("pruned", net))]
        reconstruct_consumers(original, net, layers, batches, memory_mib=memory_mib, kept_outputs=kept)
        for handle in handles:
            handle.remove()
        results[memory_mib] = net.state_dict()
    # (the pruned model's first calls: the one-image forward that finds the call order, and when
    # streamed, the traced graph's and the model's own forward of one image that check the graph)
    # every image at once; chunks of 16 when each image's largest activation is over 1/8 of the
    # bound; the batches whole within it
    assert seen[None] == {"original": [40, 40], "pruned": [1, 80]}
    assert seen[0] == {"original": [16, 16, 8, 16, 16, 8], "pruned": [1, 1, 1, 16, 16, 8, 16, 16, 8]}
    assert seen[1024] == {"original": [40, 40], "pruned": [1, 1, 1, 40, 40]}
    for memory_mib in (0, 1024):
        for key, value in results[None].items():
            torch.testing.assert_close(results[memory_mib][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_conv_target_rows_are_the_outputs_at_those_positions():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3))
    x = torch.randn(4, 3, 8, 9)
    targets = original_targets(model, ["0"], [(x, None)], budget=RowBudget(min_rows=50, rows_per_column=1, min_rows_per_column=1)).layers["0"]
    with torch.no_grad():
        rows = model(x).flatten(2).transpose(1, 2).reshape(-1, 5)  # (image * positions + position, channels)
    assert 0 < len(targets.fit) < len(rows)
    for drawn, values in ((targets.fit, targets.fit_values), (targets.check, targets.check_values)):
        assert values.dtype == torch.float16  # within its range: kept at half the memory
        torch.testing.assert_close(values, rows[drawn].half(), rtol=0, atol=0)
