"""Feature selection that works in a network: the adaptive group lasso.

A plain group lasso on the first layer's columns treats every input alike, so the
threshold that removes the noise columns also shrinks the informative ones, and under
minibatch noise it ends keeping all inputs or none. The adaptive group lasso (Zou 2006,
extended to groups; Wang & Leng 2008) first fits the network without a penalty and gives
each column a strength inversely proportional to its dense norm: columns the dense
network barely uses get a large threshold, the ones it relies on a small one.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from ._sharded import is_sharded, like
from .groups import Grouping, Indexed, make_grouping
from .penalties import GroupLasso, Penalty

__all__ = ["AdaptiveGroupLasso", "adaptive_weights", "standardize_inputs"]


def standardize_inputs(x_train: Tensor, *others: Tensor, constant: float = 0.1) -> tuple[list[Tensor], Tensor]:
    """Scale every input column to mean 0 and sd 1 on ``x_train``, so a first layer's column
    norms compare inputs; returns ``([x_train, *others] standardized, near-constant mask)``.

    A column whose sd is at most ``constant`` times the data's scale (the median sd of the
    columns that vary) is near-constant (a blank or almost blank pixel, a column that
    differs only in rounding): it becomes 0 everywhere, never divided by its tiny sd, which
    would turn a few stray values into large noise that a network fits and a selection
    ranks first; the group lasso then removes it. A column of small but real spread (above
    that share) is scaled up like any other.

    >>> (x,), const = standardize_inputs(torch.tensor([[0.0, 3.0, 5.0, 1.0], [2.0, 1.0, 5.0, 1.01]]))
    >>> x, const
    (tensor([[-1.,  1.,  0.,  0.],
            [ 1., -1.,  0.,  0.]]), tensor([False, False,  True,  True]))
    """
    x64 = x_train.double()
    mean, sd = x64.mean(0), x64.std(0, unbiased=False)
    varying = sd[sd > 0]
    scale = varying.median() if varying.numel() else sd.new_tensor(0.0)
    const = ~(sd > constant * scale) | ~(sd > 0)
    sd = torch.where(const, torch.ones_like(sd), sd)
    out = [torch.where(const, 0.0, (x.double() - mean) / sd).to(x.dtype) for x in (x_train, *others)]
    return out, const


def adaptive_weights(reference: Tensor, grouping: Grouping, gamma: float = 2.0) -> Tensor:
    """Per-group weights ``c_g = (mean_h ||w_h|| / ||w_g||)^gamma`` of a dense weight.

    Broadcast to ``reference``'s shape. A group that is exactly zero in the dense fit gets
    ``1e12`` (it is removed at once).

    >>> adaptive_weights(torch.tensor([[1.0, 3.0]]), Columns(), 1.0)
    tensor([[2.0000, 0.6667]])
    """
    if isinstance(grouping, Indexed):
        raise ValueError("adaptive weights need a built-in grouping ('inputs', 'rows', 'channels')")
    norms, _ = grouping.norms(reference.detach())  # one entry per group (kept dims of size 1)
    c = (norms.mean() / norms.clamp_min(1e-30)) ** gamma
    return torch.where(norms > 0, c, torch.full_like(c, 1e12))


class AdaptiveGroupLasso(Penalty):
    """Adaptive group lasso: ``R(w) = alpha * sum_g c_g * ||w_g||_2``,
    ``c_g = (mean_h ||w0_h|| / ||w0_g||)^gamma`` from a dense fit ``w0``.

    .. math::

        R(w) = \\alpha \\sum_g c_g\\,\\lVert w_g\\rVert_2, \\qquad c_g = \\left(\\frac{\\operatorname{mean}_h \\lVert w^0_h\\rVert_2}{\\lVert w^0_g\\rVert_2}\\right)^{\\gamma}

    ``groups`` as in :class:`~decaylab.GroupLasso` (default ``"inputs"``: the columns of a
    first layer, one per input feature). The prox scales group ``g`` by
    ``max(0, 1 - step*alpha*c_g/||w_g||)``; with ``metric="adam"`` each group's step is
    the harmonic mean of its coordinates' capped steps (as GroupLasso's). Recipe (``decaylab select``): fit dense,
    build this penalty from the dense first layer, train a path of ``alpha`` from strong
    to weak, choose by validation with the one-standard-error rule, refit on the kept
    features.

    Args:
        alpha: strength (>= 0).
        reference: the dense weight ``w0`` (a tensor, for a rule on one parameter) or a
            mapping from parameter names to dense weights.
        groups: the grouping.
        gamma: the exponent (Zou's gamma; 2 by default).

    >>> w0 = torch.tensor([[1.0, 0.1], [1.0, 0.1]])
    >>> pen = AdaptiveGroupLasso(0.1, w0, groups="inputs", gamma=1.0)
    >>> w = w0.clone(); pen.prox_([w], 1.0, [pen.bind("w", w)]); w   # column 2 is removed
    tensor([[0.9611, 0.0000],
            [0.9611, 0.0000]])
    """

    # the wrapper passes the raw step (lr, or Adam's capped per-coordinate steps) to prox_()
    takes_steps = True
    modes = ("prox",)

    def __init__(self, alpha, reference: Tensor | Mapping[str, Tensor], groups="inputs", gamma: float = 2.0):
        super().__init__(alpha)
        if isinstance(self.alpha, Tensor):
            raise ValueError("AdaptiveGroupLasso takes one float strength; batched strengths are not supported")
        if not (isinstance(gamma, (int, float)) and gamma >= 0):
            raise ValueError(f"AdaptiveGroupLasso(gamma) must be a number >= 0, got {gamma!r}")
        if not isinstance(reference, (Tensor, Mapping)):
            raise ValueError("AdaptiveGroupLasso(reference) must be the dense weight tensor or a mapping "
                             "name -> dense weight (e.g. model.state_dict() of the dense fit)")
        self.reference, self.gamma = reference, float(gamma)
        self.grouping = make_grouping(groups)
        # keyed by the parameter itself (hash = identity, as L2SP's snapshots): value() and
        # prox_() of bound tensors find their weights without the names
        self._bound: dict[Tensor, Tensor] = {}

    def bind(self, name, param):
        c = self._adaptive(name, param)
        self._bound[param] = c
        return c

    def _adaptive(self, name, param) -> Tensor:
        """The adaptive weights ``c_g`` for parameter ``name``, broadcast to its groups."""
        self.grouping.check(name, param.shape)
        ref = self.reference
        if isinstance(ref, Mapping):
            if name not in ref:
                raise ValueError(f"AdaptiveGroupLasso reference has no entry for '{name}'; pass the dense "
                                 f"model's state_dict or narrow the rule's params")
            ref = ref[name]
        ref = torch.as_tensor(ref)
        if tuple(ref.shape) != tuple(param.shape):
            raise ValueError(f"AdaptiveGroupLasso reference for '{name}' has shape {tuple(ref.shape)} but the "
                             f"parameter has {tuple(param.shape)}; pass the dense fit of the same layer")
        ref = ref.full_tensor() if is_sharded(ref) else ref
        c = adaptive_weights(ref.to(param.device, torch.promote_types(param.dtype, torch.float32)),
                             self.grouping, self.gamma)
        return like(c, param)

    def _weights(self, tensors, ctxs):
        """The adaptive weights of ``tensors``: given, bound by ``regularize()``, or from a
        reference tensor."""
        if ctxs is not None:
            return ctxs
        if all(w in self._bound for w in tensors):
            return [self._bound[w] for w in tensors]
        if isinstance(self.reference, Mapping):
            raise ValueError("AdaptiveGroupLasso.value()/prox_() of tensors that regularize() did not bind needs "
                             "their adaptive weights: pass ctxs=[pen.bind(name, w) for each tensor], with the "
                             "names of the reference mapping")
        return [self._adaptive(f"tensor {i}", w) for i, w in enumerate(tensors)]

    def value(self, tensors, ctxs=None):
        total = 0
        for w, c in zip(tensors, self._weights(tensors, ctxs)):
            norms, _ = self.grouping.norms(w)
            total = total + (norms * c).sum()  # one entry per group
        return self.alpha * total

    def grad(self, w, ctx=None):
        raise ValueError("AdaptiveGroupLasso acts through its prox; use mode='prox'")

    @torch.no_grad()
    def prox_(self, tensors, step, ctxs=None, foreach=None):
        ctxs = self._weights(tensors, ctxs)
        if not isinstance(step, (int, float)):
            step = GroupLasso._group_steps(tensors, step, [self.grouping] * len(tensors))
        for i, (w, c) in enumerate(zip(tensors, ctxs)):
            s = step if isinstance(step, (int, float)) else step[i]
            norms, _ = self.grouping.norms(w)
            factor = (1 - s * self.alpha * c / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp_min(0)
            w.mul_(factor.to(w.dtype))

    def __repr__(self):
        return f"AdaptiveGroupLasso(alpha={self._alpha_repr()}, groups={self.grouping!r}, gamma={self.gamma:g})"
