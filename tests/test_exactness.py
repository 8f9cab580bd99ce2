"""Parity with torch and scikit-learn: the strongest evidence that the penalties are exact.

* coupled L2 + SGD      == torch.optim.SGD(weight_decay=...)
* decoupled L2 + Adam   == torch.optim.AdamW(weight_decay=...)  (with a scheduler, foreach off)
* L1 / ElasticNet prox  -> sklearn's Lasso / ElasticNet solutions (full-batch prox-grad)
* L1 prox on logistic   -> sklearn's L1 LogisticRegression objective
* prox gives exact zeros where "add alpha*|w| to the loss" gives none
"""

from __future__ import annotations

import copy
import inspect
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import decaylab as dl

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits  # noqa: E402
from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


# ---------------------------------------------------------------------------------------
# torch parity on a small MLP
# ---------------------------------------------------------------------------------------


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.LayerNorm(16), nn.Linear(16, 3))


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)


def _train_pair(ours, ref_model, reference, model, steps=30, schedulers=()):
    """Run the same loss through both optimizers; compare every parameter after each step."""
    x, y = _data()
    loss_fn = nn.CrossEntropyLoss()
    for step in range(steps):
        for m, opt in ((model, ours), (ref_model, reference)):
            opt.zero_grad()
            loss_fn(m(x), y).backward()
            opt.step()
        for sched in schedulers:
            sched.step()
        for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m: f"step {step}, {name}: {m}")


def _train_plain(make_opt, steps=30):
    """The same MLP and data trained with no decaylab at all (to show the decay mattered)."""
    plain = _mlp()
    opt = make_opt(plain.parameters())
    x, y = _data()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(plain(x), y).backward()
        opt.step()
    return plain


def _moved_apart(model, other, atol=1e-4):
    return any(not torch.allclose(p, q, atol=atol) for p, q in zip(model.parameters(), other.parameters()))


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_coupled_l2_sgd_equals_torch_weight_decay(momentum, nesterov):
    wd = 0.05
    model = _mlp()
    ref_model = copy.deepcopy(model)
    ours = dl.regularize(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov),
        model,
        dl.Rule(dl.L2(wd), params="*", mode="coupled"),
    )
    reference = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    _train_pair(ours, ref_model, reference, model)
    # the decay mattered: without it the trajectory is elsewhere
    plain = _train_plain(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=momentum, nesterov=nesterov))
    assert _moved_apart(model, plain)


@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("scheduled", [False, True])
def test_decoupled_l2_adam_equals_adamw(foreach, scheduled):
    wd, lr = 0.3, 0.02
    model = _mlp()
    ref_model = copy.deepcopy(model)
    ours = dl.regularize(
        torch.optim.Adam(model.parameters(), lr=lr, foreach=foreach),
        model,
        dl.Rule(dl.L2(wd), params="*"),  # decoupled is L2's default mode
    )
    assert ours.bindings[0].rule.mode == "decoupled"
    reference = torch.optim.AdamW(ref_model.parameters(), lr=lr, weight_decay=wd, foreach=foreach)
    schedulers = ()
    if scheduled:
        schedulers = (
            torch.optim.lr_scheduler.StepLR(ours, step_size=7, gamma=0.3),
            torch.optim.lr_scheduler.StepLR(reference, step_size=7, gamma=0.3),
        )
    _train_pair(ours, ref_model, reference, model, schedulers=schedulers)
    if scheduled:
        assert ours.param_groups[0]["lr"] == pytest.approx(lr * 0.3**4)
    # and the weight decay was real: Adam without it ends elsewhere
    plain = _train_plain(lambda ps: torch.optim.Adam(ps, lr=lr))
    assert _moved_apart(model, plain)


def test_decoupled_l2_adam_equals_adamw_across_param_groups():
    """Two param groups with different lrs: the decay uses each group's own lr."""
    wd = 0.1
    model = _mlp()
    ref_model = copy.deepcopy(model)

    def groups(m):
        return [{"params": m[0].parameters(), "lr": 0.03}, {"params": m[3].parameters(), "lr": 0.005},
                {"params": m[2].parameters()}]

    ours = dl.regularize(torch.optim.Adam(groups(model), lr=0.01), model, dl.Rule(dl.L2(wd), params="*"))
    reference = torch.optim.AdamW(groups(ref_model), lr=0.01, weight_decay=wd)
    _train_pair(ours, ref_model, reference, model, steps=15)


# ---------------------------------------------------------------------------------------
# full-batch proximal gradient == scikit-learn's Lasso / ElasticNet
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    return X, y


def _prox_grad_linear(X, y, penalty, steps):
    """Plain prox-grad, lr = 1/L: SGD without momentum on 1/2 * MSE, full batch, float64."""
    n, d = X.shape
    # Hessian of 1/2*mean((Xw + b - y)^2) in (w, b); X is centred, so its bias block is 1
    Xb = np.hstack([X, np.ones((n, 1))])
    lipschitz = np.linalg.eigvalsh(Xb.T @ Xb / n).max()
    torch.manual_seed(0)
    model = nn.Linear(d, 1).double()
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=1.0 / lipschitz), model,
                        dl.Rule(penalty, params="weight"))  # bias unpenalized, as in sklearn
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).unsqueeze(1)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((model(Xt) - yt) ** 2).mean()).backward()
        opt.step()
    return model.weight.detach().numpy().ravel(), float(model.bias.detach())


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: dl.L1(2.0), lambda: Lasso(alpha=2.0, tol=1e-12, max_iter=1_000_000)),
        (lambda: dl.ElasticNet(5.0, l1_ratio=0.7), lambda: ElasticNet(alpha=5.0, l1_ratio=0.7, tol=1e-12, max_iter=1_000_000)),
    ],
    ids=["Lasso", "ElasticNet"],
)
def test_prox_grad_reaches_sklearn_solution(diabetes, ours, theirs):
    X, y = diabetes
    sk = theirs().fit(X, y)
    support = sk.coef_ != 0
    assert 0 < support.sum() < X.shape[1], "pick an alpha with a non-trivial support"
    coef, bias = _prox_grad_linear(X, y, ours(), steps=1200)
    np.testing.assert_allclose(coef, sk.coef_, rtol=0, atol=1e-4)
    assert bias == pytest.approx(sk.intercept_, abs=1e-4)
    np.testing.assert_array_equal(coef != 0, support)  # exact zeros exactly where sklearn has them


# ---------------------------------------------------------------------------------------
# L1-penalized logistic regression == sklearn's LogisticRegression(l1) objective
# ---------------------------------------------------------------------------------------


def _sklearn_l1_logistic(C):
    """An L1 LogisticRegression with an unpenalized intercept (saga), on any sklearn version."""
    params = inspect.signature(LogisticRegression).parameters
    kwargs = dict(C=C, solver="saga", tol=1e-12, max_iter=100_000, fit_intercept=True)
    if params["penalty"].default == "deprecated":  # sklearn >= 1.8: l1_ratio picks the penalty
        return LogisticRegression(l1_ratio=1.0, **kwargs)
    return LogisticRegression(penalty="l1", **kwargs)


def _logistic_objective(X, y, w, b, alpha):
    z = X @ w + b
    return float(np.mean(np.logaddexp(0.0, z) - y * z) + alpha * np.abs(w).sum())


@pytest.mark.slow
def test_l1_logistic_matches_sklearn_objective():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    n, C = len(y), 0.02
    alpha = 1.0 / (n * C)  # sklearn: ||w||_1 + C * sum(logloss)  ==  (nC) * (ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a ConvergenceWarning at tol=1e-12 is fine: we compare objectives
        sk = _sklearn_l1_logistic(C).fit(X, y)
    sk_obj = _logistic_objective(X, y, sk.coef_.ravel(), float(sk.intercept_[0]), alpha)

    Xb = np.hstack([X, np.ones((n, 1))])
    lipschitz = np.linalg.eigvalsh(Xb.T @ Xb / n).max() / 4  # logistic loss curvature <= 1/4
    model = nn.Linear(30, 1).double()
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=1.0 / lipschitz), model,
                        dl.Rule(dl.L1(alpha), params="weight"))
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).double().unsqueeze(1)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(4500):  # rel. gap ~1e-9 (it is 7e-7 at 3500 steps)
        opt.zero_grad()
        loss_fn(model(Xt), yt).backward()
        opt.step()
    w = model.weight.detach().numpy().ravel()
    ours = _logistic_objective(X, y, w, float(model.bias.detach()), alpha)
    assert ours <= sk_obj * (1 + 1e-6)
    assert abs(ours - sk_obj) <= 1e-6 * sk_obj
    assert 0 < (w != 0).sum() < 30  # a sparse solution with exact zeros
    np.testing.assert_array_equal(w != 0, sk.coef_.ravel() != 0)


# ---------------------------------------------------------------------------------------
# prox: exact zeros; the penalty added to the loss: none
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)


def _digits_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _train_digits(model, opt, X, y, steps=200, extra_loss=None):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (128,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        if extra_loss is not None:
            loss = loss + extra_loss()
        loss.backward()
        opt.step()
    return float((model(X).argmax(1) == y).float().mean())


@pytest.mark.parametrize("metric, alpha, min_zeros", [("adam", 1e-3, 0.3), ("lr", 0.1, 0.1)])
def test_prox_l1_gives_exact_zeros_naive_l1_gives_none(digits, metric, alpha, min_zeros):
    X, y = digits
    model = _digits_mlp()
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2), model, dl.Rule(dl.L1(alpha), metric=metric))
    acc = _train_digits(model, opt, X, y)
    assert dl.sparsity(model) >= min_zeros
    assert acc > 0.9  # still a working classifier

    naive = _digits_mlp()
    pen = dl.L1(alpha)
    weights = [naive[0].weight, naive[2].weight]
    _train_digits(naive, torch.optim.Adam(naive.parameters(), lr=1e-2), X, y, extra_loss=lambda: pen.value(weights))
    assert sum(int((w == 0).sum()) for w in weights) == 0  # subgradient steps never land on 0
