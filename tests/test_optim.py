"""The regularize() wrapper: an Optimizer that applies penalties once per real step; it
survives copies and pickles, takes closures (LBFGS), and names bad input."""
from __future__ import annotations

import copy
import math
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

import decaylab as dl
from decaylab import _compat
from conftest import ConvFc, Holder, linear_from, pickled, reg, reg_adam, zero_grads


# -- the Optimizer surface -----------------------------------------------------------

def test_is_an_optimizer_sharing_the_inner_state():
    model = nn.Linear(3, 2)
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt = dl.regularize(inner, model, dl.L1(1e-3))
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is inner.param_groups
    assert opt.defaults is inner.defaults
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert opt.state is inner.state
    assert set(opt.state) == set(model.parameters())
    assert int(opt.state[model.weight]["step"]) == 1
    opt.zero_grad()
    assert model.weight.grad is None
    opt.param_groups[0]["lr"] = 0.5  # schedulers write here
    assert inner.param_groups[0]["lr"] == 0.5


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.4, total_steps=8),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_lr_schedulers_drive_the_prox_threshold(name):
    alpha = 0.05
    model = linear_from([[1.0, -0.5, 0.25], [2.0, -3.0, 0.01]])
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9), model, dl.L1(alpha))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()" etc.
        sched = SCHEDULERS[name](opt)
        expected = model.weight.detach().clone()
        lrs = []
        for _ in range(6):
            lr = opt.param_groups[0]["lr"]
            lrs.append(lr)
            zero_grads(model)  # the inner SGD step is a no-op: only the prox moves w
            opt.step()
            expected = Fn.softshrink(expected, lr * alpha)
            assert torch.equal(model.weight.detach(), expected)
            sched.step()
    assert len(set(lrs)) > 2  # the scheduler really changed the lr


def test_prox_threshold_is_lr_times_alpha_after_a_scheduler_step():
    model = linear_from([[1.0, -0.1, 0.25, -0.75]])
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.5), model, dl.L1(0.25))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    zero_grads(model)
    opt.step()  # threshold 0.5 * 0.25
    assert model.weight.tolist() == [[0.875, 0.0, 0.125, -0.625]]
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.25
    opt.step()  # threshold 0.25 * 0.25
    assert model.weight.tolist() == [[0.8125, 0.0, 0.0625, -0.5625]]


def test_each_param_group_uses_its_own_lr():
    a, b = linear_from([[1.0, -0.5]]), linear_from([[1.0, -0.5]])
    model = nn.Sequential(a, b)
    inner = torch.optim.SGD([{"params": a.parameters(), "lr": 0.5}, {"params": b.parameters()}], lr=0.25)
    opt = dl.regularize(inner, model, dl.L1(0.25))
    zero_grads(model)
    opt.step()
    assert a.weight.tolist() == [[0.875, -0.375]]
    assert b.weight.tolist() == [[0.9375, -0.4375]]


def test_step_with_closure_returns_its_loss_in_coupled_mode():
    torch.manual_seed(0)
    lr, alpha = 0.1, 0.3
    model = nn.Linear(3, 1, bias=False)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=lr), model, dl.Rule(dl.L2(alpha), mode="coupled"))
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = Fn.mse_loss(model(x), y)
        loss.backward()
        return loss

    w0 = model.weight.detach().clone()
    w0r = w0.clone().requires_grad_()
    g = torch.autograd.grad(Fn.mse_loss(x @ w0r.T, y), w0r)[0]
    expected_loss = Fn.mse_loss(x @ w0.T, y)
    loss = opt.step(closure)
    assert len(calls) == 1
    assert torch.is_tensor(loss) and torch.allclose(loss, expected_loss)
    assert torch.allclose(model.weight.detach(), w0 - lr * (g + alpha * w0), atol=1e-7)
    assert opt.step() is None  # no closure, no loss


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


# -- gradient accumulation and missing gradients --------------------------------------

@pytest.mark.parametrize("kind", ["L1-prox", "L2-decoupled", "L2-coupled"])
def test_gradient_accumulation_applies_the_penalty_once(kind):
    torch.manual_seed(1)
    lr, alpha = 0.1, 0.5
    model = nn.Linear(4, 3, bias=False)
    pen = {"L1-prox": dl.L1(alpha), "L2-decoupled": dl.L2(alpha),
           "L2-coupled": dl.Rule(dl.L2(alpha), mode="coupled")}[kind]
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=lr), model, pen)
    batches = [(torch.randn(5, 4), torch.randn(5, 3)) for _ in range(4)]
    w0 = model.weight.detach().clone()
    g = torch.zeros_like(w0)
    for x, y in batches:
        w = w0.clone().requires_grad_()
        g += torch.autograd.grad(Fn.mse_loss(x @ w.T, y), w)[0]
    for x, y in batches:  # 4 backward passes, one step
        Fn.mse_loss(model(x), y).backward()
    opt.step()
    if kind == "L1-prox":
        expected = Fn.softshrink(w0 - lr * g, lr * alpha)
    elif kind == "L2-decoupled":
        expected = w0 * (1 - lr * alpha) - lr * g
    else:
        expected = w0 - lr * (g + alpha * w0)
    assert opt.steps == 1
    assert torch.allclose(model.weight.detach(), expected, atol=1e-6)
    # applying it 4 times would be far off
    assert not torch.allclose(model.weight.detach(), w0 - lr * g, atol=1e-3)


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(3, 2)
        self.unused = nn.Linear(3, 2)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("rule", [
    dl.Rule(dl.L1(0.5)), dl.Rule(dl.L2(0.5)), dl.Rule(dl.L2(0.5), mode="coupled"),
    dl.Rule(dl.ElasticNet(0.5)), dl.Rule(dl.GroupLasso(0.5)), dl.Rule(dl.L2SP(0.5), mode="prox"),
], ids=["L1", "L2", "L2-coupled", "ElasticNet", "GroupLasso", "L2SP-prox"])
def test_parameters_without_grad_are_skipped(rule):
    torch.manual_seed(2)
    model = TwoHeads()
    if isinstance(rule.penalty, dl.L2SP):
        rule = dl.Rule(dl.L2SP(0.5, {n: torch.zeros_like(p) for n, p in model.named_parameters()}), mode="prox")
    opt = dl.regularize(torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0), model, rule)
    before = model.unused.weight.detach().clone()
    used = model.used.weight.detach().clone()
    model(torch.randn(4, 3)).sum().backward()
    assert model.unused.weight.grad is None
    opt.step()
    assert torch.equal(model.unused.weight.detach(), before)
    assert not torch.equal(model.used.weight.detach(), used)


# -- strengths that change -----------------------------------------------------------

def test_strength_schedule_and_alpha_changes_take_effect():
    lr, alpha = 0.5, 0.1
    model = linear_from([[4.0, -4.0]])
    pen = dl.L1(alpha)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=lr), model,
                        dl.Rule(pen, schedule=lambda s: min(1, s / 10)))
    zero_grads(model)
    prev = 4.0
    for s in range(15):
        opt.step()
        now = model.weight[0, 0].item()
        assert now == pytest.approx(prev - lr * alpha * min(1, s / 10), abs=1e-6), s
        assert model.weight[0, 1].item() == -now
        prev = now
    assert model.weight[0, 0].item() == pytest.approx(4.0 - lr * alpha * (sum(range(10)) / 10 + 5), abs=1e-5)
    pen.alpha = 0.0
    opt.step()
    assert model.weight[0, 0].item() == prev
    pen.alpha = 0.4
    opt.step()
    assert model.weight[0, 0].item() == pytest.approx(prev - lr * 0.4, abs=1e-6)


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


# -- low precision -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", ["L2-decoupled", "L1-prox"])
def test_tiny_decay_accumulates_in_low_precision(dtype, kind):
    lr, alpha, steps = 0.1, 1e-4, 500  # lr * alpha = 1e-5, far below bf16/fp16 rounding near 1
    w0 = torch.tensor([1.0, -2.0, 0.75])
    model = Holder(w=w0.to(dtype))
    pen = dl.L2(alpha) if kind == "L2-decoupled" else dl.L1(alpha)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=lr), model, dl.Rule(pen, params="w"))
    for _ in range(steps):
        zero_grads(model)
        opt.step()
    if kind == "L2-decoupled":
        exact = w0.double() * (1 - lr * alpha) ** steps
        # (eps=1e-4: torch's default 1e-8 is 0 in fp16, and 0/0 would be NaN)
        naive = torch.optim.AdamW([nn.Parameter(w0.to(dtype))], lr=lr, weight_decay=alpha, eps=1e-4)
    else:
        exact = torch.sign(w0.double()) * (w0.double().abs() - steps * lr * alpha)
        naive = None
    got = model.w.detach()
    assert got.dtype == dtype
    # the nearest representable value: the effective shrink is right to well under half an ulp
    assert torch.equal(got, exact.to(dtype)), (got, exact)
    assert not torch.equal(got, w0.to(dtype))
    # ... where the textbook update in the same precision never moves at all
    p = w0.to(dtype)
    if naive is not None:
        q = naive.param_groups[0]["params"][0]
        for _ in range(steps):
            q.grad = torch.zeros_like(q)
            naive.step()
        p = q.detach()
    else:
        for _ in range(steps):
            p = Fn.softshrink(p, lr * alpha)
    assert torch.equal(p, w0.to(dtype))


# -- batched strengths ---------------------------------------------------------------

class Stacked(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):  # x [B, in] shared by all configurations -> [K, B, out]
        return torch.einsum("bi,koi->kbo", x, self.w) if self.w.ndim == 3 else x @ self.w.T


def _run(w, pen, data, lr=0.1):
    model = Stacked(w)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=lr), model, dl.Rule(pen, params="w"))
    for x, y in data:
        out = model(x)
        loss = ((out - y) ** 2).mean(dim=(-2, -1)).sum()  # per-configuration MSE, summed
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.w.detach()


@pytest.mark.parametrize("make", [
    lambda a: dl.L1(a), lambda a: dl.L2(a),
    lambda a: dl.ElasticNet(a, l1_ratio=0.3), lambda a: dl.GroupLasso(a, groups="rows"),
    lambda a: dl.GroupLasso(a, groups="inputs"),
], ids=["L1", "L2", "ElasticNet", "GroupLasso-rows", "GroupLasso-inputs"])
def test_batched_strengths_equal_separate_runs(make):
    torch.manual_seed(4)
    alphas = torch.tensor([0.0, 1e-2, 1e-1])
    w0 = torch.randn(3, 4, 5) * 0.3
    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(16, 5, generator=g), torch.randn(16, 4, generator=g)) for _ in range(25)]
    batched = _run(w0, make(alphas), data)
    for k in range(3):
        single = _run(w0[k], make(float(alphas[k])), data)
        assert torch.allclose(batched[k], single, atol=1e-6), k
        assert torch.equal(batched[k] == 0, single == 0), k
    if not isinstance(make(0.0), dl.L2):
        assert (batched[2] == 0).any() and not (batched[0] == 0).any()


def test_batched_strength_in_coupled_mode_equals_separate_runs():
    torch.manual_seed(6)
    alphas = torch.tensor([0.0, 0.5, 2.0])
    w0 = torch.randn(3, 2, 3)
    data = [(torch.randn(8, 3), torch.randn(8, 2)) for _ in range(5)]

    def run(w, a):
        model = Stacked(w)
        opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                            dl.Rule(dl.L2(a), params="w", mode="coupled"))
        for x, y in data:
            opt.zero_grad()
            ((model(x) - y) ** 2).mean(dim=(-2, -1)).sum().backward()
            opt.step()
        return model.w.detach()

    batched = run(w0, alphas)
    for k in range(3):
        assert torch.allclose(batched[k], run(w0[k], float(alphas[k])), atol=1e-6)


# -- penalty_value -------------------------------------------------------------------

def test_penalty_value_is_the_differentiable_sum_of_rule_values():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.Linear(2, 2))
    ref = {"2.weight": torch.randn(2, 3)}
    l1, gl, sp = dl.L1(0.1), dl.GroupLasso(0.2, groups="inputs"), dl.L2SP(0.3, ref)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, [
        dl.Rule(l1), dl.Rule(gl, params="0.weight"), dl.Rule(sp, params="2.weight"),
        dl.Rule(None, params="*.bias"),
    ])
    w0, w2, w3 = model[0].weight, model[2].weight, model[3].weight
    expected = (0.1 * w3.abs().sum()
                + 0.2 * math.sqrt(3) * w0.norm(dim=0).sum()
                + 0.15 * ((w2 - ref["2.weight"]) ** 2).sum())
    value = opt.penalty_value()
    assert torch.allclose(value, expected)
    assert torch.allclose(value, l1.value([w3]) + gl.value([w0]) + sp.value([w2], [ref["2.weight"]]))
    grads = torch.autograd.grad(value, [w0, w2, w3])
    assert torch.allclose(grads[0], 0.2 * math.sqrt(3) * w0 / w0.norm(dim=0, keepdim=True))
    assert torch.allclose(grads[1], 0.3 * (w2 - ref["2.weight"]))
    assert torch.allclose(grads[2], 0.1 * torch.sign(w3))


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


# -- coupled mode: torch's weight_decay, bit for bit ------------------------------------

@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_coupled_l2_sgd_equals_torch_weight_decay_bit_for_bit_and_keeps_grad(momentum):
    torch.manual_seed(8)
    w0 = torch.randn(64, 64)
    ours, theirs = Holder(w=w0.clone()), Holder(w=w0.clone())
    opt = dl.regularize(torch.optim.SGD(ours.parameters(), lr=0.1, momentum=momentum), ours,
                        dl.Rule(dl.L2(0.05), params="w", mode="coupled"))
    ref = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=momentum, weight_decay=0.05)
    for _ in range(3):
        g = torch.randn(64, 64)
        ours.w.grad, theirs.w.grad = g.clone(), g.clone()
        grad_before = ours.w.grad
        opt.step()
        ref.step()
        assert torch.equal(ours.w, theirs.w)  # all 4,096 entries, every bit
        assert ours.w.grad is grad_before and torch.equal(ours.w.grad, g)  # p.grad untouched


@pytest.mark.parametrize("make", [lambda: dl.L2(0.5), lambda: dl.L1(0.5)], ids=["L2", "L1"])
def test_coupled_mode_under_maximize_still_shrinks(make):
    ours, theirs = Holder(w=torch.ones(3)), Holder(w=torch.ones(3))
    opt = dl.regularize(torch.optim.SGD(ours.parameters(), lr=0.1, maximize=True), ours,
                        dl.Rule(make(), params="w", mode="coupled"))
    ours.w.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(ours.w, torch.full((3,), 0.95))  # gradient ascent on -R: shrinks
    if isinstance(opt.bindings[0].rule.penalty, dl.L2):
        ref = torch.optim.SGD(theirs.parameters(), lr=0.1, maximize=True, weight_decay=0.5)
        theirs.w.grad = torch.zeros(3)
        ref.step()
        assert torch.equal(ours.w, theirs.w)


# -- the Adam metric: which optimizers get it -----------------------------------------

ADAM_FAMILY = {
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.0),
    "Adam-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=1e-2),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=1e-2),
}
PLAIN_FAMILY = {
    "SGD": lambda p: torch.optim.SGD(p, lr=1e-2),
    "SGD-momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-2),
    "Adamax": lambda p: torch.optim.Adamax(p, lr=1e-2),  # keeps exp_inf, not exp_avg_sq
}


@pytest.mark.parametrize("name", list(ADAM_FAMILY) + list(PLAIN_FAMILY))
def test_default_metric_follows_what_the_optimizer_keeps(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    make = {**ADAM_FAMILY, **PLAIN_FAMILY}[name]
    opt = dl.regularize(make(model.parameters()), model, [
        dl.Rule(dl.L1(1e-3), params="0.weight"),
        dl.Rule(dl.GroupLasso(1e-3, "rows"), params="1.weight"),
        dl.Rule(dl.L2(1e-2), params="*.bias"),
    ])
    expected = "adam" if name in ADAM_FAMILY else "lr"
    if name == "Adagrad":  # it creates its state in __init__: known at once
        assert opt.metrics == ["lr", "lr", "lr"]
    else:  # the others create it at their first step
        assert opt.metrics == ["auto", "auto", "lr"]
        assert "prox/auto" in dl.summary(opt)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    assert opt.metrics == [expected, expected, "lr"]
    # the buckets the step runs with, not only the metrics it reports
    assert [r["mode"] for r in dl.updates(opt)] == [f"prox/{expected}", f"prox/{expected}", "decoupled"]
    assert f"prox/{expected}" in dl.summary(opt)


def test_explicit_metric_and_non_sparse_rules_are_not_auto():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2), model, [
        dl.Rule(dl.L1(1e-3), params="0.weight", metric="lr"),
        dl.Rule(dl.GroupLasso(1e-3, groups=lambda s: torch.zeros(s, dtype=torch.long)), params="1.weight"),
        dl.Rule(dl.L2SP(1e-2), params="*.bias", mode="prox"),
    ])
    assert opt.metrics == ["lr", "lr", "lr"]


def test_auto_metric_thresholds_equal_explicit_adam_metric():
    runs = []
    for metric in (None, "adam"):
        torch.manual_seed(3)
        model = nn.Linear(6, 4)
        opt = dl.regularize(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0), model,
                            dl.Rule(dl.L1(1e-2), metric=metric))
        x, y = torch.randn(32, 6), torch.randn(32, 4)
        for _ in range(20):
            Fn.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        runs.append(model.weight.detach().clone())
    assert torch.equal(runs[0], runs[1]) and (runs[0] == 0).any()


# -- the inner step: called past torch's profiling wrapper only where that changes nothing --
def _hooked_run(setup):
    """Two steps of Adam under an L1 rule; ``setup(inner)`` registers what is tested and
    returns what to check. Returns (that, how many times the inner wrapper ran)."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    inner = torch.optim.Adam(lin.parameters(), lr=0.1)
    opt = dl.regularize(inner, lin, dl.L1(0.01), fused=False)
    wrapped = []
    inner._optimizer_step_code = lambda: wrapped.append(1)  # the wrapper calls it after the step
    seen = setup(inner)
    for _ in range(2):
        lin(torch.randn(5, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
    return seen, len(wrapped)


def test_inner_step_skips_the_wrapper_only_when_nothing_hooks_it():
    assert _hooked_run(lambda inner: None) == (None, 0)
    calls = []
    _, wrapped = _hooked_run(lambda inner: (inner.register_step_pre_hook(lambda *a: calls.append("pre")),
                                            inner.register_step_post_hook(lambda *a: calls.append("post"))))
    assert wrapped == 2 and calls == ["pre", "post"] * 2
    calls.clear()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(
        lambda o, *a: calls.append(type(o).__name__))
    try:
        _, wrapped = _hooked_run(lambda inner: None)
    finally:
        handle.remove()
    assert wrapped == 2 and calls.count("Adam") == 2  # a global hook sees the inner step too


def test_inner_step_keeps_the_wrapper_for_a_scheduler_built_on_it_and_under_the_profiler():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" would raise
        sched, wrapped = _hooked_run(lambda inner: torch.optim.lr_scheduler.StepLR(inner, 1, gamma=0.5))
        sched.step()
    assert wrapped == 2 and sched.last_epoch == 1
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _, wrapped = _hooked_run(lambda inner: None)
    assert wrapped == 2
    assert any(e.name == "Optimizer.step#Adam.step" for e in prof.events())


def test_step_hooks_and_the_profiler_range_of_the_wrapper_itself():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    opt = dl.regularize(torch.optim.SGD(lin.parameters(), lr=0.1), lin, dl.L1(0.01))
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(("pre", type(o).__name__)))
    # a pre hook may replace the arguments (which start with the optimizer, as in torch):
    # here it hands step() a closure
    opt.register_step_pre_hook(lambda o, args, kwargs: (args[:1], {"closure": lambda: torch.tensor(7.0)}))
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(("args", args[0] is o, sorted(kwargs))))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(("post", o is opt, args[0] is o,
                                                                     sorted(kwargs))))
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(lambda o, *a: seen.append(("global", type(o).__name__)))
    try:
        lin(torch.randn(5, 4)).sum().backward()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            assert float(opt.step()) == 7.0
    finally:
        handle.remove()
    # global pre hooks first, then the wrapper's own; the inner optimizer's step is hooked too
    assert seen[:4] == [("global", "Regularized"), ("pre", "Regularized"), ("args", True, ["closure"]),
                        ("global", "SGD")]
    assert seen[-1] == ("post", True, True, ["closure"])
    assert any(e.name == "Optimizer.step#Regularized.step" for e in prof.events())
    bad = opt.register_step_pre_hook(lambda o, args, kwargs: "not a tuple")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()
    bad.remove()
    opt.register_step_pre_hook(lambda o, args, kwargs: (args, kwargs, "a third"))
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()


def test_without_hooks_the_wrapper_takes_the_plain_step(monkeypatch):
    lin = nn.Linear(4, 3)
    opt = dl.regularize(torch.optim.SGD(lin.parameters(), lr=0.1), lin, dl.L1(0.01))
    monkeypatch.setattr(_compat, "with_step_hooks", lambda *a, **k: pytest.fail("no hook is registered"))
    lin(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)  # a scheduler patches the instance's step
    opt.step()
    sched.step()
    assert sched.last_epoch == 1 and opt.steps == 2


# -- copies: deepcopy, pickle and torch.save train their own parameters --------------


class MixedPrecisionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 4)
        self.fc2 = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(4, 4, dtype=torch.bfloat16))  # low precision

    def forward(self, x):
        h = torch.tanh(self.fc1(x)) @ self.scale.float()
        return self.fc2(h)


def _half_life(step):  # a module-level schedule: pickle needs a named function
    return 1.0 / (1.0 + step)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = MixedPrecisionNet()
    rules = [
        dl.Rule(dl.L1(1e-2), params="fc1.weight", metric="adam"),  # Adam-metric step buffers
        dl.Rule(dl.L2(1e-2), params="scale"),  # bf16: fp32 residual buffer
        dl.Rule(dl.GroupLasso(1e-2), params="fc2.weight", metric="adam", schedule=_half_life),
    ]
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2), model, rules)
    return model, opt


def _data(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 5, generator=g), torch.randn(8, 2, generator=g)) for _ in range(n)]


def _train(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        Fn.mse_loss(model(x), y).backward()
        opt.step()


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_a_copy_of_model_and_optimizer_trains_on_its_own_parameters(how):
    data = _data(12)
    model, opt = _setup()
    _train(model, opt, data[:4])
    # both kinds of id-keyed buffers exist before the copy
    assert opt.state_dict()["decaylab"]["residuals"] and sum(r["buffer_bytes"] for r in dl.updates(opt))
    pair = (model, opt)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy(pair)
    elif how == "pickle":
        model2, opt2 = pickle.loads(pickle.dumps(pair))
    else:
        model2, opt2 = pickled(pair)
    before = _params(model)
    _train(model2, opt2, data[4:])  # the copy alone: the original must not move
    _assert_same(_params(model), before)
    _train(model, opt, data[4:])
    _assert_same(_params(model), _params(model2))  # and both continue identically
    assert opt2.steps == opt.steps == 12


def test_a_deepcopied_optimizer_alone_keeps_stepping():
    model, opt = _setup()
    _train(model, opt, _data(2))
    opt2 = copy.deepcopy(opt)  # copies the parameters it holds too (EMA/SWA-style copies)
    for p in (p for g in opt2.param_groups for p in g["params"]):
        p.grad = torch.zeros_like(p)
    opt2.step()
    assert opt2.steps == 3


def test_l2sp_snapshot_value_after_deepcopy():
    model = nn.Linear(3, 2)
    pen = dl.L2SP(1.0)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, pen)
    model2, opt2 = copy.deepcopy((model, opt))
    with torch.no_grad():
        model2.weight.add_(1.0)
    # the copied penalty measures the copied weights against the copied snapshot
    with torch.no_grad():
        value = opt2.bindings[0].rule.penalty.value([model2.weight])
    assert float(value) == pytest.approx(0.5 * 6)


# -- closures: LBFGS and optimizers that evaluate them several times -----------------


def _ridge_problem():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(40, 1, generator=g, dtype=torch.float64)
    return x, y


def _lbfgs_run(alpha, wrapped):
    x, y = _ridge_problem()
    torch.manual_seed(0)
    model = nn.Linear(6, 1, bias=False).double()
    inner = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=50, line_search_fn="strong_wolfe",
                              tolerance_grad=1e-12, tolerance_change=1e-14)
    opt = dl.regularize(inner, model, dl.Rule(dl.L2(alpha), mode="coupled")) if wrapped else inner
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = 0.5 * ((model(x) - y) ** 2).mean()
        if not wrapped:  # the textbook way: the penalty in the loss
            loss = loss + alpha / 2 * (model.weight**2).sum()
        loss.backward()
        return loss

    for _ in range(4):
        opt.step(closure)
    return model.weight.detach().T, len(calls)


def test_lbfgs_with_coupled_l2_equals_lbfgs_on_the_penalized_loss():
    alpha = 0.3
    ours, calls = _lbfgs_run(alpha, wrapped=True)
    theirs, their_calls = _lbfgs_run(alpha, wrapped=False)
    assert calls == their_calls > 4  # LBFGS evaluated the closure several times per step
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    x, y = _ridge_problem()
    n = x.shape[0]
    # and both reach argmin 1/(2n)|Xw - y|^2 + alpha/2 |w|^2 = (X'X/n + alpha I)^-1 X'y/n
    exact = torch.linalg.solve(x.T @ x / n + alpha * torch.eye(6, dtype=torch.float64), x.T @ y / n)
    torch.testing.assert_close(ours, exact, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(_lbfgs_run(0.0, wrapped=True)[0], exact, atol=1e-3)  # alpha matters


def test_lbfgs_with_prox_l1_runs_and_gives_exact_zeros():
    x, y = _ridge_problem()
    model = nn.Linear(6, 1, bias=False).double()
    opt = dl.regularize(torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=5), model, dl.L1(2.0))

    def closure():
        opt.zero_grad()
        loss = 0.5 * ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    assert (model.weight == 0).all()  # lr * alpha per step far above every weight


def test_a_closure_called_once_by_the_inner_optimizer_is_evaluated_once():
    model = nn.Linear(3, 1)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=0.1), model, dl.Rule(dl.L2(0.1), mode="coupled"))
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = model(torch.ones(2, 3)).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert len(calls) == 1


# -- bad input -----------------------------------------------------------------------

def _regularize_twice():
    model = ConvFc()
    opt = reg(dl.L1(1e-3), model=model)
    dl.regularize(opt, model, dl.L2(1e-3))


def _optimizer_missing_a_param():
    model = ConvFc()
    reg(dl.L1(1e-3), opt=torch.optim.SGD(model.conv.parameters(), lr=0.1), model=model)


def _negative_schedule_at_step():
    model = ConvFc()
    opt = reg(dl.Rule(dl.L1(1e-3), schedule=lambda s: 1.0 - s), model=model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # multiplier 1.0: fine
    opt.step()  # multiplier 0.0: fine
    opt.step()  # multiplier -1.0: raises


CASES = [
    pytest.param(lambda: reg([]), r"at least one Penalty or Rule", id="no-rules"),
    pytest.param(lambda: dl.regularize("sgd", ConvFc(), dl.L1(1e-3)), r"needs a torch\.optim\.Optimizer, got str",
                 id="not-an-optimizer"),
    pytest.param(_optimizer_missing_a_param, r"selects 'fc\.weight', but the optimizer does not hold", id="param-not-in-opt"),
    pytest.param(_regularize_twice, r"already regularized", id="regularize-twice"),
    pytest.param(_negative_schedule_at_step, r"schedule of L1\(alpha=0\.001\) returned -1\.0 at step 2", id="schedule"),
    # raised at regularize(), not at the first step() or never
    pytest.param(lambda: reg(dl.Rule(dl.L1(1e-3), schedule=lambda s: -1)),
                 r"schedule of L1\(alpha=0\.001\) returned -1\.0 at step 0; it must be >= 0", id="schedule-at-bind"),
    pytest.param(lambda: reg(dl.Rule(dl.L1(1e-3), schedule=lambda: 1.0)),
                 r"schedule of L1\(alpha=0\.001\) must be a function f\(step\) -> multiplier", id="schedule-no-arg"),
    pytest.param(lambda: reg(None), r"regularize\(\) needs a Penalty, a Rule or a list of them, got None",
                 id="rules=None"),
    pytest.param(lambda: dl.regularize(torch.optim.SGD(ConvFc().parameters(), lr=0.1), ConvFc().parameters(), dl.L1(1e-3)),
                 r"regularize\(\) needs the model \(an nn\.Module\).*got generator.*not model\.parameters\(\)",
                 id="parameters-not-model"),
    *[
        pytest.param(lambda make=make: reg_adam(make),
                     rf"metric='adam' needs an optimizer that takes Adam's step.*{name} is not", id=f"adam-metric-{name}")
        for name, make in [("SGD", lambda p: torch.optim.SGD(p, lr=0.1)),
                           ("Adagrad", lambda p: torch.optim.Adagrad(p, lr=0.1)),
                           ("Adamax", lambda p: torch.optim.Adamax(p, lr=0.1))]
    ],
]


@pytest.mark.parametrize("make, match", CASES)
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_warns_when_the_inner_optimizer_also_decays_penalized_params():
    model = ConvFc()
    with pytest.warns(UserWarning, match=r"SGD param group 0 has weight_decay=0\.0001 .*L1\(alpha=0\.001\)"):
        reg(dl.L1(1e-3), opt=torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4), model=model)


def test_no_warning_when_only_unpenalized_params_decay():
    model = ConvFc()
    opt = torch.optim.SGD([
        {"params": [model.conv.weight, model.fc.weight]},
        {"params": [model.conv.bias, model.fc.bias], "weight_decay": 0.1},
    ], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg(dl.L1(1e-3), opt=opt, model=model)
