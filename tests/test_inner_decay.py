"""L2 taken by torch's own Adam/AdamW (decoupled) or SGD (coupled) step
(decaylab._inner_decay): bit for bit torch with weight-decay param groups, never visible
outside the step, and decaylab's own pass wherever the inner step is not exactly the rule."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

import decaylab as dl
from decaylab import _inner_decay, fused
from decaylab.optim import Regularized

from conftest import buckets, mlp

ALPHA, LR = 0.3, 0.02
IMPLS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


def _mlp(dtype=torch.float32):
    return mlp(6, 16, 16, 3).to(dtype)


def _split(model, decay):
    """torch's way: weights in a group with weight_decay, biases in one without."""
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n.endswith("weight")], "weight_decay": decay},
            {"params": [p for n, p in named if not n.endswith("weight")], "weight_decay": 0.0}]


def _wrap(model, penalty=None, opt_cls=torch.optim.AdamW, params=None, **kwargs):
    """AdamW (weight_decay=0, lr=LR) + L2(ALPHA) unless told otherwise."""
    opt = opt_cls(params if params is not None else model.parameters(), **{"lr": LR, "weight_decay": 0.0, **kwargs})
    return dl.regularize(opt, model, penalty if penalty is not None else dl.L2(ALPHA))


@pytest.fixture
def decay_passes(monkeypatch):
    """Counts decaylab's own L2 passes: ``Regularized._apply(b, "decay")`` (decoupled) and
    ``Regularized._couple(b, ...)`` (coupled)."""
    # private: decaylab's own L2 passes are counted by wrapping the methods that take them
    calls = []
    apply, couple = Regularized._apply, Regularized._couple

    def counting_apply(self, b, op):
        if op == "decay":
            calls.append(b)
        return apply(self, b, op)

    def counting_couple(self, b, swapped):
        calls.append(b)
        return couple(self, b, swapped)

    monkeypatch.setattr(Regularized, "_apply", counting_apply)
    monkeypatch.setattr(Regularized, "_couple", counting_couple)
    return calls


def _old_path(monkeypatch):
    """decaylab's own decay pass for every rule (as before the inner step took it)."""
    monkeypatch.setattr(_inner_decay, "plan", lambda *a: None)


def _run(opt, model, steps=25, sched=None, each_step=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g).to(dtype), torch.randint(0, 3, (32,), generator=g)
    for _ in range(steps):
        if each_step:
            each_step()
        nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
        opt.zero_grad()
        if sched:
            sched.step()
    return [p.detach().clone() for p in model.parameters()]


def _assert_equal(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _states_equal(a, b):
    for p, q in zip(a.state.values(), b.state.values()):
        assert p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.AdamW])
def test_decoupled_l2_is_adamws_own_step_bit_for_bit_with_scheduler_and_schedule(opt_cls, impl, decay_passes):
    """Adam or AdamW (weight_decay=0) + L2(alpha) on the default selection, a schedule on the
    strength and an LR scheduler == AdamW with weight_decay=alpha*schedule on the weights'
    group: weights and Adam's state equal bit for bit, and decaylab's decay pass never ran."""
    model, ref = _mlp(), _mlp()
    schedule = lambda s: 0.7 + 0.3 * (s % 3)  # noqa: E731  (1.3 is inexact in binary)
    ours = dl.regularize(opt_cls(model.parameters(), lr=LR, weight_decay=0.0, **IMPLS[impl]), model,
                         dl.Rule(dl.L2(ALPHA), schedule=schedule))
    theirs = torch.optim.AdamW(_split(ref, ALPHA), lr=LR, **IMPLS[impl])
    steps = []

    def reference_decay():  # the schedule at the step about to be taken, as decaylab applies it
        theirs.param_groups[0]["weight_decay"] = ALPHA * schedule(len(steps))
        steps.append(None)

    a = _run(ours, model, sched=torch.optim.lr_scheduler.StepLR(ours, 4, gamma=0.5))
    b = _run(theirs, ref, sched=torch.optim.lr_scheduler.StepLR(theirs, 4, gamma=0.5), each_step=reference_decay)
    _assert_equal(a, b)
    _states_equal(ours, theirs)
    assert decay_passes == []
    assert not torch.equal(a[0], _run(torch.optim.AdamW(_mlp().parameters(), lr=LR, weight_decay=0.0), _mlp())[0])


def test_an_lr_scheduler_built_on_the_inner_optimizer_keeps_the_inner_step_taking_it(decay_passes):
    """Such a scheduler replaces the inner instance's ``step`` by its own counter, which
    looks at no param group."""
    model, ref = _mlp(), _mlp()
    inner = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.StepLR(inner, 3, gamma=0.5)
    ours = dl.regularize(inner, model, dl.L2(ALPHA))
    theirs = torch.optim.AdamW(_split(ref, ALPHA), lr=LR)
    ref_sched = torch.optim.lr_scheduler.StepLR(theirs, 3, gamma=0.5)
    _assert_equal(_run(ours, model, sched=sched), _run(theirs, ref, sched=ref_sched))
    assert decay_passes == [] and sched.last_epoch == 25


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("maximize", [False, True])
def test_coupled_l2_is_sgds_own_weight_decay_bit_for_bit_and_keeps_grad(impl, maximize, decay_passes):
    """SGD (momentum, Nesterov) + coupled L2 with a schedule and an LR scheduler == SGD with
    weight_decay=alpha*schedule on the weights' group; the user's gradients unchanged."""
    model, ref = _mlp(), _mlp()
    schedule = lambda s: 0.7 + 0.3 * (s % 3)  # noqa: E731
    kw = dict(lr=0.05, momentum=0.9, nesterov=True, maximize=maximize, **IMPLS[impl])
    ours = dl.regularize(torch.optim.SGD(model.parameters(), **kw), model,
                         dl.Rule(dl.L2(ALPHA), mode="coupled", schedule=schedule))
    theirs = torch.optim.SGD(_split(ref, ALPHA), **kw)
    steps = []

    def reference_decay():
        theirs.param_groups[0]["weight_decay"] = ALPHA * schedule(len(steps))
        steps.append(None)

    a = _run(ours, model, sched=torch.optim.lr_scheduler.StepLR(ours, 4, gamma=0.5))
    b = _run(theirs, ref, sched=torch.optim.lr_scheduler.StepLR(theirs, 4, gamma=0.5), each_step=reference_decay)
    _assert_equal(a, b)
    _states_equal(ours, theirs)
    assert decay_passes == []
    # the weights' gradients stay the user's (torch's foreach Nesterov step adds the
    # momentum into a gradient in place where no weight decay made a new one: the biases')
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    model(torch.randn(4, 6)).sum().backward()
    grads = [p.grad.clone() for p in weights]
    ours.step()
    _assert_equal([p.grad for p in weights], grads)


def test_coupled_l2_needs_no_clamp_so_sgd_takes_it_at_any_strength(decay_passes):
    """A gradient term is not clamped (lr * alpha = 1.5 here): SGD's own weight_decay."""
    model, ref = _mlp(), _mlp()
    ours = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.5), model, dl.Rule(dl.L2(3.0), mode="coupled"))
    theirs = torch.optim.SGD(_split(ref, 3.0), lr=0.5)
    _assert_equal(_run(ours, model, steps=3), _run(theirs, ref, steps=3))
    assert decay_passes == []


def test_sparse_gradients_in_the_group_keep_decaylabs_own_coupled_pass(monkeypatch, decay_passes):
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin = nn.Embedding(10, 4, sparse=True), nn.Linear(4, 3)

        def forward(self, i):
            return self.lin(self.emb(i))

    def run():
        torch.manual_seed(0)
        model = Bag()
        opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                            dl.Rule(dl.L2(ALPHA), params="lin.weight", mode="coupled"))
        i = torch.tensor([1, 2, 3, 1])
        for _ in range(3):
            model(i).sum().backward()
            opt.step()
            opt.zero_grad()
        return [p.detach().clone() for p in model.parameters()]

    a = run()
    assert len(decay_passes) == 3
    _old_path(monkeypatch)
    _assert_equal(a, run())


def test_several_strengths_and_param_groups_each_get_their_own_weight_decay(decay_passes):
    """Two L2 rules of different strengths in one group, a second group with its own lr."""
    model, ref = _mlp(), _mlp()

    def groups(m):
        return [{"params": [*m[0].parameters(), *m[2].parameters()]}, {"params": m[4].parameters(), "lr": 0.05}]

    ours = dl.regularize(torch.optim.AdamW(groups(model), lr=LR, weight_decay=0.0), model, [
        dl.Rule(dl.L2(0.1), params="0.weight"), dl.Rule(dl.L2(0.4), params=["2.weight", "4.weight"])])
    theirs = torch.optim.AdamW([{"params": [ref[0].weight], "weight_decay": 0.1},
                                {"params": [ref[2].weight], "weight_decay": 0.4},
                                {"params": [ref[0].bias, ref[2].bias], "weight_decay": 0.0},
                                {"params": [ref[4].weight], "weight_decay": 0.4, "lr": 0.05},
                                {"params": [ref[4].bias], "weight_decay": 0.0, "lr": 0.05}], lr=LR)
    _assert_equal(_run(ours, model), _run(theirs, ref))
    assert decay_passes == []


def test_the_users_param_groups_are_untouched_and_the_split_is_never_seen_outside_the_step():
    model = _mlp()
    ours = _wrap(model)
    groups, group = ours.param_groups, ours.param_groups[0]
    params, before = list(group["params"]), {k: v for k, v in group.items() if k != "params"}
    seen = []
    sched = torch.optim.lr_scheduler.LambdaLR(ours, lambda s: seen.append(len(ours.param_groups)) or 1.0)
    _run(ours, model, steps=3, sched=sched)
    assert ours.param_groups is groups and ours.optimizer.param_groups is groups
    assert len(groups) == 1 and groups[0] is group
    assert len(group["params"]) == len(params) and all(a is b for a, b in zip(group["params"], params))
    assert {k: v for k, v in group.items() if k != "params"} == {**before, "initial_lr": LR}
    assert seen == [1] * 4
    # an error inside the inner step leaves the user's groups in place too
    model[0].weight.grad = torch.zeros_like(model[0].weight).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        ours.step()
    assert ours.param_groups is groups and len(groups) == 1


def test_a_checkpoint_between_steps_resumes_the_same_run():
    def build(model):
        return dl.regularize(torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, fused=True), model,
                             dl.L2(ALPHA))

    model = _mlp()
    ours = build(model)
    saved = _run(ours, model, steps=5)
    sd = copy.deepcopy(ours.state_dict())  # its tensors are the live state's
    assert len(sd["param_groups"]) == 1 and sd["param_groups"][0]["weight_decay"] == 0.0
    end = _run(ours, model, steps=5)
    again = _mlp()
    with torch.no_grad():
        for p, w in zip(again.parameters(), saved):
            p.copy_(w)
    resumed = build(again)
    resumed.load_state_dict(sd)
    _assert_equal(_run(resumed, again, steps=5), end)


def test_a_prox_bucket_taking_adams_step_in_its_kernel_and_the_l2_split_share_one_group(monkeypatch, decay_passes):
    """L1 whose compiled kernel takes AdamW's step for its weights, decoupled L2 on others, in
    one param group: equal to decaylab's own decay pass bit for bit."""
    monkeypatch.setitem(fused._STATE, "disabled", "")
    monkeypatch.setattr(fused, "_BACKEND", "aot_eager")
    monkeypatch.setattr(fused, "CPU_ADAM_MIN_NUMEL", 0)

    def build(model):
        return dl.regularize(torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0), model, [
            dl.Rule(dl.L1(0.01), params="2.weight"), dl.Rule(dl.L2(ALPHA), params=["0.weight", "4.weight"])],
            fused=True)

    model = _mlp()
    fast = build(model)
    a = _run(fast, model, steps=6)
    l1 = next(r for r in dl.updates(fast) if r["mode"].startswith("prox"))
    assert l1["kernel"] == "compiled" and l1["adam_calls"] > 0  # AdamW's step ran inside the L1 kernel
    assert decay_passes == []
    _old_path(monkeypatch)
    model = _mlp()
    _assert_equal(a, _run(build(model), model, steps=6))
    assert decay_passes


class _AdamWSubclass(torch.optim.AdamW):
    pass


class _L2Subclass(dl.L2):
    pass


F32, BF16 = torch.float32, torch.bfloat16
# name -> (build (model) -> optimizer, dtype); each keeps decaylab's own decay pass
FALLBACKS = {
    "subclass of AdamW": (lambda m: _wrap(m, opt_cls=_AdamWSubclass), F32),
    "SGD": (lambda m: _wrap(m, opt_cls=torch.optim.SGD), F32),
    "lr * alpha >= 1 (clamped)": (lambda m: _wrap(m, dl.L2(2.5), lr=0.5), F32),
    "lr a tensor": (lambda m: _wrap(m, lr=torch.tensor(LR)), F32),
    "group weight_decay": (lambda m: _wrap(m, weight_decay=0.01), F32),
    "bf16 weights": (_wrap, BF16),
    "K strengths": (lambda m: _wrap(m, dl.Rule(dl.L2(torch.tensor([ALPHA] * 16)), params="0.weight")), F32),
    "subclass of L2": (lambda m: _wrap(m, _L2Subclass(ALPHA)), F32),
    "L2SP": (lambda m: _wrap(m, dl.L2SP(ALPHA)), F32),
    "inner step hook": (_wrap, F32),
    "step replaced on the instance": (_wrap, F32),
    "a plain tensor in the group": (lambda m: _wrap(m, params=[*m.parameters(), torch.zeros(3, requires_grad=True)]),
                                    F32),
}


HOOKED = {"inner step hook", "step replaced on the instance"}


@pytest.mark.parametrize("name", list(FALLBACKS))
def test_anything_not_exactly_the_rule_keeps_decaylabs_own_decay_pass(name, monkeypatch, decay_passes):
    build, dtype = FALLBACKS[name]
    seen = []

    def make(model):
        opt = build(model)
        if name == "inner step hook":
            opt.optimizer.register_step_pre_hook(lambda o, *a: seen.append(len(o.param_groups)))
        if name == "step replaced on the instance":
            step = opt.optimizer.step
            opt.optimizer.step = lambda *a, **k: (seen.append(len(opt.optimizer.param_groups)), step(*a, **k))[1]
        return opt

    model = _mlp(dtype)
    with pytest.warns(UserWarning) if name == "group weight_decay" else contextlib.nullcontext():
        a = _run(make(model), model, steps=6, dtype=dtype)
    assert len(decay_passes) >= 6
    assert seen == ([1] * 6 if name in HOOKED else [])  # what looks at the groups sees the user's one
    _old_path(monkeypatch)
    model = _mlp(dtype)
    with pytest.warns(UserWarning) if name == "group weight_decay" else contextlib.nullcontext():
        _assert_equal(a, _run(make(model), model, steps=6, dtype=dtype))


def test_past_lr_alpha_1_decaylabs_clamped_pass_takes_over_mid_run(monkeypatch, decay_passes):
    """torch's factor 1 - lr*wd would turn negative (a sign flip); decaylab clamps it at 0,
    so a step where the schedule lifts lr*alpha to 1 or more is decaylab's own."""
    def run():
        model = _mlp()
        opt = dl.regularize(torch.optim.AdamW(model.parameters(), lr=0.5, weight_decay=0.0), model,
                            dl.Rule(dl.L2(1.5), schedule=lambda s: 2.0 if s == 2 else 1.0))
        return _run(opt, model, steps=5)

    a = run()
    assert len(decay_passes) == 1  # lr * alpha * schedule: 0.75, 0.75, 1.5, 0.75, 0.75
    _old_path(monkeypatch)
    _assert_equal(a, run())


def test_a_group_missing_a_rules_weight_is_not_split():
    model = _mlp()
    opt = _wrap(model)
    # private: the plan says who takes the decay; the step's result is the same either way
    assert _inner_decay.plan(opt.optimizer, buckets(opt).by_mode, opt._multiplier) is not None
    opt.optimizer.param_groups[0]["params"].remove(model[0].weight)
    assert _inner_decay.plan(opt.optimizer, buckets(opt).by_mode, opt._multiplier) is None


def test_a_closure_keeps_decaylabs_own_decay_pass(decay_passes):
    model = _mlp()
    opt = _wrap(model)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert len(decay_passes) == 1


def test_grad_scaler_steps_it_as_adamw_bit_for_bit(decay_passes):
    model, ref = _mlp(), _mlp()
    ours = _wrap(model)
    theirs = torch.optim.AdamW(_split(ref, ALPHA), lr=LR)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for m, opt in ((model, ours), (ref, theirs)):
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for _ in range(5):
            scaler.scale(nn.functional.cross_entropy(m(x), y)).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    _assert_equal(model.parameters(), ref.parameters())
    assert decay_passes == []


def test_without_a_split_the_wrapper_leaves_param_groups_to_the_inner_optimizer():
    """It puts back only what it replaced: an optimizer's own step may rebind its list."""
    class Rebinding(torch.optim.SGD):
        def step(self, closure=None):
            out = super().step(closure)
            self.param_groups = list(self.param_groups)
            return out

    model = _mlp()
    opt = _wrap(model, opt_cls=Rebinding)
    before = opt.param_groups
    _run(opt, model, steps=1)
    assert opt.param_groups is not before and opt.param_groups == before
