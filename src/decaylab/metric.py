"""Which optimizers take Adam's step: the registry behind ``metric="adam"``.

A prox in Adam's metric divides each coordinate's step by Adam's denominator
``sqrt(v_hat) + eps``, read from the optimizer's ``exp_avg_sq`` and ``step`` state. That is
only right for an optimizer whose update *is* Adam's (per-coordinate ``lr / (sqrt(v_hat) +
eps)``, with ``exp_avg_sq`` and ``step`` kept per parameter): keeping a key of that name is
not enough (timm's Lamb and Adan keep ``exp_avg_sq`` with the step count in the param
group; LaProp, MARS, ADOPT and NovoGrad keep one whose meaning differs). So the metric is
chosen from what the optimizer *is*: the classes registered here (torch's Adam, AdamW,
NAdam, RAdam) get Adam's metric by default, every other optimizer the plain one, and
``metric="adam"`` on an unregistered optimizer is refused at ``regularize()``.
:func:`register_adam_metric` adds a class whose update is Adam's; an instance may declare
it with a boolean ``takes_adam_step`` attribute.
"""

from __future__ import annotations

import torch

__all__ = ["register_adam_metric", "takes_adam_step"]

_ADAM_STEP: set[type] = {torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RAdam}


def register_adam_metric(cls: type) -> type:
    """Declare that ``cls`` takes Adam's per-coordinate step and keeps ``exp_avg_sq`` and
    ``step`` per parameter, as ``torch.optim.Adam`` does (usable as a class decorator).

    >>> class MyAdam(torch.optim.Adam):
    ...     def step(self, closure=None):  # an update of its own
    ...         return super().step(closure)
    >>> takes_adam_step(MyAdam([torch.zeros(1, requires_grad=True)]))
    False
    >>> _ = register_adam_metric(MyAdam)
    >>> takes_adam_step(MyAdam([torch.zeros(1, requires_grad=True)]))
    True
    """
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"register_adam_metric needs a torch.optim.Optimizer subclass, got {cls!r}")
    _ADAM_STEP.add(cls)
    return cls


def takes_adam_step(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt``'s class is registered as taking Adam's step, or inherits its
    ``step`` unchanged from a registered class (a subclass that overrides ``step`` may
    change the update, so it is registered on its own). An optimizer whose update depends
    on how it was built may say so itself with a boolean ``takes_adam_step`` attribute."""
    declared = getattr(opt, "takes_adam_step", None)
    if isinstance(declared, bool):
        return declared
    cls = type(opt)
    if cls in _ADAM_STEP:
        return True
    return any(base in _ADAM_STEP and cls.step is base.step for base in cls.__mro__[1:])
