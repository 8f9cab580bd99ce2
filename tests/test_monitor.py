"""dl.metrics / dl.histograms / find_regularized, and the plain-loop TensorBoard example."""

import glob
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import decaylab as dl


def _opt(rules):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    return model, dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, rules)


def test_metrics_per_rule_and_tensor_agree_with_the_weights():
    model, opt = _opt([dl.Rule(dl.GroupLasso(1.0, groups="inputs"), params="0.weight"),
                       dl.Rule(dl.L2(0.5), params="2.weight")])
    with torch.no_grad():
        model[0].weight[:, 1] = 0
    out = dl.metrics(opt)
    assert out["decaylab/live/0.weight"] == 0.75  # 3 of 4 input columns
    assert out["decaylab/zeros/0.weight"] == 0.25
    assert out["decaylab/norm/2.weight"] == pytest.approx(float(model[2].weight.norm()))
    assert out["decaylab/penalty/2.weight"] == pytest.approx(0.25 * float(model[2].weight.pow(2).sum()))
    assert "decaylab/live/2.weight" not in out and not any("adam_metric" in k for k in out)


def test_metrics_show_the_metric_once_the_first_step_decides_it():
    model, _ = _opt(dl.L1(1e-3))
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2), model, dl.L1(1e-3))
    assert "decaylab/adam_metric/weights >= 2-D" not in dl.metrics(opt)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert dl.metrics(opt)["decaylab/adam_metric/weights >= 2-D"] == 1.0


def test_find_regularized_names_what_it_followed():
    model = nn.Linear(2, 2)
    plain = torch.optim.SGD(model.parameters(), lr=0.1)

    class Wrapper:
        def __init__(self, optimizer):
            self.optimizer = optimizer

    with pytest.raises(ValueError, match=r"no decaylab wrapper inside Wrapper -> SGD; build"):
        dl.metrics(Wrapper(plain))


@pytest.mark.extras
def test_the_tensorboard_example_writes_metrics_and_histograms(tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                             reason="tensorboard is not installed (the integrations extra)")
    path = Path(__file__).resolve().parents[1] / "examples" / "tensorboard_loop.py"
    spec = importlib.util.spec_from_file_location("tensorboard_loop", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    final = example.main(str(tmp_path), steps=30, every=10)
    (event_file,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    acc = ea.EventAccumulator(event_file, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    zeros = acc.Scalars("decaylab/zeros/0.weight")
    assert [e.step for e in zeros] == [0, 10, 20] and zeros[-1].value <= final["decaylab/zeros/0.weight"]
    assert "weights/0.weight" in acc.Tags()["histograms"]

