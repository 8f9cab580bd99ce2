"""Checkpoints of a regularized optimizer (decaylab._checkpoint, through ``state_dict()`` and
``load_state_dict()``): steps, strengths, low-precision residuals, L2-SP snapshots and the
penalties' own states (TargetSparsity's schedule and masks, CoupledGroupLasso's held groups)
resume exactly; a checkpoint built for other rules is refused; state-dict hooks run as on a
torch optimizer."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

import decaylab as dl

from conftest import Holder, mlp, pickled


# -- checkpoints ---------------------------------------------------------------------

def _ckpt_setup(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    model.add_module("scale", Holder(s=torch.full((4,), 1.0).to(torch.bfloat16)))
    rules = [
        dl.Rule(dl.L1(3e-3), schedule=lambda s: min(1.0, s / 10)),
        dl.Rule(dl.L2(5e-3), params="scale.s"),  # bf16: below the rounding step, needs residuals
        dl.Rule(None, params="*.bias"),
    ]
    opt = dl.regularize(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0), model, rules)
    return model, opt


def _train(model, opt, batches):
    for x, y in batches:
        h = model[0](x)
        h = model[1](h) * model.scale.s.float()
        loss = Fn.mse_loss(model[2](h), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _batches(n, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 5, generator=g), torch.randn(8, 1, generator=g)) for _ in range(n)]


def test_state_dict_round_trip_is_exact():
    data = _batches(30)
    model, opt = _ckpt_setup(0)
    _train(model, opt, data[:10])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    assert opt.state_dict()["decaylab"]["residuals"]  # the bf16 weight has a residual to save
    _train(model, opt, data[10:20])
    a = {n: p.detach().clone() for n, p in model.named_parameters()}

    model2, opt2 = _ckpt_setup(1)  # different init: everything must come from the checkpoint
    buf.seek(0)
    ckpt = torch.load(buf)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.steps == 10
    _train(model2, opt2, data[10:20])
    b = dict(model2.named_parameters())
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n].detach()), n
    assert opt2.steps == opt.steps == 20
    ra, rb = opt.state_dict()["decaylab"]["residuals"], opt2.state_dict()["decaylab"]["residuals"]
    assert ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra)


def test_state_dict_restores_a_changed_strength():
    model, opt = _ckpt_setup(0)
    opt.bindings[0].rule.penalty.alpha = 0.25
    sd = opt.state_dict()
    model2, opt2 = _ckpt_setup(0)
    opt2.load_state_dict(sd)
    assert opt2.bindings[0].rule.penalty.alpha == 0.25


def test_state_dict_is_compatible_with_the_plain_inner_optimizer():
    data = _batches(5)
    model, opt = _ckpt_setup(0)
    _train(model, opt, data)
    sd = opt.state_dict()
    inner_sd = opt.optimizer.state_dict()
    assert set(sd) == set(inner_sd) | {"decaylab"}
    plain = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    plain.load_state_dict(sd)  # the extra key is ignored
    assert int(plain.state[model[0].weight]["step"]) == 5
    assert torch.equal(plain.state[model[0].weight]["exp_avg"], opt.state[model[0].weight]["exp_avg"])
    # and a plain optimizer's checkpoint loads into a wrapper
    model2, opt2 = _ckpt_setup(1)
    opt2.load_state_dict(plain.state_dict())
    assert int(opt2.state[model2[0].weight]["step"]) == 5
    assert opt2.steps == 0


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


# -- L2-SP snapshots -----------------------------------------------------------------


def test_l2sp_snapshot_is_saved_and_restored():
    lr, alpha = 0.5, 0.5
    model = nn.Linear(3, 2, bias=False)
    w0 = model.weight.detach().clone()
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=lr), model, dl.L2SP(alpha))
    with torch.no_grad():
        model.weight.add_(1.0)  # training moved the weights away from w0
    sd_model, sd_opt = pickled((model.state_dict(), opt.state_dict()))

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


def test_l2sp_snapshots_for_a_rule_that_is_not_l2sp_here_is_an_error():
    model = nn.Linear(3, 2)
    sd = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.L2SP(0.1)).state_dict()
    other = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.L2(0.1))
    with pytest.raises(ValueError, match=r"L2SP snapshots for rule 0, which is not an L2SP rule"):
        other.load_state_dict(sd)  # rule 0 exists here, but is not L2SP
    two = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                        [dl.Rule(dl.L2(0.1), params="bias"), dl.Rule(dl.L2SP(0.1), params="weight")])
    one = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.Rule(dl.L2SP(0.1), params="weight"))
    with pytest.raises(ValueError, match=r"L2SP snapshots for rule 1, which is not an L2SP rule"):
        one.load_state_dict(two.state_dict())  # rule 1 does not exist here


# -- penalties with a state of their own (issue #8: controllers in the regularizer state) ---


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
    model = mlp(6, 8, 5, 3)
    opt = _make(kind, model)
    _steps(model, opt, 0, 30)
    whole = [p.detach().clone() for p in model.parameters()]

    model = mlp(6, 8, 5, 3)
    opt = _make(kind, model)
    _steps(model, opt, 0, 9)  # inside the ramp (begin 2, end 20)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    model = mlp(6, 8, 5, 3)
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


# -- state-dict hooks run as on a torch optimizer --------------------------------------


def _stepped(penalty=None, inner=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt = dl.regularize(inner(model.parameters()) if inner else torch.optim.SGD(model.parameters(), lr=0.1),
                        model, penalty or dl.L1(1e-3))
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return model, opt


def test_state_dict_pre_and_post_hooks_run_and_a_post_hook_may_replace_the_dict():
    _, opt = _stepped()
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append(("pre", o)))
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(("post", o, "decaylab" in sd)))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    sd = opt.state_dict()
    assert seen == [("pre", opt), ("post", opt, True)]
    assert sd["extra"] == 1 and sd["decaylab"]["steps"] == 1


def test_load_state_dict_pre_hook_may_replace_the_dict_and_post_hook_runs_after_loading():
    _, opt = _stepped()
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
