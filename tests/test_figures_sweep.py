"""Tests for decaylab.lab.figures_sweep: the figures of a sweep tell the truth. The
regularization path, the Pareto figure (with its magnitude-pruning reference), the lr × λ
heatmap, the overlaid weight histograms and the compaction figure, drawn from constructed
sweep.json / compact.json contents (``report_fixtures``) or the ``seeded`` run folder."""

from __future__ import annotations

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from decaylab.lab import figures_sweep as figures
from report_fixtures import SWEEP, compact_result, sweep_of, sweep_point


def _lines_at(ax, x):
    return [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [x, x]]


# -- the regularization path ------------------------------------------------------------------
def test_path_has_two_rows_of_panels_each_with_a_y_label():
    fig = figures.fig_lambda([("l1", SWEEP)])
    axes = fig.axes[:4]
    assert len({round(ax.get_position().y0, 2) for ax in axes}) == 2
    assert all(ax.get_ylabel() for ax in axes), [ax.get_ylabel() for ax in axes]


def test_path_one_se_line_has_its_own_style_and_legend_entry_when_it_equals_best():
    fig = figures.fig_lambda([("l1", SWEEP)])
    best, one_se = _lines_at(fig.axes[0], 0.3)
    assert (best.get_linestyle(), best.get_linewidth()) != (one_se.get_linestyle(), one_se.get_linewidth())
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("best λ = 0.3" in t for t in texts) and any("one-SE λ = 0.3" in t for t in texts)


def test_path_never_joins_stopped_points_to_finished_ones():
    fig = figures.fig_lambda([("l1", SWEEP)])
    for ax in fig.axes[:4]:
        for ln in ax.get_lines():
            assert not {1.0, 3.0} & set(map(float, ln.get_xdata())) or len(ln.get_xdata()) == 2, ax.get_title()
    hollow = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert sorted(float(x) for c in hollow for x, _ in c.get_offsets()) == [1.0, 1.0, 3.0, 3.0]  # val and test
    assert any("stopped early (epoch 15)" in t.get_text() for t in fig.legends[0].get_texts())


# -- the Pareto figure ----------------------------------------------------------------------------
def test_pareto_leaves_out_a_sweep_without_exact_zeros():
    l2 = sweep_of([sweep_point(a, 0.8, zeros=0.0, nonzero=5100) for a in (0.1, 1.0)], 0.1, 0.1)
    assert figures.fig_pareto([("l2", l2)]) is None
    fig = figures.fig_pareto([("l2", l2), ("l1", SWEEP)])
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["l1 (over λ)", "l1: stopped early"]


def test_pareto_log_axis_over_less_than_a_decade_has_several_tick_labels():
    sw = sweep_of([sweep_point(a, 0.8, zeros=z, nonzero=n) for a, z, n in [(0.1, .1, 4400), (0.3, .5, 900),
                                                                           (1, .9, 420)]], 0.1, 0.1)
    fig = figures.fig_pareto([("l1", sw)])
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    lo, hi = ax.get_xlim()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert len(shown) >= 2, shown


def test_pareto_curve_skips_stopped_points():
    fig = figures.fig_pareto([("l1", SWEEP)])
    on_lines = {float(x) for ln in fig.axes[0].get_lines() for x in ln.get_xdata()}
    assert on_lines == {3500.0, 4500.0}  # the finished points only; 2500 and 2000 stopped


def _ref_sweep(reference_points=None):
    pts = [{"alpha": a, "lr": 1e-3, "val_acc": v, "test_acc": v - 0.01, "nonzero_params": n, "n_params": 1000,
            "zeros": z, "stopped_early": False} for a, v, n, z in [(0.1, 0.9, 800, 0.2), (1.0, 0.8, 200, 0.8)]]
    sw = {"chosen_lr": {"best": 1e-3}, "points": pts, "metric": "accuracy"}
    if reference_points is not None:
        sw["reference"] = {"points": reference_points}
    return sw


def test_pareto_draws_the_reference_only_when_the_sweep_has_one():
    ref = [{"target": t, "val_acc": v, "val_acc_sd": 0.01, "test_acc": v, "test_acc_sd": 0.02,
            "nonzero_params": n, "n_params": 1000} for t, v, n in [(0.2, 0.91, 800), (0.8, 0.88, 200)]]
    with_ref = figures.fig_pareto([("l1", _ref_sweep(ref))])
    without = figures.fig_pareto([("l1", _ref_sweep())])
    for fig, labels in ((with_ref, ["l1 (over λ)", "magnitude pruning"]), (without, ["l1 (over λ)"])):
        val, test = fig.axes[:2]
        assert [t.get_text() for t in val.get_legend().get_texts()] == labels
        assert val.get_title().startswith("validation accuracy") and test.get_title().startswith("test accuracy")
    curves = {c.get_label(): (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata()))
              for c in with_ref.axes[1].containers}  # the test panel, sorted by size
    assert curves["l1 (over λ)"] == ([200, 800], [pytest.approx(0.79), pytest.approx(0.89)])
    assert curves["magnitude pruning"] == ([200, 800], [0.88, 0.91])


# -- the lr × λ heatmap ---------------------------------------------------------------------------
def test_heatmap_ink_contrasts_with_the_cell_and_stopped_cells_are_hatched():
    pts = [sweep_point(a, v, lr=lr, stopped=(a == 1.0)) for lr in (1e-3, 3e-3) for a, v in ((0.1, 0.95), (1.0, 0.6))]
    fig = figures.fig_heatmap({"points": pts})
    ax = fig.axes[0]
    ink = {t.get_text().split("\n")[0]: to_hex(t.get_color()) for t in ax.texts}
    assert ink["0.950"] == "#000000" and ink["0.600"] == "#ffffff"  # yellow -> black, purple -> white
    assert min(t.get_fontsize() for t in ax.texts) >= 8
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == 2 and all("stopped" in t.get_text() for t in ax.texts if t.get_text().startswith("0.6"))


# -- the overlaid weight histograms ---------------------------------------------------------------
def test_overlaid_histograms_name_the_exact_zeros_in_the_legend_not_over_the_curves(seeded):
    fig = figures.fig_overlaid_histograms(seeded["runs"])
    ax = fig.axes[0]
    assert not ax.texts and any("exact zeros" in t.get_text() for t in ax.get_legend().get_texts())


# -- the compaction figure ------------------------------------------------------------------------
def test_compaction_figure_bars_are_the_kept_units_and_the_times():
    runs = [{"name": "coupled", "compact": compact_result(list(range(40)), {"layers.0": [12, 16]})},
            {"name": "l2", "compact": {"compacted": False, "reason": "no zero group"}},
            {"name": "none", "compact": None}]
    fig = figures.fig_compaction(runs)
    units, times = fig.axes[:2]
    heights = [round(b.get_height()) for b in units.patches]
    assert heights == [64, 16, 40, 12]  # dense widths (inputs, layers.0), then the run's kept
    assert [t.get_text() for t in units.get_xticklabels()] == ["inputs", "layers.0"]
    assert sorted(round(b.get_width(), 6) for b in times.patches) == [0.5, 2.0]  # ms per batch
    assert [t.get_text() for t in times.get_yticklabels()] == ["coupled"]
    assert figures.fig_compaction(runs[1:]) is None
    old = {k: v for k, v in runs[0]["compact"].items() if not k.startswith("time_")}  # before absolute times
    times = figures.fig_compaction([{"name": "coupled", "compact": old}]).axes[1]
    assert times.get_xlabel() == "time relative to dense (CPU)"
    assert sorted(round(b.get_width(), 6) for b in times.patches) == [0.25, 1.0]
