"""model.factory / data.factory: your model and data in train, compare, sweep, compact,
report and resume; stacked with torch.func equals training alone; one-line errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from decaylab.lab import build, cli, config, grid, sweep_func

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "byo_resnet.py"

USER_FILE = '''
import torch
from torch import nn
from sklearn.datasets import load_digits


class ResMLP(nn.Module):  # BatchNorm and a residual connection
    def __init__(self, n_features, n_classes):
        super().__init__()
        self.inp = nn.Linear(n_features, 16, bias=False)  # BatchNorm follows: a bias gets only noise
        self.bn = nn.BatchNorm1d(16)
        self.mid = nn.Linear(16, 16)
        self.out = nn.Linear(16, n_classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.inp(x)))
        return self.out(h + torch.relu(self.mid(h)))


class Branchy(ResMLP):  # data-dependent control flow: vmap cannot run it
    def forward(self, x):
        h = super().forward(x)
        return h if float(h.sum()) < 1e9 else -h


def model(n_features, n_classes):
    return ResMLP(n_features, n_classes)


def branchy(n_features, n_classes):
    return Branchy(n_features, n_classes)


def data(seed=0):
    x, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)[:500]
    x = torch.tensor(x, dtype=torch.float32)[order] / 16
    y = torch.tensor(y)[order]
    return (x[:300], y[:300]), (x[300:400], y[300:400]), (x[400:], y[400:])


def dataset(seed=0):
    tr, va, te = data(seed)
    return {"train": torch.utils.data.TensorDataset(*tr), "val": va, "test": te}


def bad_lengths():
    x, y = torch.zeros(10, 4), torch.zeros(9, dtype=torch.long)
    return (x, y), (x, y), (x, y)


def three_classes_wrong_out(n_features, n_classes):
    return nn.Linear(n_features, n_classes + 1)
'''

TINY = ["train.epochs=2", "train.batch_size=50"]


@pytest.fixture
def user(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent(USER_FILE))
    return path


def _sets(items):
    out = []
    for item in items:
        out += ["--set", item]
    return out


def _factories(user, model="model", data="data"):
    return [f'model.factory="{user}:{model}"', f'data.factory="{user}:{data}"']


def final_metrics(d: Path) -> dict:
    return json.loads((d / "final.json").read_text())


# -- errors: one line naming the key, the value and the fix ---------------------------------------
@pytest.mark.parametrize("value,match", [
    ("no_colon", "not a factory"),
    ("{dir}/missing.py:model", "does not exist"),
    ("{user}:nothing", "has no function 'nothing'"),
    ("no_such_package_xyz.mod:f", "importing 'no_such_package_xyz.mod' failed"),
    ("{user}:data", "returned a tuple, not a torch.nn.Module"),
    ("{user}:three_classes_wrong_out", r"output for a batch of 2 is \(2, 11\); it must be \(2, 10\)"),
    ("torch.nn:Identity", "without parameters"),
    ("torch.nn:Bilinear", "failed when called with"),
])
def test_a_bad_model_factory_is_one_line_exit_2_and_no_folder(tmp_path, user, capsys, value, match):
    value = value.format(dir=tmp_path, user=user)
    args = ["train", *_sets(TINY + [f'model.factory="{value}"', f'data.factory="{user}:data"']),
            "--out", str(tmp_path), "--name", "x", "--quiet"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.factory" in err
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fn,match", [
    ("bad_lengths", r"x \(10, 4\) and y \(9,\)"),
    ("model", "failed when called with"),
])
def test_a_bad_data_factory_is_one_line(tmp_path, user, capsys, fn, match):
    args = ["train", *_sets(TINY + [f'data.factory="{user}:{fn}"']), "--out", str(tmp_path), "--name", "x", "--quiet"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.factory" in err
    assert __import__("re").search(match, err), err


def test_select_refuses_a_model_factory_in_one_line(tmp_path, user, capsys):
    args = ["select", *_sets(_factories(user)), "--out", str(tmp_path), "--name", "x", "--quiet"]
    assert cli.main(args) == 2
    assert "decaylab select ranks the input columns" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_file_factory_is_saved_as_an_absolute_path(monkeypatch, user):
    monkeypatch.chdir(user.parent)
    cfg = config.resolve({}, ['model.factory="mine.py:model"'])
    assert cfg["model"]["factory"] == f"{user}:model"


def test_the_registries_are_the_config_choices():
    assert config.CHOICES["model.kind"] == tuple(build.MODELS)
    assert config.CHOICES["data.name"] == tuple(build.DATASETS)
    with pytest.raises(config.ConfigError, match="is not one of"):
        config.resolve({}, ['model.kind="resnet"'])


def test_the_cli_help_lists_the_registries(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in (*build.MODELS, *build.DATASETS, "model.factory", "data.factory"):
        assert name in text, name


# -- data: tensors or Datasets ----------------------------------------------------------------------
def test_a_data_factory_may_return_datasets_and_a_dict(user):
    a = build.build_data(config.resolve({}, [f'data.factory="{user}:data"']))
    b = build.build_data(config.resolve({}, [f'data.factory="{user}:dataset"']))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert (a.task, a.n_classes, a.n_features, len(a.x_val)) == ("classification", 10, 64, 100)


# -- torch.func stacking ------------------------------------------------------------------------
def test_func_stacked_config_k_equals_its_model_alone_with_batchnorm_in_train_mode():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))
    stacked = sweep_func.FuncStacked(base, 3)
    with torch.no_grad():
        stacked.net[0].weight[1].mul_(2.0)  # configuration 1 differs
    alone = stacked.unstack(1).train()
    x = torch.randn(5, 1, 6, 6)
    torch.testing.assert_close(stacked(x)[1], alone(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stacked.net[1].running_mean[1], alone[1].running_mean)  # stats per config
    assert not torch.equal(stacked.net[1].running_mean[0], stacked.net[1].running_mean[1])
    stacked.keep(torch.tensor([1]))
    assert stacked.net[0].weight.shape[0] == 1
    torch.testing.assert_close(stacked.eval()(x)[0], alone.eval()(x), rtol=1e-5, atol=1e-5)


def test_dropout_draws_different_masks_per_configuration():
    torch.manual_seed(0)
    stacked = sweep_func.FuncStacked(nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.5), nn.Linear(32, 2)), 2)
    out = stacked(torch.ones(4, 6))
    assert not torch.allclose(out[0], out[1])  # same weights, other masks
    stacked.eval()
    out = stacked(torch.ones(4, 6))
    torch.testing.assert_close(out[0], out[1])


def test_the_memory_plan_counts_a_factory_models_activations(user):
    cfg = config.resolve({}, _factories(user), command="train")
    data = build.build_data(cfg)
    _, per, _ = grid.memory_plan(cfg, data, 4, None)
    model = build.build_model(cfg, data)
    assert per > grid.bytes_per_config(model, 64, 300)  # BatchNorm, ReLU and the residual sum count too


def test_why_not_stackable_names_the_reason():
    class DataDependent(nn.Linear):
        def forward(self, x):
            h = super().forward(x)  # batched under vmap: float() of it cannot be taken
            return h if float(h.sum()) > -1e9 else -h

    assert sweep_func.why_not_stackable(nn.Linear(3, 2), torch.zeros(4, 3), "classification") is None
    assert sweep_func.why_not_stackable(DataDependent(3, 2), torch.zeros(4, 3), "classification")


def _train_alone(tmp_path, user, name, alpha, model="model"):
    args = ["train", *_sets(TINY + _factories(user, model) + ['penalty.penalty="l2"', f"penalty.alpha={alpha}",
                                                              'penalty.name="p"']),
            "--out", str(tmp_path), "--name", name, "--quiet"]
    assert cli.main(args) == 0
    return tmp_path / name / "runs" / "p"


@pytest.mark.parametrize("model,stacked", [("model", True), ("branchy", False)])
def test_each_sweep_point_equals_decaylab_train_of_it_alone(tmp_path, user, model, stacked):
    args = ["sweep", "--penalty", "l2", "--alphas", "0.01,1", "--full", *_sets(TINY + _factories(user, model)),
            "--out", str(tmp_path), "--name", "s", "--quiet"]
    assert cli.main(args) == 0
    sw = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert sw["method"]["stacked"] is stacked
    for a in ("0.01", "1"):
        alone = _train_alone(tmp_path, user, f"t{a}", a, model)
        got, want = final_metrics(tmp_path / "s" / "runs" / f"a{float(a):g}"), final_metrics(alone)
        for key in ("val_acc", "test_acc", "train_acc"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), key
        for key in ("val_loss", "weight_l2"):  # fp32 rounding of vmap'd kernels and fused Adam
            assert got[key] == pytest.approx(want[key], rel=1e-4), key
        wa, wb = (torch.load(d / "model.pt", weights_only=True) for d in (tmp_path / "s" / "runs" / f"a{float(a):g}", alone))
        for k in wb:  # BatchNorm's running statistics included
            torch.testing.assert_close(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-5)


def test_compare_report_and_resume_take_the_factories(tmp_path, user):
    args = ["compare", *_sets(TINY + _factories(user)), "--only", "none,l1", "--out", str(tmp_path),
            "--name", "c", "--quiet"]
    assert cli.main(args) == 0
    d = tmp_path / "c"
    before = final_metrics(d / "runs" / "l1")
    for f in ("final.json", "model.pt"):  # the run is unfinished: resume trains it again
        (d / "runs" / "l1" / f).unlink()
    assert cli.main(["resume", str(d), "--quiet"]) == 0
    assert final_metrics(d / "runs" / "l1")["val_acc"] == pytest.approx(before["val_acc"], abs=1e-6)
    (d / "report.html").unlink()
    assert cli.main(["report", str(d)]) == 0 and (d / "report.html").exists()


# -- the acceptance: the example ResNet through sweep and compact -------------------------------------
@pytest.mark.slow
@pytest.mark.extras
def test_the_example_resnet_goes_through_sweep_report_and_compact(tmp_path):
    pytest.importorskip("torch_pruning")
    sets = [f'model.factory="{EXAMPLE}:resnet"', f'data.factory="{EXAMPLE}:digits"', "train.epochs=3",
            "train.lr=3e-3"]
    args = ["sweep", "--penalty", "l2", "--alphas", "1e-4:1e-1:4", *_sets(sets), "--out", str(tmp_path),
            "--name", "s", "--quiet"]
    assert cli.main(args) == 0
    d = tmp_path / "s"
    sw = json.loads((d / "sweep.json").read_text())
    assert sw["method"]["stacked"] and sw["method"]["stacking"].startswith("torch.func")
    assert sw["chosen"]["best"] in sw["alphas"] and sw["chosen_val_acc"]["best"] > 0.5
    assert 'data-figure="lambda-path"' in (d / "report.html").read_text()
    assert cli.main(["compact", str(d)]) == 0
    for p in sw["points"]:
        for name in p["runs"]:
            assert (d / "runs" / name / "compact.json").exists()
    # a residual block's inner channel zeroed whole (conv1 row, bn1, conv2 column): Torch-Pruning removes it
    run = d / "runs" / sw["points"][0]["runs"][0]
    state = torch.load(run / "model.pt", weights_only=True)
    for key in ("blocks.0.bn1.weight", "blocks.0.bn1.bias"):
        state[key][3] = 0
    state["blocks.0.conv1.weight"][3] = 0
    state["blocks.0.conv2.weight"][:, 3] = 0
    torch.save(state, run / "model.pt")
    assert cli.main(["compact", str(d)]) == 0
    info = json.loads((run / "compact.json").read_text())
    assert info["compacted"] and info["backend"] == "torch-pruning" and info["max_abs_diff_test"] < 1e-4
    assert info["params_after"] < info["params_before"]


@pytest.mark.slow
@pytest.mark.extras
def test_a_ray_sweep_takes_the_factories(tmp_path, user, monkeypatch):
    pytest.importorskip("ray.tune")
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # a local Ray with 2 CPUs
    common = ["--penalty", "l2", "--alphas", "0.01,0.1,1,10", *_sets(TINY + _factories(user)), "--out", str(tmp_path)]
    assert cli.main(["sweep", *common, "--backend", "ray", "--name", "r", "--quiet"]) == 0
    assert cli.main(["sweep", *common, "--full", "--name", "l", "--quiet"]) == 0
    ray_sw, local = (json.loads((tmp_path / n / "sweep.json").read_text()) for n in ("r", "l"))
    assert ray_sw["method"]["backend"] == "ray"
    for a, b in zip(ray_sw["points"], local["points"]):
        assert a["alpha"] == b["alpha"] and a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-6)
