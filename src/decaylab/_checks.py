"""What :func:`decaylab.regularize` checks and chooses before the first step: each rule's
initial metric, and every error that would otherwise come from the first ``step()``."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._warn import warn
from .metric import takes_adam_step
from .rules import Rule


def initial_metric(rule: Rule) -> str | None:
    """None (no prox), "lr", "adam", or "auto" (set at the first step by the state)."""
    if rule.penalty is None:
        return None
    if rule.metric is not None:
        return rule.metric
    return "auto" if rule.mode == "prox" and rule.penalty.adam_metric_default else "lr"


def check_rules(opt: torch.optim.Optimizer, bindings: list, buckets: list, multiplier: Callable) -> None:
    """Fail at regularize() what would otherwise fail at the first step()."""
    name = type(opt).__name__
    for b in bindings:
        if b.rule.schedule is not None:
            try:
                b.rule.schedule(0)
            except TypeError as err:
                raise ValueError(
                    f"schedule of {b.rule.penalty!r} must be a function f(step) -> multiplier; "
                    f"calling it with step 0 failed: {err}"
                ) from None
            multiplier(b.rule)  # >= 0 and finite at step 0
        if b.rule.metric is not None and b.rule.penalty is not None:
            b.rule.penalty.check_metric(b.rule.metric)
    if getattr(opt, "is_second_order", False):  # timm's AdaHessian
        raise ValueError(
            f"{name} differentiates through the gradient (Hessian-vector products), which the "
            f"penalties' in-place updates of the weights would break; use a first-order optimizer, "
            f"or add penalty.value(...) to the loss"
        )
    needs_lr = any(b.rule.mode in ("prox", "decoupled") for b in buckets)
    for gi, group in enumerate(opt.param_groups):
        lr = group.get("lr")
        if needs_lr and not isinstance(lr, (float, int, Tensor)):
            raise ValueError(
                f"{name} param group {gi} has lr={lr!r}: its step size is not a number decaylab can "
                f"scale its prox and decoupled decay by; give it lr=<float> (transformers' Adafactor: "
                f"relative_step=False, lr=1e-3) or use mode='coupled'"
            )
    if any(b.rule.metric == "adam" for b in buckets) and not takes_adam_step(opt):
        raise ValueError(
            f"metric='adam' needs an optimizer that takes Adam's step (torch's Adam, AdamW, NAdam, "
            f"RAdam, or one registered with dl.register_adam_metric); {name} is not: use metric='lr'"
        )


def warn_double_decay(opt: torch.optim.Optimizer, buckets: list) -> None:
    """Warn once when a penalized group also has the optimizer's own weight decay."""
    for b in buckets:
        wd = opt.param_groups[b.group].get("weight_decay", 0)
        if wd:
            warn(f"{type(opt).__name__} param group {b.group} has weight_decay={wd} and also gets "
                 f"{b.rule.penalty!r}; pass weight_decay=0 to the optimizer unless you want both")
            return
