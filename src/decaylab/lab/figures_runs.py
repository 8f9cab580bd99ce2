"""The report's per-run figures: learning curves, weight histograms, sparsity per layer.

A compare over seeds names its runs ``<run>-s<seed>``; these figures colour every seed of
one run (one penalty) alike, so nine runs read as three penalties.
"""
from __future__ import annotations

import math
import re

_BAR_LABEL_IN, _LEGEND_IN = 0.34, 2.8   # layer sparsity: inches per bar label, for the legend

from . import plotting as P


def base_name(run: dict, name: str) -> str:
    """The run a seeded run belongs to: ``l1-s10`` -> ``l1`` in a compare over seeds.

    >>> base_name({"config": {"base_runs": [{"name": "l1"}]}}, "l1-s10")
    'l1'
    >>> base_name({"config": {}}, "l1-s10")
    'l1-s10'
    """
    bases = {b.get("name") for b in (run.get("config") or {}).get("base_runs") or []}
    m = re.fullmatch(r"(.+)-s\d+", name)
    return m.group(1) if m and m.group(1) in bases else name


def by_penalty(run: dict, keep) -> list[tuple]:
    """(colour, run) pairs as :func:`plotting.colored`, but one colour per base run (penalty)."""
    bases = list(dict.fromkeys(base_name(run, r["name"]) for r in run["runs"]))
    if len(bases) == len(run["runs"]):
        return P.colored(run, keep)
    colors = {b: f"C{k % 10}" for k, b in enumerate(bases)}
    return [(colors[base_name(run, r["name"])], r) for r in run["runs"] if keep(r)]


def penalty_colors(run: dict) -> dict:
    """Base run name -> its colour in :func:`by_penalty` (a compare's sweeps take it too)."""
    return {base_name(run, r["name"]): c for c, r in by_penalty(run, lambda r: True)}


def fig_curves(run):
    runs = [r for r in run["runs"] if r["metrics"]]
    if not runs:
        return None
    suffix = "_loss" if P.is_regression(run) else "_acc"
    fig, axes = P.grid(len(runs), sharey=True)
    for ax, r in zip(axes, runs):
        x = P.epochs(r["metrics"])
        ys = {part: P.series(r["metrics"], part + suffix) for part in ("train", "val", "test")}
        noisy = label_noise(run) and suffix == "_acc"
        for part, color in zip(ys, ("C0", "C2", "C3")):
            if not all(math.isnan(v) for v in ys[part]):
                ax.plot(x, ys[part], color=color, marker=".", label="train (noisy labels)" if noisy and part == "train"
                        else part)
        ax.fill_between(x, ys["train"], ys["test"], color="C3", alpha=0.12, lw=0)
        finetune = [e for e, m in zip(x, r["metrics"]) if m.get("phase") == "finetune"]
        if finetune:
            ax.axvline(finetune[0], color="0.5", ls=":", lw=1)
        ax.set_title(P.label(r))
        P.integer_epochs(ax)
    axes[0].set_ylabel("loss" if suffix == "_loss" else "accuracy")
    axes[0].legend(loc="best")
    return fig


def label_noise(run) -> float:
    """The share of training labels flipped (config ``data.label_noise``), else 0."""
    return float(((run.get("config") or {}).get("data") or {}).get("label_noise") or 0.0)


def fig_histograms(run):
    """One panel per run, one colour per penalty; the bin around 0 holds the small nonzero
    weights only, the exact zeros are a separate black spike, counted in the panel title."""
    def has_hist(r):
        return bool(r["final"] and (r["final"].get("histogram") or {}).get("counts"))
    runs = by_penalty(run, has_hist)
    if not runs:
        return None
    from matplotlib.ticker import NullLocator
    fig, axes = P.grid(len(runs), sharex=True, sharey=True)
    for ax, (color, r) in zip(axes, runs):
        hist = r["final"]["histogram"]
        edges, counts = hist["edges"], list(hist["counts"])
        zeros = int(hist.get("exact_zeros") or 0)
        mid = next((k for k in range(len(counts)) if edges[k] <= 0 < edges[k + 1]), None)
        if zeros and mid is not None:
            counts[mid] = max(counts[mid] - zeros, 0)
        widths = [b - a for a, b in zip(edges, edges[1:])]
        ax.bar(edges[:-1], counts, width=widths, align="edge", color=color, alpha=0.7, log=True)
        total = r["final"].get("weights") or sum(hist["counts"]) or 1
        if zeros:
            ax.vlines(0.0, 0.8, zeros, color=P.ZERO_COLOR, lw=2.5)
        ax.set_ylim(bottom=0.8)
        ax.yaxis.set_minor_locator(NullLocator())   # minor log ticks: clutter, and slow
        ax.set_title(f"{r['name']}\nexact zeros: {zeros:,} ({zeros / total:.1%})", fontsize=9)
        ax.set_xlabel("weight value")
    axes[0].set_ylabel("count (log scale)")
    return fig


def fig_layer_sparsity(run):
    """Exact-zero % per layer, one bar per penalty (mean over its seeds, ± sd), the axis
    scaled to the data; only nonzero bars are labelled."""
    runs = by_penalty(run, lambda r: bool(P.layers(r)))
    if not runs:
        return None
    names = list(dict.fromkeys(name for _, r in runs for name in P.layers(r)))
    groups = {}
    for color, r in runs:
        groups.setdefault(base_name(run, r["name"]), (color, []))[1].append(r)
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter
    # every bar gets room for its label ("100%" is about 0.3 in at 7 pt); past 24 in, the
    # labels turn vertical instead of colliding; many runs: the legend goes below
    bars_in = _BAR_LABEL_IN * len(groups) * len(names) / 0.8
    legend_rows = math.ceil(len(groups) / 5) if len(groups) > 8 else 0
    side = 0.6 if legend_rows else _LEGEND_IN
    fig_w = min(max(7.5, side + bars_in), 24.0)
    vertical = fig_w - side < bars_in
    fig = Figure(figsize=(fig_w, 3.4 + 0.3 * vertical + 0.22 * legend_rows), layout="constrained")
    ax = fig.subplots()
    width, top = 0.8 / len(groups), 0.0
    for i, (name, (color, members)) in enumerate(groups.items()):
        x = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(names))]
        per = [[100 * P.zero_fraction(P.layers(r).get(n)) for r in members] for n in names]
        mean = [_nanmean(v) for v in per]
        sd = [_nansd(v) for v in per]
        quiet = all(m == 0 or math.isnan(m) for m in mean)
        n = len(members)
        label = name + (f" ({n} seeds)" if n > 1 else "") + (" — no exact zeros" if quiet else "")
        bars = ax.bar(x, mean, width, color=color, label=label,
                      yerr=sd if n > 1 and not quiet else None, capsize=2, error_kw={"lw": 0.8})
        ax.bar_label(bars, ["" if math.isnan(v) or v == 0 else _pct(v) for v in mean], fontsize=7, padding=2,
                     rotation=90 if vertical else 0)
        top = max([top] + [m + (s or 0) for m, s in zip(mean, sd) if not math.isnan(m)])
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, max(top * (1.5 if vertical else 1.25), 1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=None))
    ax.set_ylabel("exact-zero weights (% of layer)")
    if legend_rows:
        fig.legend(loc="outside lower center", ncols=5, fontsize=8)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return fig


def _pct(v: float) -> str:
    """A bar label: two significant digits under 10 %, whole percents above.

    >>> [_pct(v) for v in (0.23, 6.84, 52.3, 100.0)]
    ['0.23%', '6.8%', '52%', '100%']
    """
    return f"{v:.2g}%" if v < 10 else f"{v:.0f}%"


def _nanmean(v):
    v = [x for x in v if not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


def _nansd(v):
    v = [x for x in v if not math.isnan(x)]
    if len(v) < 2:
        return None
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def fig_sparsity_over_time(run):
    """Exact-zero % (axis fitted to the data) and weight norm per epoch, one colour and one
    legend entry per penalty."""
    runs = by_penalty(run, lambda r: bool(r["metrics"]))
    if not runs:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter
    fig = Figure(figsize=(9.5, 3.2), layout="constrained")
    ax_zero, ax_norm = fig.subplots(1, 2, sharex=True)
    seen, top = set(), 0.0
    for color, r in runs:
        x = P.epochs(r["metrics"])
        zeros = [100 * v for v in P.series(r["metrics"], "zero_fraction")]
        base = base_name(run, r["name"])
        label = None if base in seen else (base if base != r["name"] else P.label(r))
        seen.add(base)
        ax_zero.plot(x, zeros, color=color, marker=".", label=label)
        ax_norm.plot(x, P.series(r["metrics"], "weight_l2"), color=color, marker=".")
        top = max([top] + [v for v in zeros if not math.isnan(v)])
    ax_zero.set_ylim(-0.02 * max(top, 1.0), max(top * 1.2, 1.0))
    ax_zero.yaxis.set_major_formatter(PercentFormatter(decimals=None))
    P.integer_epochs(ax_zero, ax_norm)
    ax_zero.set(ylabel="exact-zero weights", title="Exact zeros")
    ax_norm.set(ylabel="‖w‖₂ (penalized weights)", title="Weight norm")
    ax_zero.legend(loc="best")
    return fig


def fig_input_maps(run):
    shape = run["data"].get("image_shape")
    if not shape or len(shape) != 2:
        return None
    h, w = int(shape[0]), int(shape[1])
    runs = [r for r in run["runs"]
            if r["final"] and len(r["final"].get("input_mask") or []) == h * w]
    if not runs:
        return None
    fig, axes = P.grid(len(runs), panel=(2.4, 2.6))
    for ax, r in zip(axes, runs):
        mask = r["final"]["input_mask"]
        image = [[float(v) for v in mask[i * w:(i + 1) * w]] for i in range(h)]
        ax.imshow(image, cmap=P.MASK_CMAP, vmin=0, vmax=1)
        for spine in ax.spines.values():
            spine.set_visible(True)
        ax.set_title(f"{r['name']}\nkept {sum(1 for v in mask if v)}/{h * w}")
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
