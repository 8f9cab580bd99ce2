"""Coupled groups: a neuron's row, bias, BatchNorm scale/shift and next-layer columns are one
group; the prox zeroes them together; closed-form values; unsupported graphs are named."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import decaylab as dl
from decaylab.coupled import chain, coupled_groups


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def cnn_bn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, 3),
    )


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + x)


def test_cnn_groups_couple_conv_bn_and_flattened_columns():
    sets = coupled_groups(cnn_bn())
    got = {s.label: (s.units, [(m.name, m.dim, m.block) for m in s.members]) for s in sets}
    assert got["inputs"] == (2, [("0.weight", 1, 1)])
    assert got["0"] == (4, [("0.weight", 0, 1), ("0.bias", 0, 1), ("1.weight", 0, 1), ("1.bias", 0, 1),
                            ("4.weight", 1, 1)])
    # conv2's channel c became the 4 flattened columns [4c, 4c+4) of the Linear
    assert got["4"] == (6, [("4.weight", 0, 1), ("4.bias", 0, 1), ("5.weight", 0, 1), ("5.bias", 0, 1),
                            ("8.weight", 1, 4)])
    assert got["8"][0] == 5


def test_value_is_hand_computed():
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0], [0.0]]))
        model[0].bias.copy_(torch.tensor([0.0, 0.0]))
        model[2].weight.copy_(torch.tensor([[4.0, 0.0]]))
    pen = dl.CoupledGroupLasso(0.5, model, groups="neurons", l1_ratio=0.25)
    params = dict(model.named_parameters())
    value = pen.value([params[n] for n in pen.selection])
    # groups of 3 entries: unit 0 has norm 5, unit 1 norm 0; L1 over weights = 7
    assert float(value.detach()) == pytest.approx(0.5 * (0.25 * 7 + 0.75 * math.sqrt(3) * 5))


def test_prox_closed_form_on_one_group():
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[0].bias.fill_(0.0)
        model[2].weight.fill_(4.0)
    pen = dl.CoupledGroupLasso(1.0, model, groups="neurons")
    params = dict(model.named_parameters())
    pen.prox_([params[n] for n in pen.selection], 0.5 / math.sqrt(3), pen.selection)
    # norm 5, threshold 0.5 -> factor 0.9
    assert float(model[0].weight.detach()) == pytest.approx(2.7)
    assert float(model[2].weight.detach()) == pytest.approx(3.6)


@pytest.mark.parametrize("make, shape, metric, alpha", [
    (mlp, (6,), "lr", 0.5), (mlp, (6,), "adam", 0.001),
    (cnn_bn, (2, 8, 8), "lr", 0.6), (cnn_bn, (2, 8, 8), "adam", 0.01),
])
def test_coupled_groups_zero_together(make, shape, metric, alpha):
    model = make()
    torch.manual_seed(1)
    x = torch.randn(32, *shape)
    pen = dl.CoupledGroupLasso(alpha, model, groups="neurons", l1_ratio=0.2)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2), model, dl.Rule(pen, metric=metric))
    y = torch.randint(0, 3, (x.shape[0],))
    for _ in range(60):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    params = dict(model.named_parameters())
    norms = pen.group_norms(params)
    dead = 0
    for s, n in zip(pen.sets, norms):
        for m in s.members:
            view = params[m.name].detach().movedim(m.dim, 0).reshape(s.units, -1)
            # a zero group is zero in every tensor it spans; a live one is nonzero in its row/column
            assert torch.equal(view.eq(0).all(1)[n == 0], torch.ones(int((n == 0).sum()), dtype=torch.bool))
        dead += int((n == 0).sum())
    assert 0 < dead < sum(s.units for s in pen.sets)


def test_bare_penalty_selects_biases_and_norms():
    model = cnn_bn()
    pen = dl.CoupledGroupLasso(1e-3, model, groups="neurons")
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, pen)
    assert opt.bindings[0].names == [n for n, _ in model.named_parameters() if n in pen.selection]
    assert "1.bias" in opt.bindings[0].names


@pytest.mark.parametrize("model, kwargs, match", [
    (Residual(), {}, "branches.*torch-pruning"),
    (nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 1)), {}, "layer '1'.*not supported"),
    (mlp(), {"l1_ratio": 1.0}, r"l1_ratio\) must be in \[0, 1\)"),
    (mlp(), {"groups": "rows"}, "'inputs' and/or 'neurons'"),
    (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(2)), {}, "grouped"),
])
def test_bad_input(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dl.CoupledGroupLasso(0.1, model, **kwargs)


def test_split_param_groups_are_refused():
    model = mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2:].parameters()}], lr=0.1)
    opt = dl.regularize(opt, model, dl.CoupledGroupLasso(0.1, model))
    model(torch.randn(2, 6)).sum().backward()
    with pytest.raises(ValueError, match="one optimizer param group"):
        opt.step()


def test_chain_reports_stages():
    assert [s.units for s in chain(cnn_bn()).stages] == [4, 6, 5, 3]


def test_scale_multiplies_one_set():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[2].weight.fill_(4.0)
    params = dict(model.named_parameters())
    tensors = [params[n] for n in ("0.weight", "2.weight")]
    plain = dl.CoupledGroupLasso(1.0, model, scale={"inputs": 0.0}).value(tensors, ["0.weight", "2.weight"])
    both = dl.CoupledGroupLasso(1.0, model, scale={"inputs": 2.0}).value(tensors, ["0.weight", "2.weight"])
    # neuron group: sqrt(2) * 5; input group (column of layer 0): 1 * 3, times the multiplier
    assert float(plain.detach()) == pytest.approx(math.sqrt(2) * 5)
    assert float(both.detach()) == pytest.approx(math.sqrt(2) * 5 + 2 * 3)
    with pytest.raises(ValueError, match="scale.*'inputs'"):
        dl.CoupledGroupLasso(1.0, model, scale={"input": 2.0})


def test_target_removes_the_asked_fraction_of_groups_and_holds_them():
    model = mlp()  # hidden 5 and 4, 6 inputs
    pen = dl.CoupledGroupLasso(1e-3, model, target={"inputs": 0.5, "neurons": 0.5}, begin=2, end=20, every=3)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2), model, pen)
    torch.manual_seed(1)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for _ in range(30):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    live = pen.live(dict(model.named_parameters()))
    assert live == {"inputs": (3, 6), "0": (3, 5), "2": (2, 4)}  # floor(0.5 * units) removed
    small = dl.compact(model, x)
    assert small.compaction.layers == {"0": (3, 5), "2": (2, 4)}


@pytest.mark.parametrize("target", [1.0, 0.0, {"inputs": 1.5}, {"layer9": 0.5}, "0.5"])
def test_bad_target(target):
    with pytest.raises(ValueError, match=r"target\) is the fraction of groups to remove"):
        dl.CoupledGroupLasso(1e-3, mlp(), target=target)
