"""L2 taken by torch's own ``Adam``/``AdamW``/``SGD`` step, where that step is the rule.

torch's Adam with ``decoupled_weight_decay`` (AdamW) multiplies a group's weights by
``1 - lr * weight_decay`` inside its step, the op decaylab's decoupled L2 takes
(``functional.shrink_``), in the pass that already reads and writes every weight for
Adam's update; decaylab's own decay pass reads and writes every weight once more. torch's
SGD adds ``weight_decay * w`` to the gradient, decaylab's coupled L2 (``L2.add_grad``),
which otherwise makes a new gradient tensor first. So, for the inner step only, the inner
optimizer is shown its param groups split: the weights of the ``L2`` rules (decoupled
under Adam/AdamW, coupled under SGD) in groups with ``weight_decay = alpha * schedule``
(one per strength), the rest of each group with its own settings. The groups are shallow
copies of the user's group dicts made at each step from their current values (LR
schedulers, lr changes, betas all apply); the wrapper puts the user's ``param_groups``
list back in a ``finally``. Optimizer state is keyed per parameter, so the split leaves no
trace. The result is torch's with weight-decay param groups, bit for bit; on CPU and
under foreach that is also decaylab's own pass's, while fused CUDA AdamW computes
``w - lr*wd*w`` (its last bit may differ from ``w * (1 - lr*wd)``).

Anything that is not exactly the rule keeps decaylab's own pass: another optimizer or a
subclass of one (it may change the update), a step hook or a replaced ``step`` (either
could look at the groups), a closure, another penalty or mode, a tensor strength (or,
decoupled, a tensor lr), bf16/fp16 weights (compensated), a group with a ``weight_decay``
of its own, sparse gradients, and, decoupled, ``lr * alpha * schedule >= 1`` (torch's
factor would go negative; decaylab's is clamped at 0).
"""

from __future__ import annotations

from typing import Callable

import torch

# the exact types whose step takes an L2 rule of this mode as its weight_decay
_MODES = {torch.optim.Adam: "decoupled", torch.optim.AdamW: "decoupled", torch.optim.SGD: "coupled"}
_WIDE = (torch.float32, torch.float64)


def _plain_step(opt: torch.optim.Optimizer) -> bool:
    """``opt.step`` is its class's, or an LR scheduler's counter wrapped around it."""
    step = vars(opt).get("step")
    return step is None or getattr(step, "_wrapped_by_lr_sched", False)


def _strength(opt: torch.optim.Optimizer, b, multiplier: Callable) -> float | None:
    """The ``weight_decay`` that makes torch's step take bucket ``b``'s L2, else None."""
    if not b.rule.penalty.is_weight_decay or b.low_precision or b.params[0].dtype not in _WIDE:
        return None
    group = opt.param_groups[b.group]
    lr, wd = group["lr"], group.get("weight_decay")
    if isinstance(wd, torch.Tensor) or wd != 0:
        return None
    alpha = b.alphas()
    if not isinstance(alpha, float):
        return None
    decay = alpha * multiplier(b.rule)
    if b.rule.mode == "coupled":
        return decay
    return decay if not isinstance(lr, torch.Tensor) and float(lr) * decay < 1.0 else None


def plan(opt: torch.optim.Optimizer, by_mode: dict, multiplier: Callable) -> tuple[list[dict], set[int]] | None:
    """The param groups to show ``opt``'s next step and the ids of the buckets (of
    ``by_mode``, the wrapper's buckets by mode) whose L2 that step then takes; None when
    it takes none. The caller has checked that no step hook is registered and that no
    closure is given.

    >>> model = torch.nn.Linear(3, 2)
    >>> import decaylab as dl
    >>> opt = dl.regularize(torch.optim.AdamW(model.parameters(), weight_decay=0.0), model, dl.L2(0.1))
    >>> groups, taken = plan(opt.optimizer, opt._buckets.by_mode, opt._multiplier)
    >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
    [(1, 0.1), (1, 0.0)]
    """
    mode = _MODES.get(type(opt))
    if mode is None or not by_mode[mode] or not _plain_step(opt):
        return None
    route: dict[int, dict[int, float]] = {}  # group index -> id(param) -> its weight_decay
    taken = set()
    for b in by_mode[mode]:
        decay = _strength(opt, b, multiplier)
        if decay is None:
            continue
        taken.add(id(b))
        if decay != 0:
            route.setdefault(b.group, {}).update((id(p), decay) for p in b.params)
    if not taken:
        return None
    groups = []
    for gi, group in enumerate(opt.param_groups):
        ids = route.get(gi)
        if not ids:
            groups.append(group)
            continue
        parts: dict[float, list] = {}
        kinds = set()
        for p in group["params"]:
            parts.setdefault(ids.get(id(p), 0.0), []).append(p)
            kinds.add((type(p), p.device.type))
            if p.grad is not None and p.grad.is_sparse:
                return None  # SGD picks its path per group by them
        # torch picks foreach per group from its tensors' types and devices: a split of a
        # mixed group could pick differently for a part (same math, maybe other bits)
        if sum(map(len, parts.values())) - len(parts.get(0.0, ())) != len(ids) or (
                len(kinds) > 1 and group.get("foreach") is None and not group.get("fused")):
            return None
        for decay, params in parts.items():
            part = {**group, "params": params}
            if decay:
                part["weight_decay"] = decay
                if mode == "decoupled":
                    part["decoupled_weight_decay"] = True
            groups.append(part)
    return groups, taken
