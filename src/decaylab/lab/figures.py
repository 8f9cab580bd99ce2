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


def _pareto_curve(ax, pts, split, **style):
    xs, ys = [p["nonzero_params"] for p in pts], [p[f"{split}_acc"] for p in pts]
    sd = [p.get(f"{split}_acc_sd") for p in pts]
    return ax.errorbar(xs, ys, yerr=[s or 0 for s in sd] if any(sd) else None, capsize=2, **style)


def fig_pareto(sweeps: list[tuple[str, dict]]):
    """Validation (left) and test (right) accuracy against nonzero parameters (log axis over a
    wide range; top: % of the model's parameters kept), ± sd over seeds, one curve per sweep over its strengths (at its best lr;
    hollow: stopped early), and the sweep's magnitude-pruning reference curve (dashed) when
    ``sweep.json`` has one. Up and to the left is better: more accuracy for fewer weights.

    >>> pts = [{"alpha": a, "lr": 1, "val_acc": v, "test_acc": v, "nonzero_params": n, "n_params": 100}
    ...        for a, v, n in [(0.1, .9, 80), (1, .85, 30)]]
    >>> ref = {"points": [{"target": .7, "val_acc": .88, "test_acc": .87, "nonzero_params": 30, "n_params": 100}]}
    >>> fig = fig_pareto([("l1", {"chosen_lr": {"best": 1}, "points": pts, "reference": ref})])
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['l1 (over λ)', 'magnitude pruning']
    """
    sweeps = [(label, sw) for label, sw in sweeps if sw.get("points") and
              all(p.get("nonzero_params") is not None for p in sw["points"])]
    if not sweeps:
        return None
    fig, axes = _figure(2, panel=(4.6, 3.4))
    metric = "accuracy" if sweeps[0][1].get("metric", "accuracy") == "accuracy" else "mse"
    n_params = sweeps[0][1]["points"][0].get("n_params")
    for i, (label, sw) in enumerate(sweeps):
        pts = sorted(_rows(sw), key=lambda p: p["nonzero_params"])
        ref = [p for p in (sw.get("reference") or {}).get("points", []) if p.get("nonzero_params")]
        ref_color = "0.2" if len(sweeps) == 1 else f"C{i}"
        ref_label = "magnitude pruning" if len(sweeps) == 1 else f"magnitude pruning (vs {label})"
        for ax, split in zip(axes, ("val", "test")):
            _pareto_curve(ax, pts, split, marker="o", color=f"C{i}", label=f"{label} (over λ)")
            hollow = [(p["nonzero_params"], p[f"{split}_acc"]) for p in pts if p.get("stopped_early")]
            if hollow:
                ax.scatter(*zip(*hollow), s=40, facecolor="white", edgecolor=f"C{i}", zorder=3)
            if ref:
                _pareto_curve(ax, sorted(ref, key=lambda p: p["nonzero_params"]), split, marker="s", ls="--",
                              color=ref_color, mfc="white", label=ref_label)
    stopped = any(p.get("stopped_early") for _, sw in sweeps for p in _rows(sw))
    xs = [p["nonzero_params"] for _, sw in sweeps for p in sw["points"] + (sw.get("reference") or {}).get("points", [])]
    log = max(xs) > 10 * max(min(xs), 1)
    for ax, title in zip(axes, (f"validation {metric} (used to choose)", f"test {metric} (reported)")):
        _params_axis(ax, log, n_params)
        ax.set_ylabel(metric)
        ax.set_title(title + ("\nhollow: stopped early by halving" if stopped and ax is axes[0] else ""))
    axes[0].legend(loc="best", fontsize=7)
    return fig


def _params_axis(ax, log: bool, n_params):
    """Nonzero parameters below (log only over a wide range; plain numbers), % kept on top."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    plain = FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x >= 10_000 else f"{x:,.0f}")
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.xaxis.set_major_formatter(plain)
    ax.set_xlabel("nonzero parameters" + (" (log scale)" if log else ""))
    if n_params:
        top = ax.secondary_xaxis("top", functions=(lambda x, n=n_params: 100 * x / n, lambda q, n=n_params: q * n / 100))
        top.xaxis.set_major_formatter(FuncFormatter(lambda q, _: f"{q:g}%"))
        top.xaxis.set_minor_formatter(NullFormatter())
        top.set_xlabel(f"kept, % of {n_params:,} parameters", fontsize=8)


def fig_compaction(runs: list[dict], colors: list | None = None):
    """From each run's ``compact.json``: units kept per layer against the dense width (left;
    ``inputs`` first) and the CPU time of one batch of 256, dense vs compacted (right).
    ``colors``: one per run (default the C0..C9 cycle); runs without a compaction are skipped.

    >>> c = {"compacted": True, "kept_inputs": [0, 2], "n_inputs": 4, "layers": {"layers.0": [3, 8]},
    ...      "time_dense_batch256": 2e-3, "time_compact_batch256": 5e-4, "speedup_batch256": 4.0}
    >>> fig_compaction([{"name": "coupled", "compact": c}]).axes[0].get_ylabel()
    'units (neurons / channels / inputs)'
    """
    colors = colors or [f"C{i % 10}" for i in range(len(runs))]  # one per run: a run keeps the report's color
    colors = [c for c, r in zip(colors, runs) if (r.get("compact") or {}).get("compacted")]
    runs = [r for r in runs if (r.get("compact") or {}).get("compacted")]
    if not runs:
        return None
    from matplotlib.figure import Figure

    groups = {}
    for r in runs:
        c = r["compact"]
        if c.get("kept_inputs") is not None:
            groups.setdefault("inputs", c["n_inputs"])
        for layer, (_, before) in c["layers"].items():
            groups.setdefault(layer, before)
    names = list(groups)
    left = max(3.6, 1.6 + 0.16 * len(names) * (len(runs) + 1))
    fig = Figure(figsize=(left + 4.8, max(3.2, 1.4 + 0.42 * len(runs))), layout="constrained")
    units, times = fig.subplots(1, 2, width_ratios=[left, 4.8])
    width = 0.8 / (len(runs) + 1)
    units.bar([j - 0.4 + width / 2 for j in range(len(names))], [groups[n] for n in names], width,
              color="0.85", edgecolor="0.5", label="dense")
    for i, r in enumerate(runs):
        c = r["compact"]
        kept = {"inputs": len(c["kept_inputs"]) if c.get("kept_inputs") is not None else None,
                **{k: v[0] for k, v in c["layers"].items()}}
        xs = [j - 0.4 + width * (i + 1.5) for j in range(len(names))]
        values = [kept.get(n) if kept.get(n) is not None else groups[n] for n in names]
        bars = units.bar(xs, values, width, color=colors[i], label=r["name"])
        if len(runs) <= 8:
            units.bar_label(bars, [f"{v}" for v in values], fontsize=6, padding=1, rotation=90 if len(runs) > 3 else 0)
    units.margins(y=0.12)
    units.set_xticks(range(len(names)), names)
    units.set_ylabel("units (neurons / channels / inputs)")
    units.set_title("kept after compaction, per layer")
    units.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    _fig_times(times, runs, colors)
    return fig


def _fig_times(ax, runs, colors):
    absolute = all(r["compact"].get("time_dense_batch256") for r in runs)
    for i, r in enumerate(runs):
        c = r["compact"]
        dense = 1e3 * c["time_dense_batch256"] if absolute else 1.0
        small = 1e3 * c["time_compact_batch256"] if absolute else 1.0 / c["speedup_batch256"]
        ax.barh([2 * i - 0.4, 2 * i + 0.4], [dense, small], 0.75, color=["0.85", colors[i]], edgecolor="0.5")
        ax.annotate(f"{c['speedup_batch256']:.2f}×", xy=(small, 2 * i + 0.4), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks([2 * i for i in range(len(runs))], [r["name"] for r in runs], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per batch of 256 (CPU, best of 20)" if absolute else "time relative to dense (CPU)")
    ax.set_title("inference time: dense (grey)\nvs compacted (label: speed-up)")


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
