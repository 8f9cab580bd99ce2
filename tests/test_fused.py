"""Compiled bucket kernels (decaylab.fused): equal to the eager path, chosen once, eager
fallback when compilation fails, no recompilation across steps, no kept Adam buffer.

Compiling with inductor builds C++ per bucket on a CPU, so the full matrix of
penalties x modes x metrics x dtypes is checked with the "aot_eager" backend (the same
traced, functionalized program, run by eager kernels), and inductor itself compiles a
few representative cases, bfloat16 among them (its precision casts matter there).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import decaylab as dl
from decaylab import _compat, fused
from decaylab import functional as F
from decaylab.groups import Rows

from conftest import FUSED_RULES, assert_fused_equals_eager, carried, fused_loss, fused_model, train_fused


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch):
    monkeypatch.setitem(fused._STATE, "disabled", "")  # a failure in one test stays there
    monkeypatch.setattr(_compat, "_WARNED", set())  # each test sees its own warnings
    # these models are tiny: let their buckets take Adam's step in (a CPU default keeps it
    # apart below fused.CPU_ADAM_MIN_NUMEL weights; tested on its own below)
    monkeypatch.setattr(fused, "CPU_ADAM_MIN_NUMEL", 0)


class _AdamSubclass(torch.optim.Adam):
    pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(FUSED_RULES))
def test_fused_program_equals_eager_for_every_penalty_mode_and_dtype(name, dtype, monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    # torch's own Adam takes a decoupled L2 in its step (decaylab._inner_decay); a subclass
    # of it keeps decaylab's decay pass, whose compiled kernel is under test here
    opt_cls = _AdamSubclass if name == "L2 decoupled" else torch.optim.Adam
    eager, e_opt = train_fused(FUSED_RULES[name], dtype, False, sched=True, opt_cls=opt_cls)
    comp, c_opt = train_fused(FUSED_RULES[name], dtype, True, sched=True, opt_cls=opt_cls)
    kernels = [r["kernel"] for r in dl.updates(c_opt)]
    assert kernels and set(kernels) == {"compiled"}, "every bucket of this rule should take the fused path"
    assert {r["kernel"] for r in dl.updates(e_opt)} == {"eager"}
    assert_fused_equals_eager(eager, comp)
    if "prox" in name and "L2" not in name:  # the threshold really acted
        assert any((w == 0).any() for w in comp)


@pytest.mark.slow
@pytest.mark.parametrize("name, dtype", [
    ("L1 prox adam", torch.float32), ("L1 prox adam", torch.bfloat16),
    ("GroupLasso inputs adam", torch.float32), ("ElasticNet prox lr", torch.bfloat16),
], ids=["L1-adam-f32", "L1-adam-bf16", "GroupLasso-adam-f32", "ElasticNet-lr-bf16"])
def test_inductor_kernels_equal_eager(name, dtype):
    eager, _ = train_fused(FUSED_RULES[name], dtype, False)
    comp, c_opt = train_fused(FUSED_RULES[name], dtype, True)
    # fp32 elementwise prox: step 1 is Adam's own (it makes the state) with the eager prox,
    # steps 2-4 run Adam's step inside the compiled kernel; bf16 and group proxes keep
    # Adam's own step, and their kernel runs from step 1
    fused_adam = dtype == torch.float32 and "GroupLasso" not in name
    assert all(r["kernel"] == "compiled" and r["calls"] == (3 if fused_adam else 4)
               and r["adam_calls"] == (3 if fused_adam else 0) for r in dl.updates(c_opt))
    assert_fused_equals_eager(eager, comp)


def test_fused_adam_metric_keeps_no_weight_sized_buffer(monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    _, eager = train_fused(FUSED_RULES["L1 prox adam"], torch.float32, False)
    _, comp = train_fused(FUSED_RULES["L1 prox adam"], torch.float32, True)
    assert sum(r["buffer_bytes"] for r in dl.updates(eager)) > 0  # the eager fallback keeps one
    assert sum(r["buffer_bytes"] for r in dl.updates(comp)) == 0 and comp.state_dict()["decaylab"]["residuals"] == {}
    _, first = train_fused(FUSED_RULES["L1 prox adam"], torch.float32, True, steps=1)  # the eager first step
    assert sum(r["buffer_bytes"] for r in dl.updates(first)) == 0


def test_compiles_once_per_bucket_and_never_again(monkeypatch):
    compiles = []

    def counting(gm, example_inputs):
        compiles.append(len(example_inputs))
        return gm.forward

    monkeypatch.setattr(fused, "_BACKEND", counting)
    m = fused_model(torch.float32)
    opt = dl.regularize(torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.0), m, [
        dl.Rule(dl.L1(0.02), params=["0.weight", "2.weight"], schedule=lambda s: 1.0 / (1 + s)),
        dl.Rule(dl.GroupLasso(0.05, "channels"), params="4.weight"),
        dl.Rule(dl.L2(0.1), params="*.bias"),
    ], fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    x, y = torch.randn(16, 6), torch.randn(16, 4)
    for _ in range(6):  # lr, schedule multiplier and Adam's bias correction change every step
        fused_loss(m, x, y).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    # the L1 bucket takes AdamW's step into its kernel from step 2 on (step 1 is AdamW's
    # own, with the eager prox); the group prox compiles at step 1; AdamW's own step takes
    # the decoupled L2 (decaylab._inner_decay), whose kernel is never chosen
    assert [(r["kernel"], r["calls"]) for r in dl.updates(opt)] == [("compiled", 5), ("compiled", 6), ("not chosen", 0)]
    assert len(compiles) == 2  # one per compiled bucket, never again


def test_compilation_failure_falls_back_to_eager_per_kernel_with_one_warning(monkeypatch):
    tries = []

    def broken(gm, example_inputs):
        tries.append(1)
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(fused, "_BACKEND", broken)
    eager, _ = train_fused(FUSED_RULES["L1 prox adam"], torch.float32, False)
    with pytest.warns(UserWarning, match="torch.compile failed.*no C\\+\\+ compiler.*eager path") as seen:
        comp, c_opt = train_fused(FUSED_RULES["L1 prox adam"], torch.float32, True)
    assert len([w for w in seen if "decaylab" in str(w.message)]) == 1
    assert seen[0].filename == train_fused.__code__.co_filename  # at the opt.step() line of the loop
    assert fused.available()  # this kernel is eager; the process may still compile others
    assert {r["kernel"] for r in dl.updates(c_opt)} == {"eager"}  # chosen once: eager from then on
    assert len(tries) == 2  # the private hook, then torch.compile's public path; never again
    for a, b in zip(eager, comp):
        assert torch.equal(a, b)


def test_without_torch_compile_the_eager_path_runs(monkeypatch):
    monkeypatch.delattr(torch, "compile")
    assert not fused.available()
    eager, _ = train_fused(FUSED_RULES["GroupLasso inputs adam"], torch.float32, False)
    comp, c_opt = train_fused(FUSED_RULES["GroupLasso inputs adam"], torch.float32, True)
    assert {r["kernel"] for r in dl.updates(c_opt)} == {"eager"}
    for a, b in zip(eager, comp):
        assert torch.equal(a, b)


def test_auto_choice_is_eager_for_small_cpu_buckets_and_coupled_mode_is_never_compiled():
    _, opt = train_fused(FUSED_RULES["L1 prox adam"], torch.float32, None)
    assert {r["kernel"] for r in dl.updates(opt)} == {"eager"}  # far below fused.CPU_MIN_NUMEL
    assert fused.plan(dl.L2(0.1), "coupled", "lr") is None
    assert fused.plan(dl.L2SP(0.1), "decoupled", "lr") is None
    assert fused.plan(dl.GroupLasso(0.1, groups=lambda s: torch.zeros(s, dtype=torch.long)), "prox", "lr") is None


def test_partial_gradients_take_the_eager_path_for_that_step(monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    m = fused_model(torch.float32)
    opt = dl.regularize(torch.optim.Adam(m.parameters(), lr=0.05), m,
                        dl.Rule(dl.L1(0.02), params=["0.weight", "2.weight"]), fused=True)
    before = m[2].weight.detach().clone()
    m[0].weight.grad = torch.ones_like(m[0].weight)
    opt.step()
    assert torch.equal(m[2].weight, before)  # no gradient: left alone, as torch leaves it
    assert dl.updates(opt)[0]["kernel"] == "not chosen"  # the subset ran eagerly; nothing chosen or compiled
    for _ in range(2):  # the first full step makes Adam's state; the second is compiled
        m[2].weight.grad = torch.ones_like(m[2].weight)
        m[0].weight.grad = torch.ones_like(m[0].weight)
        opt.step()
    assert dl.updates(opt)[0]["calls"] == 1


# -- Adam's step inside the prox kernel ---------------------------------------------------
class _MyAdamW(torch.optim.AdamW):
    """A subclass may change the update: decaylab must not take its step over."""


ADAMS = {
    "Adam": (torch.optim.Adam, {}),
    "Adam-coupled-wd": (torch.optim.Adam, {"weight_decay": 0.1}),
    "AdamW-wd": (torch.optim.AdamW, {"weight_decay": 0.1}),
    "AdamW-fused-maximize": (torch.optim.AdamW, {"fused": True, "maximize": True}),
}


def _train_adam(opt_cls, kwargs, fused_flag, rule, steps=5, hook=None):
    m = fused_model(torch.float32)
    opt = dl.regularize(opt_cls(m.parameters(), lr=0.05, **kwargs), m,
                        [rule(), dl.Rule(None, params="*.bias")], fused=fused_flag)
    if hook is not None:
        opt.optimizer.register_step_pre_hook(hook)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 4, generator=g)
    for _ in range(steps):
        fused_loss(m, x, y).backward()
        opt.step()
        opt.zero_grad()
    return m, opt


@pytest.mark.parametrize("rule", ["L1 prox adam", "L1 prox lr", "ElasticNet prox adam", "ElasticNet prox lr"])
@pytest.mark.parametrize("adam", list(ADAMS))
def test_adam_step_inside_the_kernel_equals_adam_then_prox(adam, rule, monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    opt_cls, kwargs = ADAMS[adam]
    m_e, o_e = _train_adam(opt_cls, kwargs, False, FUSED_RULES[rule])
    m_c, o_c = _train_adam(opt_cls, kwargs, True, FUSED_RULES[rule])
    prox = [r for r in dl.updates(o_c) if r["mode"].startswith("prox")]
    assert prox and all(r["adam_calls"] == r["calls"] == 4 for r in prox)
    assert_fused_equals_eager(list(m_e.parameters()), list(m_c.parameters()))
    for p_e, p_c in zip(m_e.parameters(), m_c.parameters()):  # Adam's state, counters included
        s_e, s_c = o_e.state[p_e], o_c.state[p_c]
        assert float(s_e["step"]) == float(s_c["step"]) == 5.0
        torch.testing.assert_close(s_c["exp_avg"], s_e["exp_avg"], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(s_c["exp_avg_sq"], s_e["exp_avg_sq"], rtol=1e-6, atol=1e-12)
    assert any((p == 0).any() for p in m_c.parameters())


@pytest.mark.parametrize("case", ["amsgrad", "NAdam", "subclass", "step-hook"])
def test_adam_step_stays_the_inner_optimizers_where_fusing_would_change_it(case, monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    opt_cls, kwargs, hook = torch.optim.AdamW, {}, None
    seen = []
    if case == "amsgrad":
        kwargs = {"amsgrad": True}
    elif case == "NAdam":
        opt_cls = torch.optim.NAdam
    elif case == "subclass":
        opt_cls = _MyAdamW
    else:
        def hook(opt, args, kw):  # a hook that reads the gradients must see them all
            seen.append(all(p.grad is not None for p in opt.param_groups[0]["params"]))
    m_e, _ = _train_adam(opt_cls, kwargs, False, FUSED_RULES["L1 prox adam"])
    m_c, o_c = _train_adam(opt_cls, kwargs, True, FUSED_RULES["L1 prox adam"], hook=hook)
    prox = [r for r in dl.updates(o_c) if r["mode"].startswith("prox")]
    assert prox and all(r["adam_calls"] == 0 and r["calls"] == 5 for r in prox)
    assert_fused_equals_eager(list(m_e.parameters()), list(m_c.parameters()))
    assert case != "step-hook" or seen == [True] * 5


def test_checkpoint_taken_between_fused_adam_steps_resumes_the_same_run(monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    straight, _ = _train_adam(torch.optim.AdamW, {}, True, FUSED_RULES["L1 prox adam"], steps=6)
    m, opt = _train_adam(torch.optim.AdamW, {}, True, FUSED_RULES["L1 prox adam"], steps=3)
    sd = opt.state_dict()
    m2 = fused_model(torch.float32)
    m2.load_state_dict(m.state_dict())
    opt2 = dl.regularize(torch.optim.AdamW(m2.parameters(), lr=0.05), m2,
                         [FUSED_RULES["L1 prox adam"](), dl.Rule(None, params="*.bias")], fused=True)
    opt2.load_state_dict(sd)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 4, generator=g)
    for _ in range(3):
        fused_loss(m2, x, y).backward()
        opt2.step()
        opt2.zero_grad()
    assert_fused_equals_eager(list(straight.parameters()), list(m2.parameters()))


def test_one_rule_over_fp32_and_bf16_weights_fuses_the_fp32_bucket_only(monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")

    def run(flag):
        torch.manual_seed(0)
        m = nn.Module()
        m.a = nn.Parameter(torch.randn(4, 3))
        m.b = nn.Parameter(torch.randn(4, 3).to(torch.bfloat16))
        opt = dl.regularize(torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.0), m,
                            dl.Rule(dl.L1(0.05), params=["a", "b"]), fused=flag)
        target = torch.linspace(-1, 1, 12).reshape(4, 3)
        for _ in range(4):
            ((m.a - target) ** 2).sum().backward()
            ((m.b.float() - target) ** 2).sum().backward()
            opt.step()
            opt.zero_grad()
        return [m.a.detach().clone(), *carried(opt, [m.b])], opt

    eager, _ = run(False)
    comp, opt = run(True)
    by_dtype = {r["dtype"]: r for r in dl.updates(opt)}
    assert by_dtype["float32"]["adam_calls"] > 0 and by_dtype["bfloat16"]["adam_calls"] == 0
    assert_fused_equals_eager(eager, comp)


@pytest.mark.parametrize("metric", ["adam", "lr"])
def test_stacked_strengths_inside_the_adam_kernel_equal_eager(metric, monkeypatch):
    # a sweep's stacked weights [K, ...] with one strength per configuration
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")

    def run(flag):
        torch.manual_seed(0)
        m = nn.Module()
        m.w = nn.Parameter(torch.randn(3, 4, 5))
        alphas = torch.tensor([0.01, 1.0, 5.0]) if metric == "adam" else torch.tensor([0.1, 0.5, 2.0])
        opt = dl.regularize(torch.optim.Adam(m.parameters(), lr=0.05), m,
                            dl.Rule(dl.L1(alphas), params="w", metric=metric), fused=flag)
        target = torch.linspace(-1, 1, 60).reshape(3, 4, 5)
        for _ in range(10):
            ((m.w - target) ** 2).sum().backward()
            opt.step()
            opt.zero_grad()
        return [m.w.detach().clone()], opt

    eager, _ = run(False)
    comp, opt = run(True)
    assert dl.updates(opt)[0]["adam_calls"] > 0 and dl.updates(opt)[0]["calls"] == 9
    assert_fused_equals_eager(eager, comp)
    zeros = (comp[0] == 0).flatten(1).sum(1)
    assert zeros[0] < zeros[2]  # the strongest configuration is the sparsest


@pytest.mark.slow
def test_inductor_group_threshold_in_adams_metric_leaves_a_nan_entry_out_as_eager_does(monkeypatch):
    # the kernel tests NaN as d != d (isnan does not vectorize on a CPU): inductor must not
    # fold it away; the NaN coordinate is left out of its group's mean step
    torch.manual_seed(0)
    w, v = torch.randn(4, 6), torch.rand(4, 6) * 1e-4
    v[1, 2] = float("nan")
    a, b = [w.clone()], [w.clone()]
    with torch.no_grad():  # step 0.1, alpha 0.05, eps 1e-8, Adam's bias correction 0.7
        for backend, out in (("inductor", a), ("eager", b)):  # "eager": the kernel's body as it is
            monkeypatch.setattr(fused, "_BACKEND", backend)
            kernel = fused.Kernel("group", 1.0, [(1,)], "nan")
            assert kernel(out, None, [v], [0.7], 0.1, 0.05, 1e-8) and kernel.level == "direct"
    assert torch.isfinite(a[0]).all() and torch.equal(a[0], b[0])
    assert not torch.equal(a[0], w)


def test_auto_choice_on_a_large_cpu_bucket_compiles(monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    kernels = {}
    for name, rule in [("l1", dl.Rule(dl.L1(1e-3), metric="lr")),
                       ("group-lr", dl.Rule(dl.GroupLasso(1e-3, "rows"), metric="lr")),
                       ("group-adam", dl.Rule(dl.GroupLasso(1e-3, "rows"), metric="adam"))]:
        lin = nn.Linear(1024, fused.CPU_MIN_NUMEL // 1024, bias=False)
        opt = dl.regularize(torch.optim.Adam(lin.parameters(), lr=1e-3), lin, rule)  # fused=None
        lin(torch.randn(2, 1024)).sum().backward()
        opt.step()
        kernels[name] = dl.updates(opt)[0]["kernel"]
    assert set(kernels.values()) == {"compiled"}
    small = nn.Linear(8, 4)
    opt = dl.regularize(torch.optim.Adam(small.parameters(), lr=1e-3), small, dl.GroupLasso(1e-3))
    small(torch.randn(2, 8)).sum().backward()
    opt.step()
    assert dl.updates(opt)[0]["kernel"] == "eager"  # far below fused.CPU_MIN_NUMEL: eager


# -- the group factor's edge cases, and calling the compiled program without dynamo -------
def _edge_groups() -> torch.Tensor:
    w = torch.randn(6, 5)
    w[0] = 0.0                                   # a zero group stays zero
    w[1] = 1e-30                                 # its squares underflow: the norm is 0
    w[2, 3] = float("nan")                       # a NaN entry: the group is left alone
    w[3] = 1e30                                  # its squares overflow: an infinite norm
    w[4] = 1e-3                                  # below the threshold: zeroed
    return w


@pytest.mark.parametrize("t", [0.0, 0.05])
@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["body", "inductor"])
def test_group_factor_edge_cases_match_the_eager_prox(t, compiled, monkeypatch):
    w = _edge_groups()
    expect = [w.clone()]
    F.group_soft_threshold_(expect, t, [Rows()])
    per_group = [w.clone()]  # the eager path for a threshold per group (Adam's metric)
    F.group_soft_threshold_(per_group, torch.full((6, 1), t), [Rows()])
    torch.testing.assert_close(per_group[0], expect[0], rtol=1e-6, atol=0.0, equal_nan=True)
    monkeypatch.setattr(fused, "_BACKEND", "inductor" if compiled else "eager")  # "eager": the body as it is
    got = [w.clone()]
    with torch.no_grad():
        assert fused.Kernel("group", 1.0, [(1,)], "edge")(got, None, None, None, t, 1.0, 0.0)
    torch.testing.assert_close(got[0], expect[0], rtol=1e-6, atol=0.0, equal_nan=True)
    if t == 0.0:  # a zero threshold changes nothing, not even a group whose norm underflowed
        assert torch.equal(got[0].nan_to_num(), w.nan_to_num())
    else:
        assert (got[0][[0, 1, 4]] == 0).all() and torch.equal(got[0][3], w[3])
    assert torch.isnan(got[0][2, 3]) and torch.isfinite(got[0][2, [0, 1, 2, 4]]).all()


def test_after_its_first_call_a_kernel_runs_without_dynamo_and_equals_eager(monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    monkeypatch.setattr(fused, "_COMPILED", {})
    eager, _ = train_fused(FUSED_RULES["GroupLasso rows lr"], torch.float32, False, steps=6, sched=True)
    m = fused_model(torch.float32)
    opt = dl.regularize(torch.optim.Adam(m.parameters(), lr=0.05), m,
                        [FUSED_RULES["GroupLasso rows lr"](), dl.Rule(None, params="*.bias")], fused=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.7)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 4, generator=g)
    for _ in range(6):
        fused_loss(m, x, y).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    (row,) = dl.updates(opt)
    assert row["level"] == "direct" and row["calls"] == 6 and row["guarded_calls"] == 1
    assert_fused_equals_eager(eager, [p.detach() for p in m.parameters()])


def test_a_tensor_whose_layout_changed_goes_back_through_dynamo(monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    monkeypatch.setattr(fused, "_COMPILED", {})
    w = nn.Parameter(torch.randn(5, 5))
    kernel = fused.Kernel("group", 1.0, [(1,)], "layout")
    with torch.no_grad():
        assert kernel([w], None, None, None, 0.1, 0.5, 0.0) and kernel.guarded_calls == 1
        assert kernel([w], None, None, None, 0.1, 0.5, 0.0) and kernel.guarded_calls == 1  # direct
        w.data = w.data.t().contiguous().t()  # same values and shape, transposed strides
        expect = [w.detach().clone()]
        F.group_soft_threshold_(expect, 0.05, [Rows()])
        F.group_soft_threshold_(expect, 0.05, [Rows()])
        assert kernel([w], None, None, None, 0.1, 0.5, 0.0) and kernel.guarded_calls == 2
        assert kernel([w], None, None, None, 0.1, 0.5, 0.0) and kernel.guarded_calls == 2  # kept: direct
    assert kernel.calls == 4 and kernel.level == "direct"
    torch.testing.assert_close(w.detach(), expect[0], rtol=1e-6, atol=0.0)


def test_a_small_cpu_bucket_keeps_adams_step_apart_by_default(monkeypatch):
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    monkeypatch.undo()  # the library's threshold, not the fixture's 0
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    monkeypatch.setitem(fused._STATE, "disabled", "")
    assert fused.CPU_ADAM_MIN_NUMEL > 0
    eager, _ = train_fused(FUSED_RULES["L1 prox lr"], torch.float32, False, opt_cls=torch.optim.AdamW)
    comp, c_opt = train_fused(FUSED_RULES["L1 prox lr"], torch.float32, True, opt_cls=torch.optim.AdamW)
    row = dl.updates(c_opt)[0]
    assert row["adam_calls"] == 0 and row["calls"] == 4  # the prox kernel from step 1, AdamW's own step
    assert_fused_equals_eager(eager, comp)
