"""Penalties agree with themselves: the same objective gives the same update whichever
penalty class states it, the documented forms work, and the docs say what happens."""
from __future__ import annotations

import warnings

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


def _train_adam(model, rule, steps=40):
    """A few Adam steps on data whose first two input columns are nearly blank (little
    gradient: Adam's sqrt(v_hat) + eps falls below the strength, where the cap acts)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, model[0].in_features, generator=g)
    x[:, :2] *= 1e-7
    y = torch.randn(32, model[-1].out_features, generator=g)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2), model, rule)
    for _ in range(steps):
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def _model(n_in, n_out):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, n_out))


ALPHA = 0.05  # above sqrt(v_hat) + eps of the blank columns: the cap decides their threshold


@pytest.mark.parametrize("name, reference, other, shape", [
    ("TargetSparsity before its ramp = L1",
     lambda m: dl.L1(ALPHA), lambda m: dl.TargetSparsity(ALPHA, 0.5, begin=100, end=200), (6, 4)),
    ("CoupledGroupLasso(inputs) = GroupLasso(inputs)",
     lambda m: dl.GroupLasso(ALPHA, "inputs"), lambda m: dl.CoupledGroupLasso(ALPHA, m, "inputs"), (6, 4)),
    ("AdaptiveGroupLasso(gamma=0) = GroupLasso, groups of one",
     lambda m: dl.GroupLasso(ALPHA, "inputs"),
     lambda m: dl.AdaptiveGroupLasso(ALPHA, m.state_dict(), "inputs", gamma=0.0), (6, 1)),
])
def test_one_objective_one_update_under_the_adam_metric(name, reference, other, shape):
    """Every penalty that takes Adam's per-coordinate steps gets them capped as L1 and
    GroupLasso get theirs: lr / max(sqrt(v_hat) + eps, alpha)."""
    a, b = _model(*shape), _model(*shape)
    wa = _train_adam(a, dl.Rule(reference(a), params="0.weight", metric="adam"))
    wb = _train_adam(b, dl.Rule(other(b), params="0.weight", metric="adam"))
    assert int((wa[0] == 0).sum()) > 0  # the penalty bites
    torch.testing.assert_close(wb, wa, rtol=1e-6, atol=1e-7)


def _target_sparsity_run(make_opt, alpha, steps=30):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(256, 20), torch.randn(256, 4)
    pen = dl.TargetSparsity(alpha, target=0.3, begin=0, end=20)
    opt = dl.regularize(make_opt(model.parameters()), model, pen)
    zeros = []
    weights = [model[0].weight, model[2].weight]
    for _ in range(steps):
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        zeros.append(sum(int((w == 0).sum()) for w in weights))
    return pen, zeros, sum(w.numel() for w in weights)


def test_target_sparsity_with_a_strong_l1_ends_at_its_target():
    """The README's "exactly floor(target * n) held at zero": a strong L1 zeroes more than
    the budget while it ramps (the objective asks for at least s(t)); from `end` on the L1
    term is off and the weights beyond the budget train again."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pen, zeros, n = _target_sparsity_run(lambda p: torch.optim.Adam(p, lr=1e-2), 2.0)
    assert max(zeros[:20]) > 0.9 * n
    assert zeros[-1] == int(0.3 * n)


def test_target_sparsity_holds_exactly_its_budget_and_warns_when_dead_weights_exceed_it():
    """A strong L1 under SGD kills whole units: their weights have zero gradient and stay
    zero after the ramp. The mask holds exactly floor(target * n) (not every zero), and a
    warning says that the zero fraction ends above the target."""
    with pytest.warns(RuntimeWarning, match=r"TargetSparsity.*more than the target 0\.3.*Lower alpha"):
        pen, zeros, n = _target_sparsity_run(lambda p: torch.optim.SGD(p, lr=0.1), 1.0)
    masks = pen.state_dict()["masks"]
    assert sum(int((~m).sum()) for m in masks) == int(0.3 * n)
    assert zeros[-1] > int(0.3 * n)
