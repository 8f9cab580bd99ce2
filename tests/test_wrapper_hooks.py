"""The wrapper's state-dict hooks run as on a torch optimizer, and its warnings point at
the user's line."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import decaylab as dl


def _opt(penalty=None, inner=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt = dl.regularize(inner(model.parameters()) if inner else torch.optim.SGD(model.parameters(), lr=0.1),
                        model, penalty or dl.L1(1e-3))
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return model, opt


def test_state_dict_pre_and_post_hooks_run_and_a_post_hook_may_replace_the_dict():
    _, opt = _opt()
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append(("pre", o)))
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(("post", o, "decaylab" in sd)))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    sd = opt.state_dict()
    assert seen == [("pre", opt), ("post", opt, True)]
    assert sd["extra"] == 1 and sd["decaylab"]["steps"] == 1


def test_load_state_dict_pre_hook_may_replace_the_dict_and_post_hook_runs_after_loading():
    _, opt = _opt()
    sd = opt.state_dict()
    sd["decaylab"] = {**sd["decaylab"], "steps": 0}
    seen = []

    def pre(o, state_dict):
        seen.append(("pre", o))
        return {**state_dict, "decaylab": {**state_dict["decaylab"], "steps": 7}}

    opt.register_load_state_dict_pre_hook(pre)
    opt.register_load_state_dict_post_hook(lambda o: seen.append(("post", o, o.steps)))
    opt.load_state_dict(sd)
    assert seen == [("pre", opt), ("post", opt, 7)]
    assert opt.steps == 7


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
