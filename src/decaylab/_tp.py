"""The Torch-Pruning route of :func:`decaylab.compact`, for residual and other branching graphs.

Torch-Pruning (optional: ``pip install torch-pruning==1.6.1``) traces the model on example
inputs and couples every tensor a channel touches, including the layers a residual
addition ties together. A coupled group is removed when all of its weights, biases and
BatchNorm scales/shifts are exactly zero: removing it then changes nothing. The network's
last weighted layer (its outputs) is never pruned; input features are not removed here.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .rules import unwrap


def _last_weighted(model: nn.Module, example_inputs) -> nn.Module:
    order = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv layer to compact")
    return order[-1]


def compact_torch_pruning(model: nn.Module, example_inputs):
    """Remove all-zero coupled channel groups with Torch-Pruning: a smaller copy and its
    ``{layer name: (units kept, units before)}``, or None if there are none."""
    # the call's own mistake first: it is the same with or without the package installed
    if example_inputs is None:
        raise ValueError("compact(backend='torch-pruning') traces the model: pass example_inputs=<a batch>")
    try:
        import torch_pruning as tp
    except ImportError:
        raise ValueError("compact(backend='torch-pruning') needs Torch-Pruning: "
                         "pip install torch-pruning==1.6.1 (or: pip install 'decaylab[prune]')") from None

    original = unwrap(model)
    small = copy.deepcopy(original).eval()
    last = _last_weighted(small, example_inputs)
    graph = tp.DependencyGraph().build_dependency(small, example_inputs=example_inputs, verbose=False)
    with torch.no_grad():
        return _prune_zero_groups(tp, small, graph, last)


def _prune_zero_groups(tp, small, graph, last):
    importance = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="sum", normalizer=None, bias=True)
    names = {m: n for n, m in small.named_modules()}
    layers = {}
    for group in graph.get_all_groups(ignored_layers=[last], root_module_types=[nn.modules.conv._ConvNd, nn.Linear]):
        scores = importance(group)
        if scores is None:
            continue
        zero = (scores == 0).nonzero().flatten().tolist()
        if len(zero) == len(scores):  # keep one channel so every layer has a width
            zero = zero[1:]
        root = group[0].dep.target.module
        units = int(scores.numel())
        layers[names.get(root, type(root).__name__)] = (units - len(zero), units)
        if zero:
            group.prune(idxs=zero)
    if all(k == t for k, t in layers.values()):
        return None
    return small, layers
