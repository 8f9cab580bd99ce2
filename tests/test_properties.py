"""Hostile input, property-based: random shapes, dtypes, strengths (0 and huge), strides.

* finite weights in, finite weights out (prox, decoupled decay, coupled gradient);
* a pure shrink never grows a weight (and never flips its sign; L2-SP never passes w0);
* exact zeros stay zero under prox when there is no gradient;
* a NaN gradient spreads no further than torch's own optimizer spreads it.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import decaylab as dl

from conftest import Holder

FAST = settings(max_examples=60, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
STRENGTHS = [0.0, 1e-6, 1e-2, 1.0, 1e3, 1e20]  # 0 and huge included
LRS = [0.0, 1e-3, 0.1, 1.0, 1e3]

PENALTIES = {
    "L1": lambda a: dl.L1(a),
    "L2": lambda a: dl.L2(a),
    "ElasticNet": lambda a: dl.ElasticNet(a, l1_ratio=0.3),
    "GroupLasso-rows": lambda a: dl.GroupLasso(a, groups="rows"),
    "GroupLasso-columns": lambda a: dl.GroupLasso(a, groups="columns"),
    "GroupLasso-function": lambda a: dl.GroupLasso(a, groups=lambda s: torch.arange(s.numel()).reshape(s) % 3),
    "L2SP": lambda a: dl.L2SP(a),
}
SHRINKS = [n for n in PENALTIES if n != "L2SP"]


@st.composite
def weights(draw, min_ndim=2):
    """A finite weight, sometimes non-contiguous, sometimes with exact zeros and tiny values."""
    ndim = draw(st.integers(min_ndim, 3))
    shape = [draw(st.integers(1, 5)) for _ in range(ndim)]
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e3]))
    w = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    w[torch.rand(shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = 0.0
    w = w.to(dtype)
    if draw(st.booleans()):  # non-contiguous: a transposed copy, viewed back to the shape
        w = w.transpose(0, -1).contiguous().transpose(0, -1)
        assert not w.is_contiguous() or w.numel() <= 1 or 1 in w.shape
    return w


def _bind(pen, w):
    return pen.bind("w", w)


@FAST
@given(name=st.sampled_from(sorted(PENALTIES)), w=weights(), alpha=st.sampled_from(STRENGTHS),
       lr=st.sampled_from(LRS), op=st.sampled_from(["prox_", "decay_"]))
def test_finite_in_finite_out_and_shrinks_never_grow(name, w, alpha, lr, op):
    pen = PENALTIES[name](alpha)
    ctx = _bind(pen, w)
    if isinstance(pen, dl.L2SP):
        ctx = torch.zeros_like(w)  # pull toward 0: the distance to w0 is |w|
    v = w.clone()
    getattr(pen, op)([v], lr, [ctx])
    assert v.dtype == w.dtype and v.shape == w.shape
    assert torch.isfinite(v).all()
    assert (v.abs() <= w.abs()).all()  # never grows ...
    assert (v * w >= 0).all()  # ... and never flips a sign
    if lr == 0 or alpha == 0:
        assert torch.equal(v, w)


@FAST
@given(name=st.sampled_from(sorted(PENALTIES)), w=weights(), alpha=st.sampled_from(STRENGTHS))
def test_coupled_gradient_is_finite(name, w, alpha):
    pen = PENALTIES[name](alpha)
    ctx = _bind(pen, w)
    g = pen.grad(w, ctx)
    assert g.shape == w.shape and torch.isfinite(g).all()
    if alpha == 0:
        assert (g == 0).all()


@FAST
@given(w=weights(), alpha=st.sampled_from(STRENGTHS[1:]), lr=st.sampled_from(LRS[1:]))
def test_l2sp_never_passes_the_reference(w, alpha, lr):
    ref = torch.ones_like(w)
    for op in ("prox_", "decay_"):
        v = w.clone()
        getattr(dl.L2SP(alpha), op)([v], lr, [ref])
        assert torch.isfinite(v).all()
        assert ((v - ref).abs() <= (w - ref).abs()).all()
        assert ((v - ref) * (w - ref) >= 0).all()


OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "Adam": lambda p: torch.optim.Adam(p, lr=0.1),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.0),
}


@FAST
@given(name=st.sampled_from(SHRINKS), w=weights(), alpha=st.sampled_from(STRENGTHS),
       opt=st.sampled_from(sorted(OPTIMIZERS)), adam_metric=st.booleans())
def test_zeros_stay_zero_under_prox_without_gradient(name, w, alpha, opt, adam_metric):
    model = Holder(w)
    zero = w == 0
    inner = OPTIMIZERS[opt](model.parameters())
    metric = "adam" if adam_metric and opt != "SGD" and name != "GroupLasso-function" else "lr"
    reg = dl.regularize(inner, model, dl.Rule(PENALTIES[name](alpha), params="w", mode="prox", metric=metric))
    for _ in range(3):
        model.w.grad = torch.zeros_like(model.w)
        reg.step()
    assert (model.w[zero] == 0).all()
    assert torch.isfinite(model.w).all()
    assert (model.w.abs() <= w.abs()).all()


RULES = {
    **{f"{n}-prox": (n, "prox") for n in SHRINKS},
    "L2-decoupled": ("L2", "decoupled"),
    "L2-coupled": ("L2", "coupled"),
    "L1-coupled": ("L1", "coupled"),
    "GroupLasso-rows-coupled": ("GroupLasso-rows", "coupled"),
    "L2SP-decoupled": ("L2SP", "decoupled"),
}


@FAST
@given(rule=st.sampled_from(sorted(RULES)), w=weights(), opt=st.sampled_from(sorted(OPTIMIZERS)),
       alpha=st.sampled_from([1e-3, 1.0]), seed=st.integers(0, 2**31 - 1), adam_metric=st.booleans())
def test_nan_gradients_spread_no_further_than_in_torch(rule, w, opt, alpha, seed, adam_metric):
    name, mode = RULES[rule]
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(w.shape, generator=g).to(w.dtype)
    grad[torch.rand(w.shape, generator=g) < 0.2] = float("nan")
    metric = "adam" if adam_metric and mode == "prox" and opt != "SGD" and name != "GroupLasso-function" else "lr"

    plain_w = nn.Parameter(w.clone())
    plain = OPTIMIZERS[opt]([plain_w])
    model = Holder(w.clone())
    reg = dl.regularize(OPTIMIZERS[opt](model.parameters()), model,
                        dl.Rule(PENALTIES[name](alpha), params="w", mode=mode, metric=metric))
    for _ in range(2):
        plain_w.grad = grad.clone()
        model.w.grad = grad.clone()
        plain.step()
        reg.step()
    theirs, ours = torch.isnan(plain_w.detach()), torch.isnan(model.w.detach())
    assert not (ours & ~theirs).any(), (ours.sum(), theirs.sum())


# -- the two bugs these properties found, pinned -----------------------------------------


def test_a_zero_step_keeps_a_group_whose_norm_underflows():
    w = torch.tensor([[1.5e-30, -2.0e-31]])  # float32: w*w underflows to 0
    for groups in ("rows", lambda s: torch.zeros(s, dtype=torch.long)):
        v = w.clone()
        dl.GroupLasso(0.0, groups=groups).prox_([v], 0.1)
        assert torch.equal(v, w)


@pytest.mark.parametrize("groups", ["rows", "columns", "function"])
@pytest.mark.parametrize("adam_metric", [False, True])
def test_a_nan_entry_does_not_turn_its_group_nan(groups, adam_metric):
    if groups == "function":
        if adam_metric:
            pytest.skip("function groups take metric='lr' only")
        groups = lambda s: torch.arange(s.numel()).reshape(s) // s[1]  # noqa: E731 (rows)
    model = Holder(torch.full((3, 4), 0.5))
    reg = dl.regularize(torch.optim.Adam(model.parameters(), lr=0.1), model,
                        dl.Rule(dl.GroupLasso(1e-3, groups=groups), params="w", metric="adam" if adam_metric else "lr"))
    model.w.grad = torch.ones(3, 4)
    model.w.grad[1, 2] = float("nan")
    reg.step()
    nan = torch.isnan(model.w.detach())
    assert nan.sum() == 1 and nan[1, 2]
    assert (model.w.detach()[~nan] != 0).all()  # nor zeroes the rest of the group
