"""Behaviours a one-line mutant of the library would change, each pinned by a closed form.

Each test here was written against a bug planted in a copy of the library that the rest of
the suite let through: a coupled strength ignoring its schedule, the Adam-metric prox
ignoring ``amsgrad``, ``eps`` added before the bias correction, and the group-lasso Adam
metric taking the arithmetic instead of the harmonic mean of its coordinates' steps.
(The default selection keeping frozen weights is pinned in test_rules.py.)
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import decaylab as dl


class Holder(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())


def _adam_setup(penalty, grads, w0, **adam):
    model = Holder(w0)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), **adam), model,
                        dl.Rule(penalty, params="w", metric="adam"))
    ref = nn.Parameter(w0.clone())
    ref_opt = torch.optim.Adam([ref], **adam)
    return model, opt, ref, ref_opt


@pytest.mark.parametrize("m", [0.0, 0.25, 3.0])
def test_coupled_strength_follows_its_schedule(m):
    lr, alpha = 0.5, 0.5
    w0 = torch.tensor([[1.0, -2.0, 0.5]])
    g = torch.tensor([[0.25, 0.5, -1.0]])
    model = Holder(w0)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=lr), model,
                        dl.Rule(dl.L2(alpha), params="w", mode="coupled", schedule=lambda step: m))
    model.w.grad = g.clone()
    opt.step()
    torch.testing.assert_close(model.w.detach(), w0 - lr * (g + m * alpha * w0), rtol=0, atol=1e-7)


@pytest.mark.parametrize("mode", ["coupled", "decoupled", "prox"])
def test_schedule_sees_the_step_count_from_zero(mode):
    seen = []
    model = Holder(torch.ones(2, 2))
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                        dl.Rule(dl.L2(0.1), params="w", mode=mode, schedule=lambda s: seen.append(s) or 1.0))
    seen.clear()  # regularize() checks the schedule at step 0
    for _ in range(3):
        model.w.grad = torch.zeros(2, 2)
        opt.step()
    assert sorted(set(seen)) == [0, 1, 2]


def _threshold(opt, p, lr, alpha, amsgrad=False):
    st = opt.state[p]
    beta2, eps = opt.param_groups[0]["betas"][1], opt.param_groups[0]["eps"]
    v = st["max_exp_avg_sq"] if amsgrad else st["exp_avg_sq"]
    v_hat = v.double() / (1 - beta2 ** float(st["step"]))
    return lr * alpha / (v_hat.sqrt() + eps)  # eps after the bias correction, as Adam adds it


def test_adam_metric_prox_with_amsgrad_uses_the_max_second_moment():
    lr, alpha = 0.1, 0.05
    w0 = torch.full((1, 4), 2.0)
    model, opt, ref, ref_opt = _adam_setup(dl.L1(alpha), None, w0, lr=lr, amsgrad=True, betas=(0.9, 0.5))
    # a large gradient, then small ones: max_exp_avg_sq stays far above exp_avg_sq
    for g in (torch.tensor([[10.0, 5.0, 1.0, 0.5]]), torch.tensor([[0.01, 0.02, 0.01, 0.02]])):
        before = model.w.detach().clone()
        ref.data.copy_(before)
        model.w.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    st = opt.state[model.w]
    assert (st["max_exp_avg_sq"] > 1.9 * st["exp_avg_sq"]).all()
    thr = _threshold(opt, model.w, lr, alpha, amsgrad=True)
    w = ref.detach().double()
    expected = torch.sign(w) * (w.abs() - thr).clamp_min(0)
    torch.testing.assert_close(model.w.detach().double(), expected, rtol=1e-6, atol=1e-7)
    wrong = torch.sign(w) * (w.abs() - _threshold(opt, model.w, lr, alpha)).clamp_min(0)
    assert not torch.allclose(wrong, expected, rtol=1e-4, atol=1e-5)


def test_adam_metric_adds_eps_after_the_bias_correction():
    lr, alpha, eps = 0.1, 0.5, 0.05  # a large eps: its place in the formula shows
    w0 = torch.full((1, 3), 3.0)
    g = torch.tensor([[0.1, 0.01, 1.0]])
    model, opt, ref, ref_opt = _adam_setup(dl.L1(alpha), None, w0, lr=lr, eps=eps)
    for _ in range(3):  # steps 1..3: the bias correction 1 - 0.999**t is far from 1
        ref.data.copy_(model.w.detach())
        model.w.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    st = opt.state[model.w]
    beta2 = 0.999
    bc2 = 1 - beta2 ** float(st["step"])
    v = st["exp_avg_sq"].double()
    right = lr * alpha / (v.sqrt() / math.sqrt(bc2) + eps)
    wrong = lr * alpha / ((v.sqrt() + eps) / math.sqrt(bc2))
    assert ((right - wrong).abs() > 1e-3).all()
    w = ref.detach().double()
    torch.testing.assert_close(model.w.detach().double(), w - right, rtol=1e-6, atol=1e-7)


def test_group_lasso_adam_metric_uses_the_harmonic_mean_step():
    lr, alpha = 0.1, 0.02
    w0 = torch.tensor([[3.0, 4.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    g = torch.tensor([[1.0, 0.01, 0.1, 2.0], [0.5, 0.5, 0.05, 0.05]])  # unequal steps in a group
    model, opt, ref, ref_opt = _adam_setup(dl.GroupLasso(alpha, groups="rows"), None, w0, lr=lr)
    model.w.grad, ref.grad = g.clone(), g.clone()
    opt.step()
    ref_opt.step()
    steps = _threshold(opt, model.w, lr, 1.0)  # per-coordinate lr / (sqrt(v_hat) + eps)
    harmonic = 1.0 / (1.0 / steps).mean(dim=1, keepdim=True)
    arithmetic = steps.mean(dim=1, keepdim=True)
    assert ((harmonic - arithmetic).abs() > 0.1 * harmonic).all()
    w = ref.detach().double()
    t = harmonic * alpha * math.sqrt(4)
    expected = w * (1 - t / w.norm(dim=1, keepdim=True)).clamp_min(0)
    torch.testing.assert_close(model.w.detach().double(), expected, rtol=1e-6, atol=1e-7)


def test_group_prox_with_unequal_per_coordinate_steps_closed_form():
    # row (3, 4): norm 5, steps (1, 1/4): harmonic mean 1 / ((1 + 4) / 2) = 0.4 (arithmetic: 0.625)
    w = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    dl.GroupLasso(1.0, groups="rows").prox_([w], [torch.tensor([[1.0, 0.25]], dtype=torch.float64)])
    factor = 1 - 0.4 * math.sqrt(2) / 5
    torch.testing.assert_close(w, torch.tensor([[3.0 * factor, 4.0 * factor]], dtype=torch.float64),
                               rtol=1e-15, atol=0)
