"""Coupled groups: everything one neuron or channel owns, across tensors, as one group.

A hidden unit ``u`` of layer ``k`` in a chain of Linear/Conv layers owns

* its row in layer ``k`` (``weight[u]``) and its bias ``bias[u]``,
* the scale and shift of every BatchNorm between layer ``k`` and ``k+1`` (``bn.weight[u]``,
  ``bn.bias[u]``),
* its column(s) in layer ``k+1`` (``weight[:, u]``; after a flatten, the ``H*W`` columns
  its channel became).

When all of these are zero, the unit's output is zero and nothing reads it, so removing
it changes nothing: this grouping is the seam :func:`decaylab.compact` cuts along. The
``"inputs"`` group set has one group per input feature: a column of the first layer (an
input channel of a first Conv).

:func:`chain` (:mod:`decaylab.chains`) finds the chain by tracing the model with
``torch.fx``; it accepts sequential MLPs and CNNs and rejects branches (residual
connections) with an error that points to the Torch-Pruning route of
:func:`decaylab.compact`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .chains import BATCH_NORMS, Chain, Stage, chain
from .penalties import Penalty
from .rules import unwrap

__all__ = ["Stage", "Chain", "chain", "Member", "GroupSet", "coupled_groups", "CoupledGroupLasso"]


@dataclass
class Member:
    """Part of a group: entries of parameter ``name`` along ``dim``, ``block`` per unit."""

    name: str
    dim: int
    block: int = 1


@dataclass
class GroupSet:
    """``units`` groups (neurons of one layer, or input features) sharing members."""

    label: str
    units: int
    members: list


def coupled_groups(model: nn.Module, groups=("inputs", "neurons")) -> list[GroupSet]:
    """The coupled group sets of a sequential model.

    ``"neurons"``: one set per hidden layer (every weighted layer but the last), one group
    per unit: its row, bias, BatchNorm scale/shift and its columns in the next layer.
    ``"inputs"``: one group per input feature (column of the first layer).

    >>> sets = coupled_groups(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    >>> [(s.label, s.units, [m.name for m in s.members]) for s in sets]
    [('inputs', 4, ['0.weight']), ('0', 3, ['0.weight', '0.bias', '2.weight'])]
    """
    groups = (groups,) if isinstance(groups, str) else tuple(groups)
    unknown = set(groups) - {"inputs", "neurons"}
    if unknown or not groups:
        raise ValueError(f"coupled groups are 'inputs' and/or 'neurons', got {groups!r}")
    c = chain(model)
    sets = []
    if "inputs" in groups:
        first = c.stages[0]
        fan_in = first.module.in_features if isinstance(first.module, nn.Linear) else first.module.in_channels
        sets.append(GroupSet("inputs", fan_in, [Member(f"{first.name}.weight", 1)]))
    if "neurons" in groups:
        for st, nxt in zip(c.stages[:-1], c.stages[1:]):
            members = [Member(f"{st.name}.weight", 0)]
            if st.module.bias is not None:
                members.append(Member(f"{st.name}.bias", 0))
            for bn in st.norms:
                mod = c.module(bn)
                members += [Member(f"{bn}.{p}", 0) for p in ("weight", "bias") if getattr(mod, p) is not None]
            members.append(Member(f"{nxt.name}.weight", 1, st.block))
            sets.append(GroupSet(st.name, st.units, members))
    return sets


def _unit_view(t: Tensor, m: Member, units: int) -> Tensor:
    """``t`` as ``[units, -1]``: row u holds everything of unit u in this member."""
    return t.movedim(m.dim, 0).reshape(units, -1)


def _scale_units_(t: Tensor, m: Member, factor: Tensor) -> None:
    """Multiply unit u's entries of ``t`` by ``factor[u]`` in place."""
    f = factor.repeat_interleave(m.block).to(t.dtype)
    shape = [1] * t.ndim
    shape[m.dim] = -1
    t.mul_(f.view(shape))


class CoupledGroupLasso(Penalty):
    """Group lasso over coupled groups, with an optional L1 term (sparse group lasso):

    ``R(theta) = alpha * ( l1_ratio * ||W||_1 + (1 - l1_ratio) * sum_sets m_set * sum_g sqrt(|g|) * ||theta_g||_2 )``

    .. math::

        R(\\theta) = \\alpha\\Big(\\rho\\,\\lVert W\\rVert_1 + (1-\\rho)\\sum_{\\text{sets}} m_{\\text{set}} \\sum_g \\sqrt{|g|}\\,\\lVert\\theta_g\\rVert_2\\Big), \\qquad \\rho = \\texttt{l1\\_ratio}

    where ``theta_g`` is everything unit ``g`` owns (see :func:`coupled_groups`), ``|g|``
    its number of entries and ``W`` the Linear/Conv weights of the groups; ``scale``
    multiplies the group term of a set (``{"inputs": 4.0}``: input features 4x as strongly
    as neurons; keys: ``"inputs"``, ``"neurons"`` or a layer name). The prox
    soft-thresholds ``W`` at ``step*alpha*l1_ratio``, then scales each group by
    ``max(0, 1 - step*alpha*(1-l1_ratio)*sqrt(|g|) / ||theta_g||)``: a group becomes zero
    as a whole, bias and BatchNorm included. The two group sets ``"inputs"`` and
    ``"neurons"`` overlap on the first layer; their proxes are applied one after the other
    (the usual proximal splitting, not the exact prox of the overlapping sum). With
    ``metric="adam"`` each group's step is the harmonic mean of its coordinates' steps
    ``lr / max(sqrt(v_hat) + eps, alpha)`` (capped as GroupLasso's).

    ``target`` (a fraction, or ``{"inputs": 0.6, "neurons": 0.7}``) adds a budget: after
    the prox, the smallest groups of a set are zeroed until that fraction of its groups is
    zero, ramped on Zhu & Gupta's cubic schedule over optimizer steps ``begin..end``
    (updated every ``every`` steps); from ``end`` on the penalty is off and the removed
    groups are held at zero, so the survivors fine-tune. (The step counter ``t`` lives in
    the penalty, not in the optimizer's ``state_dict``.)

    Passed bare to :func:`decaylab.regularize`, it selects its own parameters (weights,
    biases, BatchNorm scales and shifts of the groups). One float strength only.

    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> pen = CoupledGroupLasso(0.1, model, groups="neurons")
    >>> pen.selection
    ['0.weight', '0.bias', '2.weight']
    """

    # the wrapper passes the raw step (lr, or Adam's capped per-coordinate steps) to prox_()
    takes_steps = True
    modes = ("prox",)

    def __init__(self, alpha, model: nn.Module, groups=("inputs", "neurons"), l1_ratio: float = 0.0,
                 scale: dict | None = None, target: float | dict | None = None, begin: int = 0,
                 end: int = 0, every: int = 1):
        super().__init__(alpha)
        if isinstance(self.alpha, Tensor):
            raise ValueError("CoupledGroupLasso takes one float strength; batched strengths are not supported")
        if not (isinstance(l1_ratio, (int, float)) and 0.0 <= l1_ratio < 1.0):
            raise ValueError(f"CoupledGroupLasso(l1_ratio) must be in [0, 1), got {l1_ratio!r}; 0 is pure "
                             f"group lasso (use L1 for l1_ratio=1)")
        self.l1_ratio = float(l1_ratio)
        self.groups = (groups,) if isinstance(groups, str) else tuple(groups)
        self.sets = coupled_groups(model, self.groups)
        self.scale = dict(scale or {})
        labels = {s.label for s in self.sets} | {"neurons"}
        bad = {k: v for k, v in self.scale.items() if k not in labels or not (isinstance(v, (int, float)) and v >= 0)}
        if bad:
            raise ValueError(f"CoupledGroupLasso(scale) maps group sets to multipliers >= 0; got {bad}, sets are "
                             f"{sorted(labels)} ('neurons' = every hidden layer)")
        self.targets = self._check_targets(target, labels)
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end and isinstance(every, int)
                and every >= 1):
            raise ValueError(f"CoupledGroupLasso needs integer steps 0 <= begin <= end and every >= 1, got "
                             f"begin={begin!r}, end={end!r}, every={every!r}")
        self.begin, self.end, self.every, self.t = begin, end, every, 0
        self._keep: dict[str, Tensor] = {}
        names = []
        for s in self.sets:
            names += [m.name for m in s.members if m.name not in names]
        self.selection = names
        self.weight_names = [n for n in names if n.endswith(".weight") and not self._is_norm(model, n)]
        self._sizes = None
        self._bound: dict[str, Tensor] = {}

    @staticmethod
    def _check_targets(target, labels) -> dict:
        if target is None:
            return {}
        items = target.items() if isinstance(target, dict) else [("inputs", target), ("neurons", target)]
        out = {}
        for k, v in items:
            ok = not isinstance(v, (str, bytes, bool)) and isinstance(v, (int, float)) and 0 < v < 1
            if k not in labels or not ok:
                raise ValueError(f"CoupledGroupLasso(target) is the fraction of groups to remove, in (0, 1), per "
                                 f"set {sorted(labels)}; got {k!r}: {v!r}")
            out[k] = float(v)
        return out

    def _target(self, s: GroupSet) -> float | None:
        if s.label in self.targets:
            return self.targets[s.label]
        return self.targets.get("neurons") if s.label != "inputs" else None

    @staticmethod
    def _is_norm(model, name) -> bool:
        return isinstance(unwrap(model).get_submodule(name.rsplit(".", 1)[0]), BATCH_NORMS)

    def bind(self, name, param):
        if name not in self.selection:
            raise ValueError(f"{self!r} has no group containing '{name}'; its parameters are {self.selection}")
        self._bound[name] = param
        return name

    def _tensors(self, tensors, ctxs) -> dict[str, Tensor]:
        if ctxs is None or len(ctxs) != len(self.selection) or set(ctxs) != set(self.selection):
            missing = sorted(set(self.selection) - set(ctxs or []))
            raise ValueError(f"{self!r} needs all of its tensors in one call (one optimizer param group, one "
                             f"device and dtype, all with gradients); missing {missing}")
        return dict(zip(ctxs, tensors))

    def _mult(self, s: GroupSet) -> float:
        if s.label in self.scale:
            return float(self.scale[s.label])
        return float(self.scale.get("neurons", 1.0)) if s.label != "inputs" else 1.0

    def group_norms(self, tensors: dict[str, Tensor]) -> list[Tensor]:
        """Per group set, the L2 norm of each unit's group (float32 or wider)."""
        out = []
        for s in self.sets:
            sq = 0
            for m in s.members:
                t = tensors[m.name]
                sq = sq + _unit_view(t.detach(), m, s.units).to(torch.promote_types(t.dtype, torch.float32)).pow(2).sum(1)
            out.append(sq.sqrt())
        return out

    def group_sizes(self, tensors: dict[str, Tensor]) -> list[int]:
        return [sum(tensors[m.name].numel() // s.units for m in s.members) for s in self.sets]

    def value(self, tensors, ctxs=None):
        """``R`` at ``tensors`` (listed in :attr:`selection` order unless ``ctxs`` names them)."""
        if ctxs is None:
            by_id = {id(p): n for n, p in self._bound.items()}
            ctxs = [by_id.get(id(t)) for t in tensors] if all(id(t) in by_id for t in tensors) else self.selection
        named = dict(zip(ctxs, tensors))
        total = 0
        for s, size in zip(self.sets, self.group_sizes(named)):
            sq = sum(_unit_view(named[m.name], m, s.units).pow(2).sum(1) for m in s.members)
            total = total + self._mult(s) * (1 - self.l1_ratio) * math.sqrt(size) * sq.sqrt().sum()
        if self.l1_ratio:
            total = total + self.l1_ratio * sum(named[n].abs().sum() for n in self.weight_names)
        return self.alpha * total

    def state_dict(self) -> dict:
        return {"t": self.t, "keep": {k: v.clone() for k, v in self._keep.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self._keep = {k: v.clone() for k, v in state["keep"].items()}

    def grad(self, w, ctx=None):
        raise ValueError("CoupledGroupLasso acts through its prox; use mode='prox'")

    @torch.no_grad()
    def prox_(self, tensors, step, ctxs=None, foreach=None):
        named = self._tensors(tensors, ctxs)
        t, self.t = self.t, self.t + 1
        if self.targets and t >= self.end and self._keep:  # budget reached: hold the removed groups
            self._apply_budget(named, t)
            return
        steps = None if isinstance(step, (int, float)) else dict(zip(ctxs, step))
        if self.l1_ratio:
            ws = [named[n] for n in self.weight_names]
            scale = step * self.alpha * self.l1_ratio if steps is None else \
                [steps[n] * (self.alpha * self.l1_ratio) for n in self.weight_names]
            from .functional import soft_threshold_
            soft_threshold_(ws, scale)
        sizes = self.group_sizes(named)
        for s, size in zip(self.sets, sizes):
            ref = named[s.members[0].name]
            dtype = torch.promote_types(ref.dtype, torch.float32)
            sq = sum(_unit_view(named[m.name], m, s.units).to(dtype).pow(2).sum(1) for m in s.members)
            norm = sq.sqrt()
            if steps is None:
                unit_step = step
            else:  # harmonic mean of the coordinates' steps: lr / mean(max(sqrt(v_hat) + eps, alpha))
                inv = sum(_unit_view(steps[m.name], m, s.units).reciprocal().sum(1) for m in s.members)
                unit_step = size / inv
            tau = unit_step * self.alpha * self._mult(s) * (1 - self.l1_ratio) * math.sqrt(size)
            factor = (1 - tau / norm.clamp_min(torch.finfo(dtype).tiny)).clamp_min(0)
            for m in s.members:
                _scale_units_(named[m.name], m, factor)
        if self.targets and t >= self.begin:
            self._apply_budget(named, t)

    def _apply_budget(self, named, t: int) -> None:
        """Zero the smallest groups of each set with a target, on the cubic schedule."""
        from .sparsity import cubic_sparsity

        update = t <= self.end and ((t - self.begin) % self.every == 0 or t == self.end)
        for s, norm in zip(self.sets, self.group_norms(named)):
            target = self._target(s)
            if target is None:
                continue
            if update or s.label not in self._keep:
                k = math.floor(cubic_sparsity(min(t, self.end), target, self.begin, self.end) * s.units)
                keep = norm > 0
                if k > 0:
                    keep &= norm > norm.kthvalue(k).values
                self._keep[s.label] = keep
            keep = self._keep[s.label]
            for m in s.members:
                _scale_units_(named[m.name], m, keep.to(named[m.name].dtype))

    def live(self, tensors: dict[str, Tensor] | None = None) -> dict[str, tuple[int, int]]:
        """Per group set: (groups with a nonzero entry, groups).

        >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> CoupledGroupLasso(0.1, m, "neurons").live(dict(m.named_parameters()))
        {'0': (2, 2)}
        """
        named = tensors if tensors is not None else self._bound
        return {s.label: (int((n > 0).sum()), s.units) for s, n in zip(self.sets, self.group_norms(named))}

    def __repr__(self):
        r = f", l1_ratio={self.l1_ratio:g}" if self.l1_ratio else ""
        r += f", scale={self.scale}" if self.scale else ""
        return f"CoupledGroupLasso(alpha={self._alpha_repr()}, groups={self.groups!r}{r})"
