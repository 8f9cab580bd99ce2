"""compact(): the smaller model gives the sparse model's outputs (MLP, CNN with BatchNorm,
residual network via Torch-Pruning); dead units' constants are folded; bad input is named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import decaylab as dl


def train_coupled(model, x, alpha, steps=80, groups=("inputs", "neurons")):
    pen = dl.CoupledGroupLasso(alpha, model, groups=groups)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2), model, dl.Rule(pen, metric="adam"))
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return pen


def max_diff(a, b, x):
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


def test_mlp_compacts_to_equal_outputs_and_reports_kept_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(64, 12)
    train_coupled(model, x, 0.002, groups="neurons")
    with torch.no_grad():
        model[0].weight[:, 3:9] = 0  # six input features no neuron reads
    pen = dl.CoupledGroupLasso(1.0, model)
    live = pen.live(dict(model.named_parameters()))
    assert live["inputs"] == (6, 12)
    small = dl.compact(model, x)
    info = small.compaction
    assert info.kept_inputs == model[0].weight.detach().ne(0).any(0).nonzero().flatten().tolist()
    assert info.layers == {"0": live["0"], "2": live["2"]}  # every zero group removed, nothing else
    assert len(info.kept_inputs) < 12 and info.layers["0"][0] < 16
    assert info.params_after == sum(p.numel() for p in small.parameters()) < info.params_before
    assert max_diff(small, model, torch.randn(256, 12)) <= 1e-5


def test_cnn_with_batchnorm_compacts_to_equal_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 2 * 2, 10), nn.ReLU(), nn.Linear(10, 3),
    )
    x = torch.randn(32, 2, 8, 8)
    pen = train_coupled(model, x, 0.004, groups="neurons")
    live = pen.live(dict(model.named_parameters()))
    small = dl.compact(model, x)
    assert small.compaction.layers == {"0": live["0"], "4": live["4"], "8": live["8"]}
    assert small.compaction.layers["4"][0] < 8
    assert isinstance(small.get_submodule("5"), nn.BatchNorm2d)
    assert small.get_submodule("5").num_features == live["4"][0]
    assert max_diff(small, model, torch.randn(64, 2, 8, 8)) <= 1e-5


@pytest.mark.parametrize("with_bn", [False, True])
def test_dead_units_fold_their_constant_into_the_next_bias(with_bn):
    torch.manual_seed(0)
    layers = [nn.Linear(5, 6)] + ([nn.BatchNorm1d(6)] if with_bn else []) + [nn.ReLU(), nn.Linear(6, 2)]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        model[0].weight[[1, 4]] = 0  # rows zero, biases not: the units output relu(b) (through BN)
        model[0].bias[1], model[0].bias[4] = 0.7, -0.3
        if with_bn:
            model[1].running_mean.uniform_(-1, 1)
            model[1].bias.fill_(0.2)
    small = dl.compact(model)
    assert small.compaction.layers == {"0": (4, 6)}
    assert max_diff(small, model, torch.randn(50, 5)) <= 1e-5


def test_conv_with_padding_keeps_a_dead_unit_with_a_nonzero_constant():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    with torch.no_grad():
        model[0].weight[0] = 0
        model[0].bias[0] = 0.5  # constant 0.5 seen through zero padding: not a bias shift
        model[0].weight[1] = 0
        model[0].bias[1] = -0.5  # relu(-0.5) = 0: removable
    small = dl.compact(model)
    assert small.compaction.layers == {"0": (3, 4)}
    assert max_diff(small, model, torch.randn(3, 1, 9, 9)) <= 1e-5


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.block = Block(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.block(torch.relu(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.extras
def test_residual_network_compacts_through_torch_pruning():
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = TinyResNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
        # a channel inside the block: conv1 row, bn1 scale/shift, conv2 column
        model.block.conv1.weight[[2, 5]] = 0
        model.block.bn1.weight[[2, 5]] = 0
        model.block.bn1.bias[[2, 5]] = 0
        model.block.conv2.weight[:, [2, 5]] = 0
        # a channel of the residual stream: stem, bn, conv2, bn2 rows, conv1 and fc columns
        for t in (model.stem.weight, model.bn.weight, model.bn.bias, model.block.conv2.weight,
                  model.block.bn2.weight, model.block.bn2.bias):
            t[3] = 0
        model.block.conv1.weight[:, 3] = 0
        model.fc.weight[:, 3] = 0
    x = torch.randn(4, 3, 8, 8)
    small = dl.compact(model, x, backend="torch-pruning")
    assert small.block.conv1.out_channels == 6 and small.stem.out_channels == 7
    assert max_diff(small, model, torch.randn(16, 3, 8, 8)) <= 1e-5


def test_no_zero_group_returns_the_model_with_a_warning():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="no zero neuron, channel or input; returned unchanged"):
        assert dl.compact(model) is model


@pytest.mark.parametrize("model, kwargs, match", [
    (nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 1)), {},
     "layer '1' between '0' and '2' is not supported.*backend='torch-pruning'"),
    (TinyResNet(), {}, "branches.*backend='torch-pruning'.*pip install torch-pruning"),
    (nn.Linear(2, 2), {"backend": "magic"}, "backend must be"),
    (TinyResNet(), {"backend": "torch-pruning"}, "pass example_inputs"),
])
def test_bad_input(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dl.compact(model, **kwargs)


def test_torch_pruning_route_without_the_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ValueError, match=r"pip install torch-pruning==1.6.1"):
        dl.compact(TinyResNet(), torch.randn(2, 3, 8, 8), backend="torch-pruning")
