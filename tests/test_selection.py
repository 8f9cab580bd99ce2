"""Adaptive group lasso for feature selection (decaylab.selection): adaptive weights are
inverse dense norms, and the penalty built from a state dict has a value."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import decaylab as dl


def test_adaptive_weights_are_inverse_dense_norms():
    w0 = torch.tensor([[3.0, 0.0, 1.0], [4.0, 0.0, 0.0]])  # column norms 5, 0, 1 -> mean 2
    c = dl.adaptive_weights(w0, dl.Columns(), gamma=2.0)
    assert c.flatten().tolist() == pytest.approx([(2 / 5) ** 2, 1e12, 4.0])


def test_adaptive_group_lasso_from_a_state_dict_has_a_penalty_value():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    pen = dl.AdaptiveGroupLasso(0.1, dense, groups="inputs", gamma=1.0)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.Rule(pen, params="0.weight"))
    w0 = dense["0.weight"]
    norms = w0.norm(dim=0)
    expected = 0.1 * ((norms.mean() / norms) * model[0].weight.norm(dim=0)).sum()
    torch.testing.assert_close(opt.penalty_value(), expected)
    with pytest.raises(ValueError, match=r"did not bind needs their adaptive weights: pass ctxs="):
        pen.value([torch.ones(3, 5)])
