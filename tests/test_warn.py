"""Warnings point at the user's line (decaylab._warn): from regularize(), from inside step()
(hooked or not) and from the compiled-kernel fallback."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import decaylab as dl


def test_a_warning_from_regularize_points_at_the_users_line():
    model = nn.Sequential(nn.Linear(4, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4), model, dl.L1(1e-3))
    assert [w.filename for w in caught] == [__file__]


@pytest.mark.parametrize("hooked", [False, True])
def test_a_warning_from_step_points_at_the_users_line(hooked):
    """TargetSparsity warns at the end of its ramp, from inside step(); with a step hook
    the step goes through torch's hook wrapper too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=1.0), model,
                        dl.Rule(dl.TargetSparsity(100.0, 0.3, begin=0, end=1), params="0.weight"))
    if hooked:
        opt.register_step_post_hook(lambda *a: None)
    x = torch.randn(8, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            model(x).relu().sum().backward()
            opt.step()
            opt.zero_grad()
    assert [w.category for w in caught] == [RuntimeWarning]
    assert caught[0].filename == __file__


def test_the_compiled_kernel_fallback_warning_points_at_the_users_line(monkeypatch):
    from decaylab import _compat, fused

    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setitem(fused._STATE, "disabled", "")
    monkeypatch.setattr(fused, "_BACKEND", broken)
    monkeypatch.setattr(_compat, "_WARNED", set())  # one warning per reason and process
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.L1(1e-3), fused=True)
    model(torch.randn(5, 4)).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    ours = [w.filename for w in caught if "decaylab" in str(w.message)]
    assert ours and set(ours) == {__file__}
