"""decaylab sweep --backend ray: refusals without Ray or a cluster, and end to end on a local Ray."""

from __future__ import annotations

import json
import sys

import pytest

from decaylab.lab import cli

TINY = ["data.n_train=150", "train.epochs=2", "model.hidden=[16]", "train.batch_size=50"]


def _args(tmp_path, *extra):
    out = ["sweep", "--penalty", "l2", "--alphas", "0.01,0.1,1,10", "--backend", "ray", *extra]
    for item in TINY:
        out += ["--set", item]
    return out + ["--out", str(tmp_path), "--name", "r", "--quiet"]


def test_without_ray_it_exits_2_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert cli.main(_args(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "decaylab[ray]"' in err
    assert not (tmp_path / "r").exists()


@pytest.mark.extras
def test_an_unreachable_address_exits_2_before_any_folder(tmp_path, capsys):
    pytest.importorskip("ray.tune")
    assert cli.main(_args(tmp_path, "--address", "127.0.0.1:1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot reach 127.0.0.1:1" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.extras
def test_ray_sweep_end_to_end_matches_the_local_sweep(tmp_path, monkeypatch):
    pytest.importorskip("ray.tune")
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # a local Ray with 2 CPUs
    assert cli.main(_args(tmp_path)) == 0
    ray_sw = json.loads((tmp_path / "r" / "sweep.json").read_text())
    assert ray_sw["method"]["backend"] == "ray" and ray_sw["method"]["trials"] == 2
    local = ["sweep", "--penalty", "l2", "--alphas", "0.01,0.1,1,10", "--full"]
    for item in TINY:
        local += ["--set", item]
    assert cli.main(local + ["--out", str(tmp_path), "--name", "l", "--quiet"]) == 0
    local_sw = json.loads((tmp_path / "l" / "sweep.json").read_text())
    for a, b in zip(ray_sw["points"], local_sw["points"]):
        assert a["alpha"] == b["alpha"] and a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-6)
    assert ray_sw["chosen"] == local_sw["chosen"]
    assert (tmp_path / "r" / "report.html").exists()
