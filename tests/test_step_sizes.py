"""Adam's per-coordinate step sizes for the Adam-metric prox (decaylab.step_sizes): the
threshold is ``lr * alpha / max(sqrt(v_hat) + eps, alpha)``, eps after the bias correction,
``max_exp_avg_sq`` under ``amsgrad``, the harmonic mean of a group's steps for GroupLasso, and
the same capped steps for every penalty that takes them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

import decaylab as dl
from decaylab.step_sizes import StepSizes

from conftest import Holder, buckets, linear_from


def test_adam_metric_prox_uses_adams_per_coordinate_step():
    lr, alpha = 0.1, 1e-3  # threshold lr * alpha / max(|g|, alpha) = [1e-4, 1e-3, 1e-2, 5e-5, 5e-3, lr]
    w0 = torch.tensor([[0.5, 0.5, 0.105, 0.5, -0.097, 0.35]])
    g = torch.tensor([[1.0, 0.1, 0.01, 2.0, -0.02, 1e-5]])
    model = linear_from(w0)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=lr), model, dl.Rule(dl.L1(alpha), metric="adam"))
    ref = nn.Parameter(w0.clone())
    ref_opt = torch.optim.Adam([ref], lr=lr)
    model.weight.grad, ref.grad = g.clone(), g.clone()
    opt.step()
    ref_opt.step()  # the same Adam step without the penalty: w0 - lr * sign(g)
    st = opt.state[model.weight]
    beta2, eps = opt.param_groups[0]["betas"][1], opt.param_groups[0]["eps"]
    v_hat = st["exp_avg_sq"] / (1 - beta2 ** float(st["step"]))
    thr = lr * alpha / torch.clamp_min(v_hat.sqrt() + eps, alpha)
    w = ref.detach()
    expected = torch.sign(w) * (w.abs() - thr).clamp_min(0)
    got = model.weight.detach()
    assert torch.allclose(got, expected, atol=1e-7, rtol=1e-6)
    zero = w.abs() <= thr
    assert zero.tolist() == [[False, False, True, False, True, False]]
    assert (got[zero] == 0).all() and (got[~zero] != 0).all()
    # the last coordinate's uncapped threshold lr * alpha / 1e-5 = 10 would have zeroed it
    assert float(got[0, 5]) == pytest.approx(float(w[0, 5]) - lr, abs=1e-6) and float(w[0, 5]) > 0.24


def _adam_setup(penalty, grads, w0, **adam):
    model = Holder(w0)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), **adam), model,
                        dl.Rule(penalty, params="w", metric="adam"))
    ref = nn.Parameter(w0.clone())
    ref_opt = torch.optim.Adam([ref], **adam)
    return model, opt, ref, ref_opt


def _threshold(opt, p, lr, alpha, amsgrad=False):
    st = opt.state[p]
    beta2, eps = opt.param_groups[0]["betas"][1], opt.param_groups[0]["eps"]
    v = st["max_exp_avg_sq"] if amsgrad else st["exp_avg_sq"]
    v_hat = v.double() / (1 - beta2 ** float(st["step"]))
    # eps after the bias correction, as Adam adds it; capped at lr (never-seen coordinates)
    return lr * alpha / torch.clamp_min(v_hat.sqrt() + eps, alpha)


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
    lr, alpha, eps = 0.1, 0.04, 0.05  # a large eps: its place in the formula shows (alpha < eps: no cap)
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
    assert ((right - wrong).abs() > 1e-4).all()
    w = ref.detach().double()
    torch.testing.assert_close(model.w.detach().double(), w - right, rtol=1e-6, atol=1e-7)


def test_group_lasso_adam_metric_uses_the_harmonic_mean_step():
    lr, alpha = 0.1, 0.02
    w0 = torch.tensor([[3.0, 4.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    g = torch.tensor([[1.0, 0.03, 0.1, 2.0], [0.5, 0.5, 0.05, 0.05]])  # unequal steps in a group (all > alpha)
    model, opt, ref, ref_opt = _adam_setup(dl.GroupLasso(alpha, groups="rows"), None, w0, lr=lr)
    model.w.grad, ref.grad = g.clone(), g.clone()
    opt.step()
    ref_opt.step()
    steps = _threshold(opt, model.w, lr, alpha) / alpha  # per-coordinate lr / max(sqrt(v_hat) + eps, alpha)
    harmonic = 1.0 / (1.0 / steps).mean(dim=1, keepdim=True)
    arithmetic = steps.mean(dim=1, keepdim=True)
    assert ((harmonic - arithmetic).abs() > 0.1 * harmonic).all()
    w = ref.detach().double()
    t = harmonic * alpha * math.sqrt(4)
    expected = w * (1 - t / w.norm(dim=1, keepdim=True)).clamp_min(0)
    torch.testing.assert_close(model.w.detach().double(), expected, rtol=1e-6, atol=1e-7)


def test_group_lasso_adam_metric_columns_of_a_square_weight():
    lr, alpha = 0.1, 0.02
    w0 = torch.tensor([[3.0, 1.0, 0.5], [4.0, 1.0, 0.5], [0.0, 1.0, 0.5]])
    g = torch.tensor([[1.0, 0.01, 0.1], [2.0, 0.5, 0.05], [0.5, 0.05, 1.0]])
    model, opt, ref, ref_opt = _adam_setup(dl.GroupLasso(alpha, groups="columns"), None, w0, lr=lr)
    model.w.grad, ref.grad = g.clone(), g.clone()
    opt.step()
    ref_opt.step()
    steps = _threshold(opt, model.w, lr, alpha) / alpha  # per-coordinate lr / max(sqrt(v_hat) + eps, alpha)
    harmonic = 1.0 / (1.0 / steps).mean(dim=0, keepdim=True)  # one step per column
    w = ref.detach().double()
    expected = w * (1 - harmonic * alpha * math.sqrt(3) / w.norm(dim=0, keepdim=True)).clamp_min(0)
    torch.testing.assert_close(model.w.detach().double(), expected, rtol=1e-6, atol=1e-7)


def test_adam_metric_leaves_never_seen_embedding_rows_alone():
    lr, alpha = 1e-3, 1e-4  # uncapped: threshold lr * alpha / eps = 10 for unseen rows
    torch.manual_seed(0)
    emb = nn.Embedding(50, 16)
    w0 = emb.weight.detach().clone()
    opt = dl.regularize(torch.optim.Adam(emb.parameters(), lr=lr), emb,
                        dl.Rule(dl.L1(alpha), params="weight", metric="adam"))
    emb(torch.tensor([0, 1, 2])).sum().backward()  # rows 3.. get an all-zero gradient
    opt.step()
    unseen, moved = emb.weight[3:].detach(), (emb.weight[3:] - w0[3:]).abs()
    assert float(moved.max()) <= lr + 1e-6  # at most lr: what Adam with L1 in the loss moves
    assert float((unseen == 0).float().mean()) < 0.01  # not wiped (only |w| <= lr is zeroed)
    assert torch.equal(unseen == 0, w0[3:].abs() <= lr)


def test_adam_metric_does_not_wipe_a_zero_initialized_lora_pair():
    torch.manual_seed(0)
    a, b = nn.Linear(8, 4, bias=False), nn.Linear(4, 8, bias=False)
    nn.init.zeros_(b.weight)  # LoRA: B = 0, so A gets no gradient at step 1
    model = nn.Sequential(a, b)
    a0 = a.weight.detach().clone()
    opt = dl.regularize(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0), model,
                        dl.Rule(dl.L1(1e-4), params="*", metric="adam"))
    Fn.mse_loss(model(torch.randn(16, 8)), torch.randn(16, 8)).backward()
    assert float(a.weight.grad.abs().max()) == 0.0
    opt.step()
    assert float((a.weight == 0).float().mean()) < 0.05
    assert float((a.weight - a0).abs().max()) <= 1e-3 + 1e-6


def test_adam_group_threshold_leaves_a_nan_coordinate_out_of_its_groups_mean():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4, bias=False)
    opt = dl.regularize(torch.optim.Adam(lin.parameters(), lr=0.1), lin, dl.GroupLasso(0.01), fused=False)
    lin(torch.randn(8, 6)).pow(2).sum().backward()
    opt.step()
    v = opt.state[lin.weight]["exp_avg_sq"]
    v[1, 2] = float("nan")
    b = buckets(opt).all[0]  # private: StepSizes is built for one of the wrapper's buckets
    steps = StepSizes(opt.optimizer, b, 0.1, None, [lin.weight], buckets(opt).scratch)
    (t,) = steps.group_thresholds([b.rule.penalty.kernel_dims(None, lin.weight)])
    d = (v.sqrt() / math.sqrt(1 - 0.999) + 1e-8).clamp_min(0.01)
    expected = 0.1 * 0.01 / torch.nanmean(d, dim=1, keepdim=True)
    assert torch.isfinite(t).all()
    torch.testing.assert_close(t, expected, rtol=1e-6, atol=0.0)


# -- one objective, one update: every penalty that takes Adam's steps gets them capped ---


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
