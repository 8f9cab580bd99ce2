"""What the penalties did: exact sparsity, norms, live groups and inputs, and a summary."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from .groups import Rows
from .rules import default_selection, param_aliases

__all__ = ["sparsity", "layer_stats", "live_groups", "surviving_inputs", "summary", "updates", "selected_weights"]


def selected_weights(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(name, weight) of the default selection: weights of 2 or more dimensions except
    biases, norm layers and embeddings (tied weights once, under their first name).

    >>> [n for n, _ in selected_weights(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))]
    ['0.weight']
    """
    return [(n, p) for n, p, aliases in param_aliases(model) if any(default_selection(a, p, m) for a, m in aliases)]


def sparsity(tensors: nn.Module | Iterable[Tensor]) -> float:
    """Fraction of entries that are exactly zero.

    A module counts the weights of its default selection (Linear/Conv/attention/RNN matrices).

    >>> sparsity([torch.tensor([0.0, 1.0, 0.0, 2.0])])
    0.5
    """
    if isinstance(tensors, nn.Module):
        tensors = [p for _, p in selected_weights(tensors)]
    zeros = total = 0
    for t in tensors:
        zeros += int((t.detach() == 0).sum())
        total += t.numel()
    return zeros / total if total else 0.0


def live_groups(weight: Tensor, groups="rows") -> tuple[int, int]:
    """(groups with a nonzero entry, number of groups) for ``groups`` of ``weight``.

    >>> live_groups(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), "rows")
    (1, 2)
    """
    from .groups import make_grouping

    return make_grouping(groups).live(weight)


def surviving_inputs(weight: Tensor) -> Tensor:
    """Boolean mask of the inputs a first layer still reads (a nonzero column).

    For a Conv weight ``[out, in, kh, kw]`` this is per input channel.

    >>> surviving_inputs(torch.tensor([[0.0, 1.0], [0.0, 2.0]]))
    tensor([False,  True])
    """
    w = weight.detach()
    dims = [d for d in range(w.ndim) if d != 1]
    return w.ne(0).any(dim=dims[0]) if w.ndim == 2 else w.ne(0).flatten(2).any(2).any(0)


def layer_stats(model: nn.Module) -> dict[str, dict]:
    """Per weight of the default selection: size, exact zeros, norms, live rows (neurons / channels).

    >>> s = layer_stats(nn.Linear(3, 2))
    >>> s["weight"]["numel"], s["weight"]["rows"]
    (6, 2)
    """
    out = {}
    for name, p in selected_weights(model):
        w = p.detach()
        live, rows = Rows().live(w)
        out[name] = {
            "numel": w.numel(),
            "zeros": int((w == 0).sum()),
            "zero_fraction": float((w == 0).float().mean()),
            "l1": float(w.abs().sum()),
            "l2": float(torch.linalg.vector_norm(w.float())),
            "live_rows": live,
            "rows": rows,
        }
    return out


def summary(opt) -> str:
    """A table of which parameters got which penalty: tensors, elements, zeros, norm.

    The mode of a prox rule carries its metric: ``prox/lr``, ``prox/adam``, or
    ``prox/auto`` before the first step has shown what the inner optimizer keeps.

    >>> import decaylab as dl
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    >>> opt = dl.regularize(torch.optim.SGD(m.parameters(), lr=0.1), m, dl.L1(1e-3))
    >>> print(dl.summary(opt).splitlines()[0])
    rule                             penalty                                      mode        tensors   elements   zeros  L2 norm
    """
    from .monitor import find_regularized

    opt = find_regularized(opt)
    head = f"{'rule':<32} {'penalty':<44} {'mode':<10} {'tensors':>8} {'elements':>10} {'zeros':>7} {'L2 norm':>8}"
    lines = [head, "-" * len(head)]
    metrics = getattr(opt, "metrics", [None] * len(opt.bindings))
    for b, metric in zip(opt.bindings, metrics):
        pen = repr(b.rule.penalty) if b.rule.penalty is not None else "none"
        mode = "-"
        if b.rule.penalty is not None:  # prox rules show their metric: lr, adam, auto (set at step 1)
            mode = b.rule.shown_mode(metric)
        lines.append(_row(b.rule.label, pen, mode, b.params))
    free = list(getattr(opt, "unpenalized_params", {}).values())
    if free:
        lines.append(_row("(no rule)", "none", "-", free))
    return "\n".join(lines)


def updates(opt) -> list[dict]:
    """How the wrapper updates its weights: one row per bucket (the weights of one rule,
    param group, dtype and device, updated by one kernel call), to check that the compiled
    path is taken and stays taken, and who takes Adam's step.

    Each row has ``rule`` (its label), ``penalty`` (its repr), ``mode`` (as in
    :func:`summary`), ``group`` (the param group), ``tensors``, ``dtype``, ``device`` and:

    * ``kernel``: ``"compiled"`` (:mod:`decaylab.fused`), ``"eager"`` (``fused=False``, a
      small CPU bucket, a penalty without a compiled kernel, or a compile that failed and
      fell back) or ``"not chosen"`` (before the bucket's first update);
    * ``calls``: compiled calls so far; ``adam_calls``: of them, those that took Adam's
      step inside the kernel (the inner optimizer skipped these weights);
      ``guarded_calls``: those that went through ``torch.compile``'s guards rather than
      straight to the kept program. It grows only when a program is needed that was not
      kept (a kernel's first call, Adam's step joining the kernel, a changed tensor
      layout), never because lr, betas, eps, the strength or a schedule changed;
    * ``level``: ``"direct"`` or ``"guarded"`` (how a compiled kernel runs), else None;
    * ``residual_bytes``: the fp32 rounding residuals kept for bf16/fp16 weights;
      ``buffer_bytes``: the per-weight step buffers kept for the eager prox in Adam's
      metric (a kernel that takes Adam's step keeps none).

    >>> import decaylab as dl
    >>> m = nn.Linear(4, 3)
    >>> opt = dl.regularize(torch.optim.SGD(m.parameters(), lr=0.1), m, dl.L1(1e-3), fused=False)
    >>> m(torch.ones(2, 4)).sum().backward(); opt.step()
    >>> [(r["rule"], r["mode"], r["kernel"], r["calls"]) for r in dl.updates(opt)]
    [('weights >= 2-D', 'prox/lr', 'eager', 0)]
    """
    from .monitor import find_regularized

    return find_regularized(opt).updates()


def _row(label: str, pen: str, mode: str, tensors: list[Tensor]) -> str:
    n = sum(t.numel() for t in tensors)
    zeros = sum(int((t.detach() == 0).sum()) for t in tensors)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors])) if tensors else 0.0
    label = label if len(label) <= 32 else label[:29] + "..."
    pen = pen if len(pen) <= 44 else pen[:41] + "..."
    return f"{label:<32} {pen:<44} {mode:<10} {len(tensors):>8} {n:>10} {zeros / max(n, 1):>7.1%} {float(norm):>8.3g}"
