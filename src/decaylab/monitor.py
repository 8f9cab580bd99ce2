"""What the penalties are doing, as numbers a logger takes: :func:`metrics`, :func:`histograms`.

Frameworks hand back their own wrapper of the optimizer (accelerate's
``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``, DeepSpeed-style ``.optimizer``
chains); :func:`find_regularized` finds decaylab's wrapper inside any of them, and every
helper here (and :func:`decaylab.summary`) takes whatever the framework handed back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .groups import Grouping

__all__ = ["find_regularized", "metrics", "histograms"]

_INNER = ("optimizer", "_optimizer", "opt")  # where wrappers keep the optimizer they wrap


def find_regularized(opt):
    """The :class:`~decaylab.Regularized` inside ``opt`` (itself, or inside framework wrappers).

    Raises:
        ValueError: if no decaylab wrapper is found, naming what was followed.

    >>> import decaylab as dl
    >>> m = torch.nn.Linear(2, 2)
    >>> reg = dl.regularize(torch.optim.SGD(m.parameters(), lr=0.1), m, dl.L1(1e-3))
    >>> class FrameworkWrapper:
    ...     def __init__(self, optimizer):
    ...         self.optimizer = optimizer
    >>> find_regularized(FrameworkWrapper(reg)) is reg
    True
    """
    from .optim import Regularized

    seen, current = [], opt
    while not isinstance(current, Regularized):
        seen.append(type(current).__name__)
        nxt = next((getattr(current, a) for a in _INNER if getattr(current, a, None) is not None), None)
        if nxt is None or len(seen) > 8:
            raise ValueError(
                f"no decaylab wrapper inside {' -> '.join(seen)}; build the optimizer with "
                f"dl.regularize(optimizer, model, rules) and pass that (or the framework's wrapper of it)"
            )
        current = nxt
    return current


def metrics(opt, prefix: str = "decaylab/") -> dict[str, float]:
    """Numbers that show what each rule does, keyed for a logger.

    Per rule (its label, e.g. ``weights >= 2-D``): ``penalty/<rule>`` the penalty's value
    (times its schedule), ``adam_metric/<rule>`` 1.0 when its prox steps in Adam's metric
    (0.0 for the lr metric; absent before the first step decides it). Per penalized tensor:
    ``zeros/<name>`` the exact-zero fraction and ``norm/<name>`` the L2 norm; for group
    penalties ``live/<name>`` the fraction of groups (rows, columns, channels) with a
    nonzero entry.

    >>> import decaylab as dl
    >>> m = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.tensor([[0.0, 3.0], [0.0, 4.0]]))
    >>> reg = dl.regularize(torch.optim.SGD(m.parameters(), lr=0.1), m, dl.L1(0.5))
    >>> out = metrics(reg)
    >>> out["decaylab/penalty/weights >= 2-D"], out["decaylab/zeros/weight"], out["decaylab/norm/weight"]
    (3.5, 0.5, 5.0)
    """
    reg = find_regularized(opt)
    out: dict[str, float] = {}
    for b, metric, value in zip(reg.bindings, reg.metrics, reg.penalty_values()):
        if b.rule.penalty is None:
            continue
        label = b.rule.label
        out[f"{prefix}penalty/{label}"] = float(value.detach())
        if metric in ("lr", "adam") and b.rule.mode == "prox":
            out[f"{prefix}adam_metric/{label}"] = float(metric == "adam")
        for name, p, ctx in zip(b.names, b.params, b.ctxs):
            w = p.detach()
            out[f"{prefix}zeros/{name}"] = float((w == 0).sum()) / max(w.numel(), 1)
            out[f"{prefix}norm/{name}"] = float(torch.linalg.vector_norm(w.float()))
            if isinstance(ctx, Grouping):
                live, total = ctx.live(w)
                out[f"{prefix}live/{name}"] = live / max(total, 1)
    return out


def histograms(opt) -> dict[str, Tensor]:
    """Each penalized weight (flattened, detached, fp32 on the CPU), keyed by name: what a
    logger's histogram takes (``SummaryWriter.add_histogram(key, value, step)``).

    >>> import decaylab as dl
    >>> m = torch.nn.Linear(3, 2)
    >>> reg = dl.regularize(torch.optim.SGD(m.parameters(), lr=0.1), m, dl.L1(1e-3))
    >>> {k: v.shape for k, v in histograms(reg).items()}
    {'weight': torch.Size([6])}
    """
    reg = find_regularized(opt)
    return {name: p.detach().float().flatten().cpu()
            for b in reg.bindings if b.rule.penalty is not None
            for name, p in zip(b.names, b.params)}
