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


def _split(pts):
    """(finished, stopped early) points: a stopped point is measured at an earlier epoch, so
    it is never joined by a line to finished ones."""
    return [p for p in pts if not p.get("stopped_early")], [p for p in pts if p.get("stopped_early")]


def _path_panel(ax, pts, key, color, label, note=False, **style):
    """A finished points' curve, and stopped points as hollow unconnected markers."""
    done, stopped = _split(pts)
    value = (lambda p: p.get(key)) if isinstance(key, str) else key
    ax.plot([p["alpha"] for p in done], [value(p) for p in done], color=color, marker=style.pop("marker", "o"),
            label=label, **style)
    if stopped:
        epochs = sorted({p["epochs"] for p in stopped if p.get("epochs")})
        ax.scatter([p["alpha"] for p in stopped], [value(p) for p in stopped], s=36, facecolor="white",
                   edgecolor=color, zorder=3, label=f"{label}: stopped early (epoch {', '.join(map(str, epochs))}), "
                                                    f"not comparable" if note else None)
    return done


def fig_lambda(sweeps: list[tuple[str, dict]], colors: dict | None = None):
    """Validation/test accuracy, train−test gap, exact zeros and per-layer weight norm
    against λ (log axis), 2 × 2 panels, one colour per sweep (``colors``: label -> colour);
    ± sd band (± SE with one seed);
    ``best`` (thick, pale) and ``one_se`` (thin, dashed) in the legend with their values; points
    stopped early by halving drawn hollow and never joined to the finished curve.

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
    fig, (acc, gap, zeros, norms) = _figure(2, 2, panel=(5.4, 3.5))
    acc_name = "accuracy" if sweeps[0][1].get("metric", "accuracy") == "accuracy" else "mse"
    for i, (label, sw) in enumerate(sweeps):
        c = (colors or {}).get(label, f"C{i}")
        pts = _rows(sw)
        done = _path_panel(acc, pts, "val_acc", c, f"{label} validation", note=True)
        spread = [p["val_acc_sd"] if p.get("val_acc_sd") is not None else p.get("val_acc_se") for p in done]
        _band(acc, [p["alpha"] for p in done], [p["val_acc"] for p in done], spread, c)
        _path_panel(acc, pts, "test_acc", c, f"{label} test", ls="--", marker=".")
        best, one_se = sw["chosen"]["best"], sw["chosen"]["one_se"]
        acc.axvline(best, color=c, lw=2.2, alpha=0.5, label=f"{label} best λ = {best:g}")
        acc.axvline(one_se, color=c, lw=1.3, ls=(0, (4, 2)),
                    label=f"{label} one-SE λ = {one_se:g}" + (" (= best)" if one_se == best else ""))
        _path_panel(gap, pts, "gap", c, label)
        _path_panel(zeros, pts, lambda p: 100 * (p["zeros"] or 0), c, label)
        for j, layer in enumerate(pts[0].get("layer_norms", {})):
            _path_panel(norms, pts, lambda p, layer=layer: p["layer_norms"][layer], c,
                        f"{label} {layer}" if len(sweeps) > 1 else layer, ls=("-", "--", ":", "-.")[j % 4])
    gap.axhline(0, color="0.6", lw=0.8)
    panels = ((acc, f"validation / test {acc_name}", acc_name),
              (gap, "train − test gap", f"train − test {acc_name}"),
              (zeros, "exact-zero weights", "% of weights exactly 0"),
              (norms, "weight L2 norm per layer", "‖w‖₂"))
    for ax, title, ylabel in panels:
        ax.set_xscale("log")
        ax.set_xlabel("λ (alpha)")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    handles, labels = acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8)
    norms.legend(loc="best", fontsize=7)
    return fig


def _pareto_curve(ax, pts, split, **style):
    xs, ys = [p["nonzero_params"] for p in pts], [p[f"{split}_acc"] for p in pts]
    sd = [p.get(f"{split}_acc_sd") for p in pts]
    return ax.errorbar(xs, ys, yerr=[s or 0 for s in sd] if any(sd) else None, capsize=2, **style)


def fig_pareto(sweeps: list[tuple[str, dict]], colors: dict | None = None):
    """Validation (left) and test (right) accuracy against nonzero parameters (log axis over a
    wide range; top: % of the model's parameters kept), ± sd over seeds, one curve per sweep over its strengths (at its best lr;
    stopped points hollow and not on the curve; a sweep without exact zeros, e.g. L2, is left out), and the sweep's magnitude-pruning reference curve (dashed) when
    ``sweep.json`` has one. Up and to the left is better: more accuracy for fewer weights.

    >>> pts = [{"alpha": a, "lr": 1, "val_acc": v, "test_acc": v, "nonzero_params": n, "n_params": 100}
    ...        for a, v, n in [(0.1, .9, 80), (1, .85, 30)]]
    >>> ref = {"points": [{"target": .7, "val_acc": .88, "test_acc": .87, "nonzero_params": 30, "n_params": 100}]}
    >>> fig = fig_pareto([("l1", {"chosen_lr": {"best": 1}, "points": pts, "reference": ref})])
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['l1 (over λ)', 'magnitude pruning']
    """
    sweeps = [(label, sw) for label, sw in sweeps if sw.get("points") and
              all(p.get("nonzero_params") is not None for p in sw["points"]) and _sparse(sw)]
    if not sweeps:
        return None
    fig, axes = _figure(2, panel=(4.6, 3.4))
    metric = "accuracy" if sweeps[0][1].get("metric", "accuracy") == "accuracy" else "mse"
    n_params = sweeps[0][1]["points"][0].get("n_params")
    for i, (label, sw) in enumerate(sweeps):
        c = (colors or {}).get(label, f"C{i}")
        done, stopped = _split(sorted(_rows(sw), key=lambda p: p["nonzero_params"]))
        ref = [p for p in (sw.get("reference") or {}).get("points", []) if p.get("nonzero_params")]
        ref_color = "0.2" if len(sweeps) == 1 else c
        ref_label = "magnitude pruning" if len(sweeps) == 1 else f"magnitude pruning (vs {label})"
        for ax, split in zip(axes, ("val", "test")):
            if done:
                _pareto_curve(ax, done, split, marker="o", color=c, label=f"{label} (over λ)")
            if stopped:  # measured at an earlier epoch: never on the curve of finished points
                ax.scatter([p["nonzero_params"] for p in stopped], [p[f"{split}_acc"] for p in stopped], s=40,
                           facecolor="white", edgecolor=c, zorder=3, label=f"{label}: stopped early")
            if ref:
                _pareto_curve(ax, sorted(ref, key=lambda p: p["nonzero_params"]), split, marker="s", ls="--",
                              color=ref_color, mfc="white", label=ref_label)
    xs = [p["nonzero_params"] for _, sw in sweeps for p in sw["points"] + (sw.get("reference") or {}).get("points", [])]
    log = max(xs) > 10 * max(min(xs), 1)
    for ax, title in zip(axes, (f"validation {metric} (used to choose)", f"test {metric} (reported)")):
        _params_axis(ax, log, n_params, xs)
        ax.set_ylabel(metric)
        ax.set_title(title)
    axes[0].legend(loc="best", fontsize=7)
    return fig


def _sparse(sw: dict) -> bool:
    """A sweep whose points have exact zeros (an L2 sweep has none: nothing to trade)."""
    return any((p["zeros"] or 0) > 0 if "zeros" in p else p["nonzero_params"] < (p.get("n_params") or 0)
               for p in sw["points"])


def _nice_ticks(xs) -> list[float]:
    """Three to five round values spanning ``xs`` (2 significant digits), for a log axis whose
    range may hold no power of ten.

    >>> _nice_ticks([3000, 4000])
    [3000.0, 3500.0, 4000.0]
    """
    lo, hi = min(xs), max(xs)
    n = 3 if hi < 3 * lo else 5
    raw = [lo * (hi / lo) ** (k / (n - 1)) for k in range(n)]
    return sorted({float(f"{v:.2g}") for v in raw})


def _params_axis(ax, log: bool, n_params, xs=()):
    """Nonzero parameters below (log only over a wide range; plain numbers), % kept on top."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator

    plain = FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x >= 10_000 else f"{x:,.0f}")
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(_nice_ticks([x for x in xs if x > 0])))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.xaxis.set_major_formatter(plain)
    ax.set_xlabel("nonzero parameters" + (" (log scale)" if log else ""))
    if n_params:
        top = ax.secondary_xaxis("top", functions=(lambda x, n=n_params: 100 * x / n, lambda q, n=n_params: q * n / 100))
        top.xaxis.set_major_formatter(FuncFormatter(lambda q, _: f"{q:.3g}%"))
        if log:
            top.xaxis.set_major_locator(FixedLocator([float(f"{100 * x / n_params:.2g}")
                                                      for x in _nice_ticks([x for x in xs if x > 0])]))
            top.xaxis.set_minor_locator(NullLocator())
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
    """Mean validation accuracy over the lr × λ grid (only when the sweep has several lrs);
    each cell's value in black or white by the colour under it; cells of points stopped
    early by halving hatched, their value in italics with the epoch.

    >>> pts = [{"alpha": a, "lr": lr, "val_acc": .9, "stopped_early": a > 1, "epochs": 5}
    ...        for a in (1, 10) for lr in (1e-3, 1e-2)]
    >>> [t.get_text() for t in fig_heatmap({"points": pts}).axes[0].texts][:2]
    ['0.900', '0.900\\nstopped, ep 5']
    """
    from matplotlib.patches import Rectangle

    lrs, alphas = sorted({p["lr"] for p in sw["points"]}), sorted({p["alpha"] for p in sw["points"]})
    if len(lrs) < 2:
        return None
    grid = {(p["lr"], p["alpha"]): p for p in sw["points"]}
    values = [[(grid.get((lr, a)) or {}).get("val_acc", math.nan) for a in alphas] for lr in lrs]
    fig, (ax,) = _figure(1, panel=(1.6 + 0.9 * len(alphas), 1.4 + 0.55 * len(lrs)))
    im = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas], rotation=45)
    ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_xlabel("λ (alpha)")
    ax.set_ylabel("learning rate")
    stopped = False
    for i, lr in enumerate(lrs):
        for j, a in enumerate(alphas):
            v, p = values[i][j], grid.get((lr, a)) or {}
            if math.isnan(v):
                continue
            r, g, b, _ = im.cmap(im.norm(v))
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            text = f"{v:.3f}"
            if p.get("stopped_early"):
                stopped = True
                text += f"\nstopped, ep {p.get('epochs')}"
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.55", lw=0))
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=ink,
                    style="italic" if p.get("stopped_early") else "normal")
    if stopped:
        ax.set_title("hatched: stopped early by halving (earlier epoch, not comparable)", fontsize=8)
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
                  label=f"{r['name']} ({(r['spec'] or {}).get('describe', '')})"
                        + (f": {zeros:,} exact zeros, the bar at 0" if zeros else ""))
        if zeros:
            ax.vlines(0.0, 0.8, zeros, color=f"C{i}", lw=4, alpha=0.6)
        top = max(top, zeros, *counts)
    ax.set_yscale("log")
    ax.set_ylim(0.8, top * 2)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log scale)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8)  # below: never over the spike
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
