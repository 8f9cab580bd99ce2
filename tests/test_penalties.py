"""Penalties (decaylab.penalties): hand-computed values, autograd == grad(), decay_ == an
explicit step (clamped), batched strengths == one configuration at a time, per-coordinate
steps, the foreach choice reaching every kernel, and bad input named."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import decaylab as dl
from decaylab import functional as F
from decaylab.groups import Indexed

from conftest import reg, reg_adam

f64 = torch.float64


def t64(*values):
    return torch.tensor(values, dtype=f64)


# ---------------------------------------------------------------------------------------
# value(): hand-computed numbers
# ---------------------------------------------------------------------------------------


def test_l2_value_has_the_half():
    # alpha/2 * (1 + 4 + 9), summed over the list
    assert float(dl.L2(0.5).value([t64(1.0, -2.0), t64(3.0).reshape(1, 1)])) == pytest.approx(3.5, rel=1e-15)


def test_l1_value():
    assert float(dl.L1(0.5).value([t64(1.0, -2.0), t64(-3.0).reshape(1, 1)])) == pytest.approx(3.0, rel=1e-15)


def test_elastic_net_value_is_sklearns_penalty():
    # sklearn: alpha * l1_ratio * ||w||_1 + 0.5 * alpha * (1 - l1_ratio) * ||w||_2^2; by hand
    # for w = (2, -1), alpha = 2, l1_ratio = 1/4: 2 * 1/4 * 3 + 1/2 * 2 * 3/4 * 5 = 1.5 + 3.75
    w = t64(2.0, -1.0)
    assert float(dl.ElasticNet(2.0, l1_ratio=0.25).value([w])) == pytest.approx(5.25, rel=1e-15)


def test_elastic_net_ends_are_l1_and_l2():
    w = [torch.randn(4, 3, dtype=f64)]
    torch.testing.assert_close(dl.ElasticNet(0.3, l1_ratio=1.0).value(w), dl.L1(0.3).value(w))
    torch.testing.assert_close(dl.ElasticNet(0.3, l1_ratio=0.0).value(w), dl.L2(0.3).value(w))


@pytest.mark.parametrize(
    "groups, w, expected",
    [
        # rows (3,4), (0,0), (1,0): sqrt(2) * (5 + 0 + 1)
        ("rows", [[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], math.sqrt(2) * 6),
        ("outputs", [[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], math.sqrt(2) * 6),
        # columns (3,4,1) and (4,0,0) of size 3: sqrt(3) * (sqrt(26) + 4)
        ("columns", [[3.0, 4.0], [4.0, 0.0], [1.0, 0.0]], math.sqrt(3) * (math.sqrt(26) + 4)),
        ("inputs", [[3.0, 4.0], [4.0, 0.0], [1.0, 0.0]], math.sqrt(3) * (math.sqrt(26) + 4)),
    ],
)
def test_group_lasso_value_uses_sqrt_group_size(groups, w, expected):
    value = dl.GroupLasso(2.0, groups=groups).value([torch.tensor(w, dtype=f64)])
    assert float(value) == pytest.approx(2.0 * expected, rel=1e-14)


def test_group_lasso_value_channels():
    w = torch.ones(2, 1, 2, 2, dtype=f64)
    w[1] *= 3.0  # channel norms 2 and 6, |g| = 4
    assert float(dl.GroupLasso(0.5, groups="channels").value([w])) == pytest.approx(0.5 * 2 * (2 + 6), rel=1e-15)


def test_group_lasso_value_indexed_unequal_groups():
    ids = torch.tensor([0, 1, 0, 1, 1])
    w = t64(3.0, 1.0, 4.0, 2.0, 2.0)  # group 0: |g|=2, norm 5; group 1: |g|=3, norm 3
    value = dl.GroupLasso(1.0, groups=lambda shape: ids).value([w])
    assert float(value) == pytest.approx(math.sqrt(2) * 5 + math.sqrt(3) * 3, rel=1e-14)


def test_l2sp_value_around_reference():
    w, ref = t64(3.0, 1.0, -1.0), t64(1.0, 1.0, 1.0)
    # alpha/2 * ((3-1)^2 + 0 + (-2)^2) = 2/2 * 8
    assert float(dl.L2SP(2.0).value([w], [ref])) == pytest.approx(8.0, rel=1e-15)


def test_l2sp_value_uses_the_snapshot_taken_by_bind():
    w = t64(1.0, 2.0)
    pen = dl.L2SP(1.0)
    pen.bind("w", w)
    assert float(pen.value([w])) == 0.0
    w.add_(t64(1.0, -2.0))  # the snapshot is a copy: it does not move with w
    assert float(pen.value([w])) == pytest.approx(0.5 * (1 + 4), rel=1e-15)
    pen2 = dl.L2SP(1.0, {"w": t64(0.0, 0.0)})
    pen2.bind("w", w)
    assert float(pen2.value([w])) == pytest.approx(0.5 * (4 + 0), rel=1e-15)


# ---------------------------------------------------------------------------------------
# value() is differentiable, and autograd agrees with grad()
# ---------------------------------------------------------------------------------------


def _away_from_zero(*shape):
    w = torch.randn(*shape, dtype=f64)
    return w + 0.5 * w.sign()


def _autograd_vs_grad(penalty, w, ref=None):
    w = w.clone().requires_grad_(True)
    ctx = penalty.bind("w", w) if ref is None else ref
    value = penalty.value([w]) if ref is None else penalty.value([w], [ref])
    (auto,) = torch.autograd.grad(value, w)
    torch.testing.assert_close(auto, penalty.grad(w.detach(), ctx), rtol=1e-12, atol=1e-14)
    assert auto.abs().sum() > 0


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: dl.L2(0.3), (4, 5)),
        (lambda: dl.L1(0.3), (4, 5)),
        (lambda: dl.ElasticNet(0.3, l1_ratio=0.4), (4, 5)),
        (lambda: dl.GroupLasso(0.3, groups="rows"), (4, 5)),
        (lambda: dl.GroupLasso(0.3, groups="columns"), (4, 5)),
        (lambda: dl.GroupLasso(0.3, groups="channels"), (3, 2, 3, 3)),
        (lambda: dl.GroupLasso(0.3, groups=lambda s: torch.arange(s.numel()).reshape(s) % 3), (4, 5)),
        # batched strengths over a leading configuration dimension
        (lambda: dl.L2(torch.tensor([0.25, 2.0])), (2, 4, 5)),
        (lambda: dl.L1(torch.tensor([0.25, 2.0])), (2, 4, 5)),
        (lambda: dl.ElasticNet(torch.tensor([0.25, 2.0]), l1_ratio=0.4), (2, 4, 5)),
        (lambda: dl.GroupLasso(torch.tensor([0.25, 2.0]), groups="rows"), (2, 4, 5)),
    ],
)
def test_autograd_gradient_equals_grad(make, shape):
    _autograd_vs_grad(make(), _away_from_zero(*shape))


def test_autograd_gradient_equals_grad_l2sp():
    ref = torch.randn(4, 5, dtype=f64)
    _autograd_vs_grad(dl.L2SP(0.7), torch.randn(4, 5, dtype=f64), ref)
    pen = dl.L2SP(torch.tensor([0.25, 2.0]))
    _autograd_vs_grad(pen, torch.randn(2, 4, 5, dtype=f64), torch.randn(2, 4, 5, dtype=f64))


def test_group_lasso_grad_of_a_zero_group_is_zero_not_nan():
    w = torch.zeros(3, 4, dtype=f64)
    w[1] = 1.0
    g = dl.GroupLasso(1.0, groups="rows").grad(w)
    assert torch.isfinite(g).all()
    assert (g[0] == 0).all() and (g[2] == 0).all()
    torch.testing.assert_close(g[1], torch.full((4,), 0.5 * 2.0, dtype=f64))  # unit * sqrt(4)


@pytest.mark.parametrize("groups", ["rows", "columns", lambda s: torch.arange(s.numel()).reshape(s) // s[1]],
                         ids=["rows", "columns", "function"])
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_group_lasso_value_has_finite_gradients_at_a_zero_group(groups, dtype):
    # an exactly-zero group is what the prox produces; its subgradient 0 is the one to take
    w = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]], dtype=dtype, requires_grad=True)
    if groups == "columns":
        w = torch.tensor([[0.0, 3.0], [0.0, 0.0], [0.0, 4.0]], dtype=dtype, requires_grad=True)
    (g,) = torch.autograd.grad(dl.GroupLasso(2.0, groups=groups).value([w]), w)
    assert torch.isfinite(g).all()
    zero_group = (w == 0).all(dim=1 if groups != "columns" else 0)
    live = w[1] if groups != "columns" else w[:, 1]
    if groups == "columns":
        assert (g[:, zero_group] == 0).all()
        torch.testing.assert_close(g[:, 1], 2.0 * math.sqrt(3) * live.detach() / 5)
    else:
        assert (g[zero_group] == 0).all()
        torch.testing.assert_close(g[1], 2.0 * math.sqrt(3) * live.detach() / 5)


# ---------------------------------------------------------------------------------------
# decay_: an explicit step w - t * grad R(w), clamped when it would cross 0 / the reference
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "make",
    [lambda: dl.L2(0.3), lambda: dl.L1(0.3), lambda: dl.ElasticNet(0.3, l1_ratio=0.6)],
    ids=["L2", "L1", "ElasticNet"],
)
def test_decay_is_the_explicit_step_when_it_does_not_cross_zero(make, foreach):
    pen = make()
    w = _away_from_zero(5, 4)  # |w| >= 0.5 > lr * alpha
    lr = 0.5
    v = w.clone()
    pen.decay_([v], lr, foreach=foreach)
    torch.testing.assert_close(v, w - lr * pen.grad(w), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("foreach", [False, True])
def test_l2sp_decay_is_the_explicit_step(foreach):
    pen = dl.L2SP(0.3)
    w, ref = torch.randn(5, 4, dtype=f64), torch.randn(5, 4, dtype=f64)
    v = w.clone()
    pen.decay_([v], 0.5, [ref], foreach=foreach)
    torch.testing.assert_close(v, w - 0.5 * pen.grad(w, ref), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("foreach", [False, True])
def test_decay_is_clamped_instead_of_crossing(foreach):
    w = t64(2.0, -4.0, 0.1, -0.1)
    v = w.clone()
    dl.L2(1.0).decay_([v], 3.0, foreach=foreach)  # explicit step: w * (1 - 3) flips every sign
    assert (v == 0).all()
    v = w.clone()
    dl.L1(1.0).decay_([v], 0.5, foreach=foreach)  # |w| < 0.5 would cross: exact zero
    assert torch.equal(v, t64(1.5, -3.5, 0.0, 0.0))
    v = w.clone()
    dl.ElasticNet(1.0, l1_ratio=0.5).decay_([v], 0.5, foreach=foreach)
    # shrink by 1 - 0.25, then move 0.25 toward 0: (1.5 - .25, -3 + .25, 0, 0)
    torch.testing.assert_close(v, t64(1.25, -2.75, 0.0, 0.0), rtol=1e-15, atol=0)
    ref = t64(1.0, 1.0, 1.0, 1.0)
    v = w.clone()
    dl.L2SP(1.0).decay_([v], 5.0, [ref], foreach=foreach)  # would pass the reference
    assert torch.equal(v, ref)


def test_group_lasso_decay_is_its_prox():
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=f64)
    a, b = w.clone(), w.clone()
    pen = dl.GroupLasso(1.0, groups="rows")
    pen.decay_([a], 0.5)
    pen.prox_([b], 0.5)
    assert torch.equal(a, b)
    assert (a[1] == 0).all()


def test_prox_closed_forms_of_smooth_penalties():
    w, ref = torch.randn(4, 3, dtype=f64), torch.randn(4, 3, dtype=f64)
    v = w.clone()
    dl.L2(0.5).prox_([v], 2.0)  # argmin 1/2|v-w|^2 + 2*0.5/2 |v|^2 = w / 2
    torch.testing.assert_close(v, w / 2, rtol=1e-15, atol=0)
    v = w.clone()
    dl.L2SP(0.5).prox_([v], 2.0, [ref])  # (w + s*ref) / (1 + s), s = 1
    torch.testing.assert_close(v, (w + ref) / 2, rtol=1e-14, atol=1e-15)


def test_adam_metric_steps_are_per_coordinate():
    # a list of per-coordinate step tensors: threshold = step_i * alpha
    w = t64(1.0, 1.0, -1.0)
    steps = [t64(0.5, 2.0, 1.0)]
    dl.L1(0.5).prox_([w], steps)
    assert torch.equal(w, t64(0.75, 0.0, -0.5))


def test_per_coordinate_steps_that_are_constant_equal_the_float_step():
    w = torch.randn(4, 3, dtype=f64)
    for pen in (dl.L1(0.3), dl.ElasticNet(0.3, l1_ratio=0.5), dl.L2(0.3), dl.GroupLasso(0.3, "rows")):
        a, b = w.clone(), w.clone()
        pen.prox_([a], 0.5)
        pen.prox_([b], [torch.full_like(w, 0.5)])
        torch.testing.assert_close(a, b, rtol=1e-15, atol=1e-300)


def test_float64_strengths_keep_their_precision():
    alpha = torch.tensor([0.1, 0.3], dtype=f64)
    assert dl.L1(alpha).alpha.dtype == f64
    assert dl.L1(torch.tensor([0.1, 0.3])).alpha.dtype == torch.float32
    w = torch.ones(2, 3, dtype=f64)
    dl.L2(alpha).decay_([w], 0.7)
    torch.testing.assert_close(w[:, 0], 1 - 0.7 * alpha, rtol=1e-16, atol=0)


# ---------------------------------------------------------------------------------------
# batched strengths: alpha = tensor([a0, a1]) on [2, ...] == alpha=a0 and alpha=a1 per slice
# ---------------------------------------------------------------------------------------

A0, A1 = 0.25, 1.5  # exact in float32, as the strength tensor is stored

BATCHED = {
    "L2": (lambda a: dl.L2(a), (2, 4, 3)),
    "L1": (lambda a: dl.L1(a), (2, 4, 3)),
    "ElasticNet": (lambda a: dl.ElasticNet(a, l1_ratio=0.3), (2, 4, 3)),
    "GroupLasso-rows": (lambda a: dl.GroupLasso(a, groups="rows"), (2, 4, 3)),
    "GroupLasso-columns": (lambda a: dl.GroupLasso(a, groups="columns"), (2, 4, 3)),
    "GroupLasso-channels": (lambda a: dl.GroupLasso(a, groups="channels"), (2, 3, 2, 2, 2)),
    "GroupLasso-indexed": (
        lambda a: dl.GroupLasso(a, groups=Indexed(lambda s: torch.arange(s.numel()).reshape(s) % 2)),
        (2, 4, 3),
    ),
    "L2SP": (lambda a: dl.L2SP(a), (2, 4, 3)),
}


def _setup(name, dtype, seed=0):
    make, shape = BATCHED[name]
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=g, dtype=f64) * 0.6).to(dtype)
    ref = torch.randn(shape, generator=g, dtype=f64).to(dtype)
    batched = make(torch.tensor([A0, A1], dtype=dtype))  # float64 strengths stay float64
    singles = [make(A0), make(A1)]
    return batched, singles, w, ref


def _ctx(pen, name, w, ref):
    if isinstance(pen, dl.L2SP):
        return ref
    return pen.bind(name, w)


def _close(a, b, dtype):
    tol = 1e-14 if dtype == f64 else 1e-6
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(BATCHED))
def test_batched_value_and_grad(name, dtype):
    batched, singles, w, ref = _setup(name, dtype)
    ctx = _ctx(batched, "w", w, ref)
    refs = [ref] if isinstance(batched, dl.L2SP) else None
    value = batched.value([w], refs) if refs else batched.value([w])
    parts = [
        (p.value([w[k]], [ref[k]]) if refs else p.value([w[k]])) for k, p in enumerate(singles)
    ]
    _close(value, parts[0] + parts[1], dtype)
    grad = batched.grad(w, ctx)
    for k, p in enumerate(singles):
        _close(grad[k], p.grad(w[k], _ctx(p, "w", w[k], ref[k])), dtype)


@pytest.mark.parametrize("op", ["prox_", "decay_"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(BATCHED))
def test_batched_prox_and_decay(name, dtype, op):
    batched, singles, w, ref = _setup(name, dtype)
    lr = 0.4
    out = w.clone()
    getattr(batched, op)([out], lr, [_ctx(batched, "w", w, ref)])
    for k, p in enumerate(singles):
        piece = w[k].clone()
        getattr(p, op)([piece], lr, [_ctx(p, "w", w[k], ref[k])])
        _close(out[k], piece, dtype)
        assert torch.equal(out[k] == 0, piece == 0)
    assert not torch.equal(out, w)


# -- per-coordinate steps, dtypes and gradients --------------------------------------


def test_group_prox_with_unequal_per_coordinate_steps_closed_form():
    # row (3, 4): norm 5, steps (1, 1/4): harmonic mean 1 / ((1 + 4) / 2) = 0.4 (arithmetic: 0.625)
    w = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    dl.GroupLasso(1.0, groups="rows").prox_([w], [torch.tensor([[1.0, 0.25]], dtype=torch.float64)])
    factor = 1 - 0.4 * math.sqrt(2) / 5
    torch.testing.assert_close(w, torch.tensor([[3.0 * factor, 4.0 * factor]], dtype=torch.float64),
                               rtol=1e-15, atol=0)


def test_l2sp_prox_with_per_coordinate_steps_and_a_float32_strength_on_float64_weights():
    w = torch.tensor([[3.0, 3.0]], dtype=torch.float64)
    ref = torch.tensor([[1.0, 1.0]], dtype=torch.float32)
    dl.L2SP(1.0).prox_([w], [torch.tensor([[1.0, 3.0]], dtype=torch.float64)], [ref])
    # (w + s*w0) / (1 + s): s = 1 -> 2, s = 3 -> 1.5
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.5]], dtype=torch.float64), rtol=1e-15, atol=0)
    v = torch.full((2, 2), 3.0, dtype=torch.float64)
    dl.L2SP(torch.tensor([1.0, 3.0])).prox_([v], 1.0, [torch.ones(2, 2, dtype=torch.float64)])
    torch.testing.assert_close(v[:, 0], torch.tensor([2.0, 1.5], dtype=torch.float64), rtol=1e-7, atol=0)


def test_l2sp_reference_is_stored_in_the_parameters_dtype():
    model = nn.Linear(2, 2)
    ref = {n: torch.ones_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.L2SP(0.1, ref))
    assert opt.bindings[0].ctxs[0].dtype == torch.float32


def test_group_lasso_gradient_is_the_scaled_unit_direction_and_zero_at_zero():
    w = torch.tensor([[0.3, 0.4], [0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)  # a norm below 1 too
    g = dl.GroupLasso(2.0, groups="rows").grad(w)
    expected = torch.tensor([[0.6, 0.8], [0.0, 0.0], [0.6, 0.8]], dtype=torch.float64) * 2.0 * math.sqrt(2)
    torch.testing.assert_close(g, expected, rtol=1e-15, atol=0)
    tiny = torch.tensor([[1e-30, 1e-30]])  # float32: the norm underflows to 0
    assert dl.GroupLasso(1.0, groups="rows").grad(tiny).abs().max() <= math.sqrt(2)


def test_elastic_net_default_l1_ratio_is_one_half():
    assert dl.ElasticNet(0.1).l1_ratio == 0.5
    assert repr(dl.ElasticNet(0.1)) == "ElasticNet(alpha=0.1, l1_ratio=0.5)"


def test_elastic_net_gradient_at_zero_is_the_l2_part_only():
    w = torch.tensor([0.0, 2.0, -1.0])
    g = dl.ElasticNet(2.0, l1_ratio=0.25).grad(w)  # alpha * (r * sign(w) + (1 - r) * w)
    torch.testing.assert_close(g, torch.tensor([0.0, 2.0 * (0.25 + 0.75 * 2.0), 2.0 * (-0.25 - 0.75)]))


def test_group_lasso_gradient_keeps_the_weights_dtype():
    w = torch.ones(2, 3, dtype=torch.bfloat16)
    assert dl.GroupLasso(0.1).grad(w).dtype == torch.bfloat16


def test_group_lasso_function_groups_refuse_per_coordinate_steps():
    pen = dl.GroupLasso(0.1, groups=lambda s: torch.zeros(s, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^GroupLasso with groups=<function> supports metric='lr' only; "
                                         r"use metric='lr' or a built-in grouping \('rows', 'inputs', 'channels'\)$"):
        pen.prox_([torch.ones(2, 2)], [torch.ones(2, 2)])


def test_error_messages_name_the_parameter_and_the_keys():
    with pytest.raises(ValueError, match=r"^L2SP\.value\(\) needs references= for tensors not bound by regularize\(\)$"):
        dl.L2SP(1.0).value([torch.ones(1)])
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"no entry for 'weight' \(its keys are 'bias', 'a', 'b', 'c', 'd', \.\.\.\)"):
        dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                      dl.L2SP(0.1, {k: torch.zeros(2) for k in ("bias", "a", "b", "c", "d", "e")}))
    for keys, shown in [(("bias", "a", "b", "c", "d"), "'bias', 'a', 'b', 'c', 'd'"), ((), "none")]:
        with pytest.raises(ValueError, match=rf"no entry for 'weight' \(its keys are {shown}\); pass"):
            dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                          dl.L2SP(0.1, {k: torch.zeros(2) for k in keys}))
    model = nn.Linear(2, 3)
    for pen in (dl.GroupLasso(torch.tensor([0.1, 0.2])), dl.L2SP(torch.tensor([0.1, 0.2]))):
        with pytest.raises(ValueError, match=r"2 strengths .* but 'weight' has shape \(3, 2\)"):
            dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, pen)


# -- the foreach choice reaches every functional kernel ------------------------------


_KERNELS = ("shrink_", "soft_threshold_", "elastic_net_prox_", "div_", "pull_toward_")


@pytest.fixture
def foreach_seen(monkeypatch):
    """The ``foreach`` value each functional kernel was called with."""
    seen = []
    for name in _KERNELS:
        real = getattr(F, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            fe = kwargs["foreach"] if "foreach" in kwargs else args[-1]
            seen.append((_name, fe))
            return _real(*args, **kwargs)

        monkeypatch.setattr(F, name, spy)
    return seen


@pytest.mark.parametrize("op, make", [
    ("decay_", lambda: dl.L2(0.1)), ("prox_", lambda: dl.L2(0.1)), ("decay_", lambda: dl.L1(0.1)),
    ("decay_", lambda: dl.ElasticNet(0.1, l1_ratio=0.5)), ("prox_", lambda: dl.ElasticNet(0.1, l1_ratio=0.5)),
    ("decay_", lambda: dl.L2SP(0.1)),
], ids=["L2-decay", "L2-prox", "L1-decay", "EN-decay", "EN-prox", "L2SP-decay"])
@pytest.mark.parametrize("foreach", [True, False])
def test_the_foreach_choice_reaches_every_kernel(op, make, foreach, foreach_seen):
    w = [torch.full((3, 2), 2.0), torch.full((4,), -2.0)]
    ctxs = [torch.zeros_like(t) for t in w]
    getattr(make(), op)(w, 0.1, ctxs, foreach=foreach)
    assert foreach_seen and all(fe is foreach for _, fe in foreach_seen), foreach_seen


# -- bad input -----------------------------------------------------------------------

CASES = [
    *[
        pytest.param(lambda r=r: dl.ElasticNet(1e-3, l1_ratio=r), rf"ElasticNet\(l1_ratio\) must be in \[0, 1\], got {s}",
                     id=f"l1_ratio={s}")
        for r, s in [(-0.1, "-0.1"), (1.5, "1.5"), (float("nan"), "nan"), ("half", "'half'")]
    ],
    pytest.param(lambda: reg(dl.Rule(dl.L2SP(1e-3, {"fc.weight": torch.zeros(4, 3)}), params="fc.weight")),
                 r"L2SP reference for 'fc\.weight' has shape \(4, 3\) but the parameter has shape \(3, 4\)",
                 id="L2SP-shape"),
    pytest.param(lambda: reg(dl.Rule(dl.L2SP(1e-3, {"fc.bias": torch.zeros(3)}), params="fc.*")),
                 r"L2SP reference has no entry for 'fc\.weight'", id="L2SP-missing"),
    pytest.param(lambda: reg_adam(lambda p: torch.optim.Adam(p), dl.GroupLasso(
                     1e-3, groups=lambda s: torch.zeros(s, dtype=torch.long)), "fc.weight"),
                 r"GroupLasso with groups=<function> supports metric='lr' only", id="adam-metric-group-fn"),
    pytest.param(lambda: dl.ElasticNet(1e-3, l1_ratio="0.5"), r"ElasticNet\(l1_ratio\) must be in \[0, 1\], got '0\.5'",
                 id="l1_ratio=str"),
    pytest.param(lambda: dl.ElasticNet(1e-3, l1_ratio=True), r"ElasticNet\(l1_ratio\) must be in \[0, 1\], got True",
                 id="l1_ratio=True"),
]


@pytest.mark.parametrize("make, match", CASES)
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
