"""Tests for decaylab.lab.figures_runs: the per-run figures of a compare over seeds tell the
truth. Weight histograms, layer sparsity, sparsity over time, and one colour per penalty
(drawn from the ``seeded`` run folder)."""

from __future__ import annotations

import itertools

import pytest
from matplotlib.colors import to_hex

from decaylab.lab import figures_runs
from decaylab.lab.report import figures as report_figures


def _bar_colors(ax):
    return {to_hex(p.get_facecolor()) for p in ax.patches}


def test_histograms_colour_every_seed_of_a_penalty_alike_and_not_like_the_zero_spike(seeded):
    from decaylab.lab.figures_runs import fig_histograms
    fig = fig_histograms(seeded)
    colors = {ax.get_title().split("\n")[0]: _bar_colors(ax) for ax in fig.axes if ax.get_visible()}
    for kind in ("none", "l2", "l1"):
        assert colors[f"{kind}-s0"] == colors[f"{kind}-s1"] == colors[f"{kind}-s2"]
    assert colors["none-s0"] != colors["l1-s0"]
    spikes = {to_hex(c.get_color()[0]) for ax in fig.axes for c in ax.collections}
    assert not spikes & set().union(*colors.values())


def test_histogram_zero_bin_holds_only_nonzero_weights_and_the_count_is_in_the_title(seeded):
    from decaylab.lab.figures_runs import fig_histograms
    fig = fig_histograms(seeded)
    run = next(r for r in seeded["runs"] if r["name"] == "l1-s0")
    hist = run["final"]["histogram"]
    ax = next(ax for ax in fig.axes if ax.get_title().startswith("l1-s0"))
    heights = sum(p.get_height() for p in ax.patches)
    assert heights == sum(hist["counts"]) - hist["exact_zeros"] > 0
    assert f"exact zeros: {hist['exact_zeros']:,}" in ax.get_title() and not ax.texts  # nothing printed over bars


def test_layer_sparsity_axis_fits_the_data_and_zero_bars_have_no_label(seeded):
    from decaylab.lab.figures_runs import fig_layer_sparsity
    fig = fig_layer_sparsity(seeded)
    ax = fig.axes[0]
    tops = [p.get_height() for p in ax.patches]
    assert 1.0 <= ax.get_ylim()[1] <= 1.5 * max(tops) + 1.0 and max(tops) > 1  # in %, not a 0-1 axis
    assert len(ax.patches) == 3 * 2  # one bar per penalty and layer, not per seed
    labels = [t.get_text() for t in ax.texts]
    assert "0.0%" not in labels and "0%" not in labels
    assert any("no exact zeros" in t.get_text() for t in ax.get_legend().get_texts())


def test_sparsity_over_time_has_one_legend_entry_per_penalty(seeded):
    from decaylab.lab.figures_runs import fig_sparsity_over_time
    texts = [t.get_text() for t in fig_sparsity_over_time(seeded).axes[0].get_legend().get_texts()]
    assert texts == ["none", "l2", "l1"]


def test_compare_sweeps_take_their_penalty_colour(seeded):
    from decaylab.lab.figures_runs import penalty_colors
    assert penalty_colors(seeded) == {"none": "C0", "l2": "C1", "l1": "C2"}
    assert set(report_figures(seeded)) >= {"curves", "histograms", "layer-sparsity"}


def _layer_label_boxes(n_runs: int, n_layers: int, value: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    layers = {f"layers.{j}": {"numel": 100, "zeros": 100, "zero_fraction": value} for j in range(n_layers)}
    runs = [{"name": f"run{i}", "dir": f"run{i}", "spec": {}, "metrics": [], "final": {"layers": layers}}
            for i in range(n_runs)]
    fig = figures_runs.fig_layer_sparsity({"runs": runs, "data": {}})
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    ax = fig.axes[0]
    boxes = [t.get_window_extent(canvas.get_renderer()) for t in ax.texts if t.get_text()]
    return boxes, ax.get_window_extent(canvas.get_renderer())


@pytest.mark.parametrize("n_runs, n_layers", [(2, 2), (3, 3), (3, 5), (6, 3), (20, 5)])
def test_layer_sparsity_labels_never_overlap(n_runs, n_layers):
    boxes, axes = _layer_label_boxes(n_runs, n_layers, 1.0)  # the widest label, "100%", everywhere
    assert len(boxes) == n_runs * n_layers
    assert not [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]
    assert all(b.y1 <= axes.y1 + 0.5 for b in boxes)  # inside the plot, not over the title
