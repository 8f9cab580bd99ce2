"""Target sparsity: L1 shrinkage with an exact-zero budget that ramps to a target.

:class:`TargetSparsity` reaches an asked fraction of exact zeros by construction: its
prox keeps at most ``(1 - s(t))`` of the weights nonzero, with ``s(t)`` rising on Zhu &
Gupta's (2017) cubic schedule from 0 to ``target``. With ``alpha = 0`` and the defaults it
*is* gradual magnitude pruning (global magnitude, cubic schedule). What beats it in
``bench/sparsity.py`` (Fashion-MNIST LeNet-300-100, +0.5 points at 95 %, +1.0 at 98 %
zeros) is mostly *where* the budget cuts - ``saliency="metric"``, the smallest
``w^2 max(sqrt(v_hat)+eps, alpha)`` under Adam - with a weak reweighted L1 (``reweight``) while the
budget ramps adding little; per-layer budgets (``budget="erk"``) and regrowth (``regrow``)
are there too but did not help in that setting (BENCHMARKS.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import functional as F
from ._warn import warn
from .penalties import Penalty

__all__ = ["TargetSparsity", "cubic_sparsity", "keep_counts", "BUDGETS"]

BUDGETS = ("global", "erk", "uniform")


def cubic_sparsity(step: int, target: float, begin: int, end: int) -> float:
    """Zhu & Gupta's schedule: ``s(t) = target * (1 - (1 - (t - begin)/(end - begin))^3)``.

    0 before ``begin``, ``target`` from ``end`` on.

    >>> cubic_sparsity(0, 0.9, 0, 100), cubic_sparsity(50, 0.9, 0, 100), cubic_sparsity(100, 0.9, 0, 100)
    (0.0, 0.7875, 0.9)
    """
    if end <= begin:
        return target if step >= begin else 0.0
    frac = min(max((step - begin) / (end - begin), 0.0), 1.0)
    return target * (1.0 - (1.0 - frac) ** 3)


def keep_counts(shapes, keep: int, budget: str = "erk") -> list[int]:
    """How many weights of each tensor a per-tensor budget keeps, ``keep`` in all.

    ``"uniform"``: every tensor keeps the same fraction. ``"erk"`` (Erdos-Renyi-kernel,
    Evci et al. 2020): tensor ``i`` keeps the fraction ``d_i = min(1, eps * sum(shape_i) /
    prod(shape_i))``, with ``eps`` solved so the counts add up to ``keep`` - small layers
    (the classifier) stay denser than big ones. Counts are ``floor(d_i * n_i)`` with the
    remainder given to the largest fractional parts, so they sum to ``keep`` exactly.

    >>> keep_counts([(300, 784), (100, 300), (10, 100)], 5324)
    [3621, 1336, 367]
    >>> keep_counts([(4, 4), (2, 4)], 12, "uniform")
    [8, 4]
    """
    sizes = [math.prod(sh) for sh in shapes]
    total = sum(sizes)
    if not 0 <= keep <= total:
        raise ValueError(f"keep_counts: keep={keep} must be between 0 and the {total} weights")
    if budget == "uniform":
        raw = [keep * n / total for n in sizes]
    elif budget == "erk":
        rates = [sum(sh) / n for sh, n in zip(shapes, sizes)]
        full: set[int] = set()
        while True:  # tensors whose share would exceed 1 stay dense; re-solve eps for the rest
            rest = keep - sum(sizes[i] for i in full)
            denom = sum(rates[i] * sizes[i] for i in range(len(sizes)) if i not in full)
            eps = rest / denom if denom else 0.0
            over = {i for i in range(len(sizes)) if i not in full and eps * rates[i] > 1.0}
            if not over:
                break
            full |= over
        raw = [float(n) if i in full else eps * rates[i] * n for i, n in enumerate(sizes)]
    else:
        raise ValueError(f"keep_counts(budget) must be 'erk' or 'uniform', got {budget!r}")
    counts = [min(math.floor(r), n) for r, n in zip(raw, sizes)]
    order = sorted(range(len(sizes)), key=lambda i: counts[i] - raw[i])
    short = keep - sum(counts)
    for i in order:
        if short <= 0:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
            short -= 1
    return counts


class TargetSparsity(Penalty):
    """L1 with a budget of exact zeros that ramps to ``target``:

    ``R_t(w) = alpha * ||w||_1 + indicator( #{i: w_i = 0} >= s(t) * n )``, with ``s(t)``
    :func:`cubic_sparsity` over optimizer steps ``begin..end`` and ``n`` the number of
    weights the rule selects (all of its tensors together: a global budget).

    .. math::

        R_t(w) = \\alpha\\,\\lVert w\\rVert_1 + \\iota\\big(\\#\\{i : w_i = 0\\} \\ge s(t)\\,n\\big)

    Its prox after each step is exact: soft-threshold at ``step*alpha`` (per coordinate
    in Adam's metric with ``metric="adam"``), then zero the ``floor(s(t)*n)`` entries of
    smallest saliency (a mask of exactly that many; of ties at the threshold, such as the
    L1 term's exact zeros, the first are kept). The mask is recomputed every ``every``
    steps and held in between; from ``end`` on the L1 term is off and the final mask is
    held, so the survivors fine-tune freely. The L1 term may zero more than the budget
    while it ramps (the objective asks for *at least* ``s(t)``); after ``end`` those extra
    zeros train again as their gradient moves them, and end at ``target`` exactly, except
    weights whose gradient is zero (whole units a strong L1 killed): then the final
    fraction exceeds ``target`` and a ``RuntimeWarning`` says so at ``end``. ``alpha = 0`` with the defaults is gradual magnitude
    pruning. The step counter ``t`` and the masks are the penalty's state, saved in the
    wrapper's ``state_dict`` (resuming mid-ramp continues bit for bit).

    Options beyond magnitude pruning (measured in ``bench/sparsity.py`` / BENCHMARKS.md):

    * ``saliency="metric"``: rank by ``w_i^2 / step_i`` - with ``metric="adam"`` that is
      ``w_i^2 max(sqrt(v_hat_i) + eps, alpha) / lr`` (Adam's step with the cap every
      Adam-metric prox uses), the loss increase of removing ``w_i`` under
      Adam's diagonal curvature estimate (Optimal-Brain-Damage-like; with a plain lr step
      it ranks as ``|w|``). Weights whose gradients are large cost more to remove.
    * ``budget="erk"`` / ``"uniform"``: one budget per tensor instead of one global
      ranking; tensor ``i`` keeps :func:`keep_counts` weights (Erdos-Renyi-kernel shares:
      small layers stay denser), ``n - floor(s(t) n)`` in all.
    * ``regrow=f``: at each mask update during the ramp, ``(1 - f)`` of the kept budget
      goes to the highest saliency and the remaining ``f`` to the other coordinates with
      the largest ``|grad|`` (RigL-style regrowth: pruned weights the loss asks for come
      back). Needs ``.grad`` on the tensors (call it through :func:`decaylab.regularize`).
    * ``reweight=delta``: reweighted L1 (Candes, Wakin & Boyd 2008), per-coordinate
      strength ``alpha_i = alpha * delta / (|w_i| + delta)`` from the weights before each
      prox - small weights are shrunk at the full ``alpha``, large ones hardly at all.

    Args:
        alpha: L1 strength while the budget ramps (>= 0).
        target: the final exact-zero fraction, in (0, 1).
        begin, end: optimizer steps where the ramp starts and reaches ``target``.
        every: steps between mask updates during the ramp.
        saliency: ``"magnitude"`` (``|w|``) or ``"metric"`` (see above).
        budget: ``"global"`` (one ranking over all tensors), ``"erk"`` or ``"uniform"``.
        regrow: fraction of the kept budget chosen by gradient magnitude, in [0, 1).
        reweight: ``delta`` of reweighted L1, >= 0 (0: plain L1).

    >>> w = torch.tensor([0.1, -2.0, 0.3, 4.0])
    >>> TargetSparsity(0.0, target=0.5, begin=0, end=0).prox_([w], 0.1)
    >>> w
    tensor([ 0., -2.,  0.,  4.])
    """

    # the wrapper passes the raw step (lr, or Adam's capped per-coordinate steps) to prox_()
    takes_steps = True
    modes = ("prox",)

    def __init__(self, alpha, target: float, begin: int = 0, end: int = 1000, every: int = 1,
                 saliency: str = "magnitude", budget: str = "global", regrow: float = 0.0,
                 reweight: float = 0.0):
        super().__init__(alpha)
        if isinstance(self.alpha, Tensor):
            raise ValueError("TargetSparsity takes one float strength; batched strengths are not supported")
        try:
            ok = not isinstance(target, (str, bytes)) and 0.0 < float(target) < 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"TargetSparsity(target) is the fraction of exact zeros and must be in (0, 1), "
                             f"got {target!r}; e.g. target=0.9 keeps 10% of the weights")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise ValueError(f"TargetSparsity needs integer steps 0 <= begin <= end, got begin={begin!r}, end={end!r}")
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"TargetSparsity(every) must be an integer >= 1, got {every!r}")
        if saliency not in ("magnitude", "metric"):
            raise ValueError(f"TargetSparsity(saliency) must be 'magnitude' or 'metric', got {saliency!r}")
        if budget not in BUDGETS:
            raise ValueError(f"TargetSparsity(budget) must be one of {BUDGETS}, got {budget!r}; "
                             f"'global' ranks all tensors together, 'erk' gives each its Erdos-Renyi-kernel share")
        if isinstance(regrow, bool) or not isinstance(regrow, (int, float)) or not 0.0 <= regrow < 1.0:
            raise ValueError(f"TargetSparsity(regrow) is the fraction of the kept budget re-chosen by gradient "
                             f"magnitude at each mask update and must be in [0, 1), got {regrow!r}; e.g. regrow=0.1")
        if isinstance(reweight, bool) or not isinstance(reweight, (int, float)) or not (
                math.isfinite(reweight) and reweight >= 0.0):
            raise ValueError(f"TargetSparsity(reweight) is the offset delta of reweighted L1, alpha*delta/(|w|+delta), "
                             f"and must be a finite number >= 0 (0: plain L1), got {reweight!r}; e.g. reweight=0.01")
        self.target, self.begin, self.end, self.every, self.saliency = float(target), begin, end, every, saliency
        self.budget, self.regrow, self.reweight = budget, float(regrow), float(reweight)
        self.t = 0
        self._names: set[str] = set()
        self._masks: list[Tensor] | None = None

    def bind(self, name, param):
        super().bind(name, param)
        self._names.add(name)
        return name

    def sparsity_at(self, step: int) -> float:
        """The budget's exact-zero fraction at optimizer step ``step``."""
        return cubic_sparsity(step, self.target, self.begin, self.end)

    def value(self, tensors):
        return self.alpha * torch.stack([w.abs().sum() for w in tensors]).sum() if self.t < self.end \
            else torch.zeros(())

    def state_dict(self) -> dict:
        return {"t": self.t, "masks": None if self._masks is None else [m.clone() for m in self._masks]}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self._masks = None if state["masks"] is None else [m.clone() for m in state["masks"]]

    def grad(self, w, ctx=None):
        raise ValueError("TargetSparsity acts through its prox; use mode='prox'")

    @torch.no_grad()
    def prox_(self, tensors, step, ctxs=None, foreach=None):
        if ctxs is not None and self._names and set(ctxs) != self._names:
            missing = sorted(set(self._names) - set(ctxs))
            raise ValueError(f"{self!r} sets one global budget and needs all of its tensors in one call "
                             f"(one optimizer param group, device and dtype, all with gradients); missing {missing}")
        tensors = list(tensors)
        t, self.t = self.t, self.t + 1
        if self.alpha and t < self.end:
            scale = F.times(F.prepare(self.alpha, tensors), step)
            if self.reweight:  # Candes-Wakin-Boyd: alpha_i = alpha * delta / (|w_i| + delta), from the current w
                d = self.reweight
                scale = F.times(scale, [(w.detach().abs() + d).reciprocal_().mul_(d) for w in tensors])
            F.soft_threshold_(tensors, scale)
        if t < self.begin:
            return
        if self._masks is None or (t < self.end and (t - self.begin) % self.every == 0) or t == self.end:
            self._masks = self._budget_masks(tensors, step, self.sparsity_at(t), regrow=t < self.end)
        for w, m in zip(tensors, self._masks):
            w.mul_(m)
        if t == self.end and self.alpha:
            self._warn_beyond_budget(tensors)

    def _warn_beyond_budget(self, tensors) -> None:
        """At the end of the ramp: say so when more weights are zero than the budget holds
        (the L1 term zeroed weights whose gradient is zero, e.g. whole dead units)."""
        zeros = sum(int((w == 0).sum()) for w in tensors)
        held = sum(int((~m).sum()) for m in self._masks)
        if zeros > held:
            n = sum(w.numel() for w in tensors)
            warn(f"{self!r}: at the end of its ramp {zeros / n:.3g} of the weights are exactly zero, "
                          f"more than the target {self.target:g}; the L1 term zeroed weights whose gradient is "
                 f"zero (e.g. whole dead units), which stay zero. Lower alpha to end nearer the target",
                 RuntimeWarning)

    def _scores(self, tensors, step) -> list[Tensor]:
        if self.saliency == "metric" and not isinstance(step, (int, float)):
            return [(w.float() ** 2) / st.float() for w, st in zip(tensors, step)]
        return [w.detach().abs().float() for w in tensors]

    def _budget_masks(self, tensors, step, s: float, regrow: bool = False) -> list[Tensor]:
        scores = self._scores(tensors, step)
        regrow = regrow and self.regrow > 0 and s > 0
        if regrow and any(w.grad is None for w in tensors):
            raise ValueError(f"{self!r} regrows by gradient magnitude and needs .grad on its tensors at the step; "
                             f"call it through decaylab.regularize after backward(), or use regrow=0")
        if self.budget == "global" and not regrow:
            # one magnitude ranking over all tensors (Zhu & Gupta), pruning exactly k: of the
            # ties at the threshold (exact zeros of a strong L1) the first ones are kept
            flat = torch.cat([x.flatten() for x in scores])
            k = math.floor(s * flat.numel())
            if k <= 0:
                return [torch.ones_like(w, dtype=torch.bool) for w in tensors]
            threshold = flat.kthvalue(k).values
            keep = flat > threshold
            short = flat.numel() - k - int(keep.sum())
            if short > 0:
                keep[(flat == threshold).nonzero().flatten()[:short]] = True
            return [m.view_as(x) for m, x in zip(keep.split([x.numel() for x in scores]), scores)]
        sizes = [w.numel() for w in tensors]
        keep_total = sum(sizes) - math.floor(s * sum(sizes))
        if self.budget == "global":
            groups = [(list(range(len(tensors))), keep_total)]
        else:
            groups = [([i], k) for i, k in enumerate(keep_counts([tuple(w.shape) for w in tensors], keep_total,
                                                                 self.budget))]
        masks = [torch.zeros_like(w, dtype=torch.bool) for w in tensors]
        for idx, keep in groups:
            flat = torch.cat([scores[i].flatten() for i in idx])
            grown = round(self.regrow * keep) if regrow else 0
            chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
            chosen[flat.topk(keep - grown, sorted=False).indices] = True
            if grown:
                # RigL-style: the rest of the budget goes to the coordinates (pruned or not)
                # whose loss gradient is largest, so that weights the magnitude ranking has
                # cut can come back if the loss asks for them
                g = torch.cat([tensors[i].grad.detach().abs().float().flatten() for i in idx])
                g[chosen] = -1.0
                chosen[g.topk(grown, sorted=False).indices] = True
            for i, part in zip(idx, chosen.split([sizes[i] for i in idx])):
                masks[i] = part.view_as(tensors[i])
        return masks

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v, d in (("saliency", self.saliency, "magnitude"),
                                                          ("budget", self.budget, "global"),
                                                          ("regrow", self.regrow, 0.0),
                                                          ("reweight", self.reweight, 0.0)) if v != d)
        return (f"TargetSparsity(alpha={self._alpha_repr()}, target={self.target:g}, begin={self.begin}, "
                f"end={self.end}{extra})")
