"""The lab end to end: CLI, run folder, report rebuild, config errors, determinism, failures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from decaylab.lab import cli, config, report, runfolder

TINY = ["data.n_train=150", "train.epochs=2", "model.hidden=[16]", "train.batch_size=50"]


def _compare(tmp_path: Path, name: str, *extra: str, config_file: str | None = None) -> int:
    args = ["compare"] + ([config_file] if config_file else [])
    for item in TINY + list(extra):
        args += ["--set", item]
    return cli.main(args + ["--out", str(tmp_path), "--name", name, "--quiet"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert _compare(out, "r") == 0
    return out / "r"


def test_compare_writes_a_complete_run_folder(run_dir):
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["train"]["epochs"] == 2 and "torch" in cfg["versions"]
    names = [r["name"] for r in cfg["runs"]]
    assert names == ["none", "l2", "decoupled", "l1", "elasticnet", "grouplasso"]
    for name in names:
        d = run_dir / "runs" / name
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2]
        for key in ("train_loss", "val_acc", "test_acc", "weight_l2", "zero_fraction", "layers", "live_inputs"):
            assert key in rows[-1]
        final = json.loads((d / "final.json").read_text())
        assert len(final["input_mask"]) == 64 and sum(final["input_mask"]) == final["live_inputs"]
        assert sum(final["histogram"]["counts"]) == final["weights"]
        assert set(torch.load(d / "model.pt", weights_only=True)) == {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}
    l1 = json.loads((run_dir / "runs" / "l1" / "final.json").read_text())
    none = json.loads((run_dir / "runs" / "none" / "final.json").read_text())
    assert l1["zeros"] > 0 and none["zeros"] == 0


@pytest.mark.slow
def test_report_has_every_figure_and_rebuilds_identically_from_the_folder(run_dir, tmp_path):
    html = (run_dir / "report.html").read_text()
    ids = set(re.findall(r'data-figure="([^"]+)"', html))
    assert ids == {"curves", "loss-curves", "histograms", "weights-overlaid", "layer-sparsity", "sparsity-over-time",
                   "input-maps"}
    rebuilt = report.build_report(run_dir, out=tmp_path / "again.html")
    assert cli.main(["report", str(run_dir)]) == 0
    assert rebuilt.read_text() == html == (run_dir / "report.html").read_text()


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics(run_dir, tmp_path):
    assert _compare(tmp_path, "again", "train.jobs=2") == 0  # parallel processes, same numbers
    for name in ("none", "l1", "grouplasso"):
        a = [json.loads(x) for x in (run_dir / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (tmp_path / "again" / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        for ra, rb in zip(a, b):
            ra.pop("epoch_time"), rb.pop("epoch_time")
        assert a == b


def test_existing_run_folder_is_never_overwritten(run_dir, capsys):
    before = (run_dir / "config.json").read_text()
    assert _compare(run_dir.parent, run_dir.name) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run_dir / "config.json").read_text() == before


def test_train_command_with_a_toml_file(tmp_path):
    f = tmp_path / "one.toml"
    f.write_text('[penalty]\npenalty = "l1"\nalpha = 1e-3\nmetric = "adam"\n[model]\nkind = "linear"\n')
    args = ["train", str(f), "--out", str(tmp_path), "--name", "t", "--quiet"]
    for item in ["data.n_train=150", "train.epochs=1"]:
        args += ["--set", item]
    assert cli.main(args) == 0
    spec = json.loads((tmp_path / "t" / "runs" / "l1" / "spec.json").read_text())
    assert spec["describe"].startswith("L1(alpha=0.001), prox, adam metric")


@pytest.mark.parametrize("overrides, message", [
    (["train.epoch=3"], r"unknown config key 'train.epoch'.*'epochs'"),
    (["train.epochs=three"], r"'train.epochs' must be an integer"),
    (["train.lr=true"], r"'train.lr' must be a number"),
    (["model.kind=\"resnet\""], r"'model.kind' = 'resnet' is not one of"),
    (["runs.l9.alpha=1"], r"no run named 'l9'"),
    (["runs.l1.alhpa=1"], r"unknown config key 'runs.l1.alhpa'.*'alpha'"),
    (["runs.l1.alpha=-1"], r"run 'l1': L1\(alpha\) must be finite and >= 0"),
    (["runs.elasticnet.l1_ratio=2"], r"l1_ratio\) must be in \[0, 1\]"),
    (["train.epochs"], r"--set needs key=value"),
])
def test_config_errors_exit_2_and_name_the_key(tmp_path, capsys, overrides, message):
    assert _compare(tmp_path, "bad", *overrides) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = \n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load_file(bad)
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load_file(tmp_path / "missing.toml")
    with pytest.raises(config.ConfigError, match="unknown config key 'dat'"):
        config.resolve({"dat": {}})
    with pytest.raises(config.ConfigError, match="run names must be unique"):
        config.resolve({"runs": [{"penalty": "l1"}, {"penalty": "l1"}]})


def test_nan_loss_stops_the_run_naming_epoch_and_step(tmp_path, capsys):
    assert _compare(tmp_path, "nan", "train.lr=1e6", "train.optimizer=\"sgd\"", "train.momentum=0.0") == 1
    err = capsys.readouterr().err
    assert re.search(r"loss became (nan|inf) at train epoch \d+, step \d+", err)
    status = json.loads((tmp_path / "nan" / "status.json").read_text())
    assert status["state"] == "failed" and "TrainingDiverged" in status["error"]
    assert (tmp_path / "nan" / "report.html").exists()  # the report shows what finished


def test_interrupted_run_keeps_finished_epochs_and_is_marked(tmp_path, monkeypatch):
    real = runfolder.Run.append_metrics
    calls = {"n": 0}

    def log_then_interrupt(self, *a, **k):
        real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 3:  # none: epochs 1-2, then l2: epoch 1
            raise KeyboardInterrupt

    monkeypatch.setattr(runfolder.Run, "append_metrics", log_then_interrupt)
    assert _compare(tmp_path, "int") == 130
    run_dir = tmp_path / "int"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    assert len((run_dir / "runs" / "none" / "metrics.jsonl").read_text().splitlines()) == 2
    assert len((run_dir / "runs" / "l2" / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (run_dir / "runs" / "l2" / "final.json").exists()
    loaded = report.load_run_folder(run_dir)
    assert [r["final"] is None for r in loaded["runs"][:2]] == [False, True]


def test_missing_data_folder_says_where_it_looked(tmp_path, capsys, monkeypatch):
    from decaylab.lab import idx

    monkeypatch.setattr(idx, "SYSTEM_DIRS", {"fashion-mnist": (), "mnist": ()})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert _compare(tmp_path, "nodata", 'data.name="fashion-mnist"', "data.download=false") == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "DECAYLAB_DATA" in err


def test_import_decaylab_does_not_import_the_lab_or_its_dependencies():
    code = ("import sys, decaylab; bad = [m for m in ('decaylab.lab', 'matplotlib', 'sklearn', 'numpy', 'rich', "
            "'ray') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]" or out.strip() == "['numpy']"  # torch itself may import numpy


def test_markdown_table_lists_every_run_and_the_sparsest_close_run(run_dir, capsys):
    assert cli.main(["report", str(run_dir), "--markdown"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith(("| run", "| ---"))]
    assert [r.split("|")[1].strip() for r in rows] == ["none", "l2", "decoupled", "l1", "elasticnet", "grouplasso"]
    assert re.search(r"Sparsest run within 0.5 points of it on validation: `\w+` with [\d.]+% exact-zero weights", out)


@pytest.mark.parametrize("data_name, model, metric", [
    ("digits", "cnn", "test_acc"),        # conv first layer: no per-pixel input mask
    ("diabetes", "mlp", "test_loss"),      # regression: accuracy is null, loss is reported
    ("mnist1d", "linear", "test_acc"),
])
def test_other_models_and_data_sets_train_end_to_end(tmp_path, data_name, model, metric):
    args = ["compare", "--out", str(tmp_path), "--name", "x", "--quiet", "--only", "none,l1"]
    # the Adam-metric prox moves a weight by at most lr a step: diabetes (5 steps an epoch) needs a few epochs
    epochs = 6 if data_name == "diabetes" else 1
    for item in [f'data.name="{data_name}"', f'model.kind="{model}"', f"train.epochs={epochs}", "model.hidden=[8]",
                 "runs.l1.alpha=0.01"]:
        args += ["--set", item]
    assert cli.main(args) == 0
    final = json.loads((tmp_path / "x" / "runs" / "l1" / "final.json").read_text())
    assert final[metric] is not None and final["zeros"] > 0
    if model == "cnn":
        assert final["input_mask"] is None and "conv1.weight" in final["layers"]
    if data_name == "diabetes":
        assert final["test_acc"] is None
    assert (tmp_path / "x" / "report.html").exists()


def test_the_example_training_loop_runs_and_sparsifies(capsys):
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    try:
        import own_loop
    finally:
        sys.path.pop(0)
    out = own_loop.main(epochs=3)
    assert out["sparsity"] > 0.05 and out["kept"] < 64 and out["acc"] > 0.8
    assert "(no rule)" not in capsys.readouterr().out  # biases are named by an explicit rule


def test_the_example_train_config_is_valid():
    cfg = config.resolve(config.load_file(Path(__file__).parents[1] / "experiments" / "digits_l1.toml"), command="train")
    assert cfg["runs"][0]["penalty"] == "l1" and cfg["runs"][0]["finetune_epochs"] == 5
    cfg = config.resolve(config.load_file(Path(__file__).parents[1] / "experiments" / "fashion_mnist_lenet300.toml"))
    assert len(cfg["runs"]) == 20
