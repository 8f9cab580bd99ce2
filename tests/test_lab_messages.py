"""What the lab tells a user in the corners (issue #14 §5): Ctrl-C hints in every command,
--print-config that only prints, help text written for each command."""

from __future__ import annotations

import json
import tomllib

import pytest

from decaylab.lab import cli, config

TINY = ["data.n_train=150", "train.epochs=2", "model.hidden=[8]", "train.batch_size=50"]
SELECT = TINY + ["select.n_alphas=2", "select.path_epochs=1", "select.refit_epochs=1"]


def _args(command, tmp_path, items, name="x", extra=()):
    args = [command, "--out", str(tmp_path), "--name", name, "--quiet", *extra]
    for item in items:
        args += ["--set", item]
    return args


def test_ctrl_c_in_a_sweep_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    from decaylab.lab import sweep

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "_log_epoch", ctrl_c)
    assert cli.main(_args("sweep", tmp_path, TINY, extra=["--penalty", "l2", "--alphas", "0.01,1"])) == 130
    assert f"interrupted: continue with: decaylab resume {tmp_path / 'x'}" in capsys.readouterr().err
    assert json.loads((tmp_path / "x" / "status.json").read_text())["state"] == "interrupted"


def test_ctrl_c_in_select_says_it_is_run_again_not_resumed(tmp_path, monkeypatch, capsys):
    from decaylab.lab import select

    # private: the lab has no public hook to interrupt a chosen fit
    real, calls = select._fit, []

    def fit_then_ctrl_c(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(select, "_fit", fit_then_ctrl_c)
    assert cli.main(_args("select", tmp_path, SELECT)) == 130
    err = capsys.readouterr().err
    assert f"interrupted: '{tmp_path / 'x'}' is incomplete and cannot be resumed; run the command again" in err
    assert json.loads((tmp_path / "x" / "status.json").read_text())["state"] == "interrupted"


def test_select_print_config_prints_and_trains_nothing(tmp_path, capsys, monkeypatch):
    from decaylab.lab import select

    monkeypatch.setattr(select, "select_features", lambda *a, **k: pytest.fail("select ran"))
    assert cli.main(_args("select", tmp_path, SELECT, extra=["--print-config"])) == 0
    assert not (tmp_path / "x").exists()
    cfg = config.resolve({}, SELECT, command="select")
    cfg["out"], cfg["name"] = str(tmp_path), "x"
    assert config.resolve(tomllib.loads(capsys.readouterr().out), command="select") == cfg


@pytest.mark.parametrize("command, says, not_says", [
    ("train", ["[penalty] table", "penalty.alpha"], ["six penalties", "--only", "runs.l1"]),
    ("select", ["[select]", "data.path"], ["six penalties", "--only", "runs.l1"]),
    ("compare", ["[[runs]]", "--only", "runs.l1.alpha"], ["[penalty]"]),
])
def test_help_is_written_for_each_command(capsys, command, says, not_says):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(s in text for s in says), text
    assert not any(s in text for s in not_says), text


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_are_written_with_the_process_umask(tmp_path, monkeypatch, umask):
    import os

    from decaylab.lab import train

    real, lines = train.runfolder.Run.append_metrics, []  # none finishes (model.pt), then a
    monkeypatch.setattr(train.runfolder.Run, "append_metrics",  # Ctrl-C in l1 leaves checkpoint.pt
                        lambda self, row: (real(self, row), lines.append(1), len(lines) == 3 and train.request_stop()))
    old = os.umask(umask)
    try:
        assert cli.main(_args("compare", tmp_path, TINY, extra=["--only", "none,l1"])) == 130
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "x").rglob("*") if p.is_file() and p.name != ".lock"]
    names = {p.name for p in files}
    assert {"config.json", "status.json", "metrics.jsonl", "checkpoint.pt", "model.pt", "report.html"} <= names
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


def test_piping_into_head_ends_quietly(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    for name in ("a", "b"):
        assert cli.main(_args("train", tmp_path, TINY + ["penalty.penalty=\"l1\""], name=name)) == 0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "decaylab.lab.cli", "report", str(tmp_path / "a"), str(tmp_path / "b")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"report: ")
    proc.stdout.close()  # as `| head -1` does after its line; the second report line has no reader
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert err == "", err


@pytest.mark.parametrize("flag, value", [("--alphas", "-1e-3,1e-2"), ("--alphas", "-1:1:3"), ("--lrs", "-.1,1")])
def test_a_negative_grid_value_gets_the_grids_own_error(tmp_path, capsys, flag, value):
    argv = ["sweep", "--penalty", "l1", "--alphas", "1e-3,1e-2", flag, value, "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"decaylab: error: {flag} {value!r} has -" in err and "must be finite and > 0" in err, err
    assert not any(tmp_path.iterdir())


def test_markdown_of_several_folders_says_which_rows_are_whose(tmp_path, capsys):
    for name, noise in (("a", "0"), ("b", "0.3")):  # the same run name, "l2", in both folders
        assert cli.main(_args("train", tmp_path, TINY + ['penalty.penalty="l2"', f"data.label_noise={noise}"],
                              name=name)) == 0
    capsys.readouterr()
    assert cli.main(["report", "--markdown", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split("|")[1].strip() for line in lines if line.startswith("| ") and not line.startswith(("| run", "| ---"))]
    assert rows == [f"**{tmp_path / 'a'}**", "l2", f"**{tmp_path / 'b'}**", "l2"]
    assert any(f"`{tmp_path / 'a'}/l2`" in line or f"`{tmp_path / 'b'}/l2`" in line for line in lines)


def test_a_sweep_over_learning_rates_shows_the_chosen_one(tmp_path, capsys):
    argv = ["sweep", "--penalty", "l2", "--alphas", "0.01,1", "--lrs", "1e-3,1e-2", "--full", "--out", str(tmp_path),
            "--name", "s"]
    for item in TINY:
        argv += ["--set", item]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    sw = json.loads((tmp_path / "s" / "sweep.json").read_text())
    best = f"best    alpha={sw['chosen']['best']:g}  lr={sw['chosen_lr']['best']:g}  val"
    assert best in out, out
    assert cli.main(["report", "--markdown", str(tmp_path / "s")]) == 0
    assert f"best alpha={sw['chosen']['best']:g}, lr={sw['chosen_lr']['best']:g}; one_se alpha=" in capsys.readouterr().out
