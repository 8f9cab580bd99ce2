"""Tests for decaylab.lab.reference: the magnitude-pruning reference of a sweep (#7 item 6).
Its targets and ramp, real gradual magnitude pruning to the sweep points' exact zeros trained
inside a sweep or a compare and stored in sweep.json, resume after a kill in it, and bad
``pareto.*`` config refused in one line."""

from __future__ import annotations

import json

import pytest

from decaylab.lab import cli, recipe, reference
from decaylab.lab import train as train_mod

TINY = ["data.n_train=200", "train.epochs=2", "model.hidden=[16]", "train.batch_size=50", "penalty.metric=\"adam\""]
REF = ["pareto.reference=\"magnitude\""]


def _sets(items):
    return [x for item in items for x in ("--set", item)]


def _sweep(tmp_path, name, alphas, *sets, extra=()):
    return cli.main(["sweep", "--penalty", "l1", "--alphas", alphas, "--full", *extra, *_sets(TINY + list(sets)),
                     "--out", str(tmp_path), "--name", name, "--quiet"])


def _json(path):
    return json.loads(path.read_text())


# -- the targets and the pruning ramp --------------------------------------------------------------
def test_reference_targets_and_ramp():
    sw = {"chosen_lr": {"best": 1}, "points": [{"lr": 1, "zeros": z} for z in (0.01, 0.3333, 0.9999)]
          + [{"lr": 2, "zeros": 0.5}]}
    assert reference.targets(sw, []) == [0.333]  # at the chosen lr, 5 %..99.5 %, to 0.1 %
    assert reference.targets(sw, [0.9, 0.5, 0.9]) == [0.5, 0.9]
    assert [reference.ramp_epochs(e) for e in (1, 3, 28, 40)] == [(0, 1), (0, 2), (1, 15), (2, 22)]
    run = reference.make_run(0.9, {"train": {"batch_size": 50, "epochs": 28}}, 1000, "m")
    assert run["ramp_steps"] == [20, 300] and run["every"] == 2
    pen = recipe.make_penalty(run, None)
    assert (pen.target, pen.begin, pen.end, float(pen.alpha)) == (0.9, 20, 300, 0.0)  # alpha 0: plain GMP


# -- the reference curve is real gradual magnitude pruning, stored in sweep.json -----------------
def test_reference_prunes_to_the_sweep_points_exact_zeros(tmp_path):
    assert _sweep(tmp_path, "s", "1,3", *REF, "penalty.metric=\"lr\"", "train.lr=0.01") == 0  # ~44 %, ~96 % zeros
    d = tmp_path / "s"
    sw = _json(d / "sweep.json")
    ref = sw["reference"]
    want = sorted({round(p["zeros"], 3) for p in sw["points"] if 0.05 <= round(p["zeros"], 3) <= 0.995})
    assert want and ref["targets"] == want  # one reference model per sweep point of that sparsity
    assert [p["target"] for p in ref["points"]] == want
    for p in ref["points"]:
        (name,) = p["runs"]
        final = _json(d / "runs" / name / "final.json")
        spec = _json(d / "runs" / name / "spec.json")
        assert spec["penalty"] == "magnitude" and spec["target"] == p["target"]
        assert final["zero_fraction"] == pytest.approx(p["target"], abs=0.01)  # the asked zeros, within a point
        assert (p["val_acc"], p["test_acc"], p["nonzero_params"]) == \
            (final["val_acc"], final["test_acc"], final["nonzero_params"])
        assert final["epochs"] == 2  # the sweep's epochs
    page = (d / "report.html").read_text()
    assert 'data-figure="pareto"' in page and 'class="reference"' in page and "magnitude pruning" in page


def test_asked_targets_over_seeds_give_mean_and_sd(tmp_path):
    assert _sweep(tmp_path, "s", "1e-4,1e-3", *REF, "pareto.targets=[0.5, 0.9]", extra=("--seeds", "2")) == 0
    d = tmp_path / "s"
    ref = _json(d / "sweep.json")["reference"]
    assert [p["target"] for p in ref["points"]] == [0.5, 0.9] and ref["asked"] == [0.5, 0.9]
    for p in ref["points"]:
        finals = [_json(d / "runs" / name / "final.json") for name in p["runs"]]
        assert p["runs"] == [f"magnitude-z{p['target']:g}-s{s}" for s in (0, 1)]
        assert all(f["zero_fraction"] == pytest.approx(p["target"], abs=0.01) for f in finals)
        accs = [f["test_acc"] for f in finals]
        assert p["test_acc"] == pytest.approx(sum(accs) / 2)
        assert p["test_acc_sd"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)


def test_a_sweep_with_no_sparse_point_gets_a_note_not_a_curve(tmp_path):
    assert cli.main(["sweep", "--penalty", "l2", "--alphas", "0.01,0.1", "--full", *_sets(TINY + REF),
                     "--out", str(tmp_path), "--name", "s", "--quiet"]) == 0
    ref = _json(tmp_path / "s" / "sweep.json")["reference"]
    assert ref["points"] == [] and "pareto.targets" in ref["note"]
    assert not list((tmp_path / "s" / "runs").glob("magnitude-*"))


@pytest.mark.slow
def test_compare_with_alphas_trains_the_reference_inside_its_sweep(tmp_path):
    sets = [s for s in TINY if not s.startswith("penalty.")] + REF + ["pareto.targets=[0.5]",
                                                                       "runs.l1.alphas=\"1e-4,1e-3\""]
    assert cli.main(["compare", *_sets(sets), "--only", "none,l1", "--out", str(tmp_path), "--name", "c",
                     "--quiet"]) == 0
    d = tmp_path / "c" / "sweeps" / "l1"
    (p,) = _json(d / "sweep.json")["reference"]["points"]
    assert p["target"] == 0.5 and _json(d / "runs" / "magnitude-z0.5" / "final.json")["epochs"] == 2
    page = (tmp_path / "c" / "report.html").read_text()
    assert "Magnitude-pruning reference to the l1 sweep" in page and 'data-figure="pareto"' in page


def test_without_the_key_a_sweep_trains_no_reference(tmp_path):
    assert _sweep(tmp_path, "s", "1e-4,1e-3") == 0
    assert "reference" not in _json(tmp_path / "s" / "sweep.json")
    assert not list((tmp_path / "s" / "runs").glob("magnitude-*"))
    assert 'class="reference"' not in (tmp_path / "s" / "report.html").read_text()


def test_resume_after_a_kill_in_the_reference_keeps_what_finished(tmp_path, monkeypatch):
    args = ("1e-4,1e-3", *REF, "pareto.targets=[0.3, 0.6]")
    real, calls = train_mod.train_run, []

    def killed_at_the_second(cfg, data, run, run_dir, *rest, **kw):
        calls.append(run["name"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, data, run, run_dir, *rest, **kw)

    monkeypatch.setattr(train_mod, "train_run", killed_at_the_second)
    assert _sweep(tmp_path, "k", *args) == 130
    d = tmp_path / "k"
    assert _json(d / "status.json")["state"] == "interrupted"
    first = (d / "runs" / "magnitude-z0.3" / "final.json").read_bytes()
    monkeypatch.setattr(train_mod, "train_run", real)
    assert cli.main(["resume", str(d), "--quiet"]) == 0
    assert (d / "runs" / "magnitude-z0.3" / "final.json").read_bytes() == first  # kept, not retrained
    ref = _json(d / "sweep.json")["reference"]
    assert [p["target"] for p in ref["points"]] == [0.3, 0.6]
    assert _json(d / "runs" / "magnitude-z0.6" / "final.json")["zero_fraction"] == pytest.approx(0.6, abs=0.01)


# -- bad input: one line, exit 2, no folder --------------------------------------------------------
@pytest.mark.parametrize("command,sets,match", [
    ("sweep", ["pareto.reference=\"prune\""], "'pareto.reference' = 'prune' is not one of"),
    ("sweep", REF + ["pareto.targets=[0.5, 1.0]"], "in (0, 1)"),
    ("sweep", REF + ["pareto.targets=[\"a\"]"], "'pareto.targets' must be a list"),
    ("sweep-ray", REF, "local backend only"),
    ("compare", REF, "has no sweep"),
    ("train", REF + ["penalty.penalty=\"l1\""], "has no sweep"),
])
def test_bad_reference_config_exits_2_with_one_line(tmp_path, capsys, command, sets, match):
    if command.startswith("sweep"):
        extra = ("--backend", "ray") if command == "sweep-ray" else ()
        rc = _sweep(tmp_path, "x", "1e-3,1e-2", *sets, extra=extra)
    else:
        tiny = [s for s in TINY if not s.startswith("penalty.")]
        rc = cli.main([command, *_sets(tiny + sets), "--out", str(tmp_path), "--name", "x", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
