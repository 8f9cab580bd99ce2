"""Penalties agree with themselves: the same objective gives the same update whichever
penalty class states it, the documented forms work, and the docs say what happens."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import decaylab as dl


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
