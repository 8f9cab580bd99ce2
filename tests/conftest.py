"""Helpers shared by the test modules: tiny models, the small training loop the compiled
kernels are checked with, the one accessor that looks inside the wrapper, and the
``seeded`` run folder the report's figure and page tests share.

Test modules import them by name (``from conftest import Holder``); pytest puts this folder
on ``sys.path``, as it does for ``report_fixtures``.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import decaylab as dl

# -- tiny models --------------------------------------------------------------------


class Holder(nn.Module):
    """A module owning bare parameters, selected by name (``params="w"``), not by the default
    rule: ``Holder(w)`` or ``Holder(w=..., s=...)``. Each is a copy of the tensor given, so
    the test keeps the starting value; integer tensors do not require grad."""

    def __init__(self, w: torch.Tensor | None = None, **params: torch.Tensor):
        super().__init__()
        if w is not None:
            params = {"w": w, **params}
        for name, value in params.items():
            grad = value.is_floating_point() or value.is_complex()
            setattr(self, name, nn.Parameter(value.detach().clone(), requires_grad=grad))


class EveryLayer(nn.Module):
    """One of each kind of layer the default rule has an opinion about."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)    # weight 40
        self.conv = nn.Conv2d(1, 2, 3)    # weight 18, bias 2
        self.bn = nn.BatchNorm2d(2)       # weight 2, bias 2
        self.fc1 = nn.Linear(8, 6)        # weight 48, bias 6
        self.ln = nn.LayerNorm(6)         # weight 6, bias 6
        self.fc2 = nn.Linear(6, 3)        # weight 18, bias 3


def mlp(*sizes: int, seed: int = 0) -> nn.Sequential:
    """A seeded ReLU MLP: ``mlp(6, 8, 3)`` is ``Linear(6, 8), ReLU, Linear(8, 3)``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class ConvFc(nn.Module):
    """A conv and a linear layer: ``conv.weight`` (2, 1, 3, 3), ``fc.weight`` (3, 4), biases."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(4, 3)


# -- around regularize() -------------------------------------------------------------


def zero_grads(model):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)


def linear_from(weight, bias=False):
    """An ``nn.Linear`` whose weight is ``weight`` (a nested list or a tensor)."""
    weight = torch.as_tensor(weight, dtype=torch.float32)
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


def pickled(obj):
    """``obj`` through ``torch.save`` and ``torch.load`` (full pickle)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def reg(rules, opt=None, model=None):
    """``dl.regularize`` over ``model`` (a fresh :class:`ConvFc` by default) and ``opt`` (SGD)."""
    model = model or ConvFc()
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    return dl.regularize(opt, model, rules)


def reg_adam(make_opt, penalty=None, params=None):
    """:func:`reg` of a ``metric="adam"`` rule (L1 by default) under ``make_opt(parameters)``."""
    model = ConvFc()
    rule = dl.Rule(penalty or dl.L1(1e-3), params=params, metric="adam")
    return reg(rule, opt=make_opt(model.parameters()), model=model)


def residuals(opt, params) -> list[torch.Tensor | None]:
    """The fp32 rounding residual the wrapper keeps for each low-precision weight, or None:
    ``state_dict()["decaylab"]["residuals"]``, keyed by the weight's index in the optimizer's
    param groups."""
    saved = opt.state_dict()["decaylab"]["residuals"]
    index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    return [saved.get(index[id(p)]) for p in params]


def carried(opt, params) -> list[torch.Tensor]:
    """The value the wrapper carries for each weight: the weight plus its residual."""
    params = list(params)
    return [p.detach().float() + (0 if c is None else c) for p, c in zip(params, residuals(opt, params))]


# -- the compiled kernels' training loop (test_fused.py, test_compat.py) --------------


def fused_model(dtype, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Conv2d(1, 3, 3)).to(dtype)


def fused_loss(m, x, y):
    h = m[3](m[2](m[1](m[0](x))))
    img = h.reshape(-1, 1, 2, 2).repeat(1, 1, 2, 2)  # feeds the conv, so it gets gradients
    return ((h - y) ** 2).mean() + m[4](img.float().to(h.dtype)).pow(2).mean()


def train_fused(rule, dtype, fused_flag, steps=4, opt_cls=torch.optim.Adam, lr=0.05, sched=False):
    """Train :func:`fused_model` with ``rule()`` (biases unpenalized); returns the carried
    weights (:func:`carried`) and the optimizer."""
    m = fused_model(dtype)
    opt = dl.regularize(opt_cls(m.parameters(), lr=lr), m, [rule(), dl.Rule(None, params="*.bias")],
                        fused=fused_flag)
    sch = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.7) if sched else None
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g).to(dtype), torch.randn(16, 4, generator=g).to(dtype)
    for _ in range(steps):
        fused_loss(m, x, y).backward()
        opt.step()
        opt.zero_grad()
        if sch:
            sch.step()
    return carried(opt, m.parameters()), opt


def assert_fused_equals_eager(a, b):
    for x, y in zip(a, b):
        # 1e-6 relative, plus a last-bit allowance at the threshold: a weight the two
        # paths leave on either side of it differs by a few ulps of the threshold
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)


FUSED_RULES = {
    "L1 prox lr": lambda: dl.Rule(dl.L1(0.5), params=["0.weight", "2.weight", "4.weight"], metric="lr"),
    "L1 prox adam": lambda: dl.Rule(dl.L1(0.02), params=["0.weight", "2.weight", "4.weight"], metric="adam"),
    "ElasticNet prox lr": lambda: dl.Rule(dl.ElasticNet(1.0, 0.4), params=["0.weight", "2.weight"], metric="lr"),
    "ElasticNet prox adam": lambda: dl.Rule(dl.ElasticNet(0.03, 0.4), params=["0.weight", "2.weight"]),
    "ElasticNet decoupled": lambda: dl.Rule(dl.ElasticNet(0.3, 0.4), params=["0.weight", "2.weight"],
                                            mode="decoupled"),
    "GroupLasso rows lr": lambda: dl.Rule(dl.GroupLasso(1.0, "rows"), params=["0.weight", "2.weight"], metric="lr"),
    "GroupLasso inputs adam": lambda: dl.Rule(dl.GroupLasso(0.05, "inputs"), params=["0.weight", "2.weight"]),
    "GroupLasso channels adam": lambda: dl.Rule(dl.GroupLasso(0.05, "channels"), params="4.weight"),
    "GroupLasso decoupled": lambda: dl.Rule(dl.GroupLasso(0.3, "rows"), params="0.weight", mode="decoupled"),
    "L2 decoupled": lambda: dl.Rule(dl.L2(0.5), params=["0.weight", "2.weight", "4.weight"]),
    "L2 prox": lambda: dl.Rule(dl.L2(0.5), params=["0.weight", "2.weight"], mode="prox"),
    "L1 prox batched-free schedule": lambda: dl.Rule(dl.L1(0.02), params="0.weight",
                                                     schedule=lambda s: min(1.0, (s + 1) / 3)),
}


# -- inside the wrapper ---------------------------------------------------------------


def buckets(opt):
    """The wrapper's private bucket index (``.all``, ``.by_mode``, ``.buffers``). What a bucket
    did is public (:func:`decaylab.updates`); only tests of the wrapper's own parts use this:
    bucket identity after a model conversion, StepSizes built for a bucket, the plan of
    decaylab._inner_decay."""
    return opt._buckets


# -- a loaded run folder for the report's figure and page tests ----------------------


@pytest.fixture
def seeded(tmp_path):
    """A compare of none, l2 and l1 over three seeds with 20 % label noise, as
    :func:`decaylab.lab.report.load_run_folder` gives it (``report_fixtures``)."""
    from decaylab.lab.report import load_run_folder
    from report_fixtures import make_run_folder

    return load_run_folder(make_run_folder(tmp_path / "run", seeds=3, label_noise=0.2))


# -- the lab's command line ------------------------------------------------------------------
TINY_CLI = ["data.n_train=150", "train.epochs=2", "model.hidden=[8]", "train.batch_size=50"]  # two epochs


def cli_args(command, tmp_path, items, name="x", extra=()) -> list[str]:
    """``decaylab COMMAND --out tmp_path --name NAME --quiet [extra] --set ITEM ...``."""
    args = [command, "--out", str(tmp_path), "--name", name, "--quiet", *extra]
    for item in items:
        args += ["--set", item]
    return args
