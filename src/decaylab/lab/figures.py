"""Figures of λ sweeps and of compare runs, drawn from JSON alone (matplotlib, Agg).

Each function takes plain data (``sweep.json`` dicts, the report's run dicts) and returns a
matplotlib ``Figure`` or None when there is nothing to show. The report renders them.
"""
from __future__ import annotations

import math


def _figure(ncols: int, nrows: int = 1, panel=(3.6, 2.8)):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    return fig, list(fig.subplots(nrows, ncols, squeeze=False).ravel())


def _rows(sw: dict, lr=None):
    lr = sw["chosen_lr"]["best"] if lr is None else lr
    return sorted((p for p in sw["points"] if p["lr"] == lr), key=lambda p: p["alpha"])


def _band(ax, xs, mean, spread, color):
    lo = [m - (s or 0) for m, s in zip(mean, spread)]
    hi = [m + (s or 0) for m, s in zip(mean, spread)]
    ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)


def fig_lambda(sweeps: list[tuple[str, dict]]):
    """Validation/test accuracy, train−test gap, exact zeros and per-layer weight norm
    against λ (log axis), one colour per sweep; ± sd band (± SE with one seed); ``best``
    (solid) and ``one_se`` (dotted) marked; points stopped early drawn hollow.

    >>> sw = {"chosen": {"best": 1, "one_se": 10}, "chosen_lr": {"best": 1e-3}, "seeds": 1, "points": [
    ...     {"alpha": a, "lr": 1e-3, "val_acc": v, "val_acc_sd": None, "val_acc_se": .01, "test_acc": v,
    ...      "test_acc_sd": None, "gap": .1, "zeros": 0, "layer_norms": {"w": 1}, "stopped_early": False}
    ...     for a, v in [(0.1, .8), (1, .9), (10, .85)]]}
    >>> fig_lambda([("l2", sw)]).axes[0].get_xscale()
    'log'
    """
    sweeps = [(label, sw) for label, sw in sweeps if sw.get("points")]
    if not sweeps:
        return None
    fig, (acc, gap, zeros, norms) = _figure(4)
    acc_name = "accuracy" if sweeps[0][1].get("metric", "accuracy") == "accuracy" else "mse"
    for i, (label, sw) in enumerate(sweeps):
        c = f"C{i}"
        pts = _rows(sw)
        a = [p["alpha"] for p in pts]
        val = [p["val_acc"] for p in pts]
        spread = [p["val_acc_sd"] if p.get("val_acc_sd") is not None else p.get("val_acc_se") for p in pts]
        acc.plot(a, val, color=c, marker="o", label=f"{label} val")
        _band(acc, a, val, spread, c)
        acc.plot(a, [p["test_acc"] for p in pts], color=c, ls="--", marker=".", label=f"{label} test")
        hollow = [(p["alpha"], p["val_acc"]) for p in pts if p.get("stopped_early")]
        if hollow:
            acc.scatter(*zip(*hollow), s=40, facecolor="white", edgecolor=c, zorder=3)
        acc.axvline(sw["chosen"]["best"], color=c, lw=1.2)
        acc.axvline(sw["chosen"]["one_se"], color=c, lw=1.2, ls=":")
        gap.plot(a, [p["gap"] for p in pts], color=c, marker="o", label=label)
        zeros.plot(a, [100 * (p["zeros"] or 0) for p in pts], color=c, marker="o", label=label)
        for j, layer in enumerate(pts[0].get("layer_norms", {})):
            norms.plot(a, [p["layer_norms"][layer] for p in pts], color=c, marker="o", ls=("-", "--", ":", "-.")[j % 4],
                       label=f"{label} {layer}" if len(sweeps) > 1 else layer)
    titles = (f"validation / test {acc_name}\n(solid: best, dotted: one_se; hollow: stopped early)",
              "train − test gap", "exact-zero weights (%)", "weight L2 norm per layer")
    for ax, title in zip((acc, gap, zeros, norms), titles):
        ax.set_xscale("log")
        ax.set_xlabel("λ (alpha)")
        ax.set_title(title)
    acc.legend(loc="best", fontsize=7)
    norms.legend(loc="best", fontsize=7)
    return fig


def fig_pareto(sweeps: list[tuple[str, dict]]):
    """Validation accuracy against nonzero parameters, one curve per penalty (the points
    of each sweep at its best lr); the upper-left envelope is the accuracy-size frontier."""
    sweeps = [(label, sw) for label, sw in sweeps if sw.get("points") and
              all(p.get("nonzero_params") is not None for p in sw["points"])]
    if not sweeps:
        return None
    fig, (ax,) = _figure(1, panel=(5.2, 3.4))
    for i, (label, sw) in enumerate(sweeps):
        pts = sorted(_rows(sw), key=lambda p: p["nonzero_params"])
        ax.plot([p["nonzero_params"] for p in pts], [p["val_acc"] for p in pts], marker="o", color=f"C{i}",
                label=label)
    ax.set_xscale("log")
    ax.set_xlabel("nonzero parameters")
    ax.set_ylabel("validation accuracy")
    ax.legend(loc="best")
    return fig


def fig_heatmap(sw: dict):
    """Mean validation accuracy over the lr × λ grid (only when the sweep has several lrs)."""
    lrs, alphas = sorted({p["lr"] for p in sw["points"]}), sorted({p["alpha"] for p in sw["points"]})
    if len(lrs) < 2:
        return None
    grid = {(p["lr"], p["alpha"]): p["val_acc"] for p in sw["points"]}
    values = [[grid.get((lr, a), math.nan) for a in alphas] for lr in lrs]
    fig, (ax,) = _figure(1, panel=(1.0 + 0.55 * len(alphas), 1.2 + 0.4 * len(lrs)))
    im = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas], rotation=45)
    ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_xlabel("λ (alpha)")
    ax.set_ylabel("learning rate")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(im, ax=ax, label="validation accuracy")
    return fig


def fig_overlaid_histograms(runs: list[dict]):
    """The none / L2 / L1 weights on one axis (step histograms, log counts); each run's
    exact zeros are a bar at 0 whose full height is inside the axis."""
    picked, seen = [], set()
    for r in runs:
        hist = (r.get("final") or {}).get("histogram") or {}
        kind = str((r.get("spec") or {}).get("penalty")).lower()
        if hist.get("counts") and kind not in seen and kind in ("none", "l2", "l1", "elasticnet"):
            picked.append((r, hist))
            seen.add(kind)
    if len(picked) < 2:
        return None
    fig, (ax,) = _figure(1, panel=(6.4, 3.6))
    top = 1
    for i, (r, hist) in enumerate(picked):
        edges, counts = hist["edges"], list(hist["counts"])
        zeros = int(hist.get("exact_zeros") or 0)
        mid = min(range(len(counts)), key=lambda k: abs((edges[k] + edges[k + 1]) / 2))
        counts[mid] = max(counts[mid] - zeros, 0)  # drawn separately as the spike
        ax.stairs(counts, edges, color=f"C{i}", lw=1.5,
                  label=f"{r['name']} ({(r['spec'] or {}).get('describe', '')})")
        if zeros:
            ax.vlines(0.0, 0.8, zeros, color=f"C{i}", lw=4, alpha=0.6)
            ax.annotate(f"{zeros:,} exact zeros", xy=(0.0, zeros), xytext=(6, 0), textcoords="offset points",
                        color=f"C{i}", va="center", fontsize=8)
        top = max(top, zeros, *counts)
    ax.set_yscale("log")
    ax.set_ylim(0.8, top * 2)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log scale)")
    ax.legend(loc="upper left", fontsize=7)
    return fig


def fig_loss_curves(runs: list[dict]):
    """Train and validation loss per epoch, one panel per run (next to the accuracy curves)."""
    runs = [r for r in runs if r["metrics"]]
    if not runs:
        return None
    n = len(runs)
    fig, axes = _figure(min(n, 3), math.ceil(n / 3), panel=(3.4, 2.6))
    for ax, r in zip(axes, runs):
        x = [m["epoch"] for m in r["metrics"]]
        for part, color in (("train", "C0"), ("val", "C2")):
            ax.plot(x, [m.get(f"{part}_loss", math.nan) for m in r["metrics"]], color=color, marker=".", label=part)
        ax.set_title(r["name"])
        ax.set_xlabel("epoch")
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="best")
    return fig
