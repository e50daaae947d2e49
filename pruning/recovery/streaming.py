"""The pruned pass of reconstruction with bounded memory: the model's ``torch.fx`` graph run one
node at a time over every calibration batch, with the batches' values beyond a memory budget
kept in files (see :mod:`pruning.recovery.reconstruction`); and the chunks of the calibration
batches both models' passes run over within that budget."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import fx, nn

from pruning.structure import layer_call_order

__all__ = ["call_order_and_largest_output", "chunked", "traced", "run_streamed"]

#: with a memory bound, both models' passes split the calibration batches into chunks whose
#: largest activation is at most this fraction of it: a forward's activations (and in the
#: streamed pass a node's input and output, next to the values held) then cost little (a
#: 128-image batch of a ResNet-50's first stage at 224 px is 411 MB)
CHUNK_SHARE = 8
#: but never fewer images than this: a layer's arithmetic (and so its rounding) can depend on the
#: batch size, and a handful of images per call is where it does
MIN_CHUNK = 16

#: (layer name, its module, its input in every batch, in order) -> None
Refit = Callable[[str, nn.Module, Iterator[torch.Tensor]], None]


def call_order_and_largest_output(model: nn.Module, image: torch.Tensor) -> tuple[list[str], int]:
    """The Conv2d/Linear layers in call order and the bytes of the largest tensor a module
    returns (or the input, if larger), from one forward of one image."""
    largest = [image.numel() * image.element_size()]

    def measure(module, args, output) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(measure) for m in model.modules() if next(m.children(), None) is None]
    try:
        order = layer_call_order(model, image)
    finally:
        for handle in handles:
            handle.remove()
    return order, largest[0]


def chunked(batches: Sequence[torch.Tensor], budget: int, image_bytes: int) -> list[torch.Tensor]:
    """``batches`` split (in order, never merged) into chunks of ``MIN_CHUNK`` images or more
    whose largest activation (``image_bytes`` per image) takes at most 1/``CHUNK_SHARE`` of
    ``budget`` bytes."""
    size = max(MIN_CHUNK, budget // (CHUNK_SHARE * image_bytes))
    return [piece for x in batches for piece in x.split(size)]


def traced(model: nn.Module, image: torch.Tensor) -> fx.GraphModule | None:
    """``model``'s fx graph (sharing its modules), or None when fx cannot trace it or the graph,
    run node by node as the streamed pass runs it, does not give the model's output on ``image``
    (one image; e.g. a traced branch on a value fx recorded as a constant)."""
    try:
        graph = fx.symbolic_trace(model)
        store = _Store(budget=1 << 62, folder=Path("."))  # in memory: nothing is written
        modules = dict(graph.named_modules())
        for node in graph.graph.nodes:
            if node.op == "output":
                output = fx.node.map_arg(node.args[0], lambda n: store.get((n.name, 0)))
                break
            _run_node(graph, modules, node, 0, image, store)
        expected = model(image)
        if not (isinstance(output, torch.Tensor) and isinstance(expected, torch.Tensor)
                and torch.allclose(output, expected, rtol=1e-4, atol=1e-5)):
            return None
        return graph
    except Exception:  # noqa: BLE001 - any failure of the graph means: run the model in one pass
        return None


class _Store:
    """Every node's value per batch; tensors beyond ``budget`` bytes go to files in ``folder``."""

    def __init__(self, budget: int, folder: Path) -> None:
        self.budget, self.folder = budget, folder
        self.values: dict[tuple[str, int], Any] = {}
        self.files: dict[tuple[str, int], Path] = {}
        self.held = 0

    def put(self, key: tuple[str, int], value: Any) -> None:
        self.drop_one(key)
        size = value.untyped_storage().nbytes() if isinstance(value, torch.Tensor) else 0
        if size and self.held + size > self.budget:
            path = self.folder / f"{key[0]}.{key[1]}.pt"
            torch.save(value, path)
            self.files[key] = path
        else:
            self.values[key] = value
            self.held += size

    def get(self, key: tuple[str, int]) -> Any:
        if key in self.files:
            return torch.load(self.files[key], weights_only=True)
        return self.values[key]

    def drop_one(self, key: tuple[str, int]) -> None:
        if key in self.files:
            self.files.pop(key).unlink()
        elif key in self.values:
            value = self.values.pop(key)
            if isinstance(value, torch.Tensor):
                self.held -= value.untyped_storage().nbytes()


def run_streamed(graph: fx.GraphModule, batches: Sequence[torch.Tensor], refit_layers: set[str],
                 refit: Refit, budget: int) -> None:
    """Run ``graph`` node by node, each node over every batch before the next node, so that a
    listed layer's ``refit(name, module, its inputs batch by batch)`` runs once, at its first
    call, before it computes any batch's output (the order of one pass over all images). Values
    beyond ``budget`` bytes wait in files of a temporary folder until a later node reads them."""
    modules = dict(graph.named_modules())
    nodes = list(graph.graph.nodes)
    last_use = {node: i for i, n in enumerate(nodes) for node in n.all_input_nodes}
    pending = set(refit_layers)
    with tempfile.TemporaryDirectory(prefix="reconstruction-") as folder:
        store = _Store(budget, Path(folder))
        for i, node in enumerate(nodes):
            if node.op == "output":
                break
            if node.op == "call_module" and node.target in pending:
                pending.discard(node.target)
                first = node.all_input_nodes[0]
                refit(node.target, modules[node.target], (store.get((first.name, k)) for k in range(len(batches))))
            for k, batch in enumerate(batches):
                _run_node(graph, modules, node, k, batch, store)
            for done in [n for n in node.all_input_nodes if last_use[n] == i]:
                for k in range(len(batches)):
                    store.drop_one((done.name, k))


def _run_node(graph: fx.GraphModule, modules: dict, node: fx.Node, k: int, batch: torch.Tensor, store: _Store) -> None:
    if node.op == "placeholder":  # the images, or an optional argument's default (timm's attn_mask)
        store.put((node.name, k), node.args[0] if node.args else batch)
        return
    inputs = {n: store.get((n.name, k)) for n in node.all_input_nodes}
    versions = {n: v._version for n, v in inputs.items() if isinstance(v, torch.Tensor)}
    args = fx.node.map_arg(node.args, inputs.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, inputs.__getitem__)
    if node.op == "call_module":
        value = modules[node.target](*args, **kwargs)
    elif node.op == "call_function":
        value = node.target(*args, **kwargs)
    elif node.op == "call_method":
        value = getattr(args[0], node.target)(*args[1:], **kwargs)
    else:  # get_attr
        value = graph
        for part in node.target.split("."):
            value = getattr(value, part)
    store.put((node.name, k), value)
    # an in-place op (ReLU(inplace=True), out += identity) changed an input: keep the change
    for n, version in versions.items():
        if inputs[n]._version != version:
            store.put((n.name, k), inputs[n])
