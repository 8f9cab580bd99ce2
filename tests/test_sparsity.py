"""TargetSparsity: the cubic budget, exact-zero fraction reached on a short run, alpha=0 is
magnitude pruning, exactly the budget held at the end of the ramp, bad targets named."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import decaylab as dl


def short_run(pen, metric="lr", steps=120):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(512, 20)
    y = (x[:, :4] + 0.3 * torch.randn(512, 4)).argmax(1)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=3e-3), model, dl.Rule(pen, metric=metric))
    fractions = []
    for i in range(steps):
        xb, yb = x[(i * 64) % 512:][:64], y[(i * 64) % 512:][:64]
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        opt.zero_grad()
        fractions.append(dl.sparsity(model))
    return model, fractions


@pytest.mark.parametrize("target", [0.5, 0.9, 0.98])
@pytest.mark.parametrize("alpha, metric, saliency", [(0.0, "lr", "magnitude"), (1e-4, "adam", "magnitude"),
                                                     (1e-4, "adam", "metric")])
def test_short_run_reaches_the_target_within_one_point(target, alpha, metric, saliency):
    pen = dl.TargetSparsity(alpha, target=target, begin=10, end=80, every=5, saliency=saliency)
    _, fractions = short_run(pen, metric)
    assert abs(fractions[-1] - target) <= 0.01
    assert fractions[5] == 0.0 if alpha == 0 else True  # nothing pruned before `begin`


def test_alpha_zero_follows_the_cubic_schedule_exactly():
    pen = dl.TargetSparsity(0.0, target=0.9, begin=0, end=40)
    _, fractions = short_run(pen, steps=60)
    n = 20 * 64 + 64 * 32 + 32 * 4
    for t in (0, 10, 20, 39, 59):
        expected = int(dl.cubic_sparsity(min(t, 40), 0.9, 0, 40) * n) / n
        assert fractions[t] == pytest.approx(expected, abs=1.5 / n)


def test_pruned_weights_stay_zero_after_the_ramp():
    pen = dl.TargetSparsity(1e-4, target=0.8, begin=0, end=30)
    model, _ = short_run(pen, "adam", steps=30)
    mask = [p.detach() == 0 for p in (model[0].weight, model[2].weight, model[4].weight)]
    # keep training: the held mask keeps exactly the same zeros
    x = torch.randn(64, 20)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=3e-3), model, dl.Rule(pen, metric="adam"))
    for _ in range(10):
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p.detach() == 0, m) for p, m in zip((model[0].weight, model[2].weight, model[4].weight), mask))


@pytest.mark.parametrize("kwargs, match", [
    ({"target": 1.0}, r"target\) .* must be in \(0, 1\), got 1.0"),
    ({"target": 0}, r"must be in \(0, 1\)"),
    ({"target": -0.2}, r"must be in \(0, 1\)"),
    ({"target": "0.9"}, r"must be in \(0, 1\)"),
    ({"target": 0.9, "begin": 10, "end": 5}, "0 <= begin <= end"),
    ({"target": 0.9, "every": 0}, "every"),
    ({"target": 0.9, "saliency": "hessian"}, "saliency"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dl.TargetSparsity(1e-4, **kwargs)


# -- per-layer budgets, regrowth, reweighting ---------------------------------------------

def test_erk_keep_counts_closed_form():
    # eps = 5324 / (1084 + 400 + 110); raw 3620.50, 1336.01, 367.40 -> floors 3620, 1336, 367,
    # the one left over goes to the largest fractional part (3620.50)
    assert dl.keep_counts([(300, 784), (100, 300), (10, 100)], 5324) == [3621, 1336, 367]
    # a small tensor whose share would exceed 1 stays dense, eps is re-solved for the rest:
    # rates 5/4 and 100/2500; eps = 104/105 -> 1.24 > 1, so [4, 100]
    assert dl.keep_counts([(1, 4), (50, 50)], 104) == [4, 100]
    assert dl.keep_counts([(10, 10), (5, 20)], 50, "uniform") == [25, 25]
    assert sum(dl.keep_counts([(7, 13), (3, 5), (11, 2)], 37)) == 37


def test_erk_budget_holds_per_layer_counts_in_training():
    pen = dl.TargetSparsity(0.0, target=0.9, begin=10, end=80, every=5, budget="erk")
    model, fractions = short_run(pen, steps=100)
    weights = [model[0].weight, model[2].weight, model[4].weight]
    n = sum(w.numel() for w in weights)
    expected = dl.keep_counts([tuple(w.shape) for w in weights], n - int(0.9 * n))
    assert [int((w != 0).sum()) for w in weights] == expected
    assert abs(fractions[-1] - 0.9) <= 0.01
    # the global ranking keeps other counts on the same run: the option changes behaviour
    glob, _ = short_run(dl.TargetSparsity(0.0, target=0.9, begin=10, end=80, every=5), steps=100)
    assert [int((w != 0).sum()) for w in (glob[0].weight, glob[2].weight, glob[4].weight)] != expected


def test_regrow_closed_form():
    # t=1 of a ramp over steps 0..2: s = 0.5 * (1 - 0.5**3) = 0.4375 -> 7 zeros of 16, 9 kept;
    # regrow 1/3 -> 3 by gradient, 6 by magnitude
    w = torch.tensor([16.0, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
    w.grad = torch.zeros(16)
    w.grad[[0, 13, 14, 15]] = torch.tensor([100.0, 3.0, -5.0, 4.0])  # index 0 is kept anyway
    pen = dl.TargetSparsity(0.0, target=0.5, begin=0, end=2, regrow=1 / 3)
    pen.prox_([w], 0.1)  # t=0: s=0, nothing pruned
    pen.prox_([w], 0.1)
    kept = (w != 0).nonzero().flatten().tolist()
    assert kept == [0, 1, 2, 3, 4, 5, 13, 14, 15]


def test_regrow_reaches_the_target_and_changes_the_masks():
    pen = dl.TargetSparsity(1e-4, target=0.9, begin=10, end=80, every=5, regrow=0.3)
    model, fractions = short_run(pen, "adam", steps=100)
    assert abs(fractions[-1] - 0.9) <= 0.01
    plain, _ = short_run(dl.TargetSparsity(1e-4, target=0.9, begin=10, end=80, every=5), "adam", steps=100)
    assert not torch.equal(model[0].weight != 0, plain[0].weight != 0)


def test_regrow_needs_gradients():
    w = torch.randn(10)
    pen = dl.TargetSparsity(0.0, target=0.5, begin=0, end=4, regrow=0.2)
    pen.prox_([w], 0.1)
    with pytest.raises(ValueError, match="needs .grad"):
        pen.prox_([w], 0.1)


def test_reweight_closed_form():
    # threshold lr * alpha * delta / (|w| + delta) with lr 1, alpha 0.02, delta 0.1; no budget yet
    w = torch.tensor([0.1, 1.0, -0.01])
    dl.TargetSparsity(0.02, target=0.5, begin=5, end=10, reweight=0.1).prox_([w], 1.0)
    expected = torch.tensor([0.1 - 0.002 / 0.2, 1.0 - 0.002 / 1.1, 0.0])
    torch.testing.assert_close(w, expected)


@pytest.mark.parametrize("kwargs, match", [
    ({"budget": "layerwise"}, r"budget\) must be one of .*got 'layerwise'"),
    ({"regrow": 1.0}, r"regrow\) .* must be in \[0, 1\), got 1.0"),
    ({"regrow": -0.1}, r"regrow\)"),
    ({"regrow": True}, r"regrow\)"),
    ({"reweight": -0.01}, r"reweight\) .* >= 0 .*got -0.01"),
    ({"reweight": float("nan")}, r"reweight\)"),
])
def test_bad_recipe_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dl.TargetSparsity(1e-4, target=0.9, **kwargs)


def test_keep_counts_bad_input():
    with pytest.raises(ValueError, match="keep=30 must be between 0 and the 20 weights"):
        dl.keep_counts([(4, 5)], 30)
    with pytest.raises(ValueError, match="budget"):
        dl.keep_counts([(4, 5)], 3, "global")


# -- the budget at the end of the ramp -----------------------------------------------


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
