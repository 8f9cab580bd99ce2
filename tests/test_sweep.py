"""decaylab sweep: stacked == alone, the choice rule, halving, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from decaylab.lab import choose, cli, config, grid, sweep, train
from decaylab.lab import path as sweep_path

TINY = ["data.n_train=150", "train.epochs=3", "model.hidden=[16]", "train.batch_size=50"]


def _sets(items):
    out = []
    for item in items:
        out += ["--set", item]
    return out


def _train_alone(tmp_path: Path, name: str, *extra: str) -> Path:
    args = ["train"] + _sets(TINY + ["penalty.name=\"p\""] + list(extra)) + ["--out", str(tmp_path), "--name", name, "--quiet"]
    assert cli.main(args) == 0
    return tmp_path / name / "runs"


def _sweep(tmp_path: Path, name: str, *args: str, sets=()) -> int:
    return cli.main(["sweep", *args, *_sets(TINY + list(sets)), "--out", str(tmp_path), "--name", name, "--quiet"])


def final_metrics(d: Path) -> dict:
    return json.loads((d / "final.json").read_text())


def _assert_same_run(stacked: Path, alone: Path) -> None:
    a, b = final_metrics(stacked), final_metrics(alone)
    for key in ("val_acc", "test_acc", "train_acc", "val_loss"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    wa, wb = (torch.load(d / "model.pt", weights_only=True) for d in (stacked, alone))
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("penalty,alphas,extra", [
    ("l2", "0.01,1", []),
    ("l1", "1e-4,3e-3", ["penalty.metric=\"adam\""]),
    ("l2", "0.01,1", ["penalty.mode=\"coupled\"", "train.optimizer=\"sgd\"", "train.lr=0.05"]),
    ("grouplasso", "1e-3,1e-2", ["penalty.params=\"first\"", "penalty.metric=\"adam\""]),
    ("l2sp", "0.1,1", []),
])
def test_each_stacked_point_equals_decaylab_train_of_it_alone(tmp_path, penalty, alphas, extra):
    assert _sweep(tmp_path, "s", "--penalty", penalty, "--alphas", alphas, "--full", sets=extra) == 0
    for a in alphas.split(","):
        alone = _train_alone(tmp_path, f"t{a}", f"penalty.penalty=\"{penalty}\"", f"penalty.alpha={a}", *extra)
        _assert_same_run(tmp_path / "s" / "runs" / f"a{float(a):g}", alone / "p")


@pytest.mark.parametrize("penalty", ["l2sp", "l1"])
def test_a_point_that_survives_halving_equals_decaylab_train_of_it_alone(tmp_path, penalty):
    # halving re-wraps the stack with the survivors: L2SP must still decay toward the
    # initial weights, not toward the weights at the rung
    assert _sweep(tmp_path, "s", "--penalty", penalty, "--alphas", "0.01,0.1,1,10", "--min-full", "2",
                  sets=["train.epochs=4"]) == 0
    sw = json.loads((tmp_path / "s" / "sweep.json").read_text())
    kept = [p for p in sw["points"] if not p["stopped_early"]]
    assert sw["method"]["halving_rungs"] == [2] and len(kept) == 2
    for p in kept:
        alone = _train_alone(tmp_path, f"t{p['alpha']:g}", f"penalty.penalty=\"{penalty}\"",
                             f"penalty.alpha={p['alpha']}", "train.epochs=4")
        _assert_same_run(tmp_path / "s" / "runs" / f"a{p['alpha']:g}", alone / "p")


def test_a_learning_rate_per_configuration_equals_training_at_that_rate(tmp_path):
    assert _sweep(tmp_path, "s", "--penalty", "l2", "--alphas", "0.1,1", "--lrs", "1e-3,3e-3", "--full") == 0
    alone = _train_alone(tmp_path, "t", "penalty.penalty=\"l2\"", "penalty.alpha=1.0", "train.lr=3e-3")
    _assert_same_run(tmp_path / "s" / "runs" / "a1-lr0.003", alone / "p")
    sw = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert {(p["alpha"], p["lr"]) for p in sw["points"]} == {(0.1, 1e-3), (1.0, 1e-3), (0.1, 3e-3), (1.0, 3e-3)}


def test_sweep_json_has_the_path_and_the_choice_on_validation(tmp_path):
    assert _sweep(tmp_path, "s", "--penalty", "l2", "--alphas", "1e-2:10:4", "--seeds", "2") == 0
    sw = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert sw["penalty"] == "l2" and sw["metric"] == "accuracy" and "over 2 seeds" in sw["se"]
    assert [p["alpha"] for p in sw["points"]] == [0.01, 0.1, 1.0, 10.0]
    for p in sw["points"]:
        for key in ("alpha", "lr", "val_acc", "val_acc_sd", "test_acc", "test_acc_sd", "zeros", "norm", "gap",
                    "stopped_early", "warm_started", "epochs"):
            assert key in p
        vals = [final_metrics(tmp_path / "s" / "runs" / r)["val_acc"] for r in p["runs"]]
        assert p["val_acc"] == pytest.approx(sum(vals) / 2) and len(p["runs"]) == 2
    full = [p for p in sw["points"] if not p["stopped_early"]]
    best = max(full, key=lambda p: p["val_acc"])
    assert sw["chosen"]["best"] == best["alpha"] and sw["chosen_test_acc"]["best"] == best["test_acc"]
    assert set(sw["chosen"]) == {"best", "one_se"} and set(sw["chosen_test_acc"]) == {"best", "one_se"}


def _pts(vals, se=0.02):
    return [{"alpha": a, "lr": 1e-3, "val_acc": v, "val_acc_se": se} for a, v in vals]


def test_one_se_is_the_strongest_alpha_within_one_se_of_the_best():
    pts = _pts([(0.01, 0.90), (0.1, 0.95), (1.0, 0.94), (3.0, 0.931), (10.0, 0.929), (30.0, 0.97 - 0.2)])
    r = sweep_path.choose(pts)
    assert r["best"]["alpha"] == 0.1
    assert r["one_se"]["alpha"] == 3.0  # 0.95 - 0.931 <= 0.02 < 0.95 - 0.929: the stronger side, not 0.01
    assert sweep_path.choose(_pts([(0.01, 0.90), (0.1, 0.95), (1.0, 0.94)], se=0.0))["one_se"]["alpha"] == 0.1


def test_one_se_skips_points_stopped_early_and_lower_is_better_for_regression():
    pts = _pts([(0.1, 0.95), (1.0, 0.99), (3.0, 0.945)])
    pts[1]["eligible"] = False
    assert sweep_path.choose(pts)["best"]["alpha"] == 0.1 and sweep_path.choose(pts)["one_se"]["alpha"] == 3.0
    mse = _pts([(0.1, 0.50), (1.0, 0.30), (3.0, 0.31), (10.0, 0.40)])
    r = sweep_path.choose(mse, higher_is_better=False)
    assert r["best"]["alpha"] == 1.0 and r["one_se"]["alpha"] == 3.0


def test_halving_stops_the_lower_half_and_says_so(tmp_path):
    assert _sweep(tmp_path, "s", "--penalty", "l2", "--alphas", "1e-3:100:8", "--min-full", "4",
                  sets=["train.epochs=4"]) == 0
    sw = json.loads((tmp_path / "s" / "sweep.json").read_text())
    stopped = [p for p in sw["points"] if p["stopped_early"]]
    assert len(stopped) == 4 and all(p["epochs"] == 2 and not p["eligible"] for p in stopped)
    assert sw["method"]["halving_rungs"] == [2]
    rows = (tmp_path / "s" / "runs" / f"a{stopped[0]['alpha']:g}" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [2]  # logged at the rung only (--log-every 0)


def test_grid_parsing():
    assert grid.parse_grid("1e-4:1:5") == [1e-4, 1e-3, 1e-2, 0.1, 1.0]
    assert grid.parse_grid("3") == [3.0] and grid.parse_grid("2:2:1") == [2.0]
    assert grid.halving_rungs(16, 40) == [5, 10, 20] and grid.halving_rungs(2, 40) == []
    assert grid.halving_rungs(16, 40, eta=4, min_full=1) == [2, 10]


@pytest.mark.parametrize("args,match", [
    (["--penalty", "l2", "--alphas", ""], "--alphas is empty"),
    (["--penalty", "l2", "--alphas", "0,1"], "finite and > 0"),
    (["--penalty", "l2", "--alphas=-1:1:3"], "finite and > 0"),
    (["--penalty", "l2", "--alphas", "nan,1"], "finite and > 0"),
    (["--penalty", "l2", "--alphas", "1:1e-3:4"], "reversed"),
    (["--penalty", "l2", "--alphas", "1,0.1"], "must increase"),
    (["--penalty", "l2", "--alphas", "a,b"], "not LO:HI:N"),
    (["--penalty", "l2", "--alphas", "1e-3:1:0"], "N=0 must be >= 1"),
    (["--penalty", "ridge", "--alphas", "1,2"], "--penalty 'ridge' is not one of"),
    (["--penalty", "none", "--alphas", "1,2"], "--penalty 'none' is not one of"),
    (["--penalty", "l2", "--alphas", "1,2", "--seeds", "0"], "--seeds 0 must be >= 1"),
    (["--penalty", "l2", "--alphas", "1,2", "--lrs", "0"], "--lrs '0'"),
    (["--penalty", "l2", "--alphas", "1,2", "--max-memory", "0.001"], "raise --max-memory"),
    (["--penalty", "l2", "--alphas", "1,2", "--set", "model.kind=\"cnn\""], "stacks MLPs"),
])
def test_bad_input_is_one_line_exit_2_and_no_run_folder(tmp_path, capsys, args, match):
    assert cli.main(["sweep", *args, "--out", str(tmp_path), "--name", "x", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "x").exists()


def test_a_stack_too_large_for_the_memory_allowed_is_chunked_and_says_so(tmp_path):
    cfg = config.resolve({}, TINY + ["train.epochs=1"], command="train")
    data = train.load_data(cfg)
    per = grid.memory_plan(cfg, data, 4, None)[1]
    spec = {"penalty": "l2", "alphas": [0.01, 0.1, 1.0, 10.0], "lrs": None, "seeds": 1, "full": True,
            "max_memory": 2 * per + 1}
    said = []
    run_dir = tmp_path / "c"
    run_dir.mkdir()
    sw = sweep.run_sweep(cfg, spec, run_dir, say=said.append)
    assert sw["method"]["per_stack"] == 2 and sw["method"]["stacks_per_seed"] == 2
    assert "stacks of 2" in said[0]
    assert {p["alpha"] for p in sw["points"]} == set(spec["alphas"])


@pytest.mark.slow
def test_compare_chooses_alpha_on_validation_and_reports_mean_sd_over_seeds(tmp_path):
    args = ["compare", *_sets(TINY + ["seeds=2", "runs.decoupled.alphas=\"0.01:10:4\""]), "--only", "none,decoupled",
            "--out", str(tmp_path), "--name", "c", "--quiet"]
    assert cli.main(args) == 0
    d = tmp_path / "c"
    result = json.loads((d / "compare.json").read_text())
    sw = json.loads((d / "sweeps" / "decoupled" / "sweep.json").read_text())
    rows = {r["name"]: r for r in result["runs"]}
    assert rows["decoupled"]["alpha"] == sw["chosen"]["best"]
    assert rows["decoupled"]["chosen"]["grid"] == [0.01, 0.1, 1.0, 10.0]
    vals = [final_metrics(d / "runs" / f"decoupled-s{s}")["val_acc"] for s in (0, 1)]
    assert rows["decoupled"]["val_acc"][0] == pytest.approx(sum(vals) / 2)
    assert rows["decoupled"]["val_acc"][1] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
    assert len(result["verdicts"]) == 1 and "no penalty" in result["verdicts"][0]
    # the verdict speaks the tables' unit: accuracy in %, differences in percentage points
    diff = rows["decoupled"]["test_acc"][0] - rows["none"]["test_acc"][0]
    assert f"test accuracy {100 * diff:+.1f} points" in result["verdicts"][0]
    table = choose.markdown(result)
    row = next(line for line in table.splitlines() if line.startswith("| decoupled "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3].startswith(f"{rows['decoupled']['test_acc'][0]:.1%}") and all(c.endswith("%") for c in cells[2:])
    html = (d / "report.html").read_text()
    assert "Chosen on validation, mean ± sd over 2 seeds" in html and 'data-figure="lambda-path"' in html


def test_sweep_report_shows_the_path_and_the_choice(tmp_path):
    assert _sweep(tmp_path, "s", "--penalty", "l1", "--alphas", "1e-4,1e-3,1e-2", "--lrs", "1e-3,3e-3",
                  "--full", sets=["train.epochs=2", "penalty.metric=\"adam\""]) == 0
    html = (tmp_path / "s" / "report.html").read_text()
    for fig in ("lambda-path", "pareto", "heatmap"):
        assert f'data-figure="{fig}"' in html
    assert 'data-figure="curves"' not in html and "best λ =" in html


@pytest.mark.parametrize("sets,match", [
    (["runs.none.alphas=\"1,2\""], "has no penalty"),
    (["runs.decoupled.alphas=\"2,1\""], "must increase"),
    (["seeds=0"], "'seeds' = 0 must be >= 1"),
])
def test_bad_compare_selection_input(tmp_path, capsys, sets, match):
    args = ["compare", *_sets(TINY + sets), "--out", str(tmp_path), "--name", "x", "--quiet"]
    assert cli.main(args) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_resume_after_a_kill_recomputes_nothing_finished(tmp_path, monkeypatch):
    args = ("--penalty", "l2", "--alphas", "1e-3:10:4", "--seeds", "2")
    assert _sweep(tmp_path, "ref", *args) == 0
    real, calls = sweep.train_stack, []

    def killed_in_second_seed(cfg, data, run, points, *rest, **kw):
        calls.append([p["name"] for p in points])
        if points[0]["seed"] == 1:
            raise KeyboardInterrupt
        return real(cfg, data, run, points, *rest, **kw)

    monkeypatch.setattr(sweep, "train_stack", killed_in_second_seed)
    assert _sweep(tmp_path, "k", *args) == 130
    d = tmp_path / "k"
    assert json.loads((d / "status.json").read_text())["state"] == "interrupted"
    done = {p.parent.name: p.read_bytes() for p in (d / "runs").glob("*/final.json")}
    assert set(done) == {"a0.001-s0", "a0.0215-s0", "a0.464-s0", "a10-s0"}
    calls.clear()
    monkeypatch.setattr(sweep, "train_stack", lambda *a, **kw: (calls.append([p["name"] for p in a[3]]), real(*a, **kw))[1])
    assert cli.main(["resume", str(d), "--quiet"]) == 0
    assert calls == [["a0.001-s1", "a0.0215-s1", "a0.464-s1", "a10-s1"]]  # only the unfinished seed
    assert {n: (d / "runs" / n / "final.json").read_bytes() for n in done} == done  # untouched
    ref = json.loads((tmp_path / "ref" / "sweep.json").read_text())
    got = json.loads((d / "sweep.json").read_text())
    assert got["chosen"] == ref["chosen"]
    for a, b in zip(got["points"], ref["points"]):
        assert (a["alpha"], a["epochs"], a["stopped_early"]) == (b["alpha"], b["epochs"], b["stopped_early"])
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-6)


def _ctrl_c_when_logging_epoch(monkeypatch, epoch: int):
    """Make the sweep's logging of ``epoch`` raise KeyboardInterrupt (as Ctrl-C); returns
    the real ``_log_epoch`` to put back."""
    # private: the lab has no public hook to interrupt a chosen epoch
    real = sweep._log_epoch

    def ctrl_c(stack, data, at, *rest):
        if at == epoch:
            raise KeyboardInterrupt
        return real(stack, data, at, *rest)

    monkeypatch.setattr(sweep, "_log_epoch", ctrl_c)
    return real


@pytest.mark.slow
def test_resume_in_the_middle_of_halving_decides_as_an_uninterrupted_sweep(tmp_path, monkeypatch):
    args = ("--penalty", "l2", "--alphas", "1e-3:100:8")
    sets = ["train.epochs=8"]  # rungs at epochs 2 and 4: 8 -> 4 -> 2
    assert _sweep(tmp_path, "ref", *args, sets=sets) == 0
    real = _ctrl_c_when_logging_epoch(monkeypatch, 4)
    assert _sweep(tmp_path, "k", *args, sets=sets) == 130
    d = tmp_path / "k"
    assert len(list((d / "runs").glob("*/final.json"))) == 4  # stopped at the first rung
    monkeypatch.setattr(sweep, "_log_epoch", real)
    assert cli.main(["resume", str(d), "--quiet"]) == 0
    ref = json.loads((tmp_path / "ref" / "sweep.json").read_text())
    got = json.loads((d / "sweep.json").read_text())
    assert [(p["epochs"], p["stopped_early"]) for p in got["points"]] == \
        [(p["epochs"], p["stopped_early"]) for p in ref["points"]]
    assert got["chosen"] == ref["chosen"]


def test_resume_continues_a_stack_from_its_last_epoch_checkpoint(tmp_path, monkeypatch):
    from decaylab.lab import loop

    args = ("--penalty", "l2sp", "--alphas", "0.01,0.1,1,10", "--min-full", "2")
    sets = ["train.epochs=4"]  # logged at the rung (2) and the last epoch
    assert _sweep(tmp_path, "ref", *args, sets=sets) == 0
    real_log, real_epoch, epochs = _ctrl_c_when_logging_epoch(monkeypatch, 4), loop.epoch, []
    assert _sweep(tmp_path, "k", *args, sets=sets) == 130
    d = tmp_path / "k"
    assert (d / "runs" / "a0.01" / "checkpoint.pt").is_file()  # the stack's, after epoch 3
    monkeypatch.setattr(sweep, "_log_epoch", real_log)
    monkeypatch.setattr(loop, "epoch", lambda t, *a, **kw: (epochs.append(t.epoch + 1), real_epoch(t, *a, **kw))[1])
    assert cli.main(["resume", str(d), "--quiet"]) == 0
    assert epochs == [4]  # epochs 1-3 were not trained again
    assert not list(d.glob("runs/*/checkpoint.pt"))
    for run in (tmp_path / "ref" / "runs").iterdir():
        got, want = d / "runs" / run.name, run
        drop = lambda r: {k: v for k, v in r.items() if k not in ("epoch_time", "mean_epoch_time")}  # noqa: E731
        rows = [[drop(json.loads(line)) for line in (x / "metrics.jsonl").read_text().splitlines()] for x in (got, want)]
        assert rows[0] == rows[1], run.name
        assert drop(final_metrics(got)) == drop(final_metrics(want)), run.name
        wa, wb = (torch.load(x / "model.pt", weights_only=True) for x in (got, want))
        assert all(torch.equal(wa[k], wb[k]) for k in wb), run.name
