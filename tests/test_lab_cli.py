"""Tests for decaylab.lab.cli: the lab's command line as a new user meets it. Bad input fails
early and clearly, before a run folder exists; labels and files say what they hold; --quiet,
--version, --print-config (which only prints); help written for each command; Ctrl-C says how
to go on; output into a closed pipe (``| head``) ends quietly."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import torch

from decaylab.lab import cli, config, report
from conftest import TINY_CLI, cli_args
from report_fixtures import make_run_folder

TINY = ["data.n_train=150", "train.epochs=1", "model.hidden=[8]", "train.batch_size=50"]
SELECT = TINY_CLI + ["select.n_alphas=2", "select.path_epochs=1", "select.refit_epochs=1"]
ROOT = Path(__file__).parents[1]


def _main(command, tmp_path, *items, name="x", extra=()):
    return cli.main(cli_args(command, tmp_path, [*TINY, *items], name, extra))


def _one_line_error(capsys, pattern):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("decaylab: error: ") and "Traceback" not in err
    assert re.search(pattern, err), err
    return err


@pytest.mark.parametrize("items, pattern", [
    (["train.epochs=0"], r"'train.epochs' = 0 is out of range; it must be in \[1, inf\)"),
    (["train.batch_size=0"], r"'train.batch_size' = 0 is out of range"),
    (["train.lr=-1"], r"'train.lr' = -1.0 is out of range; it must be in \(0.0, inf\)"),
    (["data.val_fraction=1.5"], r"'data.val_fraction' = 1.5 is out of range"),
    (['train.device="meta"'], r"train.device='meta' is not supported; use 'cpu'"),
    (['train.device="not a device"'], r"train.device='not a device' is not a device"),
    (["runs.none.alpha=-0.1"], r"run 'none': alpha=-0.1 must be finite and >= 0"),
    (['runs.l1.name="../evil"'], r"config key 'runs.l1.name' '../evil' is not a safe folder name"),
    (['name="../../escaped"'], r"config key 'name' '../../escaped' is not a safe folder name"),
])
def test_bad_values_fail_before_a_run_folder_exists(tmp_path, capsys, items, pattern):
    assert _main("compare", tmp_path / "out", *items) == 2
    _one_line_error(capsys, pattern)
    assert not (tmp_path / "out").exists()


def test_cuda_on_a_build_without_cuda_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _main("train", tmp_path / "out", 'train.device="cuda"', 'penalty.penalty="l1"') == 2
    _one_line_error(capsys, r"train.device='cuda' but this torch .* has no usable CUDA device; use --set "
                            r"train.device=cpu")
    assert not (tmp_path / "out").exists()


def test_missing_data_fails_before_the_folder_and_suggests_data_root(tmp_path, capsys, monkeypatch):
    from decaylab.lab import idx

    monkeypatch.setattr(idx, "SYSTEM_DIRS", {"fashion-mnist": (), "mnist": ()})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DECAYLAB_DATA", raising=False)
    assert _main("compare", tmp_path / "out", 'data.name="fashion-mnist"', "data.download=false") == 2
    _one_line_error(capsys, r"--set data\.root=FOLDER")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../../x", "..", "a/b", "/abs", ".hidden", "a\\b"])
def test_name_cannot_escape_out(tmp_path, capsys, name):
    out = tmp_path / "a" / "b" / "out"
    assert _main("compare", out, name=name) == 2
    _one_line_error(capsys, "is not a safe folder name")
    assert list(tmp_path.rglob("*")) == []


def test_train_run_is_named_after_the_penalty_set_on_the_command_line(tmp_path):
    assert _main("train", tmp_path, 'penalty.penalty="l1"', "penalty.alpha=1e-3") == 0
    assert [p.name for p in (tmp_path / "x" / "runs").iterdir()] == ["l1"]
    cfg = config.resolve({}, ['penalty.penalty="l1"', 'penalty.name="mine"'], command="train")
    assert cfg["runs"][0]["name"] == "mine"


def test_a_strength_without_a_penalty_is_refused(tmp_path, capsys):
    assert _main("train", tmp_path, "penalty.alpha=-0.1") == 2
    _one_line_error(capsys, r"penalty.alpha=-0.1 has no effect: the penalty is 'none'; add --set penalty.penalty=l1")
    assert _main("train", tmp_path, "penalty.alpha=0.1") == 2


@pytest.mark.slow
def test_fixed_width_models_record_the_widths_they_use(tmp_path):
    cfg = config.resolve({"model": {"kind": "lenet300"}})
    assert cfg["model"]["hidden"] == [300, 100]
    folder = make_run_folder(tmp_path / "run")
    saved = json.loads((folder / "config.json").read_text())
    saved["model"] = cfg["model"]
    (folder / "config.json").write_text(json.dumps(saved))
    page = report.build_report(folder).read_text()
    assert "hidden=[300, 100]" in page and "hidden=[256" not in page


def test_rules_txt_shows_the_final_zeros(tmp_path):
    assert _main("train", tmp_path, 'penalty.penalty="l1"', "penalty.alpha=0.01", 'penalty.metric="adam"') == 0
    run = tmp_path / "x" / "runs" / "l1"
    final = json.loads((run / "final.json").read_text())
    assert final["zero_fraction"] > 0.005  # one tiny epoch: the Adam-metric prox moves <= lr a step
    line = next(l for l in (run / "rules.txt").read_text().splitlines() if "L1(alpha=0.01)" in l)
    assert f"{final['zero_fraction']:.1%}" in line.split()


def test_regression_tables_say_mse(tmp_path, capsys):
    args = ["compare", "--out", str(tmp_path), "--name", "reg", "--only", "none,l1"]
    for item in ['data.name="diabetes"', "train.epochs=1", "model.hidden=[8]"]:
        args += ["--set", item]
    assert cli.main(args) == 0
    table = capsys.readouterr().out
    assert "test MSE" in table and "test acc" not in table
    assert cli.main(["report", "--markdown", str(tmp_path / "reg")]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| run | penalty | val MSE | test MSE |") and "test acc" not in md


def test_markdown_report_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["report", "--markdown", str(tmp_path)]) == 2
    err = _one_line_error(capsys, "is not a run folder")
    assert "Errno" not in err


def test_quiet_prints_only_the_run_path(tmp_path, capsys):
    assert _main("compare", tmp_path, extra=["--only", "none"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'x'}\n"


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert re.fullmatch(r"decaylab \S+ \(torch \S+, Python \S+\)\n", capsys.readouterr().out)


@pytest.mark.parametrize("command, items", [
    ("compare", ["train.epochs=7", "runs.l1.alpha=0.5"]),
    ("train", ['penalty.penalty="elasticnet"', "penalty.l1_ratio=0.25", 'model.kind="lenet300"']),
])
def test_print_config_is_a_config_file_that_reads_back_the_same(tmp_path, capsys, command, items):
    assert _main(command, tmp_path, *items, extra=["--print-config"]) == 0
    text = capsys.readouterr().out
    assert not (tmp_path / "x").exists()
    cfg = config.resolve({}, TINY + items, command=command)
    cfg["out"], cfg["name"] = str(tmp_path), "x"
    assert config.resolve(tomllib.loads(text), command=command) == cfg


def test_ctrl_c_in_a_sweep_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    from decaylab.lab import sweep

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "_log_epoch", ctrl_c)
    assert cli.main(cli_args("sweep", tmp_path, TINY_CLI, extra=["--penalty", "l2", "--alphas", "0.01,1"])) == 130
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
    assert cli.main(cli_args("select", tmp_path, SELECT)) == 130
    err = capsys.readouterr().err
    assert f"interrupted: '{tmp_path / 'x'}' is incomplete and cannot be resumed; run the command again" in err
    assert json.loads((tmp_path / "x" / "status.json").read_text())["state"] == "interrupted"


def test_select_print_config_prints_and_trains_nothing(tmp_path, capsys, monkeypatch):
    from decaylab.lab import select

    monkeypatch.setattr(select, "select_features", lambda *a, **k: pytest.fail("select ran"))
    assert cli.main(cli_args("select", tmp_path, SELECT, extra=["--print-config"])) == 0
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


def test_piping_into_head_ends_quietly(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    for name in ("a", "b"):
        assert cli.main(cli_args("train", tmp_path, TINY_CLI + ["penalty.penalty=\"l1\""], name=name)) == 0
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


def test_the_fashion_mnist_config_does_not_fix_the_folder_name():
    cfg = config.resolve(config.load_file(ROOT / "experiments" / "fashion_mnist_lenet300.toml"))
    assert cfg["name"] == ""


def test_hostile_strings_are_escaped_in_the_report(tmp_path):
    evil = '<script>alert(1)</script><img src=x onerror=alert(2)>'
    folder = make_run_folder(tmp_path / "run", runs=("none", evil), image_shape=None)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(command=evil, seed=evil, model={"kind": evil, "hidden": evil}, versions={evil: evil})
    (folder / "config.json").write_text(json.dumps(cfg))
    info = json.loads((folder / "data.json").read_text())
    info.update(name=evil, task=evil, feature_names=[evil] * 3)
    (folder / "data.json").write_text(json.dumps(info))
    page = report.build_report(folder).read_text()
    assert "<script" not in page and "<img src=x" not in page and "onerror=alert(2)>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4


def test_every_pt_load_in_the_package_is_weights_only():
    calls = [(p, m.group(0)) for p in (ROOT / "src").rglob("*.py")
             for m in re.finditer(r"torch\.load\([^)]*\)", p.read_text())]
    assert calls, "no torch.load found: the pattern is stale"
    assert [c for c in calls if "weights_only=True" not in c[1]] == []
