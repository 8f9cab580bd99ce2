"""TargetSparsity: the cubic budget, exact-zero fraction reached on a short run, alpha=0 is
magnitude pruning, bad targets named."""

from __future__ import annotations

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
