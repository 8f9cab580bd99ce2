"""Tensor kernels behind every penalty: in-place shrinks and proximal maps.

Each kernel takes a *list* of tensors, like torch's ``_foreach_*`` ops, and a step
``scale`` that is either a Python float (the usual ``lr * alpha``) or a tensor that
broadcasts against each weight (a per-configuration strength of shape ``[K, 1, ...]``
for batched sweeps, or a per-coordinate threshold for the Adam-metric prox).

Two paths compute the same thing:

* ``foreach=True`` uses torch's multi-tensor ops: few launches, the fast path on GPUs.
* ``foreach=False`` loops over tensors with single fused kernels where torch has one
  (``softshrink`` reads and writes each weight once, against three passes for a
  clamp-and-subtract); on CPUs, where foreach ops are a C++ loop anyway, it moves
  less memory.

``foreach=None`` picks foreach on CUDA and the fused loop elsewhere, except that
``soft_threshold_`` also takes the ``softshrink`` loop on CUDA when the tensors are large
(``_LOOP_NUMEL`` elements on average), where memory passes cost more than launches.
Tests check the two paths agree. Numerics never overshoot: shrink factors are clamped at
0 and zero group norms are guarded.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor

from . import _compat

Scale = Union[float, Tensor, Sequence[Tensor]]
# a prepared scale: a float, or one tensor per weight that broadcasts against it
Prepared = Union[float, Sequence[Tensor]]

__all__ = [
    "shrink_",
    "soft_threshold_",
    "elastic_net_prox_",
    "group_soft_threshold_",
    "pull_toward_",
    "per_tensor",
    "prepare",
    "broadcast_view",
]


# Mean elements per tensor from which soft_threshold_'s softshrink loop (2 memory passes,
# one launch per tensor) beats its foreach clamp-and-subtract (~7 passes and a temporary)
# on CUDA: the two break even near 2**19 elements per tensor on an H100 (the measurement is
# bench/step_overhead.py --device cuda, in BENCHMARKS.md).
_LOOP_NUMEL = 1 << 19


def _use_foreach(tensors: Sequence[Tensor], foreach: bool | None, scale: Prepared) -> bool:
    if not isinstance(scale, float):  # per-tensor tensors ([K] strengths, per coordinate): loop
        return False
    if foreach is None:
        return bool(tensors) and tensors[0].is_cuda
    return foreach


def _check_scale(scale: Scale) -> None:
    if isinstance(scale, (int, float)) and not 0 <= scale < float("inf"):  # catches NaN
        raise ValueError(f"step scale must be >= 0 and finite, got {scale!r}")


def broadcast_view(t: Tensor, w: Tensor) -> Tensor:
    """``t`` on ``w``'s device, a ``[K]`` strength viewed as ``[K, 1, ..., 1]`` so that it
    broadcasts over ``w``'s leading configuration dimension (other shapes as they are).

    >>> broadcast_view(torch.tensor([1.0, 2.0]), torch.zeros(2, 3)).shape
    torch.Size([2, 1])
    """
    if t.ndim == 1 and w.ndim > 1 and t.shape[0] == w.shape[0]:
        t = t.view(-1, *([1] * (w.ndim - 1)))
    return t.to(device=w.device)


def prepare(scale: Scale, tensors: Sequence[Tensor]) -> Prepared:
    """The one place a scale meets the tensors' shapes and devices.

    A Python number stays a float (the fast paths take it as a scalar). A tensor (one
    strength per configuration, ``[K]``) becomes one broadcast view per tensor; a list
    gives one tensor per tensor (e.g. per-coordinate thresholds), also broadcast. The
    wrapper prepares its strengths once per bucket with this and keeps them; kernels call
    it on what they are given, which leaves prepared scales as they are.

    >>> prepare(0.5, [torch.zeros(2)])
    0.5
    >>> [s.shape for s in prepare(torch.tensor([1.0, 2.0]), [torch.zeros(2, 3), torch.zeros(2)])]
    [torch.Size([2, 1]), torch.Size([2])]
    """
    if isinstance(scale, (int, float)):
        _check_scale(scale)
        return float(scale)
    if isinstance(scale, Tensor):
        return [broadcast_view(scale, w) for w in tensors]
    if len(scale) != len(tensors):
        raise ValueError(f"got {len(scale)} step scales for {len(tensors)} tensors; give one per tensor")
    return [broadcast_view(s, w) for s, w in zip(scale, tensors)]


def times(scale: Prepared, step: float | Sequence[Tensor]) -> Prepared:
    """A prepared strength times a step: the lr (a float) or per-tensor step tensors (the
    Adam metric). The product of strength and step is formed here and nowhere else.

    >>> times(0.5, 0.1)
    0.05
    >>> times(0.5, [torch.tensor([1.0, 2.0])])
    [tensor([0.5000, 1.0000])]
    """
    if isinstance(step, (int, float)):
        return scale * float(step) if isinstance(scale, float) else [s * float(step) for s in scale]
    if isinstance(scale, float):
        return [st * scale for st in step]
    return [st * s for st, s in zip(step, scale)]


def per_tensor(scale: Scale, i: int, w: Tensor) -> float | Tensor:
    """The scale for the i-th tensor ``w`` (see :func:`prepare`).

    >>> per_tensor(torch.tensor([1.0, 2.0]), 0, torch.zeros(2, 3)).shape
    torch.Size([2, 1])
    """
    if isinstance(scale, (int, float)):
        return float(scale)
    return broadcast_view(scale if isinstance(scale, Tensor) else scale[i], w)


def shrink_(tensors: Sequence[Tensor], scale: Scale, *, foreach: bool | None = None) -> None:
    """Multiply each tensor by ``max(1 - scale, 0)`` in place (decoupled L2 decay).

    This is the AdamW decay ``w <- w - lr*alpha*w``; the factor is clamped at 0 so a
    huge step zeroes the weight instead of flipping its sign.

    Args:
        tensors: weights to shrink, modified in place.
        scale: ``lr * alpha`` (float, or a tensor broadcasting against each weight).
        foreach: force (True) or forbid (False) torch's multi-tensor ops.

    >>> w = [torch.tensor([2.0, -4.0])]
    >>> shrink_(w, 0.25); w[0]
    tensor([ 1.5000, -3.0000])
    """
    scale = prepare(scale, tensors)
    if not tensors:
        return
    if _use_foreach(tensors, foreach, scale):
        _compat.foreach_mul_(list(tensors), max(1.0 - scale, 0.0))
        return
    for i, w in enumerate(tensors):
        s = scale_at(scale, i)
        w.mul_((1.0 - s).clamp_min(0.0) if isinstance(s, Tensor) else max(1.0 - s, 0.0))


def soft_threshold_(tensors: Sequence[Tensor], scale: Scale, *, foreach: bool | None = None) -> None:
    """Soft-threshold in place: ``w <- sign(w) * max(|w| - scale, 0)``, the prox of L1.

    Entries with ``|w| <= scale`` become exactly zero.

    Args:
        tensors: weights, modified in place.
        scale: threshold ``lr * alpha`` (float or broadcasting tensor, e.g. per coordinate).
        foreach: force (True) or forbid (False) torch's multi-tensor ops.

    >>> w = [torch.tensor([0.5, -0.05, -2.0])]
    >>> soft_threshold_(w, 0.1); w[0].abs()  # abs: softshrink may write -0.0
    tensor([0.4000, 0.0000, 1.9000])
    """
    scale = prepare(scale, tensors)
    if not tensors:
        return
    if foreach is None and sum(w.numel() for w in tensors) >= _LOOP_NUMEL * len(tensors):
        foreach = False  # large tensors: passes over memory, not launches, set the cost
    if _use_foreach(tensors, foreach, scale):
        # w - clamp(w, -t, t): exact zeros wherever |w| <= t.
        tensors = list(tensors)
        clipped = _compat.foreach_clamp_max(tensors, scale)
        _compat.foreach_clamp_min_(clipped, -scale)
        _compat.foreach_sub_(tensors, clipped)
        return
    for i, w in enumerate(tensors):
        s = scale_at(scale, i)
        if isinstance(s, Tensor) and s.shape == w.shape and s.dtype == w.dtype:
            # per-coordinate threshold: w - clamp(w, -s, s) with a single temporary (on CPUs
            # each fresh weight-sized tensor costs page faults)
            clipped = torch.neg(s)
            torch.minimum(torch.maximum(w, clipped, out=clipped), s, out=clipped)
            w.sub_(clipped)
        elif isinstance(s, Tensor):
            w.sub_(torch.minimum(torch.maximum(w, -s), s))
        else:
            torch.ops.aten.softshrink.out(w, s, out=w)  # in place: one read, one write


def elastic_net_prox_(
    tensors: Sequence[Tensor], scale: Scale, l1_ratio: float, *, foreach: bool | None = None
) -> None:
    """Prox of ``alpha*(r*|w|_1 + (1-r)/2*|w|^2)`` with ``scale = lr*alpha``, in place.

    ``w <- soft(w, scale*r) / (1 + scale*(1-r))``.

    >>> w = [torch.tensor([1.0, 0.05])]
    >>> elastic_net_prox_(w, 0.2, 0.5); w[0]
    tensor([0.8182, 0.0000])
    """
    scale = prepare(scale, tensors)
    soft_threshold_(tensors, scale_times(scale, l1_ratio), foreach=foreach)
    if l1_ratio < 1.0:
        div_(tensors, scale_times(scale, 1.0 - l1_ratio), foreach)


def scale_times(scale: Scale, c: float) -> Prepared:
    """``scale * c`` for a prepared (or raw) scale."""
    if isinstance(scale, (int, float, Tensor)):
        return scale * c
    return [s * c for s in scale]


def scale_at(scale: Prepared, i: int) -> float | Tensor:
    return scale if isinstance(scale, float) else scale[i]


def add(tensors: Sequence[Tensor], others: Sequence[Tensor], alpha: float = 1.0) -> list[Tensor]:
    """New tensors ``t + alpha * o``, in one multi-tensor op (the gradients stay as they are)."""
    return list(_compat.foreach_add(list(tensors), list(others), alpha=alpha))


def add_scalar_(tensors: Sequence[Tensor], x: float) -> None:
    """In place, ``t + x`` for each tensor (Adam's step counters)."""
    _compat.foreach_add_(list(tensors), x)


def div_(tensors: Sequence[Tensor], scale: Scale, foreach: bool | None) -> None:
    """``w <- w / (1 + scale)``."""
    scale = prepare(scale, tensors)
    if not tensors:
        return
    if _use_foreach(tensors, foreach, scale):
        _compat.foreach_mul_(list(tensors), 1.0 / (1.0 + scale))
    else:
        for i, w in enumerate(tensors):
            w.div_(1.0 + scale_at(scale, i))


def group_soft_threshold_(
    tensors: Sequence[Tensor], scale: Scale, groupings: Sequence["object"]
) -> None:
    """Group prox in place: ``w_g <- w_g * max(0, 1 - scale*sqrt|g| / ||w_g||)``.

    The prox of ``alpha * sum_g sqrt(|g|) * ||w_g||_2`` with ``scale = lr*alpha``. Whole
    groups (neurons, channels, inputs) become exactly zero. A zero group stays zero.

    Args:
        tensors: weights, modified in place.
        scale: ``lr * alpha``, float or tensor broadcasting against each weight.
        groupings: one grouping per tensor (see ``decaylab.groups``), giving for a weight
            its group norms and group sizes broadcast to the weight's shape.

    >>> from decaylab.groups import Rows
    >>> w = [torch.tensor([[3.0, 4.0], [0.3, 0.4]])]
    >>> group_soft_threshold_(w, 1.0, [Rows()]); w[0]
    tensor([[2.1515, 2.8686],
            [0.0000, 0.0000]])
    """
    scale = prepare(scale, tensors)
    for i, (w, grouping) in enumerate(zip(tensors, groupings)):
        norms, sizes = grouping.norms(w)
        # a NaN entry (a NaN gradient after the inner step) makes its group's norm NaN; as
        # an infinite norm the group is left alone instead of turning wholly NaN (out of
        # place: a sharded weight's norm is a pending cross-shard reduction, see _sharded)
        norms = norms.nan_to_num(nan=math.inf)
        s = scale_at(scale, i)
        if isinstance(sizes, int) and isinstance(s, (int, float)):
            # Fast path, in place on the small norms tensor: relu(1 - t/||w_g||); a zero
            # norm gives 1/0 = inf -> -inf -> 0, never NaN (t > 0 here).
            t = math.sqrt(sizes) * s
            if t > 0:
                w.mul_(norms.reciprocal_().mul_(-t).add_(1.0).clamp_min_(0.0).to(w.dtype))
            continue
        if isinstance(sizes, int):
            # A threshold per group (Adam's metric) or per configuration ([K]): the same in
            # fewer operations, its edge cases from IEEE arithmetic: a zero norm gives
            # 1 - inf -> 0 (nan_to_num then clamp), and under a zero threshold 0 * inf = NaN
            # -> 1, which keeps a group whose norm underflowed (identity)
            y = torch.mul(norms.reciprocal_(), s * math.sqrt(sizes)).neg_().add_(1.0)
            w.mul_(y.nan_to_num_(nan=1.0).clamp_min_(0.0).to(w.dtype))
            continue
        # factor = relu(1 - t*sqrt|g|/||w_g||); a zero group stays zero, never NaN.
        # An int group size stays a CPU scalar: a scalar copied to the GPU would be a
        # blocking copy, i.e. one stream sync per tensor. (Indexed sizes are already there.)
        factor = torch.as_tensor(sizes, dtype=norms.dtype).sqrt()
        factor = factor * s
        # (a norm that underflowed to 0 under a zero threshold keeps its group: identity)
        factor = torch.where(norms > 0, 1.0 - factor / norms.clamp_min(torch.finfo(norms.dtype).tiny),
                             (factor == 0).to(norms.dtype))
        w.mul_(factor.clamp_min_(0.0).to(w.dtype))


def pull_toward_(
    tensors: Sequence[Tensor], references: Sequence[Tensor], scale: Scale, *, foreach: bool | None = None
) -> None:
    """Move each weight toward its reference: ``w <- w - min(scale, 1) * (w - w0)``.

    The decoupled step of L2-SP; clamped so it never passes the reference.

    >>> w = [torch.tensor([2.0])]
    >>> pull_toward_(w, [torch.tensor([1.0])], 0.25); w[0]
    tensor([1.7500])
    """
    scale = prepare(scale, tensors)
    if not tensors:
        return
    if _use_foreach(tensors, foreach, scale):
        _compat.foreach_lerp_(list(tensors), list(references), min(scale, 1.0))
        return
    for i, (w, w0) in enumerate(zip(tensors, references)):
        s = scale_at(scale, i)
        w.lerp_(w0.to(w.dtype), s.clamp_max(1.0).to(w.dtype) if isinstance(s, Tensor) else min(s, 1.0))
