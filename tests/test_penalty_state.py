"""Penalties with a state of their own (TargetSparsity's schedule and masks,
CoupledGroupLasso's held groups) survive a checkpoint: resuming mid-ramp from the wrapper's
state_dict continues bit for bit as the uninterrupted run (issue #8: controllers in the
regularizer state)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import decaylab as dl


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))


def _make(kind, model):
    if kind == "target":
        pen = dl.TargetSparsity(1e-4, target=0.8, begin=2, end=20, every=3)
    elif kind == "target-recipe":  # per-layer budget, Adam-metric saliency, regrowth, reweighting
        pen = dl.Rule(dl.TargetSparsity(1e-4, target=0.8, begin=2, end=20, every=3, budget="erk",
                                        saliency="metric", regrow=0.2, reweight=0.01), metric="adam")
    else:
        pen = dl.CoupledGroupLasso(1e-3, model, target={"inputs": 0.5, "neurons": 0.5}, begin=2, end=20, every=3)
    return dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2), model, pen)


def _steps(model, opt, start, stop):
    g = torch.Generator().manual_seed(7)
    batches = [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(stop)]
    for x, y in batches[start:stop]:
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("kind", ["target", "target-recipe", "coupled"])
def test_resume_mid_ramp_is_bit_identical(kind):
    model = _mlp()
    opt = _make(kind, model)
    _steps(model, opt, 0, 30)
    whole = [p.detach().clone() for p in model.parameters()]

    model = _mlp()
    opt = _make(kind, model)
    _steps(model, opt, 0, 9)  # inside the ramp (begin 2, end 20)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    model = _mlp()
    opt = _make(kind, model)  # a fresh penalty: its step counter starts at 0
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    assert opt.bindings[0].rule.penalty.t == 9
    _steps(model, opt, 9, 30)
    for a, b in zip(whole, model.parameters()):
        assert torch.equal(a, b.detach())


def test_stateless_penalty_refuses_a_foreign_state():
    with pytest.raises(ValueError, match="keeps no state"):
        dl.L1(1e-3).load_state_dict({"t": 3})
