"""Nothing a user can change between steps is baked into a compiled program (issue #14 §2).

lr, betas, eps, weight_decay, maximize, the strength and ``l1_ratio`` may change at any
step (by hand or by a scheduler such as ``OneCycleLR``, which moves beta1 every step): the
compiled kernels (``fused=True``, and ``fused=None`` on buckets it compiles) must follow
each change as the eager path does, step by step, and compile nothing for it. A model
converted after ``regularize()`` (bf16, float64, channels_last) is decayed as if it had
been converted before.

The kernels compile with a counting backend that runs the traced graph eagerly: the same
program dynamo hands inductor, so a stale constant shows, at no compile cost.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import decaylab as dl
from decaylab import fused

from conftest import buckets, mlp, residuals

FLAGS = {"fused=True": True, "fused=None": None}


@pytest.fixture
def compiles(monkeypatch):
    """The programs compiled during a test (one entry each), with a fresh cache."""
    seen: list = []

    def counting(gm, example_inputs):
        seen.append(len(example_inputs))
        return gm.forward

    monkeypatch.setitem(fused._STATE, "disabled", "")
    monkeypatch.setattr(fused, "_BACKEND", counting)
    monkeypatch.setattr(fused, "_COMPILED", {})
    monkeypatch.setattr(fused, "CPU_MIN_NUMEL", 0)  # fused=None compiles these small buckets too
    return seen


def _trajectory(flag, make_opt, rule, change=None, sched=None, steps=8, counter=None):
    """Weights after each step, and how many programs had been compiled by then."""
    m = mlp(8, 16, 4)
    opt = dl.regularize(make_opt(m.parameters()), m, [rule(), dl.Rule(None, params="*.bias")], fused=flag)
    scheduler = sched(opt) if sched else None
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)
    weights, counts = [], []
    for step in range(steps):
        if change is not None:
            change(opt, step)
        ((m(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
        if scheduler is not None:
            scheduler.step()
        weights.append([p.detach().clone() for p in m.parameters()])
        counts.append(len(counter) if counter is not None else 0)
    return weights, counts, opt


def _assert_same_trajectory(eager, comp):
    for step, (ws_e, ws_c) in enumerate(zip(eager, comp)):
        for e, c in zip(ws_e, ws_c):
            torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6, msg=lambda s: f"step {step}: {s}")
            differ = (e == 0) != (c == 0)  # a weight on the threshold may keep a last-bit residue
            assert not differ.any() or torch.maximum(e.abs(), c.abs())[differ].max() <= 1e-6, f"step {step}"


def _set(key, values):
    """Sets ``group[key]`` to ``values[step]`` at the steps listed."""
    def change(opt, step):
        if step in values:
            for group in opt.param_groups:
                group[key] = values[step]
    return change


def _set_penalty(attr, values):
    def change(opt, step):
        if step in values:
            setattr(opt.bindings[0].rule.penalty, attr, values[step])
    return change


def _adam(**kw):
    return lambda params: torch.optim.Adam(params, lr=0.05, **kw)


L1 = lambda: dl.Rule(dl.L1(0.02), params="*.weight")  # noqa: E731
GROUP = lambda: dl.Rule(dl.GroupLasso(0.05, "rows"), params="*.weight")  # noqa: E731
ENET = lambda: dl.Rule(dl.ElasticNet(0.05, 0.9), params="*.weight")  # noqa: E731
SGD = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731

CHANGES = {  # optimizer, rule, the change (made before steps 3 and 5)
    "Adam eps": (_adam(), L1, _set("eps", {3: 1e-1, 5: 1e-3})),
    "Adam(amsgrad) eps": (_adam(amsgrad=True), L1, _set("eps", {3: 1e-1, 5: 1e-3})),
    "NAdam eps": (lambda p: torch.optim.NAdam(p, lr=0.05), L1, _set("eps", {3: 1e-1, 5: 1e-3})),
    "GroupLasso eps": (_adam(), GROUP, _set("eps", {3: 1e-1, 5: 1e-3})),
    "Adam betas": (_adam(), L1, _set("betas", {3: (0.8, 0.99), 5: (0.95, 0.9)})),
    "GroupLasso betas": (_adam(), GROUP, _set("betas", {3: (0.8, 0.99), 5: (0.95, 0.9)})),
    "Adam weight_decay": (_adam(weight_decay=0.01), L1, _set("weight_decay", {3: 0.5, 5: 0.1})),
    "AdamW weight_decay": (lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.01), L1,
                           _set("weight_decay", {3: 0.5, 5: 0.1})),
    "Adam lr": (_adam(), L1, _set("lr", {3: 0.2, 5: 0.01})),
    "Adam maximize": (_adam(), L1, _set("maximize", {3: True, 5: False})),
    "L1 alpha": (_adam(), L1, _set_penalty("alpha", {3: 0.1, 5: 0.005})),
    "GroupLasso alpha": (_adam(), GROUP, _set_penalty("alpha", {3: 0.2, 5: 0.01})),
    "ElasticNet l1_ratio, Adam": (_adam(), ENET, _set_penalty("l1_ratio", {3: 0.1, 5: 0.6})),
    "ElasticNet l1_ratio, SGD": (SGD, lambda: dl.Rule(dl.ElasticNet(0.5, 0.9), params="*.weight"),
                                 _set_penalty("l1_ratio", {3: 0.1, 5: 0.6})),
    "ElasticNet l1_ratio, decoupled": (SGD, lambda: dl.Rule(dl.ElasticNet(0.5, 0.9), params="*.weight",
                                                            mode="decoupled"),
                                       _set_penalty("l1_ratio", {3: 0.1, 5: 0.6})),
}


@pytest.mark.filterwarnings("ignore:.*weight_decay=")  # the double-decay warning, on purpose here
@pytest.mark.parametrize("flag", list(FLAGS))
@pytest.mark.parametrize("name", list(CHANGES))
def test_a_value_changed_between_steps_reaches_the_compiled_kernel(name, flag, compiles, monkeypatch):
    if FLAGS[flag]:  # fused=True: small buckets also take Adam's step inside their kernel
        monkeypatch.setattr(fused, "CPU_ADAM_MIN_NUMEL", 0)
    make_opt, rule, change = CHANGES[name]
    eager, _, _ = _trajectory(False, make_opt, rule, change)
    comp, counts, opt = _trajectory(FLAGS[flag], make_opt, rule, change, counter=compiles)
    assert all(r["kernel"] == "compiled" for r in dl.updates(opt) if r["mode"].split("/")[0] in ("prox", "decoupled")), \
        "not compiled"
    _assert_same_trajectory(eager, comp)
    assert counts[-1] == counts[1], f"programs compiled after step 2: {counts}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Adam(amsgrad) eps", "Adam betas", "ElasticNet l1_ratio, Adam"])
def test_inductor_kernels_follow_a_value_changed_between_steps(name, monkeypatch):
    monkeypatch.setitem(fused._STATE, "disabled", "")
    monkeypatch.setattr(fused, "CPU_ADAM_MIN_NUMEL", 0)
    make_opt, rule, change = CHANGES[name]
    eager, _, _ = _trajectory(False, make_opt, rule, change)
    comp, _, opt = _trajectory(True, make_opt, rule, change)
    assert all(r["kernel"] == "compiled" and r["calls"] for r in dl.updates(opt) if r["mode"].startswith("prox"))
    _assert_same_trajectory(eager, comp)


@pytest.mark.filterwarnings("ignore:.*weight_decay=")
def test_a_changed_flag_selects_its_own_program_and_a_flag_seen_before_reuses_it(compiles, monkeypatch):
    # weight decay off / coupled / decoupled choose the Adam kernel's program: compared at
    # every call, so each change runs the program for it, and returning compiles nothing
    monkeypatch.setattr(fused, "CPU_ADAM_MIN_NUMEL", 0)
    wd = _set("weight_decay", {3: 0.3, 5: 0.0, 7: 0.3})
    style = _set("decoupled_weight_decay", {4: True, 6: False, 8: True})

    def change(opt, step):
        wd(opt, step)
        style(opt, step)

    eager, _, _ = _trajectory(False, _adam(), L1, change, steps=10)
    comp, counts, _ = _trajectory(True, _adam(), L1, change, steps=10, counter=compiles)
    _assert_same_trajectory(eager, comp)
    # step 1 is Adam's own; step 2 compiles "no decay", step 4 "coupled", step 5
    # "decoupled"; the later changes go back to programs seen before: nothing compiles
    assert counts == [0, 1, 1, 2, 3, 3, 3, 3, 3, 3], counts


@pytest.mark.parametrize("flag", list(FLAGS))
def test_one_cycle_lr_compiles_nothing_after_the_second_step(flag, compiles, monkeypatch):
    monkeypatch.setattr(fused, "CPU_ADAM_MIN_NUMEL", 0)
    steps = 20

    def one_cycle(opt):  # cycle_momentum (the default) moves beta1 every step
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)

    for rule in (L1, GROUP):
        compiles.clear()
        eager, _, _ = _trajectory(False, _adam(), rule, sched=one_cycle, steps=steps)
        comp, counts, opt = _trajectory(FLAGS[flag], _adam(), rule, sched=one_cycle, steps=steps,
                                        counter=compiles)
        assert {r["kernel"] for r in dl.updates(opt)} == {"compiled"}
        _assert_same_trajectory(eager, comp)
        assert counts[1] >= 1 and counts[-1] == counts[1], f"programs compiled by each step: {counts}"
        # lr and beta1 moved at every step: only the first call of the one program went through dynamo
        assert all(r["guarded_calls"] == 1 for r in dl.updates(opt)), dl.updates(opt)
    assert len(fused._COMPILED) <= 2  # one program per bucket signature, nothing per value


# -- a model converted after regularize() -------------------------------------------------
def _convert(kind: str):
    return {
        "bf16": lambda m: m.to(torch.bfloat16),
        "fp16": lambda m: m.half(),
        "double": lambda m: m.double(),
        "channels_last": lambda m: m.to(memory_format=torch.channels_last),
    }[kind]


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _decay_run(model, flag, convert, fp32_steps, steps, wrap_after=False):
    """SGD with a decoupled L2 far below bf16's rounding step (lr * alpha = 5e-5), zero
    gradients: ``fp32_steps`` steps, then ``convert``, then ``steps`` steps; with
    ``wrap_after``, a new wrapper is built after the conversion. Returns the weights with
    their low-precision residuals, and the last wrapper."""
    def wrap():
        return dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                             dl.Rule(dl.L2(5e-4), params="*.weight"), fused=flag)

    opt = wrap()
    for i in range(fp32_steps + steps):
        if i == fp32_steps:
            convert(model)
            if wrap_after:
                opt = wrap()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    return [p.detach().double() + (0.0 if c is None else c.double())
            for p, c in zip(model.parameters(), residuals(opt, model.parameters()))], opt


@pytest.mark.parametrize("flag", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("kind", ["bf16", "fp16", "double", "channels_last"])
def test_a_model_converted_after_regularize_is_decayed_as_if_converted_before(kind, flag, compiles):
    before = [p.detach().double().clone() for p in _conv_model().parameters()]
    late, opt = _decay_run(_conv_model(), flag, _convert(kind), 3, 1000)
    early, _ = _decay_run(_conv_model(), flag, _convert(kind), 3, 1000, wrap_after=True)
    for a, b in zip(late, early):
        assert torch.equal(a, b)
    dtype = next(_conv_model().apply(_convert(kind)).parameters()).dtype
    assert all(b.params[0].dtype == dtype for b in buckets(opt).all)
    assert all(b.low_precision == (dtype in (torch.bfloat16, torch.float16)) for b in buckets(opt).all)
    for w0, w in zip(before, late):
        if w.dim() > 1:  # the weights (biases get no rule): (1 - 5e-5) ** 1003 = 0.951
            ratio = float(w.norm() / w0.norm())
            assert abs(ratio - 0.951) < 0.005, ratio


def test_a_converted_model_is_checked_cheaply_and_rebuilt_once(compiles):
    m = _conv_model()
    opt = dl.regularize(torch.optim.SGD(m.parameters(), lr=0.1), m, [
        dl.Rule(dl.L2(5e-4), params="0.weight"), dl.Rule(dl.L1(1e-4), params="2.weight")], fused=True)
    m(torch.randn(2, 2, 6, 6)).sum().backward()
    opt.step()
    first = list(buckets(opt).all)
    opt.step()
    assert buckets(opt).all == first  # nothing changed: the same buckets
    m[0].to(torch.bfloat16)
    opt.step()
    rebuilt = list(buckets(opt).all)
    assert rebuilt[0] is not first[0] and rebuilt[0].low_precision and not rebuilt[1].low_precision
    assert rebuilt[1].kernel is first[1].kernel  # the unchanged bucket keeps its kernel
    opt.step()
    assert buckets(opt).all == rebuilt


@pytest.mark.parametrize("flag", [False, True], ids=["eager", "fused"])
def test_a_weight_leaving_low_precision_keeps_the_decay_its_residual_carried(flag, compiles):
    torch.manual_seed(0)
    m = nn.Linear(16, 8, bias=False).to(torch.bfloat16)
    opt = dl.regularize(torch.optim.SGD(m.parameters(), lr=0.1), m,
                        dl.Rule(dl.L2(5e-4), schedule=lambda s: 1.0 if s < 300 else 0.0), fused=flag)
    for _ in range(300):
        m.weight.grad = torch.zeros_like(m.weight)
        opt.step()
    (residual,) = residuals(opt, [m.weight])
    assert residual.abs().max() > 0
    carried = m.weight.detach().float() + residual
    m.float()
    m.weight.grad = torch.zeros_like(m.weight)
    opt.step()  # the schedule is 0 from here: the step only follows the conversion
    assert torch.equal(m.weight.detach(), carried) and residuals(opt, [m.weight]) == [None]
    assert not any(b.low_precision for b in buckets(opt).all)
