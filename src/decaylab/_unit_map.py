"""Where a unit's outputs land in the next layer: the checks behind coupled groups.

:func:`decaylab.chains.chain` assumes that unit ``u`` of a layer owns one contiguous block
of the next layer's input columns (``[u*HW, (u+1)*HW)`` after a Conv and a flatten, column
``u`` after a Linear), and that each layer is called once. These checks refuse, with an
error naming the layer, the graphs where that is false and which a trace without inputs
can see: a layer called twice (shared weights), a flatten that keeps more than the batch
dimension apart (``Flatten(2)``) or a reshape to more than 2 dimensions, a Linear applied
to an input of more than 2 dimensions and then flattened (its unit ``u`` feeds the
columns ``u, u + units, ...``), and a Linear reading a Conv's output without a flatten.
A reshape to 2 dimensions is taken to keep the batch first (``x.view(x.size(0), -1)``,
``x.view(-1, C*H*W)``); ``compact(model, example_inputs)`` checks the outputs anyway.
"""

from __future__ import annotations

import torch
from torch import nn


def node_name(node) -> str:
    return f"{node.op} {node.target if isinstance(node.target, str) else getattr(node.target, '__name__', node.target)}"


_UNSUPPORTED = "which coupled groups and compaction do not support"


def check_called_once(gm, model, kinds: tuple) -> None:
    """A layer called twice (shared weights) would be two stages owning one tensor."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), kinds):
            calls[node.target] = calls.get(node.target, 0) + 1
    shared = {k: n for k, n in calls.items() if n > 1}
    if shared:
        name, n = next(iter(shared.items()))
        raise ValueError(f"layer '{name}' is called {n} times in {type(model).__name__}'s forward (a shared "
                         f"layer), {_UNSUPPORTED}: its units would be removed for one call and kept for the "
                         f"other; use a separate layer per call")


def _flatten_dims(node) -> tuple[object, object] | None:
    """``(start_dim, end_dim)`` of a flatten node, None for other nodes."""
    if node.op == "call_function" and node.target is torch.flatten or \
            node.op == "call_method" and node.target == "flatten":
        args = list(node.args[1:]) + [None, None]
        return (node.kwargs.get("start_dim", args[0] if args[0] is not None else 0),
                node.kwargs.get("end_dim", args[1] if args[1] is not None else -1))
    return None


def check_flatten(node, gm, st, nxt) -> bool:
    """Whether ``node`` flattens; raises unless it flattens everything after the batch
    dimension (``Flatten()``, ``flatten(x, 1)``, ``x.view(x.size(0), -1)``): only then
    does unit ``u`` of a Conv become the columns ``[u*HW, (u+1)*HW)`` of the next layer."""
    dims = _flatten_dims(node)
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Flatten):
        m = gm.get_submodule(node.target)
        dims = (m.start_dim, m.end_dim)
    layer = node.target if node.op == "call_module" else node_name(node)
    if dims is not None:
        if tuple(dims) != (1, -1):
            raise ValueError(f"'{layer}' between '{st.name}' and '{nxt.name}' flattens dimensions "
                             f"{dims[0]} to {dims[1]}, {_UNSUPPORTED} (only a flatten of every dimension after "
                             f"the batch, nn.Flatten() or torch.flatten(x, 1), keeps a unit's columns together)")
        return True
    if node.op == "call_method" and node.target in ("view", "reshape"):
        shape = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
        if len(shape) != 2:
            raise ValueError(f"'{layer}' between '{st.name}' and '{nxt.name}' reshapes to {len(shape)} "
                             f"dimensions, {_UNSUPPORTED}; flatten to (batch, features) with torch.flatten(x, 1)")
        return True
    return False


def check_unit_layout(st, nxt, flattened: bool) -> None:
    """Each unit must own a contiguous block of the next layer's columns."""
    if isinstance(st.module, nn.Linear) and st.block > 1:
        u = st.units
        raise ValueError(f"Linear '{st.name}' has {u} outputs but '{nxt.name}' reads {u * st.block} inputs: "
                         f"'{st.name}' is applied to an input of more than 2 dimensions and then flattened, so "
                         f"its unit u feeds the columns u, u+{u}, u+{2 * u}, ... of '{nxt.name}', "
                         f"{_UNSUPPORTED}; flatten before '{st.name}' or keep its output unflattened")
    if not isinstance(st.module, nn.Linear) and isinstance(nxt.module, nn.Linear) and not flattened:
        raise ValueError(f"Linear '{nxt.name}' reads the output of '{st.name}' without a flatten, so it acts on "
                         f"the last spatial dimension, not on the {st.units} channels, {_UNSUPPORTED}; flatten "
                         f"with torch.flatten(x, 1) (or nn.Flatten()) before '{nxt.name}'")
