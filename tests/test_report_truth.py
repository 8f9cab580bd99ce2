"""Issue #14: report figures that tell the truth (one test per item a test can check)."""

from __future__ import annotations

import re

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from decaylab.lab import figures_sweep as figures
# private: _page_html assembles the page without rendering its figures (build_report renders all)
from decaylab.lab.report import _page_html, figures as report_figures, load_run_folder
from report_fixtures import make_run_folder

pytest.importorskip("matplotlib")


def _point(a, v, *, zeros=0.3, stopped=False, nonzero=None, lr=1e-3):
    return {"alpha": a, "lr": lr, "val_acc": v, "val_acc_sd": None, "val_acc_se": 0.01, "test_acc": v - 0.01,
            "test_acc_sd": None, "gap": 0.05, "zeros": zeros, "layer_norms": {"fc1": 1.0, "fc2": 2.0},
            "nonzero_params": nonzero if nonzero is not None else int(5000 * (1 - zeros)), "n_params": 5000,
            "stopped_early": stopped, "epochs": 15 if stopped else 30}


def _sweep(points, best, one_se):
    return {"chosen": {"best": best, "one_se": one_se}, "chosen_lr": {"best": 1e-3}, "seeds": 1, "points": points}


SW = _sweep([_point(0.1, 0.80, zeros=0.1), _point(0.3, 0.83, zeros=0.3), _point(1.0, 0.82, zeros=0.5, stopped=True),
             _point(3.0, 0.75, zeros=0.6, stopped=True)], best=0.3, one_se=0.3)


def _lines_at(ax, x):
    return [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [x, x]]


# -- the regularization path ------------------------------------------------------------------
def test_path_has_two_rows_of_panels_each_with_a_y_label():
    fig = figures.fig_lambda([("l1", SW)])
    axes = fig.axes[:4]
    assert len({round(ax.get_position().y0, 2) for ax in axes}) == 2
    assert all(ax.get_ylabel() for ax in axes), [ax.get_ylabel() for ax in axes]


def test_path_one_se_line_has_its_own_style_and_legend_entry_when_it_equals_best():
    fig = figures.fig_lambda([("l1", SW)])
    best, one_se = _lines_at(fig.axes[0], 0.3)
    assert (best.get_linestyle(), best.get_linewidth()) != (one_se.get_linestyle(), one_se.get_linewidth())
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("best λ = 0.3" in t for t in texts) and any("one-SE λ = 0.3" in t for t in texts)


def test_path_never_joins_stopped_points_to_finished_ones():
    fig = figures.fig_lambda([("l1", SW)])
    for ax in fig.axes[:4]:
        for ln in ax.get_lines():
            assert not {1.0, 3.0} & set(map(float, ln.get_xdata())) or len(ln.get_xdata()) == 2, ax.get_title()
    hollow = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert sorted(float(x) for c in hollow for x, _ in c.get_offsets()) == [1.0, 1.0, 3.0, 3.0]  # val and test
    assert any("stopped early (epoch 15)" in t.get_text() for t in fig.legends[0].get_texts())


# -- the Pareto figure ----------------------------------------------------------------------------
def test_pareto_leaves_out_a_sweep_without_exact_zeros():
    l2 = _sweep([_point(a, 0.8, zeros=0.0, nonzero=5100) for a in (0.1, 1.0)], 0.1, 0.1)
    assert figures.fig_pareto([("l2", l2)]) is None
    fig = figures.fig_pareto([("l2", l2), ("l1", SW)])
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["l1 (over λ)", "l1: stopped early"]


def test_pareto_log_axis_over_less_than_a_decade_has_several_tick_labels():
    sw = _sweep([_point(a, 0.8, zeros=z, nonzero=n) for a, z, n in [(0.1, .1, 4400), (0.3, .5, 900), (1, .9, 420)]],
                0.1, 0.1)
    fig = figures.fig_pareto([("l1", sw)])
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    lo, hi = ax.get_xlim()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert len(shown) >= 2, shown


def test_pareto_curve_skips_stopped_points():
    fig = figures.fig_pareto([("l1", SW)])
    on_lines = {float(x) for ln in fig.axes[0].get_lines() for x in ln.get_xdata()}
    assert on_lines == {3500.0, 4500.0}  # the finished points only; 2500 and 2000 stopped


# -- the lr × λ heatmap ---------------------------------------------------------------------------
def test_heatmap_ink_contrasts_with_the_cell_and_stopped_cells_are_hatched():
    pts = [_point(a, v, lr=lr, stopped=(a == 1.0)) for lr in (1e-3, 3e-3) for a, v in ((0.1, 0.95), (1.0, 0.6))]
    fig = figures.fig_heatmap({"points": pts})
    ax = fig.axes[0]
    ink = {t.get_text().split("\n")[0]: to_hex(t.get_color()) for t in ax.texts}
    assert ink["0.950"] == "#000000" and ink["0.600"] == "#ffffff"  # yellow -> black, purple -> white
    assert min(t.get_fontsize() for t in ax.texts) >= 8
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == 2 and all("stopped" in t.get_text() for t in ax.texts if t.get_text().startswith("0.6"))


# -- per-run figures over seeds -------------------------------------------------------------------
@pytest.fixture
def seeded(tmp_path):
    return load_run_folder(make_run_folder(tmp_path / "run", seeds=3, label_noise=0.2))


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


def test_overlaid_histograms_name_the_exact_zeros_in_the_legend_not_over_the_curves(seeded):
    fig = figures.fig_overlaid_histograms(seeded["runs"])
    ax = fig.axes[0]
    assert not ax.texts and any("exact zeros" in t.get_text() for t in ax.get_legend().get_texts())


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


# -- captions and tables ----------------------------------------------------------------------------
def test_label_noise_is_explained_next_to_the_curves_and_the_tables(seeded, tmp_path):
    page = _page_html(seeded, {"curves": b"png"})
    curves = re.search(r'<figcaption>(.*?)</figcaption>', page).group(1)
    assert "flipped" in curves and "below test" in curves and "narrows" not in curves
    assert page.count("A negative gap is expected here") == 2  # selection and summary notes
    clean = load_run_folder(make_run_folder(tmp_path / "clean"))
    assert "flipped" not in _page_html(clean, {"curves": b"png"})


def test_selection_table_uses_the_summary_units(seeded):
    page = _page_html(seeded, {})
    table = re.search(r'<table id="selection">(.*?)</table>', page).group(1)
    cells = re.findall(r"<td>([^<]*)</td>", table)
    assert cells and all(c.endswith("%") for c in cells), cells
    assert not any("± +" in c or "± -" in c for c in cells)


def test_compare_sweeps_take_their_penalty_colour(seeded):
    from decaylab.lab.figures_runs import penalty_colors
    assert penalty_colors(seeded) == {"none": "C0", "l2": "C1", "l1": "C2"}
    assert set(report_figures(seeded)) >= {"curves", "histograms", "layer-sparsity"}


def test_sweep_choice_paragraph_uses_percent_like_the_summary(seeded):
    sw = {**SW, "describe": "L1(alpha=λ)", "chosen_test_acc": {"best": 0.8234, "one_se": 0.8234}}
    page = _page_html({**seeded, "compare": None, "sweep": sw}, {})
    assert "(test 82.3%)" in page
