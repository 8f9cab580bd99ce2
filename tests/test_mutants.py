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


def test_group_prox_with_unequal_per_coordinate_steps_closed_form():
    # row (3, 4): norm 5, steps (1, 1/4): harmonic mean 1 / ((1 + 4) / 2) = 0.4 (arithmetic: 0.625)
    w = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    dl.GroupLasso(1.0, groups="rows").prox_([w], [torch.tensor([[1.0, 0.25]], dtype=torch.float64)])
    factor = 1 - 0.4 * math.sqrt(2) / 5
    torch.testing.assert_close(w, torch.tensor([[3.0 * factor, 4.0 * factor]], dtype=torch.float64),
                               rtol=1e-15, atol=0)


# -- found by mutation testing (bench/mutation.sh): behaviours no test pinned ---------------

from decaylab import functional as F  # noqa: E402
from decaylab.groups import Rows  # noqa: E402

_KERNELS = ("shrink_", "soft_threshold_", "elastic_net_prox_", "div_", "pull_toward_")


@pytest.fixture
def foreach_seen(monkeypatch):
    """The ``foreach`` value each functional kernel was called with."""
    seen = []
    for name in _KERNELS:
        real = getattr(F, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            fe = kwargs["foreach"] if "foreach" in kwargs else args[-1]
            seen.append((_name, fe))
            return _real(*args, **kwargs)

        monkeypatch.setattr(F, name, spy)
    return seen


@pytest.mark.parametrize("op, make", [
    ("decay_", lambda: dl.L2(0.1)), ("prox_", lambda: dl.L2(0.1)), ("decay_", lambda: dl.L1(0.1)),
    ("decay_", lambda: dl.ElasticNet(0.1, l1_ratio=0.5)), ("prox_", lambda: dl.ElasticNet(0.1, l1_ratio=0.5)),
    ("decay_", lambda: dl.L2SP(0.1)),
], ids=["L2-decay", "L2-prox", "L1-decay", "EN-decay", "EN-prox", "L2SP-decay"])
@pytest.mark.parametrize("foreach", [True, False])
def test_the_foreach_choice_reaches_every_kernel(op, make, foreach, foreach_seen):
    w = [torch.full((3, 2), 2.0), torch.full((4,), -2.0)]
    ctxs = [torch.zeros_like(t) for t in w]
    getattr(make(), op)(w, 0.1, ctxs, foreach=foreach)
    assert foreach_seen and all(fe is foreach for _, fe in foreach_seen), foreach_seen


def test_group_prox_shrinks_every_tensor_of_a_list():
    a = torch.tensor([[3.0, 4.0]])
    b = torch.tensor([[6.0, 8.0]])
    F.group_soft_threshold_([a, b], 1.0, [Rows(), Rows()])  # thresholds sqrt(2): norms 5 and 10
    torch.testing.assert_close(a, torch.tensor([[3.0, 4.0]]) * (1 - math.sqrt(2) / 5))
    torch.testing.assert_close(b, torch.tensor([[6.0, 8.0]]) * (1 - math.sqrt(2) / 10))


def test_pull_toward_with_per_tensor_scales_of_another_dtype():
    w = [torch.tensor([2.0, 4.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)]
    refs = [torch.zeros(2, dtype=torch.float32), torch.zeros(1, dtype=torch.float32)]
    F.pull_toward_(w, refs, [torch.tensor([0.25, 0.5]), torch.tensor([2.0])])  # a list, float32 scales
    assert torch.equal(w[0], torch.tensor([1.5, 2.0], dtype=torch.float64))
    assert torch.equal(w[1], torch.tensor([0.0], dtype=torch.float64))  # clamped at the reference


def test_l2sp_prox_with_per_coordinate_steps_and_a_float32_strength_on_float64_weights():
    w = torch.tensor([[3.0, 3.0]], dtype=torch.float64)
    ref = torch.tensor([[1.0, 1.0]], dtype=torch.float32)
    dl.L2SP(1.0).prox_([w], [torch.tensor([[1.0, 3.0]], dtype=torch.float64)], [ref])
    # (w + s*w0) / (1 + s): s = 1 -> 2, s = 3 -> 1.5
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.5]], dtype=torch.float64), rtol=1e-15, atol=0)
    v = torch.full((2, 2), 3.0, dtype=torch.float64)
    dl.L2SP(torch.tensor([1.0, 3.0])).prox_([v], 1.0, [torch.ones(2, 2, dtype=torch.float64)])
    torch.testing.assert_close(v[:, 0], torch.tensor([2.0, 1.5], dtype=torch.float64), rtol=1e-7, atol=0)


def test_l2sp_reference_is_stored_in_the_parameters_dtype():
    model = nn.Linear(2, 2)
    ref = {n: torch.ones_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.L2SP(0.1, ref))
    assert opt.bindings[0].ctxs[0].dtype == torch.float32


def test_group_lasso_gradient_is_the_scaled_unit_direction_and_zero_at_zero():
    w = torch.tensor([[0.3, 0.4], [0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)  # a norm below 1 too
    g = dl.GroupLasso(2.0, groups="rows").grad(w)
    expected = torch.tensor([[0.6, 0.8], [0.0, 0.0], [0.6, 0.8]], dtype=torch.float64) * 2.0 * math.sqrt(2)
    torch.testing.assert_close(g, expected, rtol=1e-15, atol=0)
    tiny = torch.tensor([[1e-30, 1e-30]])  # float32: the norm underflows to 0
    assert dl.GroupLasso(1.0, groups="rows").grad(tiny).abs().max() <= math.sqrt(2)


def test_penalty_value_with_a_schedule_and_rules_without_penalty():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(2.0)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, [
        dl.Rule(None, params="*.bias"),  # first: must not stop the sum
        dl.Rule(dl.L1(0.5), params="0.weight", schedule=lambda s: 0.5),
        dl.Rule(dl.L2(1.0), params="1.weight"),
    ])
    assert float(opt.penalty_value().detach()) == pytest.approx(0.5 * 0.5 * 4 + 0.5 * 16)
    only_none = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.Rule(None))
    assert torch.equal(only_none.penalty_value(), torch.zeros(()))


def test_a_checkpoint_without_l2sp_snapshots_still_loads():
    model = nn.Linear(2, 2)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.L1(0.1))
    sd = opt.state_dict()
    del sd["decaylab"]["references"]  # written before snapshots were saved
    sd["decaylab"]["steps"] = 7
    opt.load_state_dict(sd)
    assert opt.steps == 7


def test_low_precision_residuals_are_float32():
    model = Holder(torch.ones(3, dtype=torch.bfloat16))
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.Rule(dl.L2(1e-4), params="w"))
    model.w.grad = torch.zeros_like(model.w)
    opt.step()
    (res,) = opt.state_dict()["decaylab"]["residuals"].values()
    assert res.dtype == torch.float32 and res.shape == (3,)


def test_add_param_group_reaches_the_inner_optimizer_without_a_penalty():
    model = nn.Linear(2, 2)
    extra = nn.Parameter(torch.ones(2, 2))
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.L2(0.5))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    assert opt.optimizer.param_groups[1]["params"] == [extra]
    extra.grad = torch.zeros(2, 2)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(extra.detach(), torch.ones(2, 2))


def test_repr_names_the_optimizer_rules_and_counts():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                        [dl.L1(1e-3), dl.Rule(None, params="*.bias")])
    assert repr(opt) == "Regularized(SGD, [L1(alpha=0.001):prox on 2, None:prox on 2])"
    assert repr(dl.L2(torch.tensor([0.5, 1e-3]))) == "L2(alpha=tensor([0.5, 0.001]))"
    assert repr(dl.L2(torch.tensor([1 / 3]))) == "L2(alpha=tensor([0.33333334]))"  # 8 decimals


def test_group_lasso_function_groups_refuse_per_coordinate_steps():
    pen = dl.GroupLasso(0.1, groups=lambda s: torch.zeros(s, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^GroupLasso with groups=<function> supports metric='lr' only; "
                                         r"use metric='lr' or a built-in grouping \('rows', 'inputs', 'channels'\)$"):
        pen.prox_([torch.ones(2, 2)], [torch.ones(2, 2)])


def test_error_messages_name_the_parameter_and_the_keys():
    with pytest.raises(ValueError, match=r"^L2SP\.value\(\) needs references= for tensors not bound by regularize\(\)$"):
        dl.L2SP(1.0).value([torch.ones(1)])
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"no entry for 'weight' \(its keys are 'bias', 'a', 'b', 'c', 'd', \.\.\.\)"):
        dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                      dl.L2SP(0.1, {k: torch.zeros(2) for k in ("bias", "a", "b", "c", "d", "e")}))
    for keys, shown in [(("bias", "a", "b", "c", "d"), "'bias', 'a', 'b', 'c', 'd'"), ((), "none")]:
        with pytest.raises(ValueError, match=rf"no entry for 'weight' \(its keys are {shown}\); pass"):
            dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                          dl.L2SP(0.1, {k: torch.zeros(2) for k in keys}))
    model = nn.Linear(2, 3)
    for pen in (dl.GroupLasso(torch.tensor([0.1, 0.2])), dl.L2SP(torch.tensor([0.1, 0.2]))):
        with pytest.raises(ValueError, match=r"2 strengths .* but 'weight' has shape \(3, 2\)"):
            dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, pen)


def test_name_predicates_on_top_level_and_nested_names():
    lin, conv = nn.Linear(2, 2), nn.Conv2d(1, 1, 1)
    assert dl.biases("bias", lin.bias, lin) and dl.biases("a.b.bias", lin.bias, lin)
    assert not dl.biases("weight", lin.weight, lin) and not dl.biases("a.bias.weight", lin.weight, lin)
    sel = dl.weights(nn.Linear, nn.Bilinear)  # built here, not at collection time
    assert sel.__name__ == "weights(Linear, Bilinear)"
    assert sel("weight", lin.weight, lin) and sel("a.b.weight", lin.weight, lin)
    assert not sel("bias", lin.bias, lin) and not sel("a.weight.bias", lin.bias, lin)
    assert not sel("weight", conv.weight, conv)
    opt = dl.regularize(torch.optim.SGD(lin.parameters(), lr=0.1), lin,
                        [dl.Rule(dl.L2(0.1), params=dl.biases), dl.Rule(dl.L1(0.1), params=dl.weights(nn.Linear))])
    assert [b.names for b in opt.bindings] == [["bias"], ["weight"]]


def test_elastic_net_default_l1_ratio_is_one_half():
    assert dl.ElasticNet(0.1).l1_ratio == 0.5
    assert repr(dl.ElasticNet(0.1)) == "ElasticNet(alpha=0.1, l1_ratio=0.5)"


def test_elastic_net_gradient_at_zero_is_the_l2_part_only():
    w = torch.tensor([0.0, 2.0, -1.0])
    g = dl.ElasticNet(2.0, l1_ratio=0.25).grad(w)  # alpha * (r * sign(w) + (1 - r) * w)
    torch.testing.assert_close(g, torch.tensor([0.0, 2.0 * (0.25 + 0.75 * 2.0), 2.0 * (-0.25 - 0.75)]))


def test_group_lasso_gradient_keeps_the_weights_dtype():
    w = torch.ones(2, 3, dtype=torch.bfloat16)
    assert dl.GroupLasso(0.1).grad(w).dtype == torch.bfloat16


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


def test_l2sp_snapshots_for_a_rule_that_does_not_exist_here():
    model = nn.Linear(3, 2)
    two = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                        [dl.Rule(dl.L2(0.1), params="bias"), dl.Rule(dl.L2SP(0.1), params="weight")])
    one = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.Rule(dl.L2SP(0.1), params="weight"))
    with pytest.raises(ValueError, match=r"L2SP snapshots for rule 1, which is not an L2SP rule"):
        one.load_state_dict(two.state_dict())
