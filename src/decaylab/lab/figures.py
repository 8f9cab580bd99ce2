"""The report's figures as one table: id, section title, caption (what a learner should
look for), builder, and which run folders show it.

A builder takes the run dict of :func:`decaylab.lab.report.load_run_folder` and returns a
matplotlib ``Figure``, or None when it has nothing to show (e.g. input maps for data that
are not images). :func:`draw` renders every figure of a folder to PNG bytes inside a fixed
style, so the same JSON gives byte-identical PNGs; ``report.py`` only assembles the HTML.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

from . import figures_runs, figures_sweep
from .figures_runs import penalty_colors
from .plotting import PNG_METADATA, STYLE, colored, sweeps

RUNS = ("runs",)            # a train or compare folder
BOTH = ("runs", "sweep")    # also a sweep folder (sweep.json)


@dataclass(frozen=True)
class Figure:
    id: str
    title: str
    caption: str  # ``{metric}`` becomes "accuracy" or "loss"
    build: Callable[[dict], object]
    kinds: tuple[str, ...]


def _lambda_path(run):
    return figures_sweep.fig_lambda(sweeps(run), penalty_colors(run))


def _pareto(run):
    return figures_sweep.fig_pareto(sweeps(run), penalty_colors(run))


def _heatmap(run):
    return figures_sweep.fig_heatmap(run["sweep"]) if run.get("sweep") else None


def _compaction(run):
    return figures_sweep.fig_compaction(run["runs"], [color for color, _ in colored(run, lambda r: True)])


FIGURES: tuple[Figure, ...] = (
    Figure('curves', 'Learning curves',
           'Train, validation and test {metric} per epoch for each run: the shaded band between '
           'train and test is the generalization gap, which a good penalty narrows.',
           figures_runs.fig_curves, RUNS),
    Figure('loss-curves', 'Loss curves',
           'Train and validation loss per epoch, next to the accuracy curves above: a validation '
           'loss that turns up while the train loss keeps falling is overfitting.',
           lambda run: figures_sweep.fig_loss_curves(run["runs"]), RUNS),
    Figure('histograms', 'Weight histograms',
           'Penalized weights on a log count scale, one colour per penalty (every seed of a run '
           'alike): L1 piles weights at exactly zero (the black spike; its count is in each '
           "panel's title), L2 narrows the bell but leaves every weight nonzero. The bar around "
           '0 counts only small nonzero weights.',
           figures_runs.fig_histograms, RUNS),
    Figure('weights-overlaid', 'Weights of no penalty, L2 and L1 on one axis',
           'One histogram per penalty on a shared axis (log counts): L2 narrows the bell, L1 '
           'moves weights into the spike of exact zeros at 0 (drawn to its full height).',
           lambda run: figures_sweep.fig_overlaid_histograms(run["runs"]), RUNS),
    Figure('layer-sparsity', 'Exact sparsity per layer',
           'Share of exactly-zero weights in each layer, one bar per penalty (mean over its '
           'seeds, ± sd; the axis ends just above the largest bar): L1 and group penalties '
           'switch parts of a layer off, L2 and no penalty leave every weight on.',
           figures_runs.fig_layer_sparsity, RUNS),
    Figure('sparsity-over-time', 'Sparsity and weight norm over training',
           'Exact-zero share (axis fitted to the data) and L2 norm of the penalized weights per '
           'epoch, one colour per penalty: zeros appear only with L1-type penalties, while any '
           "penalty keeps the norm below the unpenalized run's.",
           figures_runs.fig_sparsity_over_time, RUNS),
    Figure('input-maps', 'Surviving input pixels',
           'Which input pixels each model still reads (dark = kept, pale = dropped): a sparse '
           'first layer drops the pixels that carry no signal, such as the image border.',
           figures_runs.fig_input_maps, RUNS),
    Figure('lambda-path', 'Regularization path',
           'Against the strength λ (log axis): validation (solid) and test (dashed) accuracy '
           'with a ± sd band, the chosen best λ (thick pale line) and the one-SE λ (thin dashed '
           'line; both with their values in the legend); the train−test gap, exact zeros and '
           "each layer's weight norm. Too little λ overfits (large gap), too much underfits "
           '(accuracy falls). Hollow markers, never joined to the curves, are points stopped '
           'early by successive halving: measured at an earlier epoch, not comparable.',
           _lambda_path, BOTH),
    Figure('pareto', 'Accuracy against parameters kept',
           'Validation (left, used to choose) and test (right, reported) {metric} against the '
           'number of nonzero parameters, one curve per penalty over its strengths: up and to '
           'the left is better. The dashed curve, when present, is gradual magnitude pruning '
           '(Zhu & Gupta) trained in the same run with the same data, model, optimizer, learning '
           'rate and epochs, pruned to the exact-zero fractions listed in sweep.json: the '
           'baseline a sparse penalty has to beat. Error bars: ± sd over seeds; hollow markers, '
           'off the curve: stopped early. A sweep without exact zeros (L2) keeps every parameter '
           'and is left out.',
           _pareto, BOTH),
    Figure('heatmap', 'Learning rate × λ',
           'Mean validation accuracy over the grid of learning rates and strengths; hatched '
           'cells were stopped early by successive halving (their value is from an earlier '
           'epoch).',
           _heatmap, BOTH),
    Figure('compaction', 'Compaction: units kept and inference time',
           'After decaylab compact: per layer, the dense width (grey) and the neurons, channels '
           "or input features each run's compacted model keeps (left); the CPU time of one batch "
           'of 256 test examples through the dense and the compacted model, measured one after '
           'the other (right). The compacted model gives the same outputs (compact.json: '
           'max_abs_diff_test).',
           _compaction, BOTH),
)
BY_ID = {f.id: f for f in FIGURES}


def kind(run: dict) -> str:
    """``"sweep"`` for a sweep folder, else ``"runs"``."""
    return "sweep" if run.get("sweep") else "runs"


def draw(run: dict) -> dict[str, bytes]:
    """Draw a run folder's figures as PNG bytes, identical for identical JSON.

    Args:
        run: the dict from :func:`decaylab.lab.report.load_run_folder`.

    Returns:
        Figure id -> PNG bytes, in :data:`FIGURES` order; a figure with nothing to show is
        left out.

    >>> sorted(draw(load_run_folder("runs/digits-compare")))  # doctest: +SKIP
    ['curves', 'histograms', 'input-maps', 'layer-sparsity', 'sparsity-over-time']
    """
    import matplotlib.style

    out = {}
    with matplotlib.style.context(["default", STYLE]):
        for fig in FIGURES:
            if kind(run) not in fig.kinds:
                continue
            drawn = fig.build(run)
            if drawn is not None:
                buf = io.BytesIO()
                drawn.savefig(buf, format="png", metadata=PNG_METADATA)
                out[fig.id] = buf.getvalue()
    return out
