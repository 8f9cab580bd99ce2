"""The ``"decaylab"`` entry of a regularized optimizer's ``state_dict()``: steps taken,
low-precision residuals, strengths, the contexts a penalty keeps (L2SP's snapshots of the
starting weights) and the penalties' own states (budget schedules, held masks)."""

from __future__ import annotations

from .buckets import Buckets


def extra_state(steps: int, bindings: list, buckets: Buckets) -> dict:
    pens = [b.rule.penalty for b in bindings]
    saved = [None if pen is None else pen.saved_ctxs(b.ctxs) for pen, b in zip(pens, bindings)]
    return {
        "steps": steps,
        "residuals": {i: c.clone() for i, c in buckets.residuals.items()},
        "alphas": [None if pen is None else pen.alpha for pen in pens],
        # L2-SP snapshots (reference=None): a resumed run keeps pulling toward them
        "references": {i: refs for i, refs in enumerate(saved) if refs is not None},
        "penalties": [None if pen is None else pen.state_dict() for pen in pens],
    }


def load_extra(extra: dict, bindings: list, buckets: Buckets) -> int:
    """Restore :func:`extra_state`'s output; returns the steps taken."""
    params = buckets.params()
    buckets.residuals = {int(i): c.to(params[int(i)].device) for i, c in extra["residuals"].items()}
    for b, alpha in zip(bindings, extra["alphas"]):
        if b.rule.penalty is not None and alpha is not None:
            b.rule.penalty.alpha = alpha
    for i, refs in extra.get("references", {}).items():
        b = bindings[int(i)] if int(i) < len(bindings) else None
        pen = None if b is None else b.rule.penalty
        if pen is None or pen.saved_ctxs(b.ctxs) is None or len(b.ctxs) != len(refs):
            raise ValueError(
                f"this checkpoint holds L2SP snapshots for rule {i}, which is not an L2SP rule "
                f"over {len(refs)} parameters here; build the optimizer with the same rules"
            )
        pen.load_ctxs(b.ctxs, refs)
    for b, saved in zip(bindings, extra.get("penalties", [])):
        if b.rule.penalty is not None and saved:
            b.rule.penalty.load_state_dict(saved)
    return int(extra["steps"])
