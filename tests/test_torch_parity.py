"""L2 around each torch optimizer equals that optimizer's own ``weight_decay``.

Coupled L2 (``g + alpha * w`` before the step) is the ``weight_decay`` of SGD, Adam,
NAdam, RAdam, Adagrad, Adadelta, Adamax, RMSprop and ASGD; decoupled L2
(``w * (1 - lr * alpha)``) is that of AdamW, Adafactor, Muon and of Adam/NAdam/RAdam with
``decoupled_weight_decay=True``. The configurations are those of torch's own optimizer
tests (``torch/testing/_internal/common_optimizers.py``, ``optim_inputs_func_*``) that set
a weight decay and run on a CPU, each with the loop and the foreach implementation (and
the fused one where torch has it on CPUs).

Bit for bit, except Adafactor: it computes its relative step from the weights before it
decays them, so the wrapper computes the decay from the pre-step weights and adds it after
Adafactor's step; the two terms are summed in another order (float rounding; without that,
the relative step read from decayed weights differed by 4e-5 after 10 steps)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import decaylab as dl

O = torch.optim
# (optimizer, its own configurations with a weight decay, implementations)
CONFIGS = [
    (O.SGD, [dict(lr=0.1, weight_decay=0.1), dict(lr=0.1, weight_decay=0.1, maximize=True),
             dict(lr=0.1, momentum=0.9, weight_decay=0.1), dict(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1),
             dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
             dict(lr=0.1, momentum=0.9, weight_decay=0.1, maximize=True)], ("foreach", "fused")),
    (O.Adam, [dict(weight_decay=0.1), dict(weight_decay=0.1, maximize=True), dict(weight_decay=0.1, amsgrad=True),
              dict(weight_decay=0.1, decoupled_weight_decay=True),
              dict(weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True, maximize=True)], ("foreach", "fused")),
    (O.AdamW, [dict(weight_decay=0.1), dict(weight_decay=0.1, maximize=True), dict(weight_decay=0.1, amsgrad=True)],
     ("foreach", "fused")),
    (O.NAdam, [dict(weight_decay=0.1), dict(weight_decay=0.1, momentum_decay=6e-3), dict(weight_decay=0.1, maximize=True),
               dict(weight_decay=0.1, momentum_decay=6e-3, decoupled_weight_decay=True),
               dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True)], ("foreach",)),
    (O.RAdam, [dict(weight_decay=0.1), dict(weight_decay=0.1, maximize=True),
               dict(weight_decay=0.1, decoupled_weight_decay=True),
               dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True)], ("foreach",)),
    (O.Adagrad, [dict(weight_decay=0.1), dict(weight_decay=0.1, maximize=True),
                 dict(weight_decay=0.1, initial_accumulator_value=0.1), dict(lr=0.1, lr_decay=0.5, weight_decay=0.1)],
     ("foreach", "fused")),
    (O.Adadelta, [dict(weight_decay=0.1), dict(weight_decay=0.1, maximize=True), dict(rho=0.95, weight_decay=0.9)],
     ("foreach",)),
    (O.Adamax, [dict(weight_decay=0.1), dict(weight_decay=0.1, maximize=True)], ("foreach",)),
    (O.RMSprop, [dict(weight_decay=0.1), dict(weight_decay=0.1, maximize=True),
                 dict(weight_decay=0.1, centered=True), dict(weight_decay=0.1, momentum=0.9, centered=True),
                 dict(weight_decay=0.1, momentum=0.9)], ("foreach",)),
    (O.ASGD, [dict(weight_decay=0.1), dict(weight_decay=0.1, maximize=True), dict(weight_decay=0.1, t0=3, lambd=0.1)],
     ("foreach",)),
    (O.Adafactor, [dict(weight_decay=0.1), dict(weight_decay=0.1, maximize=True), dict(lr=0.1, weight_decay=0.1)],
     ("foreach",)),
    (O.Muon, [dict(weight_decay=0.1), dict(weight_decay=0.1, nesterov=False)], ()),
]
CASES = [pytest.param(cls, dict(kw, **{impl: True} if impl else {}),
                      id=f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-{impl or 'loop'}")
         for cls, kws, impls in CONFIGS for kw in kws for impl in (None, *impls)]
DECOUPLED = (O.AdamW, O.Adafactor, O.Muon)


def _run(cls, kwargs, wrap: bool, steps: int = 10):
    torch.manual_seed(0)
    model = nn.Linear(4, 5, bias=cls is not O.Muon)
    if not wrap:
        opt = cls(model.parameters(), **kwargs)
    else:
        wd = kwargs["weight_decay"]
        mode = "decoupled" if cls in DECOUPLED or kwargs.get("decoupled_weight_decay") else "coupled"
        inner = cls(model.parameters(), **dict(kwargs, weight_decay=0.0))
        opt = dl.regularize(inner, model, dl.Rule(dl.L2(wd), params="*", mode=mode))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("cls, kwargs", CASES)
def test_l2_around_a_torch_optimizer_equals_its_own_weight_decay(cls, kwargs):
    tol = dict(rtol=1e-6, atol=1e-7) if cls is O.Adafactor else dict(rtol=0, atol=0)
    torch.testing.assert_close(_run(cls, kwargs, wrap=True), _run(cls, kwargs, wrap=False), **tol)
