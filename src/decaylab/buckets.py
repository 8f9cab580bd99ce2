"""The wrapper's buckets: one kernel call each, and the per-weight buffers they keep.

A :class:`Bucket` holds the parameters of one rule, one param group, one device and dtype.
:class:`Buckets` builds them from the weights' current dtypes and devices, follows a
model converted after ``regularize()``, and keeps two kinds of per-weight buffers, keyed
by the weight's index among the optimizer's parameters (so that they survive a copy and
a checkpoint): the fp32 rounding residual of bf16/fp16 weights, and Adam's metric step
buffer (:class:`decaylab.step_sizes.StepSizes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import functional as F
from .rules import Rule

__all__ = ["Bucket", "Buckets", "LOW_PRECISION"]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def layout(p: Tensor) -> tuple:
    """What a bucket, its residual and its kernel were chosen for."""
    return p.dtype, p.device, p.shape, p.stride()


@dataclass(eq=False)  # compared by identity: equality would compare weight tensors
class Bucket:
    """Parameters of one rule, one param group, one device and dtype: one kernel call.

    The bucket owns its scale: the rule's strength is prepared once for its tensors (a
    float, or per tensor a ``[K, 1, ...]`` view on the tensor's device) and multiplied by
    ``lr * schedule`` at each step in :meth:`scale`, nowhere else.
    """

    rule: Rule
    binding: int
    group: int
    params: list[Tensor]
    ctxs: list[object]
    low_precision: bool
    metric: str | None = None  # "lr" / "adam"; None: not resolved yet (first step)
    kernel: object = None  # a fused.Kernel, False (eager), None (not chosen yet)
    _alpha_src: object = None
    _alphas: object = None

    def alphas(self) -> F.Prepared:
        alpha = self.rule.penalty.alpha
        if alpha is not self._alpha_src:  # prepared again only when the strength is replaced
            self._alphas, self._alpha_src = F.prepare(alpha, self.params), alpha
        return self._alphas

    def scale(self, step: float, idx: list[int] | None = None) -> F.Prepared:
        """``alpha * step`` for the tensors ``idx`` (all when None)."""
        a = self.alphas()
        if idx is not None and not isinstance(a, float):
            a = [a[i] for i in idx]
        return F.times(a, step)

    def active(self):
        """(indices or None for all, params, ctxs) of the tensors with a gradient."""
        if all(p.grad is not None for p in self.params):
            return None, self.params, self.ctxs
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        return idx, [self.params[i] for i in idx], [self.ctxs[i] for i in idx]


class Buckets:
    """The buckets of a wrapper over ``optimizer`` and its per-weight buffers.

    ``all``: every bucket; ``by_mode``: them by rule mode; ``residuals`` and ``buffers``:
    global param index -> fp32 rounding residual / Adam-metric step buffer; ``position``:
    ``id(param)`` -> that index (rebuilt by :meth:`reindex` after a copy)."""

    def __init__(self, optimizer: torch.optim.Optimizer, bindings: list, metrics: list):
        self.optimizer, self.bindings = optimizer, bindings
        self.residuals: dict[int, Tensor] = {}
        self.buffers: dict[int, Tensor] = {}
        self.reindex()
        self.build(metrics)

    def reindex(self) -> None:
        self.position = {id(p): i for i, p in enumerate(self.params())}

    def params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def build(self, metrics: list) -> None:
        """Buckets from the weights' current dtypes and devices (kernels chosen at their
        first step), and what :meth:`follow_conversion` compares at each step."""
        group_of = {id(p): gi for gi, g in enumerate(self.optimizer.param_groups) for p in g["params"]}
        buckets: dict[tuple, Bucket] = {}
        for bi, b in enumerate(self.bindings):
            if b.rule.penalty is None:
                continue
            for name, p, ctx in zip(b.names, b.params, b.ctxs):
                if id(p) not in group_of:
                    raise ValueError(
                        f"rule {b.rule.penalty!r} selects '{name}', but the optimizer does not hold "
                        f"that parameter; build the optimizer from model.parameters() or exclude it"
                    )
                key = (bi, group_of[id(p)], p.device, p.dtype)
                if key not in buckets:
                    metric = metrics[bi] if metrics[bi] in ("lr", "adam") else None
                    buckets[key] = Bucket(b.rule, bi, key[1], [], [], p.dtype in LOW_PRECISION, metric)
                buckets[key].params.append(p)
                buckets[key].ctxs.append(ctx)
        self.all = list(buckets.values())
        self.by_mode = {m: [b for b in self.all if b.rule.mode == m] for m in ("coupled", "decoupled", "prox")}
        self._penalized = [p for b in self.all for p in b.params]
        self._marks = list(map(Tensor.data_ptr, self._penalized))
        self._layouts = [layout(p) for p in self._penalized]

    def set_metric(self, binding: int, metric: str) -> None:
        for b in self.all:
            if b.binding == binding:
                b.metric = metric

    def follow_conversion(self, metrics: list) -> None:
        """Re-derive every choice made from the weights' dtypes, devices and layouts when
        the model was converted after ``regularize()`` (``model.to(torch.bfloat16)``,
        ``.double()``, ``.to(memory_format=torch.channels_last)``, a move to another
        device): the buckets (one per dtype and device), their low-precision residuals and
        their kernels, as if the wrapper had been built after the conversion.

        A conversion gives each weight new storage, so the check at each step is one
        ``data_ptr()`` per penalized weight. A weight whose layout changed loses its Adam
        step buffer; its residual follows it to a new device, is folded into a weight that
        left low precision, and is dropped when the low-precision dtype itself changed."""
        marks = list(map(Tensor.data_ptr, self._penalized))
        if marks == self._marks:
            return
        layouts = [layout(p) for p in self._penalized]
        if layouts == self._layouts:  # new storage, nothing else (``p.data = p.data.clone()``)
            self._marks = marks
            return
        old = dict(zip(map(id, self._penalized), self._layouts))
        kernels = {tuple(map(id, b.params)): b.kernel for b in self.all  # of unchanged buckets
                   if all(layout(p) == old[id(p)] for p in b.params)}
        self.build(metrics)
        for b in self.all:
            b.kernel = kernels.get(tuple(map(id, b.params)))
        for p in self._penalized:
            if layout(p) == old[id(p)]:
                continue
            i = self.position[id(p)]
            self.buffers.pop(i, None)
            comp = self.residuals.pop(i, None)
            if comp is not None and comp.shape == p.shape:
                if p.dtype not in LOW_PRECISION:
                    p.add_(comp.to(p.device, p.dtype))
                elif p.dtype == old[id(p)][0]:
                    self.residuals[i] = comp.to(p.device)

    def residual(self, p: Tensor) -> Tensor:
        """``p``'s fp32 rounding residual (zeros when new)."""
        i = self.position[id(p)]
        if i not in self.residuals:
            self.residuals[i] = torch.zeros_like(p, dtype=torch.float32)
        return self.residuals[i]

    def scratch(self, p: Tensor) -> Tensor:
        """A per-parameter buffer for the eager Adam-metric step sizes (kept between steps)."""
        i = self.position[id(p)]
        buf = self.buffers.get(i)
        if buf is None or buf.shape != p.shape:
            dtype = torch.promote_types(p.dtype, torch.float32)
            buf = self.buffers[i] = torch.empty_like(p, dtype=dtype, memory_format=torch.contiguous_format)
        return buf

    def drop_buffers(self, params) -> None:
        for p in params:
            self.buffers.pop(self.position[id(p)], None)

    def rows(self) -> list[dict]:
        """One row per bucket: how it is updated (:func:`decaylab.updates`)."""
        out = []
        for b in self.all:
            k = b.kernel
            out.append({  # a bucket's metric is None until the first step resolves "auto"
                "rule": b.rule.label, "penalty": repr(b.rule.penalty), "mode": b.rule.shown_mode(b.metric or "auto"),
                "group": b.group, "tensors": len(b.params), "dtype": str(b.params[0].dtype).replace("torch.", ""),
                "device": str(b.params[0].device),
                "kernel": "not chosen" if k is None else "compiled" if k and k.level != "eager" else "eager",
                "calls": k.calls if k else 0, "adam_calls": k.adam_calls if k else 0,
                "guarded_calls": k.guarded_calls if k else 0, "level": k.level if k else None,
                "residual_bytes": self._bytes(self.residuals, b.params),
                "buffer_bytes": self._bytes(self.buffers, b.params)})
        return out

    def _bytes(self, kept: dict, params: list) -> int:
        found = (kept.get(self.position[id(p)]) for p in params)
        return sum(t.numel() * t.element_size() for t in found if t is not None)
