"""Tests for decaylab.lab.console: what the lab prints on the terminal. The markdown table of
``decaylab report --markdown`` over one or several folders, and the chosen strength and
learning rate a sweep prints."""

from __future__ import annotations

import json

from decaylab.lab import cli

from conftest import TINY_CLI, cli_args

def test_markdown_of_several_folders_says_which_rows_are_whose(tmp_path, capsys):
    for name, noise in (("a", "0"), ("b", "0.3")):  # the same run name, "l2", in both folders
        assert cli.main(cli_args("train", tmp_path, TINY_CLI + ['penalty.penalty="l2"', f"data.label_noise={noise}"],
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
    for item in TINY_CLI:
        argv += ["--set", item]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    sw = json.loads((tmp_path / "s" / "sweep.json").read_text())
    best = f"best    alpha={sw['chosen']['best']:g}  lr={sw['chosen_lr']['best']:g}  val"
    assert best in out, out
    assert cli.main(["report", "--markdown", str(tmp_path / "s")]) == 0
    assert f"best alpha={sw['chosen']['best']:g}, lr={sw['chosen_lr']['best']:g}; one_se alpha=" in capsys.readouterr().out
