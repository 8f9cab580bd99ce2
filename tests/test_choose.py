"""compare's choice of λ: every grid point trained the full schedule (issue #14)."""

from __future__ import annotations

import json

import pytest

from decaylab.lab import choose, cli, config, grid, sweep

TINY = ["data.n_train=150", "train.epochs=3", "model.hidden=[16]", "train.batch_size=50"]
GRID = "0.01:10:4"


def _sets(items):
    return [x for item in items for x in ("--set", item)]


def _late_bloomer(monkeypatch):
    """Validation accuracy scripted per (λ, epoch): the strongest λ lags until the last epoch,
    then wins (as a strong penalty does once a weak one has memorized label noise)."""
    # private: the lab has no public hook to script an epoch's metrics
    real = sweep._log_epoch

    def scripted(stack, data, epoch, *args):
        rows = real(stack, data, epoch, *args)
        for p, row in zip(stack.points, rows):
            row["val_acc"] = (0.5 if epoch < 3 else 0.9) if p["alpha"] == 10 else 0.7 + p["alpha"] / 100
        return rows

    monkeypatch.setattr(sweep, "_log_epoch", scripted)


def test_the_main_job_choice_trains_every_point_the_full_schedule():
    cfg = config.resolve(config.load_file("experiments/main.toml"), [], command="compare")
    for r in (r for r in cfg["runs"] if r.get("alphas")):
        spec = choose.choice_spec(cfg, r)
        assert spec["full"] and spec["alphas"] == grid.parse_grid(r["alphas"])


def test_a_strength_that_wins_late_is_chosen_where_halving_cut_it(tmp_path, monkeypatch):
    _late_bloomer(monkeypatch)
    cfg = config.resolve({}, TINY + [f"runs.decoupled.alphas=\"{GRID}\""], command="compare")
    r = next(r for r in cfg["runs"] if r["name"] == "decoupled")
    picks = {}
    for name, full in (("halving", False), ("compare", None)):
        d = tmp_path / name
        d.mkdir()
        spec = choose.choice_spec(cfg, r) if full is None else {**choose.choice_spec(cfg, r), "full": False}
        picks[name] = sweep.run_sweep({**cfg, "runs": [r]}, spec, d, say=lambda s: None)["chosen"]["best"]
    assert picks == {"halving": 1.0, "compare": 10.0}  # the early rung (epoch 1) cut λ = 10


def test_compare_chooses_from_finished_points_only(tmp_path, monkeypatch):
    _late_bloomer(monkeypatch)
    args = ["compare", *_sets(TINY + [f"runs.decoupled.alphas=\"{GRID}\""]), "--only", "none,decoupled",
            "--out", str(tmp_path), "--name", "c", "--quiet"]
    assert cli.main(args) == 0
    sw = json.loads((tmp_path / "c" / "sweeps" / "decoupled" / "sweep.json").read_text())
    assert [p["epochs"] for p in sw["points"]] == [3] * 4
    assert not any(p["stopped_early"] for p in sw["points"]) and sw["method"]["halving_rungs"] == []
    result = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert {r["name"]: r["alpha"] for r in result["runs"]}["decoupled"] == pytest.approx(10.0)
