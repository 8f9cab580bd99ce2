"""``compact(model)``: remove zeroed neurons, channels and inputs -> a smaller, equal model.

A hidden unit (a Linear's neuron, a Conv's output channel) is removed when

* nothing reads it: its columns in the next layer are zero, or
* it reads nothing: its row is zero, so its output is a constant ``c = post(b)`` (its
  bias through BatchNorm and activation, e.g. ``relu(b)``) that is folded into the next
  layer's bias. A Conv with padding cannot absorb a nonzero constant exactly (its border
  outputs see fewer inputs), so such a unit is kept.

Input features whose column of the first layer is zero are dropped by an
``index_select`` inside the compacted model, which takes the same inputs as before;
their kept indices are reported. The result is the fx-traced model with smaller layers
and is exact in eval mode (BatchNorm with running statistics): with zero groups, only
summation order changes (differences ~1e-6 in float32).

Sequential MLPs and CNNs go through our own code (:func:`decaylab.chains.chain`).
Networks with branches (residual connections) go through Torch-Pruning's dependency
graph (``backend="torch-pruning"``, optional: ``pip install torch-pruning==1.6.1``),
which already tracks which layers a residual addition ties together; rewriting that
graph analysis here would duplicate a maintained library.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from ._tp import compact_torch_pruning
from .chains import ACTIVATION_FUNCTIONS, BATCH_NORMS, TP_ROUTE, chain
from .rules import unwrap
from ._sharded import is_sharded

__all__ = ["compact", "Compaction"]


@dataclass
class Compaction:
    """What :func:`compact` removed (attached to the result as ``.compaction``)."""

    kept_inputs: list | None
    n_inputs: int | None
    layers: dict = field(default_factory=dict)  # layer name -> (units kept, units before)
    params_before: int = 0
    params_after: int = 0

    def summary(self) -> str:
        units = ", ".join(f"{n}: {k}/{t}" for n, (k, t) in self.layers.items())
        inp = f"inputs {len(self.kept_inputs)}/{self.n_inputs}; " if self.kept_inputs is not None else ""
        return f"{inp}units {units}; parameters {self.params_after}/{self.params_before}"


class _Select(nn.Module):
    """Keeps the input features in ``index`` (along ``dim``)."""

    def __init__(self, index: Tensor, dim: int):
        super().__init__()
        self.register_buffer("index", index)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(self.dim, self.index)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def compact(model: nn.Module, example_inputs=None, *, backend: str = "auto", atol: float = 1e-5) -> nn.Module:
    """A physically smaller copy of ``model`` without its zero neurons, channels and inputs.

    Args:
        model: a trained model whose zero groups (e.g. from
            :class:`~decaylab.CoupledGroupLasso`) are to be removed; it is not modified.
        example_inputs: a batch of inputs; when given, the result is checked to give the
            same outputs (max abs difference <= ``atol``). Required by Torch-Pruning.
        backend: ``"chain"`` (sequential MLP/CNN, our code), ``"torch-pruning"``
            (residual and other graphs) or ``"auto"`` (chain, else an error naming the
            Torch-Pruning route).

    Returns:
        The compacted module in eval mode, with ``.compaction`` (:class:`Compaction`:
        kept input indices, units kept per layer, parameters before/after); or ``model``
        itself, with a warning, if it has no zero group.

    Raises:
        ValueError: a layer compaction does not support (named), a sharded (FSDP2/DTensor)
            model, or a bad backend.

    >>> m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     m[0].weight[1:3] = 0; m[0].weight[:, 0] = 0
    >>> small = compact(m)
    >>> small.compaction.summary()
    'inputs 2/3; units 0: 2/4; parameters 12/26'
    >>> x = torch.randn(5, 3)
    >>> bool((small(x) - m.eval()(x)).abs().max() < 1e-5)
    True
    """
    sharded = [n for n, p in model.named_parameters() if is_sharded(p)]
    if sharded:
        raise ValueError(f"compact() needs the whole model, but parameter '{sharded[0]}' is sharded (a DTensor, "
                         f"e.g. FSDP2's fully_shard); load the full state dict (torch.distributed.checkpoint, "
                         f"or DTensor.full_tensor()) into an unsharded copy and compact that")
    if backend not in ("auto", "chain", "torch-pruning"):
        raise ValueError(f"backend must be 'auto', 'chain' or 'torch-pruning', got {backend!r}")
    if backend == "torch-pruning":
        pruned = compact_torch_pruning(model, example_inputs)  # (smaller copy, units per layer)
        small = None
        if pruned is not None:
            small, layers = pruned
            small.compaction = Compaction(None, None, layers, _n_params(unwrap(model)), _n_params(small))
    else:
        small = _compact_chain(model)
    if small is None:
        warnings.warn(f"compact: {type(unwrap(model)).__name__} has no zero neuron, channel or input; "
                      f"returned unchanged", stacklevel=2)
        return model
    if example_inputs is not None:
        _check_equal(model, small, example_inputs, atol)
    return small


@torch.no_grad()
def _check_equal(model, small, example_inputs, atol):
    was = model.training
    model.eval()
    diff = float((small(example_inputs) - model(example_inputs)).abs().max())
    model.train(was)
    if not diff <= atol:
        raise RuntimeError(f"compact: the compacted model differs from the original by {diff:.3g} "
                           f"(> atol={atol:g}); please report this model")


def _unit_constant(st, gm, bias: Tensor | None, units: int) -> Tensor:
    """The output of each unit whose row is zero: its bias through the ops after it."""
    conv = not isinstance(st.module, nn.Linear)
    spatial = st.module.weight.ndim - 2 if conv else 0
    v = (bias.detach().clone() if bias is not None else st.module.weight.new_zeros(units))
    v = v.view(1, units, *([1] * spatial))
    for node in st.post:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, BATCH_NORMS):
                if m.running_mean is None:
                    raise ValueError(f"BatchNorm '{node.target}' has no running statistics "
                                     f"(track_running_stats=False); compaction needs eval-mode BatchNorm")
                v = TF.batch_norm(v, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
            elif not isinstance(m, (nn.Dropout, nn.Identity, nn.Flatten)) and "Pool" not in type(m).__name__:
                v = m(v)
        elif node.op == "call_function" and _is_activation(node):
            if any(isinstance(a, torch.fx.Node) for a in node.args[1:]):
                raise ValueError(f"activation '{node.name}' takes a tensor argument; {TP_ROUTE}")
            v = node.target(v, *node.args[1:], **node.kwargs)
        elif node.op == "call_method" and node.target in ("relu", "tanh", "sigmoid"):
            v = getattr(v, node.target)()
    return v.flatten()


def _is_activation(node) -> bool:

    return node.target in ACTIVATION_FUNCTIONS


def _dead_rows(w: Tensor) -> Tensor:
    return w.flatten(1).eq(0).all(1)


def _column_blocks(w: Tensor, units: int) -> Tensor:
    """``w``'s input columns as ``[units, out, block, ...]``."""
    return w.movedim(1, 0).reshape(units, -1)


def _foldable(nxt: nn.Module) -> bool:
    if isinstance(nxt, nn.Linear):
        return True
    return all(p == 0 for p in (nxt.padding if isinstance(nxt.padding, tuple) else (nxt.padding,))) \
        and nxt.padding != "same"


@torch.no_grad()
def _fold(nxt: nn.Module, cols: Tensor, const: Tensor, block: int) -> None:
    """Add the constant inputs ``const`` (one per unit, over its ``block`` columns) to nxt's bias."""
    w = nxt.weight.detach()
    if isinstance(nxt, nn.Linear):
        contrib = w[:, cols] @ const.repeat_interleave(block).to(w.dtype)
    else:
        contrib = (w[:, cols].flatten(2).sum(2) * const.to(w.dtype)).sum(1)
    if nxt.bias is None:
        nxt.bias = nn.Parameter(contrib.clone())
    else:
        nxt.bias.add_(contrib)


def _new_like(m: nn.Module, out_keep: Tensor | None, in_keep: Tensor | None) -> nn.Module:
    """A copy of Linear/Conv/BatchNorm ``m`` with only the kept outputs / inputs."""
    new = copy.deepcopy(m)
    with torch.no_grad():
        for pname in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(m, pname, None)
            if t is None:
                continue
            t = t.detach()
            if out_keep is not None:
                t = t.index_select(0, out_keep)
            if in_keep is not None and pname == "weight" and t.ndim > 1:
                t = t.index_select(1, in_keep)
            holder = nn.Parameter(t.clone(), requires_grad=getattr(m, pname).requires_grad) \
                if isinstance(getattr(m, pname), nn.Parameter) else t.clone()
            setattr(new, pname, holder)
    if isinstance(new, nn.Linear):
        new.out_features, new.in_features = new.weight.shape
    elif isinstance(new, BATCH_NORMS):
        new.num_features = new.weight.shape[0] if new.weight is not None else new.running_mean.shape[0]
    else:
        new.out_channels, new.in_channels = new.weight.shape[:2]
    return new


def _replace(gm, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, new)


def _compact_chain(model: nn.Module) -> nn.Module | None:
    model = unwrap(model)
    c = chain(copy.deepcopy(model).eval())
    gm, stages = c.graph, c.stages
    gm.eval()
    changed = False
    info = Compaction(None, None)
    # inputs: zero columns of the first layer
    first = stages[0].module
    in_cols = _column_blocks(first.weight.detach(), first.weight.shape[1]).ne(0).any(1)
    info.n_inputs = int(in_cols.numel())
    in_keep = None
    if not bool(in_cols.all()):
        in_keep = in_cols.nonzero().flatten()
        if in_keep.numel() == 0:
            in_keep = torch.zeros(1, dtype=torch.long)
        info.kept_inputs = in_keep.tolist()
        changed = True
    modules = {st.name: st.module for st in stages}
    keep_prev = in_keep
    for k, st in enumerate(stages):
        m = modules[st.name]
        if keep_prev is not None:  # columns of the previous stage's removed units
            block = stages[k - 1].block if k else 1
            cols = (keep_prev.view(-1, 1) * block + torch.arange(block)).flatten()
            m = _new_like(m, None, cols)
        if k == len(stages) - 1:
            modules[st.name] = m
            break
        nxt = modules[stages[k + 1].name]
        units = st.units
        dead_in = _dead_rows(m.weight.detach())
        dead_out = _column_blocks(nxt.weight.detach(), units).eq(0).all(1)
        const = _unit_constant(st, gm, m.bias, units) if bool(dead_in.any()) else torch.zeros(units)
        fold = dead_in & ~dead_out & const.ne(0)
        remove = dead_out | (dead_in & (const.eq(0) | torch.tensor(_foldable(nxt))))
        if bool(remove.all()):  # keep one unit so every layer has a width
            remove[0] = False
            fold[0] = False
        fold &= remove
        if bool(fold.any()):
            nxt = copy.deepcopy(nxt)
            _fold(nxt, _block_cols(fold, st.block), const[fold], st.block)
            modules[stages[k + 1].name] = nxt
        keep = (~remove).nonzero().flatten()
        info.layers[st.name] = (int(keep.numel()), units)
        if bool(remove.any()):
            changed = True
            m = _new_like(m, keep, None)
            for bn in st.norms:
                _replace(gm, bn, _new_like(gm.get_submodule(bn), keep, None))
            keep_prev = keep
        else:
            keep_prev = None
        modules[st.name] = m
    if not changed:
        return None
    for name, m in modules.items():
        _replace(gm, name, m)
    if in_keep is not None:
        _insert_select(gm, stages[0], in_keep)
    for node in gm.graph.nodes:  # string annotations (from __future__) would not pickle
        node.type = None
    gm.recompile()
    info.params_before, info.params_after = _n_params(model), _n_params(gm)
    gm.compaction = info
    return gm.eval()


def _block_cols(mask: Tensor, block: int) -> Tensor:
    idx = mask.nonzero().flatten()
    return (idx.view(-1, 1) * block + torch.arange(block)).flatten()


def _insert_select(gm, first_stage, index: Tensor) -> None:
    gm.add_submodule("select_inputs", _Select(index, -1 if isinstance(first_stage.module, nn.Linear) else 1))
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == first_stage.name)
    with gm.graph.inserting_before(node):
        sel = gm.graph.call_module("select_inputs", (node.args[0],))
    node.args = (sel, *node.args[1:])
