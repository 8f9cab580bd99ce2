"""Copies, pickles, resumes and closures: the wrapper keeps working on its own parameters."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

import decaylab as dl


class Net(nn.Module):
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
    model = Net()
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


def _pickled(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_a_copy_of_model_and_optimizer_trains_on_its_own_parameters(how):
    data = _data(12)
    model, opt = _setup()
    _train(model, opt, data[:4])
    assert opt._buckets.residuals and opt._buckets.buffers  # both kinds of id-keyed buffers exist before the copy
    pair = (model, opt)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy(pair)
    elif how == "pickle":
        model2, opt2 = pickle.loads(pickle.dumps(pair))
    else:
        model2, opt2 = _pickled(pair)
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
    for p in opt2._buckets.params():
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


# -- L2-SP snapshots resume ----------------------------------------------------------


def test_l2sp_snapshot_is_saved_and_restored():
    lr, alpha = 0.5, 0.5
    model = nn.Linear(3, 2, bias=False)
    w0 = model.weight.detach().clone()
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=lr), model, dl.L2SP(alpha))
    with torch.no_grad():
        model.weight.add_(1.0)  # training moved the weights away from w0
    sd_model, sd_opt = _pickled((model.state_dict(), opt.state_dict()))

    # the resumed process: a fresh model loads the moved weights, then a fresh wrapper
    # (which would snapshot the *moved* weights) loads the optimizer state
    model2 = nn.Linear(3, 2, bias=False)
    model2.load_state_dict(sd_model)
    opt2 = dl.regularize(torch.optim.SGD(model2.parameters(), lr=lr), model2, dl.L2SP(alpha))
    opt2.load_state_dict(sd_opt)
    assert torch.equal(opt2.bindings[0].ctxs[0], w0)
    model2.weight.grad = torch.zeros_like(model2.weight)
    opt2.step()  # pull toward the original w0 by lr * alpha = 1/4 of the way
    torch.testing.assert_close(model2.weight.detach(), (w0 + 1.0) - 0.25 * 1.0, rtol=0, atol=1e-6)
    assert float(opt2.penalty_value().detach()) == pytest.approx(0.5 * alpha * 6 * 0.75**2, rel=1e-5)


def test_l2sp_with_given_reference_is_not_duplicated_in_the_state_dict():
    model = nn.Linear(3, 2)
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.L2SP(0.1, ref))
    assert opt.state_dict()["decaylab"]["references"] == {}


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


def test_l2sp_snapshots_into_different_rules_is_an_error():
    model = nn.Linear(3, 2)
    sd = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.L2SP(0.1)).state_dict()
    other = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.L2(0.1))
    with pytest.raises(ValueError, match=r"L2SP snapshots for rule 0, which is not an L2SP rule"):
        other.load_state_dict(sd)
