"""What every report figure shares: the style (byte-identical PNGs), colours per run, the
series read from a run's metrics, and a panel grid. Drawn with matplotlib's
object-oriented API; matplotlib is imported only when a figure is drawn."""

from __future__ import annotations

import math

STYLE = {
    "svg.hashsalt": "decaylab", "figure.dpi": 100, "savefig.dpi": 100,
    "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10,
    "legend.fontsize": 8, "axes.spines.top": False, "axes.spines.right": False,
    "image.interpolation": "nearest", "path.simplify": False,
}
PNG_METADATA = {"Software": None}
ZERO_COLOR = "black"   # no run colour (C0..C9, tab20) is black
MASK_CMAP = "Blues"

def is_regression(run):
    if run["data"].get("task") == "regression":
        return True
    rows = [m for r in run["runs"] for m in r["metrics"]]
    return bool(rows) and all(m.get("test_acc") is None for m in rows)


def series(rows, key):
    return [math.nan if m.get(key) is None else float(m[key]) for m in rows]


def epochs(rows):
    """Epoch numbers for the x axis, or 1..n if they do not increase (e.g. a finetune restart)."""
    epochs = [m.get("epoch") for m in rows]
    if all(isinstance(e, (int, float)) for e in epochs) and \
            all(a < b for a, b in zip(epochs, epochs[1:])):
        return epochs
    return list(range(1, len(rows) + 1))


def label(r):
    return r["name"] if r["final"] is not None else f"{r['name']} (incomplete)"


def colored(run, keep):
    """(color, run) pairs for the runs ``keep`` accepts; a run keeps its color in every figure."""
    n = len(run["runs"])
    if n <= 10:
        return [(f"C{i}", r) for i, r in enumerate(run["runs"]) if keep(r)]
    from matplotlib import colormaps  # more than 10 runs: distinct colors, not a repeating cycle

    cmap = colormaps["tab20"]
    return [(cmap(i % 20), r) for i, r in enumerate(run["runs"]) if keep(r)]


def layers(r):
    """Per-layer sparsity: final.json's, else the last epoch's that has one."""
    rows = [r["final"] or {}] + r["metrics"][::-1]
    return next((row["layers"] for row in rows if row.get("layers")), {})


def zero_fraction(layer):
    if not isinstance(layer, dict):
        return math.nan
    if layer.get("zero_fraction") is not None:
        return float(layer["zero_fraction"])
    return layer["zeros"] / layer["numel"] if layer.get("numel") else math.nan


def integer_epochs(*axes):
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")


def grid(n, panel=(3.4, 2.6), **subplot_kw):
    """A constrained-layout figure with ``n`` panels, at most three per row."""
    from matplotlib.figure import Figure
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def sweeps(run):
    if run.get("sweep"):
        return [(run["sweep"].get("penalty", "sweep"), run["sweep"])]
    return run.get("sweeps") or []
