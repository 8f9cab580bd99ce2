"""Step sizes of the prox and the decoupled decay, and who takes Adam's step.

A bucket's update (:meth:`decaylab.Penalty.update_`) gets a :class:`StepSizes`:
``lr * schedule`` in the plain metric, or in Adam's metric (``decaylab.metric`` says
which optimizers take Adam's step) the per-coordinate step ``lr / (sqrt(v_hat) + eps)``
read from the optimizer's ``exp_avg_sq`` and ``step`` state, capped at ``lr / alpha``.

**Who takes Adam's step for a weight** is decided here, in :func:`kernel_takes_adam_step`:
the inner optimizer, always, except for the weights of a prox bucket whose compiled kernel
(:mod:`decaylab.fused`) takes Adam's step and the prox in one pass (:func:`adam_in_kernel`
picks those buckets at each step, :func:`fused_adam_step` runs them). An L2 that torch's
own Adam/AdamW/SGD takes as its ``weight_decay`` is ``decaylab._inner_decay``'s.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _compat
from . import fused as fused_kernels
from . import functional as F
from ._sharded import any_sharded

__all__ = ["StepSizes", "adam_state", "bias_correction", "kernel_takes_adam_step", "adam_in_kernel",
           "fused_adam_step", "run_kernel", "choose_kernel"]


def bias_correction(beta: float, steps: list) -> Tensor | list[float]:
    """Adam's ``1 - beta**t`` for each step counter: one float64 tensor where the counters
    live on a device (fused/capturable Adam: no host sync), else Python floats.

    >>> bias_correction(0.5, [torch.tensor(1.0), torch.tensor(2.0)])
    [0.5, 0.75]
    """
    if isinstance(steps[0], Tensor) and steps[0].device.type != "cpu":
        return 1.0 - torch.pow(beta, torch.stack([x.reshape(()) for x in steps]).double())
    return [1.0 - beta ** float(x) for x in steps]


def adam_state(opt: torch.optim.Optimizer, group_index: int, params) -> tuple[list[Tensor], object, float]:
    """Adam's second moments, ``sqrt(1 - beta2**step)`` per tensor, and eps."""
    group = opt.param_groups[group_index]
    if "betas" not in group or "eps" not in group:
        raise ValueError(
            f"metric='adam' needs an Adam-family optimizer (Adam, AdamW, NAdam, RAdam); "
            f"{type(opt).__name__} has no betas/eps; use metric='lr'"
        )
    beta2 = group["betas"][1]
    key = "max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq"
    vs, steps = [], []
    for p in params:
        st = opt.state.get(p, {})
        if key not in st:
            raise ValueError(
                f"metric='adam': no {key} state for a parameter of {type(opt).__name__}; "
                f"use metric='lr' with optimizers that keep no second moment"
            )
        vs.append(st[key])
        steps.append(st["step"])
    c2 = bias_correction(beta2, steps)
    if isinstance(c2, Tensor):
        rbcs = c2.sqrt().to(torch.promote_types(vs[0].dtype, torch.float32))
    else:
        rbcs = [math.sqrt(c) for c in c2]
    return vs, rbcs, float(group["eps"])


class StepSizes:
    """The step sizes of one bucket's update this step, in the form a penalty asks for.

    ``step`` is ``lr * schedule``; ``params`` the bucket's tensors with a gradient (``idx``
    their indices, None for all); ``scratch(p)`` a kept buffer per weight for Adam's metric
    (on CPUs a fresh weight-sized tensor each step costs page faults that take longer than
    the arithmetic). Each Adam form is computed in those buffers, valid until the next step.
    """

    def __init__(self, opt: torch.optim.Optimizer, bucket, step: float, idx, params, scratch):
        self.opt, self.bucket, self.step, self.idx, self.params = opt, bucket, step, idx, params
        self.scratch = scratch
        self.per_coordinate = bucket.metric == "adam"

    def raw(self):
        """``step``, or Adam's per-coordinate step with the cap of :meth:`thresholds`,
        ``step / max(sqrt(v_hat) + eps, alpha)``, for penalties that form their own
        thresholds from it: the same objective gets the same update as under L1 and
        GroupLasso."""
        if not self.per_coordinate:
            return self.step
        return [d.reciprocal_().mul_(self.step) for _, _, d in self._capped_denominators()]

    def thresholds(self) -> F.Prepared:
        """``step * alpha``, or per coordinate ``step * alpha / max(sqrt(v_hat) + eps, alpha)``:
        Adam's step capped at ``step / alpha`` so that a coordinate with little or no
        gradient (a never-used embedding row, a zero-initialized LoRA factor) moves toward 0
        by at most ``step`` (what Adam does with the L1 term in the loss) instead of being
        wiped by a threshold ``step * alpha / eps``."""
        if not self.per_coordinate:
            return self.bucket.scale(self.step, self.idx)
        return [d.reciprocal_().mul_(F.times(a, self.step) if isinstance(a, float) else a * self.step)
                for _, a, d in self._capped_denominators()]

    def group_thresholds(self, dims: list[tuple]) -> list[Tensor]:
        """One threshold per group (groups spanning ``dims[i]`` of tensor ``i``), in Adam's
        metric: the harmonic mean of the capped per-coordinate thresholds of
        :meth:`thresholds` (``GroupLasso._group_steps``), taken in one pass as
        ``step * alpha / nanmean(max(sqrt(v_hat) + eps, alpha))`` (what the compiled kernel
        computes; a NaN coordinate is left out of its group's mean)."""
        out = []
        for i, (p, a, d) in enumerate(self._capped_denominators()):
            # mean, and nanmean only where a NaN coordinate (a NaN gradient) makes one NaN: on a
            # CPU nanmean costs 3-5x a mean, and the check is free; a GPU would sync on it
            mean = d.mean(dim=dims[i], keepdim=True)
            if d.device.type != "cpu" or mean.isnan().any():
                mean = torch.nanmean(d, dim=dims[i], keepdim=True)
            # out of place: a sharded weight's mean is a pending cross-shard reduction
            out.append(mean.reciprocal().mul_(self.step * a))
        return out

    def _capped_denominators(self):
        """Per tensor ``(param, alpha, max(sqrt(v_hat) + eps, alpha))``, in its kept buffer."""
        b, idx = self.bucket, self.idx
        vs, rbcs, eps = adam_state(self.opt, b.group, self.params)
        alphas = b.alphas()
        for i, (p, v) in enumerate(zip(self.params, vs)):
            a = alphas if isinstance(alphas, float) else alphas[i if idx is None else idx[i]]
            buf = self.scratch(p)
            if v.dtype == buf.dtype:
                torch.sqrt(v, out=buf)
            else:
                buf.copy_(v).sqrt_()
            buf.div_(rbcs[i]).add_(eps)
            if isinstance(a, float):
                buf.clamp_min_(a)
            else:
                torch.maximum(buf, a, out=buf)
            yield p, a, buf


# -- compiled kernels ------------------------------------------------------------------
def choose_kernel(b, fused: bool | None, tag: str):
    """A bucket's ``decaylab.fused.Kernel``, or False (eager): chosen once, at its
    first step. ``fused``: the wrapper's flag (None: on GPUs, and on CPUs for buckets of
    at least ``fused.CPU_MIN_NUMEL`` weights, where the compile time pays back)."""
    pen = b.rule.penalty
    op = pen.kernel_op(b.rule.mode, b.metric)
    want = fused
    if want is None:
        dev = b.params[0].device.type
        want = dev == "cuda" or (dev == "cpu" and sum(p.numel() for p in b.params) >= fused_kernels.CPU_MIN_NUMEL)
    if not (want and op and fused_kernels.available()) or any_sharded(b.params):
        return False  # compiled kernels take plain tensors: a DTensor bucket stays eager
    dims = [pen.kernel_dims(c, p) for p, c in zip(b.params, b.ctxs)]
    return fused_kernels.Kernel(op, pen.kernel_ratio(), dims, tag=tag)


def run_kernel(opt: torch.optim.Optimizer, b, step: float, comps) -> bool:
    """``b``'s update by its compiled kernel (chosen by the caller); False: take the eager
    path (no kernel, its first step before it takes Adam's step too, a failed compile)."""
    if not b.kernel:
        return False
    if b.kernel.fresh and kernel_takes_adam_step(opt, b):
        return False  # its kernel will also take Adam's step from the next step on: no second compile
    vs = rbcs = None
    eps = 0.0
    if b.metric == "adam":
        vs, rbcs, eps = adam_state(opt, b.group, b.params)
    if b.kernel(b.params, comps, vs, rbcs, step, b.alphas(), eps, b.rule.penalty.kernel_ratio()):
        return True
    b.kernel = False  # compilation failed: eager from now on (fused.disable warned)
    return False


# -- who takes Adam's step -------------------------------------------------------------
def kernel_takes_adam_step(opt: torch.optim.Optimizer, b) -> bool:
    """Whether ``b``'s compiled kernel may take the inner step for its weights: only
    torch's own ``Adam``/``AdamW`` (by type: a subclass may change the update) without
    amsgrad, ``capturable`` or ``differentiable``, with no step hooks (they would see the
    bucket's gradients hidden); fp32/fp64 weights; an elementwise prox (L1, ElasticNet, L2)
    of at least ``fused.CPU_ADAM_MIN_NUMEL`` weights on a CPU."""
    if type(opt) not in (torch.optim.Adam, torch.optim.AdamW) or _compat.step_hooked(opt):
        return False
    group = opt.param_groups[b.group]
    # a group prox needs the whole updated group before it can scale it: inductor keeps
    # the updated weights in a fresh weight-sized buffer, which costs more on a CPU than
    # the separate prox pass it saves (measured: bench/step_overhead.py), so groups stay apart
    if b.kernel.op == "group":
        return False
    if b.params[0].device.type == "cpu" and sum(p.numel() for p in b.params) < fused_kernels.CPU_ADAM_MIN_NUMEL:
        return False
    return b.rule.mode == "prox" and not (
        b.low_precision or group.get("amsgrad") or group.get("differentiable") or group.get("capturable")
        or any(p.dtype not in (torch.float32, torch.float64) for p in b.params))


def adam_in_kernel(opt: torch.optim.Optimizer, prox_buckets: list, multiplier) -> list:
    """The prox buckets whose compiled kernel takes Adam's step this step, in place of the
    inner optimizer: :func:`kernel_takes_adam_step`, with every gradient present (dense),
    Adam's state made (the first step is the inner optimizer's own, which also shows the
    metric) and the schedule not at zero."""
    state = opt.state
    return [b for b in prox_buckets
            if b.kernel and b.metric is not None and kernel_takes_adam_step(opt, b)
            and all(p.grad is not None and not p.grad.is_sparse and "exp_avg_sq" in state.get(p, ())
                    for p in b.params)
            and multiplier(b.rule) > 0]


def fused_adam_step(opt: torch.optim.Optimizer, b, multiplier: float) -> bool:
    """Adam's step and the prox of ``b`` in one compiled call; on a compile failure the
    inner optimizer steps the bucket's parameters alone, returning False (eager prox)."""
    group = opt.param_groups[b.group]
    states = [opt.state[p] for p in b.params]
    steps = [st["step"] for st in states]
    F.add_scalar_(steps, 1)
    beta1, beta2 = (float(x) for x in group["betas"])
    lr = float(group["lr"])
    c1, c2 = bias_correction(beta1, steps), bias_correction(beta2, steps)
    if isinstance(c1, Tensor):
        sizes, rbcs = lr / c1, c2.sqrt()
    else:
        sizes, rbcs = [lr / c for c in c1], [math.sqrt(c) for c in c2]
    decoupled = bool(group.get("decoupled_weight_decay", isinstance(opt, torch.optim.AdamW)))
    hyper = (beta1, beta2, float(group["eps"]), float(group["weight_decay"]), decoupled,
             bool(group.get("maximize", False)), b.metric == "adam")
    if b.kernel.adam(b.params, [p.grad for p in b.params], [st["exp_avg"] for st in states],
                     [st["exp_avg_sq"] for st in states], sizes, rbcs, lr * multiplier, lr,
                     b.alphas(), hyper, b.rule.penalty.kernel_ratio()):
        return True
    F.add_scalar_(steps, -1)
    mine = {id(p) for p in b.params}
    others = [(p, p.grad) for g in opt.param_groups for p in g["params"]
              if id(p) not in mine and p.grad is not None]
    try:
        for p, _ in others:
            p.grad = None
        opt.step()
    finally:
        for p, grad in others:
            p.grad = grad
    b.kernel = False
    return False
