"""Compiled bucket kernels (decaylab.fused): equal to the eager path, chosen once, eager
fallback when compilation fails, no recompilation across steps, no kept Adam buffer.

Compiling with inductor costs seconds per bucket on a CPU, so the full matrix of
penalties x modes x metrics x dtypes is checked with the "aot_eager" backend (the same
traced, functionalized program, run by eager kernels), and inductor itself compiles a
few representative cases, bfloat16 among them (its precision casts matter there).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import decaylab as dl
from decaylab import fused


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch):
    monkeypatch.setitem(fused._STATE, "disabled", "")  # a failure in one test stays there


def _model(dtype, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(),
                      nn.Conv2d(1, 3, 3)).to(dtype)
    return m


def _loss(m, x, y):
    h = m[3](m[2](m[1](m[0](x))))
    img = h.reshape(-1, 1, 2, 2).repeat(1, 1, 2, 2)  # feeds the conv, so it gets gradients
    return ((h - y) ** 2).mean() + m[4](img.float().to(h.dtype)).pow(2).mean()


def _train(rule, dtype, fused_flag, steps=4, opt_cls=torch.optim.Adam, lr=0.05, sched=False):
    m = _model(dtype)
    opt = dl.regularize(opt_cls(m.parameters(), lr=lr), m, [rule(), dl.Rule(None, params="*.bias")],
                        fused=fused_flag)
    sch = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.7) if sched else None
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g).to(dtype), torch.randn(16, 4, generator=g).to(dtype)
    for _ in range(steps):
        _loss(m, x, y).backward()
        opt.step()
        opt.zero_grad()
        if sch:
            sch.step()
    # the value decaylab carries: the weight plus its low-precision residual
    out = [p.detach().float() + opt._comp.get(opt._index[id(p)], 0) for p in m.parameters()]
    return out, opt


def _assert_fused_equals_eager(a, b):
    for x, y in zip(a, b):
        # 1e-6 relative, plus a last-bit allowance at the threshold: a weight the two
        # paths leave on either side of it differs by a few ulps of the threshold
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)


RULES = {
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(RULES))
def test_fused_program_equals_eager_for_every_penalty_mode_and_dtype(name, dtype, monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    eager, e_opt = _train(RULES[name], dtype, False, sched=True)
    comp, c_opt = _train(RULES[name], dtype, True, sched=True)
    kernels = [b.kernel for b in c_opt._buckets]
    assert kernels and all(kernels), "every bucket of this rule should take the fused path"
    assert all(b.kernel is False for b in e_opt._buckets)
    _assert_fused_equals_eager(eager, comp)
    if "prox" in name and "L2" not in name:  # the threshold really acted
        assert any((w == 0).any() for w in comp)


@pytest.mark.slow
@pytest.mark.parametrize("name, dtype", [
    ("L1 prox adam", torch.float32), ("L1 prox adam", torch.bfloat16),
    ("GroupLasso inputs adam", torch.float32), ("ElasticNet prox lr", torch.bfloat16),
], ids=["L1-adam-f32", "L1-adam-bf16", "GroupLasso-adam-f32", "ElasticNet-lr-bf16"])
def test_inductor_kernels_equal_eager(name, dtype):
    eager, _ = _train(RULES[name], dtype, False)
    comp, c_opt = _train(RULES[name], dtype, True)
    assert all(b.kernel and b.kernel.calls == 4 for b in c_opt._buckets)
    _assert_fused_equals_eager(eager, comp)


def test_fused_adam_metric_keeps_no_weight_sized_buffer(monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    _, eager = _train(RULES["L1 prox adam"], torch.float32, False)
    _, comp = _train(RULES["L1 prox adam"], torch.float32, True)
    assert sum(b.numel() for b in eager._buffers.values()) > 0  # the eager fallback keeps one
    assert comp._buffers == {} and comp._comp == {}


def test_compiles_once_per_bucket_and_never_again(monkeypatch):
    compiles = []

    def counting(gm, example_inputs):
        compiles.append(len(example_inputs))
        return gm.forward

    monkeypatch.setattr(fused, "_BACKEND", counting)
    m = _model(torch.float32)
    opt = dl.regularize(torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.0), m, [
        dl.Rule(dl.L1(0.02), params=["0.weight", "2.weight"], schedule=lambda s: 1.0 / (1 + s)),
        dl.Rule(dl.GroupLasso(0.05, "channels"), params="4.weight"),
        dl.Rule(dl.L2(0.1), params="*.bias"),
    ], fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    x, y = torch.randn(16, 6), torch.randn(16, 4)
    for _ in range(6):  # lr, schedule multiplier and Adam's bias correction change every step
        _loss(m, x, y).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert len(opt._buckets) == 3 and all(b.kernel.calls == 6 for b in opt._buckets)
    assert len(compiles) == 3  # one per bucket, at its first step


def test_compilation_failure_falls_back_to_eager_once(monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(fused, "_BACKEND", broken)
    eager, _ = _train(RULES["L1 prox adam"], torch.float32, False)
    with pytest.warns(UserWarning, match="compiled kernels are off.*no C\\+\\+ compiler"):
        comp, c_opt = _train(RULES["L1 prox adam"], torch.float32, True)
    assert not fused.available()
    assert all(b.kernel is False for b in c_opt._buckets)  # chosen once: eager from then on
    for a, b in zip(eager, comp):
        assert torch.equal(a, b)


def test_without_torch_compile_the_eager_path_runs(monkeypatch):
    monkeypatch.delattr(torch, "compile")
    assert not fused.available()
    eager, _ = _train(RULES["GroupLasso inputs adam"], torch.float32, False)
    comp, c_opt = _train(RULES["GroupLasso inputs adam"], torch.float32, True)
    assert all(b.kernel is False for b in c_opt._buckets)
    for a, b in zip(eager, comp):
        assert torch.equal(a, b)


def test_auto_choice_is_eager_for_small_cpu_buckets_and_coupled_mode_is_never_compiled():
    _, opt = _train(RULES["L1 prox adam"], torch.float32, None)
    assert all(b.kernel is False for b in opt._buckets)  # far below fused.CPU_MIN_NUMEL
    assert fused.plan(dl.L2(0.1), "coupled", "lr") is None
    assert fused.plan(dl.L2SP(0.1), "decoupled", "lr") is None
    assert fused.plan(dl.GroupLasso(0.1, groups=lambda s: torch.zeros(s, dtype=torch.long)), "prox", "lr") is None


def test_partial_gradients_take_the_eager_path_for_that_step(monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    m = _model(torch.float32)
    opt = dl.regularize(torch.optim.Adam(m.parameters(), lr=0.05), m,
                        dl.Rule(dl.L1(0.02), params=["0.weight", "2.weight"]), fused=True)
    before = m[2].weight.detach().clone()
    m[0].weight.grad = torch.ones_like(m[0].weight)
    opt.step()
    assert torch.equal(m[2].weight, before)  # no gradient: left alone, as torch leaves it
    assert opt._buckets[0].kernel is None  # the subset ran eagerly; nothing chosen or compiled
    m[2].weight.grad = torch.ones_like(m[2].weight)
    m[0].weight.grad = torch.ones_like(m[0].weight)
    opt.step()
    assert opt._buckets[0].kernel.calls == 1
