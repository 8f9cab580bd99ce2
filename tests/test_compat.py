"""A torch that changed under decaylab (decaylab._compat): each private API made to fail as a
torch upgrade would make it fail, and training goes on, equal to ``fused=False``, with one
warning at the user's ``opt.step()`` line.

Compiled kernels use the "aot_eager" backend here (the same traced program as inductor,
without its C++ compile).
"""

from __future__ import annotations

import re
import types
import warnings

import pytest
import torch
from torch import nn

import decaylab as dl
from decaylab import _compat, fused

from conftest import FUSED_RULES, assert_fused_equals_eager, fused_loss, fused_model, train_fused


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch):
    monkeypatch.setitem(fused._STATE, "disabled", "")
    monkeypatch.setattr(_compat, "_WARNED", set())
    monkeypatch.setattr(fused, "_COMPILED", {})  # every test compiles (and fails) afresh
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    monkeypatch.setattr(fused, "CPU_ADAM_MIN_NUMEL", 0)  # Adam's step in the kernel, on tiny models


def _train_warned(rule, fused_flag=True, **kw):
    """``_train`` recording every warning; returns (weights, optimizer, decaylab's warnings)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out, opt = train_fused(rule, torch.float32, fused_flag, **kw)
    return out, opt, [w for w in seen if "decaylab" in str(w.message)]


def _one_warning(seen, match: str) -> None:
    assert len(seen) == 1, [str(w.message) for w in seen]
    assert re.search(match, str(seen[0].message)), str(seen[0].message)
    assert seen[0].filename.endswith(("conftest.py", "test_compat.py"))  # the opt.step() line


def _missing_compile_fx(backend, options):
    raise ImportError("cannot import name 'compile_fx' from 'torch._inductor.compile_fx'")


def _changed_backend_convention(backend, options):
    def call(gm, example_inputs):
        raise TypeError("compile_fx() got an unexpected keyword argument 'config_patches'")

    return call


@pytest.mark.parametrize("rule", ["L1 prox adam", "GroupLasso inputs adam"])
@pytest.mark.parametrize("broken", [_missing_compile_fx, _changed_backend_convention],
                         ids=["ImportError", "TypeError"])
def test_a_private_backend_that_fails_falls_back_to_the_guarded_call(broken, rule, monkeypatch):
    eager, _ = train_fused(FUSED_RULES[rule], torch.float32, False, sched=True)
    monkeypatch.setattr(_compat, "private_backend", broken)
    comp, opt, seen = _train_warned(FUSED_RULES[rule], sched=True)
    _one_warning(seen, "private compiler hooks \\((ImportError: cannot import|TypeError: compile_fx)")
    assert_fused_equals_eager(eager, comp)
    for r in dl.updates(opt):  # still compiled, through torch.compile's public path, at every call
        assert r["kernel"] == "compiled" and r["level"] == "guarded" and r["guarded_calls"] == r["calls"]
        assert r["calls"] == (3 if "L1" in rule else 4)  # L1: Adam's own first step, then in the kernel


def test_a_changed_direct_calling_convention_falls_back_to_dynamos_call(monkeypatch):
    eager, _ = train_fused(FUSED_RULES["GroupLasso rows lr"], torch.float32, False, steps=5)

    def boxed(program, inputs):  # as if programs now took one list of inputs
        raise TypeError(f"forward() takes 2 positional arguments but {len(inputs) + 1} were given")

    monkeypatch.setattr(_compat, "call_direct", boxed)
    comp, opt, seen = _train_warned(FUSED_RULES["GroupLasso rows lr"], steps=5)
    _one_warning(seen, "direct call failed \\(TypeError: forward\\(\\) takes 2")
    assert_fused_equals_eager(eager, comp)  # the failed call changed nothing; dynamo took the step
    (r,) = dl.updates(opt)
    assert r["calls"] == r["guarded_calls"] == 5 and r["level"] == "guarded"


def test_a_compiler_that_fails_everywhere_leaves_that_kernel_eager_with_one_warning(monkeypatch):
    eager, _ = train_fused(FUSED_RULES["L1 prox lr"], torch.float32, False)
    monkeypatch.setattr(fused, "_BACKEND", "no_such_backend")  # unknown to lookup_backend and torch.compile
    comp, opt, seen = _train_warned(FUSED_RULES["L1 prox lr"])
    _one_warning(seen, "torch.compile failed for a kernel .*no_such_backend.*eager path")
    assert {r["kernel"] for r in dl.updates(opt)} == {"eager"} and fused.available()
    for a, b in zip(eager, comp):
        assert torch.equal(a, b)


def test_a_failing_kernel_leaves_the_other_kernels_compiled(monkeypatch):
    def fails_for_the_group_kernel(gm, example_inputs):
        if len(example_inputs) == 3:  # the group prox's kernel: weight, exp_avg_sq, scalars
            raise RuntimeError("inductor: internal error in this graph")
        return gm.forward

    monkeypatch.setattr(fused, "_BACKEND", fails_for_the_group_kernel)

    def train(fused_flag):
        m = fused_model(torch.float32)
        opt = dl.regularize(torch.optim.Adam(m.parameters(), lr=0.05), m, [
            dl.Rule(dl.L1(0.02), params=["0.weight", "2.weight"]),
            dl.Rule(dl.GroupLasso(0.05, "channels"), params="4.weight")], fused=fused_flag)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 4, generator=g)
        for _ in range(4):
            fused_loss(m, x, y).backward()
            opt.step()
            opt.zero_grad()
        return [p.detach() for p in m.parameters()], opt

    eager, _ = train(False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        comp, opt = train(True)
    seen = [w for w in seen if "decaylab" in str(w.message)]
    _one_warning(seen, "torch.compile failed for a kernel \\(RuntimeError: inductor: internal error")
    l1, group = dl.updates(opt)
    assert group["kernel"] == "eager" and l1["kernel"] == "compiled" and l1["calls"] == 3  # Adam + prox from step 2
    assert_fused_equals_eager(eager, comp)


def test_a_code_object_that_cannot_be_copied_shares_the_function():
    class Body:  # as if a function's code object could no longer be copied
        __name__, __code__ = "body", None

        def __call__(self, x):
            return x

    body = Body()
    with pytest.warns(UserWarning, match="own code object.*AttributeError"):
        assert _compat.fresh(body, "tag") is body


# -- optimizer step hooks ------------------------------------------------------------------
def _run_adam(steps=3):
    """Three Adam steps of a Linear model under L1 (eager kernels); returns (weights, how many
    times torch's step wrapper ran for the inner optimizer, hook calls, warnings)."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    inner = torch.optim.Adam(lin.parameters(), lr=0.1)
    opt = dl.regularize(inner, lin, dl.L1(0.01), fused=False)
    wrapped, calls = [], []
    inner._optimizer_step_code = lambda: wrapped.append(1)  # torch's wrapper calls it after the step
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("wrapper"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(steps):
            lin(torch.randn(5, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
    return [p.detach().clone() for p in lin.parameters()], len(wrapped), calls, \
        [w for w in seen if "decaylab" in str(w.message)]


def test_without_hooks_the_inner_step_skips_torchs_wrapper():
    _, wrapped, calls, seen = _run_adam()
    assert wrapped == 0 and calls == ["wrapper"] * 3 and seen == []


@pytest.mark.parametrize("missing", ["hook tables", "profiler flag"])
def test_unreadable_hook_tables_take_torchs_public_step(missing, monkeypatch):
    expected, *_ = _run_adam()
    if missing == "hook tables":  # as if torch renamed its global hook tables
        monkeypatch.setattr(_compat, "_optim_mod", types.SimpleNamespace())
    else:
        monkeypatch.setattr(torch.autograd, "_profiler_enabled", None)  # not callable: TypeError
    weights, wrapped, calls, seen = _run_adam()
    what = "optimizer step-hook tables" if missing == "hook tables" else "profiler flag"
    assert len(seen) == 1 and f"could not read torch's {what}" in str(seen[0].message)
    assert seen[0].filename == __file__  # the opt.step() line
    assert wrapped == 3 and calls == ["wrapper"] * 3  # torch's own wrapper, the hooks run
    for a, b in zip(expected, weights):
        assert torch.equal(a, b)


def test_unreadable_hook_tables_keep_adams_step_out_of_the_kernel(monkeypatch):
    eager, _ = train_fused(FUSED_RULES["L1 prox lr"], torch.float32, False)
    monkeypatch.setattr(_compat, "_optim_mod", types.SimpleNamespace())
    comp, opt, seen = _train_warned(FUSED_RULES["L1 prox lr"])
    _one_warning(seen, "could not read torch's optimizer step-hook tables")
    (r,) = dl.updates(opt)
    assert r["adam_calls"] == 0 and r["calls"] == 4  # a hook might see hidden gradients
    assert_fused_equals_eager(eager, comp)


# -- the canary: on a torch this project tests, no fallback is taken -------------------------
@pytest.mark.slow
def test_on_a_tested_torch_the_private_path_works_with_inductor(monkeypatch):
    """Where this fails, torch changed one of decaylab._compat's private APIs: training still
    works (the tests above), but slower; the warning names what changed."""
    monkeypatch.setattr(fused, "_BACKEND", "inductor")
    eager, _ = train_fused(FUSED_RULES["L1 prox lr"], torch.float32, False, opt_cls=torch.optim.SGD)
    comp, opt, seen = _train_warned(FUSED_RULES["L1 prox lr"], opt_cls=torch.optim.SGD)
    assert seen == []
    (r,) = dl.updates(opt)
    assert r["level"] == "direct" and r["calls"] == 4 and r["guarded_calls"] == 1  # then the kept program
    assert_fused_equals_eager(eager, comp)
    _, wrapped, calls, seen = _run_adam()  # and the inner step skips torch's wrapper
    assert wrapped == 0 and seen == []


@pytest.mark.slow
def test_inductors_guarded_call_takes_the_kernels_settings_as_public_options(monkeypatch):
    """The fallback a changed compile_fx leads to, with inductor itself: torch.compile's
    options accept the kernel's settings, and bf16 casts still round as eager rounds them."""
    monkeypatch.setattr(fused, "_BACKEND", "inductor")
    eager, _ = train_fused(FUSED_RULES["ElasticNet prox lr"], torch.bfloat16, False, opt_cls=torch.optim.SGD)
    monkeypatch.setattr(_compat, "private_backend", _missing_compile_fx)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        comp, opt = train_fused(FUSED_RULES["ElasticNet prox lr"], torch.bfloat16, True, opt_cls=torch.optim.SGD)
    _one_warning([w for w in seen if "decaylab" in str(w.message)], "private compiler hooks")
    (r,) = dl.updates(opt)
    assert r["level"] == "guarded" and r["calls"] == r["guarded_calls"] == 4
    assert_fused_equals_eager(eager, comp)


@pytest.mark.parametrize("op, args", [("add", (0.5,)), ("add_", ([1.0, 2.0],)), ("mul_", (0.5,)), ("sub_", (0.25,)),
                                      ("clamp_max", (0.1,)), ("clamp_min_", (-0.1,)), ("lerp_", ("refs", 0.3))])
def test_a_multi_tensor_op_torch_lacks_is_a_loop_with_the_same_result(op, args, monkeypatch):
    torch.manual_seed(0)
    ts = [torch.randn(3), torch.randn(2, 2)]
    refs = [torch.randn(3), torch.randn(2, 2)]
    args = tuple(refs if a == "refs" else a for a in args)
    if isinstance(args[0], list) and not isinstance(args[0][0], torch.Tensor):
        args = ([torch.full_like(t, v) for t, v in zip(ts, args[0])],) + args[1:]
    a, b = [t.clone() for t in ts], [t.clone() for t in ts]
    # private: _compat's own foreach shim is the unit under test
    fast = _compat._foreach(op)(a, *args)
    monkeypatch.delattr(torch, "_foreach_" + op)
    slow = _compat._foreach(op)(b, *args)
    if op.endswith("_"):
        assert slow is None and all(torch.equal(x, y) for x, y in zip(a, b))
    else:
        assert all(torch.equal(x, y) for x, y in zip(fast, slow))
