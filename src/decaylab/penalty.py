"""The penalty protocol: what every penalty tells the wrapper, and the update it does.

:class:`Penalty` is the whole interface :class:`decaylab.Regularized` sees; the wrapper
never asks which penalty it holds. A penalty

* validates and binds its parameters (:meth:`Penalty.bind`, one context per parameter);
* gives its objective (:meth:`Penalty.value`) and gradient (:meth:`Penalty.add_grad`,
  the ``"coupled"`` mode);
* does its own update (:meth:`Penalty.update_`): the wrapper hands it the step sizes
  (:class:`decaylab.step_sizes.StepSizes`: ``lr * schedule``, or Adam's per-coordinate
  steps) and the penalty takes the form it needs: thresholds per coordinate, one per group,
  or the raw steps for penalties that form their own thresholds (``takes_steps``);
* says what a compiled kernel needs to know of it (:meth:`Penalty.kernel_op`,
  :meth:`Penalty.kernel_ratio`, :meth:`Penalty.kernel_dims`; :mod:`decaylab.fused`);
* keeps its own state for checkpoints (:meth:`Penalty.state_dict`,
  :meth:`Penalty.saved_ctxs`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from . import functional as F

__all__ = ["Penalty", "check_strength", "MODES"]

MODES = ("prox", "decoupled", "coupled")

def check_strength(alpha, what: str) -> float | Tensor:
    """Validate a strength: a finite float >= 0, or a 0-/1-D tensor of them."""
    if isinstance(alpha, Tensor):
        if not alpha.is_floating_point():
            raise ValueError(f"{what} must be a number or a float tensor, got a tensor of {alpha.dtype}")
        if alpha.ndim > 1:
            raise ValueError(
                f"{what} must be a float or a 1-D tensor with one strength per configuration, "
                f"got a tensor of shape {tuple(alpha.shape)}"
            )
        if not torch.isfinite(alpha).all() or (alpha < 0).any():
            raise ValueError(f"{what} must be finite and >= 0, got {alpha.tolist()}; use 0 for no penalty")
        if alpha.ndim == 0:
            return float(alpha)
        # float32 at least; a float64 strength stays float64 so lr * alpha keeps its precision
        return alpha.detach().to(torch.promote_types(alpha.dtype, torch.float32))
    try:
        # float("1e-3") would pass (a config-parsing slip), and float(True) is 1.0
        if isinstance(alpha, (str, bytes, bool)):
            raise TypeError
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {alpha!r}; convert strings with float()") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be finite and >= 0, got {alpha!r}; use 0 for no penalty")
    return value


def _alpha_for(alpha, w: Tensor):
    """The strength prepared for one tensor: a float, or a view broadcasting over ``w``."""
    prepared = F.prepare(alpha, [w])
    return prepared if isinstance(prepared, float) else prepared[0]


class Penalty:
    """Base class of penalties. Subclasses define the objective in their docstring."""

    default_mode = "prox"
    # the modes it has an update for: a penalty that acts through its prox alone (budgets,
    # coupled groups, adaptive weights) has no gradient to couple or decay with
    modes = MODES
    # whether a prox rule with no metric given takes Adam's metric under Adam-family
    # optimizers (the sparse penalties: a plain lr*alpha threshold hardly bites there)
    adam_metric_default = False

    def __init__(self, alpha):
        self.alpha = alpha

    @property
    def alpha(self):
        return self._alpha

    @alpha.setter
    def alpha(self, value):
        self._alpha = check_strength(value, f"{type(self).__name__}(alpha)")

    @property
    def batch_dims(self) -> int:
        """1 if the strength carries one value per configuration, else 0."""
        return 1 if isinstance(self.alpha, Tensor) else 0

    def bind(self, name: str, param: Tensor):
        """Check the penalty fits parameter ``name`` and return its per-parameter context."""
        if not param.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} needs real floating-point weights; '{name}' is {param.dtype}; "
                f"exclude it from this rule (e.g. Rule(None, params='{name}'))"
            )
        if self.batch_dims:
            k = self.alpha.shape[0]
            if param.ndim == 0 or param.shape[0] != k:
                raise ValueError(
                    f"{self!r} has {k} strengths (one per configuration) but '{name}' has shape "
                    f"{tuple(param.shape)}; its leading dimension must be the {k} configurations"
                )
        return None

    def value(self, tensors: Sequence[Tensor], ctxs=None) -> Tensor:
        """The differentiable objective term at ``tensors`` (``ctxs``: their contexts from
        ``bind()``, for penalties that need them)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What the penalty keeps between steps besides its strength (empty for the
        stateless ones); saved in the wrapper's ``state_dict()["decaylab"]["penalties"]``."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""
        if state:
            raise ValueError(f"{self!r} keeps no state, but the checkpoint holds {sorted(state)}; "
                             f"build the optimizer with the same rules as the checkpoint")

    def bound_value(self, tensors, ctxs) -> Tensor:
        """:meth:`value` at parameters bound by ``bind()`` (the wrapper's call)."""
        return self.value(tensors)

    def saved_ctxs(self, ctxs) -> list[Tensor] | None:
        """Contexts a checkpoint must keep (L2SP's snapshots of the starting weights), or
        None; :meth:`load_ctxs` puts them back."""
        return None

    def load_ctxs(self, ctxs, saved) -> None:
        """Copy ``saved`` (from :meth:`saved_ctxs`) into ``ctxs``, in place."""
        raise ValueError(f"{self!r} keeps no snapshots, but the checkpoint holds {len(saved)}; "
                         f"build the optimizer with the same rules as the checkpoint")

    def check_metric(self, metric: str) -> None:
        """Raise if the prox cannot be taken in ``metric`` (``"lr"`` or ``"adam"``)."""

    # -- the update the wrapper calls --------------------------------------------------
    # whether a penalty forms its thresholds from the raw step sizes itself (coupled groups,
    # budgets, adaptive weights): it gets the weights as they are, never a compiled kernel
    takes_steps = False

    @property
    def is_weight_decay(self) -> bool:
        """Whether the update is exactly torch's ``weight_decay`` (an optimizer's own step
        may then take it, see ``decaylab._inner_decay``): only ``L2`` itself says yes, since
        a subclass may change the update."""
        return False

    @property
    def compensated(self) -> bool:
        """Whether bf16/fp16 weights may be updated through fp32 copies with a rounding
        residual kept by the wrapper (and by a compiled kernel)."""
        return not self.takes_steps

    def update_(self, op: str, tensors, steps, ctxs=None, foreach=None) -> None:
        """In place, ``op`` (``"prox"`` or ``"decay"``) of ``tensors`` with the step sizes
        ``steps`` (a :class:`decaylab.step_sizes.StepSizes`): ``lr * schedule``, or Adam's
        per-coordinate steps capped at ``lr / alpha``; the penalty takes the form it needs."""
        if self.takes_steps:
            getattr(self, f"{op}_")(tensors, steps.raw(), ctxs, foreach)
        elif op == "prox":
            self.prox_scaled_(tensors, steps.thresholds(), ctxs, foreach, per_coordinate=steps.per_coordinate)
        else:
            self.decay_scaled_(tensors, steps.thresholds(), ctxs, foreach)

    def kernel_op(self, mode: str, metric: str) -> str | None:
        """The op of :mod:`decaylab.fused` that takes this penalty's ``mode`` update in
        ``metric``, or None (eager kernels). Only a class that declares ``_kernel_op``
        itself has one: a subclass may change the update."""
        if mode == "coupled" or "_kernel_op" not in type(self).__dict__:
            return None
        return self._kernel_op(mode, metric)

    def kernel_ratio(self) -> float:
        """The ``l1_ratio`` a compiled kernel gets at each call (1 but for ElasticNet)."""
        return 1.0

    def kernel_dims(self, ctx, w: Tensor) -> tuple:
        """The dims of ``w`` one group spans (empty: an elementwise penalty)."""
        return ()

    def scale(self, step, tensors) -> F.Prepared:
        """``step * alpha`` for ``tensors`` (see :func:`decaylab.functional.times`)."""
        return F.times(F.prepare(self.alpha, tensors), step)

    def prox_(self, tensors, step, ctxs=None, foreach=None) -> None:
        """In place: ``w <- prox_{step * R}(w)``."""
        self.prox_scaled_(tensors, self.scale(step, tensors), ctxs, foreach)

    def decay_(self, tensors, step, ctxs=None, foreach=None) -> None:
        """In place: ``w <- w - step * grad R(w)``, clamped so it never overshoots."""
        self.decay_scaled_(tensors, self.scale(step, tensors), ctxs, foreach)

    def prox_scaled_(self, tensors, scale, ctxs=None, foreach=None, *, per_coordinate=False) -> None:
        """``prox_`` with the scale ``step * alpha`` given (``per_coordinate``: one step
        per entry, the Adam metric; elementwise penalties take it as it is)."""
        raise NotImplementedError

    def decay_scaled_(self, tensors, scale, ctxs=None, foreach=None) -> None:
        self.prox_scaled_(tensors, scale, ctxs, foreach)

    def grad_scaled(self, w: Tensor, alpha, ctx=None) -> Tensor:
        """``grad R(w)`` for a prepared strength ``alpha`` (a float or a broadcast view)."""
        raise NotImplementedError

    def grad(self, w: Tensor, ctx=None) -> Tensor:
        """The (sub)gradient of ``R`` at ``w`` (the ``"coupled"`` mode adds it)."""
        return self.grad_scaled(w, _alpha_for(self.alpha, w), ctx)

    def add_grad(self, grads, tensors, scale, ctxs=None, sign: float = 1.0) -> list[Tensor]:
        """New tensors ``g + sign * grad R(w)`` with the strength ``scale`` (strength x
        schedule); the gradients themselves are left as they are. ``sign=-1`` serves
        optimizers with ``maximize=True``, which follow ``-g``."""
        scale = F.prepare(scale, tensors)
        ctxs = ctxs or [None] * len(tensors)
        terms = [self.grad_scaled(w, F.scale_at(scale, i), c).to(g.dtype)
                 for i, (g, w, c) in enumerate(zip(grads, tensors, ctxs))]
        return F.add(grads, terms, alpha=sign)

    def _sum(self, per_tensor) -> Tensor:
        return torch.stack([t if t.ndim == 0 else t.sum() for t in per_tensor]).sum()

    def _alpha_repr(self) -> str:
        a = self.alpha
        return f"{a:g}" if isinstance(a, float) else f"tensor({[round(x, 8) for x in a.tolist()]})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self._alpha_repr()})"
