"""Penalties: L2, L1, ElasticNet, GroupLasso, L2SP.

Every penalty ``R`` has a strength ``alpha`` (sklearn's name) and knows four things:

* ``value(tensors)`` - the differentiable objective term, for logging or the loss;
* ``grad(w, ctx)`` - its (sub)gradient, for the ``"coupled"`` mode;
* ``prox_(tensors, step, ctxs)`` - the exact proximal map of ``step * R``, in place;
* ``decay_(tensors, step, ctxs)`` - the explicit decoupled step ``w - step*grad R(w)``,
  clamped so it never overshoots (for non-smooth penalties this equals the prox).

``step`` is the learning rate (a float) or, for the Adam-metric prox, one tensor of
per-coordinate step sizes per weight. ``alpha`` is a float or a 1-D tensor of shape
``[K]`` giving one strength per configuration of a batched sweep, whose weights carry a
leading dimension of size ``K``.

The product ``step * alpha`` (the kernels' *scale*) is formed in one place,
:func:`decaylab.functional.times` over :func:`decaylab.functional.prepare`; the wrapper
prepares it once per bucket and calls :meth:`~decaylab.Penalty.update_`, which
hands the ``*_scaled_`` methods the scale as it is. ``prox_``/``decay_`` are the same
methods with ``step`` for direct use. The protocol the wrapper sees is
:class:`decaylab.Penalty`'s.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor

from . import functional as F
from .groups import Grouping, Indexed, make_grouping
from ._sharded import like
from .penalty import MODES, Penalty, check_strength  # noqa: F401 - their historical home
from .selectors import strip_wrappers

__all__ = ["Penalty", "L2", "L1", "ElasticNet", "GroupLasso", "L2SP", "MODES"]


def _per_config_sum(t: Tensor, alpha) -> Tensor:
    """Sum over all dims but the configuration dim, scaled by alpha."""
    if isinstance(alpha, Tensor):
        return (t.reshape(t.shape[0], -1).sum(1) * alpha.to(t.device)).sum()
    return t.sum() * alpha


class L2(Penalty):
    """Squared L2: ``R(w) = alpha/2 * ||w||_2^2``; gradient ``alpha*w``.

    .. math::

        R(w) = \\frac{\\alpha}{2}\\,\\lVert w\\rVert_2^2

    Decoupled (default) it is AdamW's weight decay: ``w <- w * (1 - lr*alpha)``; coupled
    it is torch's ``weight_decay`` flag; its prox is ``w / (1 + lr*alpha)``.

    >>> L2(0.1).value([torch.tensor([1.0, 2.0])])
    tensor(0.2500)
    """

    default_mode = "decoupled"

    @property
    def is_weight_decay(self) -> bool:
        return type(self) is L2

    def value(self, tensors):
        return self._sum([_per_config_sum(w * w, self.alpha) / 2 for w in tensors])

    def grad_scaled(self, w, alpha, ctx=None):
        return w * alpha

    def add_grad(self, grads, tensors, scale, ctxs=None, sign: float = 1.0):
        # torch's SGD(weight_decay) computes grad.add(param, alpha=wd): the same op, the same bits
        scale = F.prepare(scale, tensors)
        if isinstance(scale, float):
            return F.add(grads, tensors, alpha=sign * scale)
        return [torch.add(g, (w * s).to(g.dtype), alpha=sign) for g, w, s in zip(grads, tensors, scale)]

    def prox_scaled_(self, tensors, scale, ctxs=None, foreach=None, *, per_coordinate=False):
        F.div_(tensors, scale, foreach)

    def decay_scaled_(self, tensors, scale, ctxs=None, foreach=None):
        F.shrink_(tensors, scale, foreach=foreach)

    def _kernel_op(self, mode, metric):
        return None if metric != "lr" else "div" if mode == "prox" else "shrink"


class L1(Penalty):
    """Lasso: ``R(w) = alpha * ||w||_1``; prox = soft-threshold at ``lr*alpha``.

    .. math::

        R(w) = \\alpha\\,\\lVert w\\rVert_1

    The prox sets every weight with ``|w| <= lr*alpha`` to exactly zero.

    >>> L1(0.5).value([torch.tensor([1.0, -2.0])])
    tensor(1.5000)
    """

    adam_metric_default = True

    def value(self, tensors):
        return self._sum([_per_config_sum(w.abs(), self.alpha) for w in tensors])

    def grad_scaled(self, w, alpha, ctx=None):
        return torch.sign(w) * alpha

    def prox_scaled_(self, tensors, scale, ctxs=None, foreach=None, *, per_coordinate=False):
        F.soft_threshold_(tensors, scale, foreach=foreach)

    def _kernel_op(self, mode, metric):
        return "soft"


class ElasticNet(Penalty):
    """scikit-learn's elastic net:
    ``R(w) = alpha * l1_ratio * ||w||_1 + alpha * (1 - l1_ratio) / 2 * ||w||_2^2``.

    .. math::

        R(w) = \\alpha\\,\\rho\\,\\lVert w\\rVert_1 + \\frac{\\alpha\\,(1-\\rho)}{2}\\,\\lVert w\\rVert_2^2, \\qquad \\rho = \\texttt{l1\\_ratio}

    ``l1_ratio=1`` is L1, ``l1_ratio=0`` is L2 (with its ½).

    >>> ElasticNet(1.0, l1_ratio=0.5).value([torch.tensor([2.0])])
    tensor(2.)
    """

    adam_metric_default = True

    def __init__(self, alpha, l1_ratio: float = 0.5):
        super().__init__(alpha)
        try:
            if isinstance(l1_ratio, (str, bytes, bool)):
                raise TypeError
            ok = 0.0 <= float(l1_ratio) <= 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"ElasticNet(l1_ratio) must be in [0, 1], got {l1_ratio!r}; "
                f"1 is pure L1, 0 pure L2"
            )
        self.l1_ratio = float(l1_ratio)

    def value(self, tensors):
        r = self.l1_ratio
        return self._sum(
            [_per_config_sum(r * w.abs() + (1 - r) / 2 * w * w, self.alpha) for w in tensors]
        )

    def grad_scaled(self, w, alpha, ctx=None):
        r = self.l1_ratio
        return (r * torch.sign(w) + (1 - r) * w) * alpha

    def prox_scaled_(self, tensors, scale, ctxs=None, foreach=None, *, per_coordinate=False):
        F.elastic_net_prox_(tensors, scale, self.l1_ratio, foreach=foreach)

    def decay_scaled_(self, tensors, scale, ctxs=None, foreach=None):
        scale = F.prepare(scale, tensors)
        # shrink, then soft-threshold: exactly w - step*grad R(w) unless it crosses 0 (then 0)
        F.shrink_(tensors, F.scale_times(scale, 1.0 - self.l1_ratio), foreach=foreach)
        F.soft_threshold_(tensors, F.scale_times(scale, self.l1_ratio), foreach=foreach)

    def _kernel_op(self, mode, metric):
        return "enet" if mode == "prox" else "enet_decay"

    def kernel_ratio(self) -> float:
        return self.l1_ratio

    def __repr__(self):
        return f"ElasticNet(alpha={self._alpha_repr()}, l1_ratio={self.l1_ratio:g})"


class GroupLasso(Penalty):
    """Group lasso: ``R(w) = alpha * sum_g sqrt(|g|) * ||w_g||_2``.

    .. math::

        R(w) = \\alpha \\sum_g \\sqrt{|g|}\\,\\lVert w_g\\rVert_2

    ``groups``: ``"rows"``/``"outputs"`` (a Linear's output neurons), ``"columns"``/
    ``"inputs"`` (input features; a Conv's input channels), ``"channels"`` (a Conv's
    output channels), a :class:`~decaylab.groups.Grouping`, or a function
    ``shape -> LongTensor`` of group ids. The prox zeroes whole groups.

    >>> GroupLasso(1.0, groups="rows").value([torch.tensor([[3.0, 4.0], [0.0, 0.0]])])
    tensor(7.0711)
    """

    def __init__(self, alpha, groups="rows"):
        super().__init__(alpha)
        self.grouping: Grouping = make_grouping(groups)

    def bind(self, name, param):
        super().bind(name, param)
        grouping = self.grouping.with_batch_dims(self.batch_dims)
        grouping.check(name, param.shape)
        return grouping

    @property
    def adam_metric_default(self) -> bool:
        return not isinstance(self.grouping, Indexed)  # a function grouping: plain metric only

    def _grouping(self, ctx) -> Grouping:
        return ctx if ctx is not None else self.grouping.with_batch_dims(self.batch_dims)

    def value(self, tensors):
        terms = []
        for w in tensors:
            norms, sizes = self._grouping(None).norms(w)
            if isinstance(sizes, int):  # one norm per group
                term = norms * math.sqrt(sizes)
            else:  # Indexed: norms repeated on each of a group's |g| entries
                term = norms / sizes.sqrt()
            terms.append(_per_config_sum(term, self.alpha))
        return self._sum(terms)

    def grad_scaled(self, w, alpha, ctx=None):
        norms, sizes = self._grouping(ctx).norms(w)
        root = torch.as_tensor(sizes, dtype=norms.dtype, device=norms.device).sqrt()
        unit = torch.where(norms > 0, w / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
        return (unit * root * alpha).to(w.dtype)

    def check_metric(self, metric):
        if metric == "adam" and isinstance(self.grouping, Indexed):
            raise ValueError(
                "GroupLasso with groups=<function> supports metric='lr' only; use metric='lr' "
                "or a built-in grouping ('rows', 'inputs', 'channels')"
            )

    def _kernel_op(self, mode, metric):
        return None if isinstance(self.grouping, Indexed) else "group"

    def kernel_dims(self, ctx, w):
        return tuple(self._grouping(ctx).reduce_dims(w))

    def update_(self, op, tensors, steps, ctxs=None, foreach=None):
        if op == "prox" and steps.per_coordinate:  # Adam's metric: one threshold per group, one pass
            dims = [self.kernel_dims(c, w) for w, c in zip(tensors, ctxs or [None] * len(tensors))]
            self.prox_scaled_(tensors, steps.group_thresholds(dims), ctxs, foreach)
        else:
            super().update_(op, tensors, steps, ctxs, foreach)

    def prox_(self, tensors, step, ctxs=None, foreach=None):
        per_coordinate = not isinstance(step, (int, float))
        self.prox_scaled_(tensors, self.scale(step, tensors), ctxs, foreach, per_coordinate=per_coordinate)

    def prox_scaled_(self, tensors, scale, ctxs=None, foreach=None, *, per_coordinate=False):
        ctxs = ctxs or [None] * len(tensors)
        groupings = [self._grouping(c) for c in ctxs]
        if per_coordinate:
            scale = self._group_steps(tensors, F.prepare(scale, tensors), groupings)
        F.group_soft_threshold_(tensors, scale, groupings)

    @staticmethod
    def _group_steps(tensors, steps, groupings) -> list[Tensor]:
        """Per-coordinate steps (Adam metric) -> one step per group: their harmonic mean.

        The group prox has no closed form in a diagonal metric, so each group gets the
        exact prox in an isotropic metric: the harmonic mean of its coordinates' steps,
        ``lr / mean(max(sqrt(v_hat) + eps, alpha))`` (see the wrapper's cap). Whole groups
        still become exactly zero.
        """
        out = []
        for w, s, g in zip(tensors, steps, groupings):
            if isinstance(g, Indexed):
                raise ValueError(
                    "GroupLasso with groups=<function> supports metric='lr' only; use metric='lr' "
                    "or a built-in grouping ('rows', 'inputs', 'channels')"
                )
            # harmonic mean: lr / mean(max(sqrt(v_hat) + eps, alpha)), not swamped by near-zero
            # v entries (nanmean: a NaN v_hat entry, from a NaN gradient, does not poison its group)
            out.append(s.reciprocal().nanmean(dim=g.reduce_dims(w), keepdim=True).reciprocal())
        return out

    def __repr__(self):
        return f"GroupLasso(alpha={self._alpha_repr()}, groups={self.grouping!r})"


class L2SP(Penalty):
    """Decay toward a reference: ``R(w) = alpha/2 * ||w - w0||_2^2`` (Li et al., 2018).

    .. math::

        R(w) = \\frac{\\alpha}{2}\\,\\lVert w - w_0\\rVert_2^2

    ``reference``: a mapping from parameter names to tensors (e.g. a pretrained
    ``state_dict``, also one of a DDP or compiled model with ``module.``/``_orig_mod.``
    keys), or ``None`` to snapshot each parameter when ``regularize`` binds it; the
    snapshot is saved in the wrapper's ``state_dict()``, so a resumed run keeps it.
    Decoupled by default: ``w <- w - lr*alpha*(w - w0)``.

    >>> L2SP(1.0, {"w": torch.zeros(1)}).value([torch.tensor([2.0])], [torch.zeros(1)])
    tensor(2.)
    """

    default_mode = "decoupled"

    def __init__(self, alpha, reference: Mapping[str, Tensor] | None = None):
        super().__init__(alpha)
        self.reference = reference
        # keyed by the parameter itself (hash = identity): a deepcopy or pickle of the
        # penalty with its parameters maps the keys to the copies; id(param) would not
        self._bound: dict[Tensor, Tensor] = {}

    def bind(self, name, param):
        super().bind(name, param)
        if self.reference is None:
            ref = param.detach().clone()
        else:
            ref = torch.as_tensor(self._lookup(name)).detach()
            if ref.shape != param.shape:
                raise ValueError(
                    f"L2SP reference for '{name}' has shape {tuple(ref.shape)} but the parameter "
                    f"has shape {tuple(param.shape)}; pass the matching pretrained weights"
                )
            ref = like(ref.to(device=param.device, dtype=param.dtype).clone(), param)
        self._bound[param] = ref
        return ref

    def _lookup(self, name: str):
        """The reference for ``name``, also under a DDP (``module.``) or compiled
        (``_orig_mod.``) model's key, as in that model's ``state_dict()``."""
        if name in self.reference:
            return self.reference[name]
        for key in self.reference:
            if isinstance(key, str) and strip_wrappers(key) == name:
                return self.reference[key]
        keys = [k for k in self.reference if isinstance(k, str)]
        shown = ", ".join(repr(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
        raise ValueError(
            f"L2SP reference has no entry for '{name}' (its keys are {shown or 'none'}); pass a "
            f"state_dict that contains it, or exclude '{name}' from this rule"
        )

    def _refs(self, tensors, references):
        if references is not None:
            return references
        try:
            return [self._bound[w] for w in tensors]
        except KeyError:
            raise ValueError("L2SP.value() needs references= for tensors not bound by regularize()") from None

    def bound_value(self, tensors, ctxs):
        return self.value(tensors, ctxs)

    def saved_ctxs(self, ctxs):
        # snapshots of the starting weights (reference=None): a resumed run must keep pulling
        # toward them, not toward the weights it resumed from
        return [r.clone() for r in ctxs] if self.reference is None else None

    def load_ctxs(self, ctxs, saved):
        for ref, s in zip(ctxs, saved):
            ref.copy_(s)  # in place: the penalty holds the same tensors

    def value(self, tensors, references: Sequence[Tensor] | None = None):
        refs = self._refs(tensors, references)
        return self._sum([_per_config_sum((w - r) ** 2, self.alpha) / 2 for w, r in zip(tensors, refs)])

    def grad_scaled(self, w, alpha, ctx=None):
        return (w - ctx) * alpha

    def prox_scaled_(self, tensors, scale, ctxs=None, foreach=None, *, per_coordinate=False):
        # argmin_v 1/2||v - w||^2 + s/2||v - w0||^2  =  lerp(w, w0, s / (1 + s))
        scale = F.prepare(scale, tensors)
        for i, (w, w0) in enumerate(zip(tensors, ctxs)):
            s = F.per_tensor(scale, i, w)
            frac = s / (1.0 + s)
            # lerp_ needs a tensor weight of w's dtype (a float32 strength on float64 w fails)
            w.lerp_(w0.to(w.dtype), frac.to(w.dtype) if isinstance(frac, Tensor) else frac)

    def decay_scaled_(self, tensors, scale, ctxs=None, foreach=None):
        F.pull_toward_(tensors, ctxs, scale, foreach=foreach)
