"""The wrapper around any optimizer: every torch.optim class and every optimizer timm's
factory builds on a CPU trains 20 steps with L1, L2 and GroupLasso rules, or is refused at
``regularize()`` with one clear line. Adam's metric goes to registered optimizers only."""

import inspect
import math

import pytest
import torch
from torch import nn

import decaylab as dl

PENALTIES = {"l1": lambda: dl.L1(1e-3), "l2": lambda: dl.L2(1e-3), "grouplasso": lambda: dl.GroupLasso(1e-3)}
TORCH_OPTIMIZERS = sorted(n for n, c in inspect.getmembers(torch.optim, inspect.isclass)
                          if issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer
                          and n != "SparseAdam")  # sparse gradients only: an Embedding(sparse=True) case
ADAM_STEP = {"Adam", "AdamW", "NAdam", "RAdam"}


def _model(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 2, bias=bias))


def _train(model, opt, steps=20, create_graph=False) -> float:
    x, y = torch.randn(32, 6, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 2
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward(create_graph=create_graph)  # second-order optimizers (AdaHessian)
            return loss
        loss = opt.step(closure)
    return float(loss)


@pytest.mark.parametrize("penalty", sorted(PENALTIES))
@pytest.mark.parametrize("name", TORCH_OPTIMIZERS)
def test_every_torch_optimizer_trains_with_each_penalty(name, penalty):
    model = _model(bias=name != "Muon")  # Muon takes matrices only
    inner = getattr(torch.optim, name)(model.parameters(), **({"lr": 0.01} if name in ("SGD", "LBFGS") else {}))
    if "weight_decay" in inner.defaults:
        for g in inner.param_groups:
            g["weight_decay"] = 0.0
    opt = dl.regularize(inner, model, PENALTIES[penalty]())
    assert math.isfinite(_train(model, opt))
    assert opt.steps == 20
    if penalty != "l2":  # a prox rule: Adam's metric for optimizers that take Adam's step only
        assert opt.metrics[0] == ("adam" if name in ADAM_STEP else "lr")


class LambLike(torch.optim.Optimizer):
    """Keeps exp_avg_sq per parameter and its step count in the param group (timm's Lamb):
    a key named like Adam's is no reason to use Adam's metric."""

    def __init__(self, params, lr=1e-2):
        super().__init__(params, dict(lr=lr, betas=(0.9, 0.999), eps=1e-8))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            g["step"] = g.get("step", 0) + 1
            for p in g["params"]:
                st = self.state[p]
                st.setdefault("exp_avg_sq", torch.zeros_like(p)).mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                p.add_(p.grad / (st["exp_avg_sq"].sqrt() + 1e-8), alpha=-g["lr"] * 0.01)
        return loss


def test_a_key_named_exp_avg_sq_does_not_choose_adams_metric():
    model = _model()
    opt = dl.regularize(LambLike(model.parameters()), model, dl.L1(1e-3))
    assert math.isfinite(_train(model, opt)) and opt.metrics[0] == "lr"  # was KeyError: 'step'


def test_metric_adam_on_an_unregistered_optimizer_is_refused_and_registering_allows_it():
    class MyAdam(torch.optim.Adam):
        def step(self, closure=None):  # its own update: not Adam's until registered
            return super().step(closure)

    model = _model()
    with pytest.raises(ValueError, match=r"MyAdam is not: use metric='lr'"):
        dl.regularize(MyAdam(model.parameters()), model, dl.Rule(dl.L1(1e-3), metric="adam"))
    dl.register_adam_metric(MyAdam)
    opt = dl.regularize(MyAdam(model.parameters()), model, dl.Rule(dl.L1(1e-3), metric="adam"))
    assert math.isfinite(_train(model, opt))


def test_a_subclass_that_keeps_adams_step_takes_adams_metric_and_an_instance_may_declare_it():
    class Inherits(torch.optim.AdamW):
        pass

    model = _model()
    assert dl.takes_adam_step(Inherits(model.parameters()))
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert not dl.takes_adam_step(sgd)
    sgd.takes_adam_step = True  # e.g. an optimizer whose update depends on how it was built
    assert dl.takes_adam_step(sgd)
    adam = torch.optim.Adam(model.parameters())
    adam.takes_adam_step = False
    with pytest.raises(ValueError, match=r"Adam is not: use metric='lr'"):
        dl.regularize(adam, model, dl.Rule(dl.L1(1e-3), metric="adam"))


def test_a_step_size_that_is_not_a_number_is_refused_up_front():
    model = _model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    inner.param_groups[0]["lr"] = None  # transformers' Adafactor(lr=None, relative_step=True)
    with pytest.raises(ValueError, match=r"SGD param group 0 has lr=None.*relative_step=False.*mode='coupled'"):
        dl.regularize(inner, model, dl.L1(1e-3))
    dl.regularize(inner, model, dl.Rule(dl.L2(1e-3), mode="coupled"))  # coupled needs no step size


def _timm_names():
    try:
        import timm.optim
    except ImportError:  # timm, or the torchvision it imports, is absent: one skipped case
        return ["timm-not-installed"]
    return timm.optim.list_optimizers()


@pytest.mark.extras
@pytest.mark.parametrize("name", _timm_names())
def test_every_timm_factory_optimizer_trains_or_is_refused_clearly(name):
    timm_optim = pytest.importorskip("timm.optim", reason="timm (and the torchvision it imports) is not installed")
    model = _model()
    try:
        inner = timm_optim.create_optimizer_v2(model, name, lr=1e-2, weight_decay=0.0)
    except (AssertionError, ImportError, RuntimeError) as err:  # CUDA-only (bitsandbytes, APEX)
        pytest.skip(f"timm does not build {name!r} on a CPU: {err}")
    for key, make in PENALTIES.items():
        model = _model()
        inner = timm_optim.create_optimizer_v2(model, name, lr=1e-2, weight_decay=0.0)
        try:
            opt = dl.regularize(inner, model, make())
        except ValueError as err:
            assert len(str(err).splitlines()) == 1
            continue
        assert math.isfinite(_train(model, opt, create_graph=name == "adahessian")), (name, key)
