"""The chain of a sequential model: its Linear/Conv layers in order, traced with ``torch.fx``.

:func:`chain` accepts sequential MLPs and CNNs (Linear, Conv, BatchNorm, elementwise
activations, dropout, pooling, flatten/view) and rejects branches (residual connections)
with an error that points to the Torch-Pruning route of :func:`decaylab.compact`. Each
stage records what a hidden unit owns downstream (its BatchNorm entries, its block of the
next layer's columns): :mod:`decaylab.coupled` groups along it and :func:`decaylab.compact`
cuts along it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as TF
from torch import fx, nn

from ._unit_map import check_called_once, check_flatten, check_unit_layout, node_name as _node_name
from .rules import unwrap

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
                nn.Softplus, nn.Hardtanh, nn.Mish)
_PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.Flatten)
ACTIVATION_FUNCTIONS = {torch.relu, TF.relu, torch.tanh, torch.sigmoid, TF.gelu, TF.silu, TF.leaky_relu,
                  TF.elu, TF.softplus, TF.relu6, TF.hardtanh, TF.mish, torch.nn.functional.sigmoid,
                  torch.nn.functional.tanh}
_PASS_FUNCTIONS = {TF.dropout, torch.max_pool2d, TF.max_pool2d, TF.avg_pool2d, torch.flatten,
                   TF.adaptive_avg_pool2d, TF.adaptive_max_pool2d, torch.max_pool1d, TF.max_pool1d}
_ACT_METHODS = {"relu", "tanh", "sigmoid"}
_PASS_METHODS = {"view", "reshape", "flatten", "contiguous"}

TP_ROUTE = ("for residual or branching networks use decaylab.compact(model, backend='torch-pruning', "
            "example_inputs=...) (pip install torch-pruning==1.6.1)")


@dataclass
class Stage:
    """One weighted layer of a chain and the per-unit operations after it.

    ``post`` holds the fx nodes between this layer and the next weighted layer (BatchNorm,
    activations, pooling, flatten); ``norms`` the names of its BatchNorm modules; ``block``
    how many input columns of the next layer one unit feeds (``H*W`` after a flatten).
    """

    name: str
    module: nn.Module
    post: list = field(default_factory=list)
    norms: list = field(default_factory=list)
    block: int = 1

    @property
    def units(self) -> int:
        m = self.module
        return m.out_features if isinstance(m, nn.Linear) else m.out_channels


@dataclass
class Chain:
    """A traced sequential network: its fx graph and its weighted stages in order."""

    graph: fx.GraphModule
    stages: list

    def module(self, name: str) -> nn.Module:
        return self.graph.get_submodule(name)


def _is_pass(node, gm) -> str | None:
    """'act', 'pass', 'bn' or None (not allowed between weighted layers)."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, BATCH_NORMS):
            return "bn"
        if isinstance(m, _ACT_MODULES):
            return "act"
        if isinstance(m, _PASS_MODULES):
            if isinstance(m, nn.AvgPool2d) and m.padding not in (0, (0, 0)) and m.count_include_pad:
                return None  # averages padding zeros in: a constant unit is no longer constant
            return "pass"
        return None
    if node.op == "call_function":
        if node.target in ACTIVATION_FUNCTIONS:
            return "act"
        if node.target in _PASS_FUNCTIONS:
            return "pass"
        if node.target is getattr and node.args[1] == "shape" or node.target is operator.getitem:
            return "meta"
        return None
    if node.op == "call_method":
        if node.target in _ACT_METHODS:
            return "act"
        if node.target in _PASS_METHODS or node.target == "size":
            return "pass" if node.target != "size" else "meta"
    return None


def chain(model: nn.Module) -> Chain:
    """Trace ``model`` into a chain of weighted stages (Linear/Conv, then per-unit ops).

    Raises:
        ValueError: naming the layer, if the model branches (residual connections) or
            uses a layer between weighted layers whose removal of units is not exact.

    >>> c = chain(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    >>> [(s.name, s.units) for s in c.stages]
    [('0', 3), ('2', 2)]
    """
    model = unwrap(model)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means "not supported here"
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); "
                         f"{TP_ROUTE}") from None
    stages: list[Stage] = []
    for node in gm.graph.nodes:
        tensor_users = [u for u in node.users if not (u.op == "call_method" and u.target == "size")]
        if len(tensor_users) > 1 and node.op != "get_attr":
            raise ValueError(f"{type(model).__name__} branches at '{node.name}' ({_node_name(node)} feeds "
                             f"{len(tensor_users)} nodes, e.g. a residual connection); {TP_ROUTE}")
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        kind = "weighted" if node.op == "call_module" and isinstance(gm.get_submodule(node.target), _WEIGHTED) else None
        if kind:
            m = gm.get_submodule(node.target)
            if isinstance(m, nn.modules.conv._ConvNd) and m.groups != 1:
                raise ValueError(f"layer '{node.target}' is a grouped/depthwise convolution (groups={m.groups}), "
                                 f"which compaction does not support; {TP_ROUTE}")
            stages.append(Stage(node.target, m))
        elif stages:
            stages[-1].post.append(node)
    if not stages:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv layer to group")
    check_called_once(gm, model, _WEIGHTED + BATCH_NORMS)
    for st, nxt in zip(stages[:-1], stages[1:]):
        flattened = False
        for node in st.post:
            what = _is_pass(node, gm)
            if what is None:
                layer = node.target if node.op == "call_module" else _node_name(node)
                raise ValueError(f"layer '{layer}' between '{st.name}' and '{nxt.name}' is not supported by "
                                 f"coupled groups / compaction (supported: BatchNorm, elementwise "
                                 f"activations, dropout, pooling, flatten); {TP_ROUTE}")
            flattened |= check_flatten(node, gm, st, nxt)
            if what == "bn":
                bn = gm.get_submodule(node.target)
                if bn.num_features != st.units:
                    raise ValueError(f"BatchNorm '{node.target}' has {bn.num_features} features but '{st.name}' "
                                     f"has {st.units} units")
                st.norms.append(node.target)
        fan_in = nxt.module.in_features if isinstance(nxt.module, nn.Linear) else nxt.module.in_channels
        if fan_in % st.units:
            raise ValueError(f"'{nxt.name}' reads {fan_in} inputs, not a multiple of the {st.units} units of "
                             f"'{st.name}'; {TP_ROUTE}")
        st.block = fan_in // st.units
        check_unit_layout(st, nxt, flattened)
    return Chain(gm, stages)
