"""Coupled groups and compaction assume that a unit owns one contiguous block of the next
layer's columns and that each layer is called once; graphs where that is false are refused
with an error naming the layer, instead of penalising the wrong groups and compacting to a
different model. Graphs where it holds still compact to equal outputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import decaylab as dl


class View(nn.Module):
    def __init__(self, *shape):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 16, 2)
        self.shape = shape

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), *self.shape))


def _shared():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(4, 2))


def _zero_first_unit(model):
    layer = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    with torch.no_grad():
        layer.weight[1] = 0
        layer.bias[1] = 0
    return model


BAD = [
    pytest.param(lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Flatten(), nn.Linear(20, 2)),
                 r"Linear '0' has 4 outputs but '3' reads 20 inputs.*columns u, u\+4, u\+8, \.\.\. of '3'",
                 id="Linear-on-3-D-then-Flatten"),
    pytest.param(lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(2), nn.Linear(16, 2)),
                 r"'2' between '0' and '3' flattens dimensions 2 to -1", id="Flatten(2)"),
    pytest.param(_shared, r"layer '2' is called 2 times in Sequential's forward \(a shared layer\)", id="called-twice"),
    pytest.param(lambda: nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Linear(8, 2)),
                 r"Linear '2' reads the output of '0' without a flatten", id="Conv-then-Linear"),
    pytest.param(lambda: View(4, 16), r"'call_method view' between 'conv' and 'fc' reshapes to 3 dimensions",
                 id="view-to-3-D"),
]


@pytest.mark.parametrize("make, match", BAD)
def test_compact_refuses_a_unit_map_it_cannot_cut(make, match):
    with pytest.raises(ValueError, match=match):
        dl.compact(_zero_first_unit(make()))


@pytest.mark.parametrize("make, match", BAD)
def test_coupled_group_lasso_refuses_a_unit_map_it_cannot_group(make, match):
    with pytest.raises(ValueError, match=match):
        dl.CoupledGroupLasso(1e-3, make(), groups="neurons")


@pytest.mark.parametrize("make, x", [
    (lambda: View(-1), torch.randn(5, 1, 4, 4)),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(5, 7, 3)),  # 3-D, no flatten
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(1, -1), nn.Linear(64, 2)),
     torch.randn(5, 1, 4, 4)),
])
def test_supported_unit_maps_still_compact_to_equal_outputs(make, x):
    torch.manual_seed(0)
    model = _zero_first_unit(make())
    small = dl.compact(model, example_inputs=x)
    assert small.compaction.layers[next(iter(small.compaction.layers))][0] == 3
    torch.testing.assert_close(small(x), model.eval()(x), rtol=0, atol=1e-5)
