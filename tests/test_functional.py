"""The tensor kernels of decaylab.functional: closed forms, foreach parity, tensor scales,
and the optimality conditions of the proximal maps (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decaylab as dl
from decaylab import functional as F
from decaylab.groups import Channels, Columns, Indexed, Rows

f64 = torch.float64


def t64(*values):
    return torch.tensor(values, dtype=f64)


def clones(tensors):
    return [t.clone() for t in tensors]


# ---------------------------------------------------------------------------------------
# closed forms on tiny tensors (dyadic numbers: every expected value is exact)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
def test_shrink_closed_form(foreach):
    w = [t64(2.0, -4.0, 0.0), t64(8.0)]
    F.shrink_(w, 0.25, foreach=foreach)
    assert torch.equal(w[0], t64(1.5, -3.0, 0.0))
    assert torch.equal(w[1], t64(6.0))


@pytest.mark.parametrize("foreach", [False, True])
def test_soft_threshold_closed_form(foreach):
    # |w| <= t (the boundary included) becomes exactly zero; the rest moves t toward 0
    w = [t64(0.75, -0.125, -2.0, 0.25, -0.25, 0.0)]
    F.soft_threshold_(w, 0.25, foreach=foreach)
    assert torch.equal(w[0], t64(0.5, 0.0, -1.75, 0.0, 0.0, 0.0))


@pytest.mark.parametrize("foreach", [False, True])
def test_elastic_net_prox_closed_form(foreach):
    # soft(w, t*r) / (1 + t*(1-r)) with t=0.5, r=0.5: soft at 0.25, then / 1.25
    w = [t64(2.0, -0.25, 0.5, -1.5)]
    F.elastic_net_prox_(w, 0.5, 0.5, foreach=foreach)
    torch.testing.assert_close(w[0], t64(1.4, 0.0, 0.2, -1.0), rtol=1e-15, atol=0)


@pytest.mark.parametrize("foreach", [False, True])
def test_elastic_net_prox_limits_are_l1_and_l2(foreach):
    w = torch.randn(5, 4, dtype=f64)
    a, b, c = w.clone(), w.clone(), w.clone()
    F.elastic_net_prox_([a], 0.3, 1.0, foreach=foreach)
    F.soft_threshold_([b], 0.3, foreach=foreach)
    assert torch.equal(a, b)
    F.elastic_net_prox_([c], 0.3, 0.0, foreach=foreach)
    torch.testing.assert_close(c, w / 1.3, rtol=1e-15, atol=0)


def test_group_soft_threshold_rows():
    w = [torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=f64)]
    F.group_soft_threshold_(w, 1.0, [Rows()])
    factor = 1 - math.sqrt(2) / 5
    expected = torch.tensor([[3 * factor, 4 * factor], [0.0, 0.0], [0.0, 0.0]], dtype=f64)
    torch.testing.assert_close(w[0], expected, rtol=1e-15, atol=0)
    assert (w[0][1:] == 0).all()  # ||w_g|| = 0.5 <= sqrt(2): the whole row is exactly zero


def test_group_soft_threshold_columns():
    # columns of a [out=3, in=2] weight: column 0 = (3, 4, 0), column 1 = (0.3, 0.4, 0)
    w = [torch.tensor([[3.0, 0.3], [4.0, 0.4], [0.0, 0.0]], dtype=f64)]
    F.group_soft_threshold_(w, 0.5, [Columns()])
    factor = 1 - 0.5 * math.sqrt(3) / 5
    expected = torch.tensor([[3 * factor, 0.0], [4 * factor, 0.0], [0.0, 0.0]], dtype=f64)
    torch.testing.assert_close(w[0], expected, rtol=1e-15, atol=0)


def test_group_soft_threshold_channels_on_conv_weight():
    # Conv weight [out=3, in=1, 2, 2]: |g| = 4, sqrt|g| = 2
    w = torch.ones(3, 1, 2, 2, dtype=f64)
    w[1] *= 3.0  # norm 6
    w[2] *= 0.25  # norm 0.5
    F.group_soft_threshold_([w], 0.5, [Channels()])
    # channel 0: norm 2 -> factor 1 - 0.5*2/2 = 0.5; channel 1: 1 - 1/6; channel 2: zero
    torch.testing.assert_close(w[0], torch.full((1, 2, 2), 0.5, dtype=f64), rtol=1e-15, atol=0)
    torch.testing.assert_close(w[1], torch.full((1, 2, 2), 3 * (1 - 1 / 6), dtype=f64), rtol=1e-15, atol=0)
    assert (w[2] == 0).all()


def test_group_soft_threshold_channels_exact_threshold_is_zero():
    w = torch.ones(2, 1, 2, 2, dtype=f64)  # each channel: norm 2 = t * sqrt(4) with t = 1
    F.group_soft_threshold_([w], 1.0, [Channels()])
    assert (w == 0).all()


def test_group_soft_threshold_indexed_non_contiguous_groups():
    ids = torch.tensor([0, 1, 0, 2, 1])
    w = t64(3.0, 0.1, 4.0, 12.0, 0.2)  # group 0: (3, 4) norm 5; 1: (0.1, 0.2); 2: (12)
    F.group_soft_threshold_([w], 1.0, [Indexed(lambda shape: ids)])
    f0 = 1 - math.sqrt(2) / 5
    torch.testing.assert_close(w, t64(3 * f0, 0.0, 4 * f0, 11.0, 0.0), rtol=1e-15, atol=0)


def test_group_soft_threshold_indexed_on_matrix_matches_columns():
    w = torch.randn(4, 3, dtype=f64)
    a, b = w.clone(), w.clone()
    col_ids = lambda shape: torch.arange(shape[1]).expand(shape[0], -1).contiguous()  # noqa: E731
    F.group_soft_threshold_([a], 0.7, [Indexed(col_ids)])
    F.group_soft_threshold_([b], 0.7, [Columns()])
    torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-300)


def test_group_soft_threshold_zero_scale_is_identity():
    w = torch.randn(3, 4, dtype=f64)
    w[1] = 0
    v = w.clone()
    F.group_soft_threshold_([v], 0.0, [Rows()])
    assert torch.equal(v, w)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [0.0, 0.5, 1e30])
def test_zero_and_tiny_groups_stay_finite(dtype, scale):
    w = torch.zeros(4, 3, dtype=dtype)
    w[1] = 1.0
    w[2, 0] = torch.finfo(dtype).tiny  # smallest normal: norm > 0 but 1/norm huge
    F.group_soft_threshold_([w], scale, [Rows()])
    assert torch.isfinite(w).all()
    assert (w[0] == 0).all() and (w[3] == 0).all()
    if scale > 0:
        assert (w[2] == 0).all()


@pytest.mark.parametrize("foreach", [False, True])
def test_pull_toward_closed_form(foreach):
    w = [t64(2.0, -1.0), t64(0.5)]
    refs = [t64(1.0, 1.0), t64(-0.5)]
    F.pull_toward_(w, refs, 0.25, foreach=foreach)
    assert torch.equal(w[0], t64(1.75, -0.5))
    assert torch.equal(w[1], t64(0.25))


# ---------------------------------------------------------------------------------------
# never overshoot: a huge step lands on zero / the reference, never past it
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("scale", [1.0, 3.0, 1e30])
def test_huge_steps_never_overshoot(foreach, scale):
    w0 = torch.randn(6, 5, dtype=f64)
    for kernel in (
        lambda w: F.shrink_(w, scale, foreach=foreach),
        lambda w: F.soft_threshold_(w, scale * 10, foreach=foreach),
        lambda w: F.elastic_net_prox_(w, scale * 10, 0.9, foreach=foreach),
        lambda w: F.group_soft_threshold_(w, scale * 10, [Rows()]),
    ):
        w = [w0.clone()]
        kernel(w)
        assert (w[0] == 0).all(), kernel  # exact zeros: a sign flip would leave -w * something
    ref = torch.randn(6, 5, dtype=f64)
    w = [w0.clone()]
    F.pull_toward_(w, [ref], scale, foreach=foreach)
    assert torch.equal(w[0], ref)  # reaches the reference exactly, never passes it


@pytest.mark.parametrize("foreach", [False, True])
def test_moderate_steps_never_flip_signs(foreach):
    w0 = torch.randn(200, dtype=f64)
    for scale in (0.1, 0.5, 0.9, 0.999):
        for kernel in (F.shrink_, F.soft_threshold_):
            w = [w0.clone()]
            kernel(w, scale, foreach=foreach)
            assert (w[0] * w0 >= 0).all()
            assert (w[0].abs() <= w0.abs()).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_shrink_never_flips_in_low_precision(dtype):
    w0 = torch.randn(50).to(dtype)
    w = [w0.clone()]
    F.shrink_(w, 1.5, foreach=False)
    assert (w[0] == 0).all()


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_scales_raise(bad):
    for kernel in (
        lambda w: F.shrink_(w, bad),
        lambda w: F.soft_threshold_(w, bad),
        lambda w: F.elastic_net_prox_(w, bad, 0.5),
        lambda w: F.elastic_net_prox_(w, bad, 0.0),  # pure-L2 end: the division checks too
        lambda w: dl.L2(1.0).prox_(w, bad),
        lambda w: F.group_soft_threshold_(w, bad, [Rows()]),
        lambda w: F.pull_toward_(w, [torch.zeros(2, 2)], bad),
    ):
        with pytest.raises(ValueError, match="step scale"):
            kernel([torch.ones(2, 2)])


# ---------------------------------------------------------------------------------------
# foreach path == per-tensor loop
# ---------------------------------------------------------------------------------------

SHAPES = [(7, 5), (11,), (3, 2, 3, 3), (1,), (), (4, 1)]


def _mixed(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=f64).to(dtype) for s in SHAPES]


FOREACH_KERNELS = {
    "shrink_": lambda w, fe: F.shrink_(w, 0.37, foreach=fe),
    "soft_threshold_": lambda w, fe: F.soft_threshold_(w, 0.37, foreach=fe),
    "elastic_net_prox_": lambda w, fe: F.elastic_net_prox_(w, 0.61, 0.3, foreach=fe),
    "elastic_net_prox_l1": lambda w, fe: F.elastic_net_prox_(w, 0.61, 1.0, foreach=fe),
    "div_ (L2 prox)": lambda w, fe: F.div_(w, 0.37, fe),
    "pull_toward_": lambda w, fe: F.pull_toward_(w, [torch.full_like(t, 0.5) for t in w], 0.37, foreach=fe),
    "pull_toward_ huge": lambda w, fe: F.pull_toward_(w, [torch.full_like(t, 0.5) for t in w], 7.0, foreach=fe),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(FOREACH_KERNELS))
def test_foreach_matches_loop(name, dtype):
    kernel = FOREACH_KERNELS[name]
    base = _mixed(dtype)
    loop, fused = clones(base), clones(base)
    kernel(loop, False)
    kernel(fused, True)
    changed = False
    for a, b, w in zip(loop, fused, base):
        assert a.shape == b.shape == w.shape
        # the two paths may round differently by an ulp; nothing more
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(a, b, rtol=2 * eps, atol=2 * eps * float(w.abs().max()))
        assert torch.equal(a == 0, b == 0)  # identical exact zeros
        changed |= not torch.equal(a, w)
    assert changed


@pytest.mark.parametrize("name", ["shrink_", "soft_threshold_", "elastic_net_prox_"])
def test_foreach_none_on_cpu_matches_both(name):
    kernel = FOREACH_KERNELS[name]
    base = _mixed(torch.float32, 1)
    auto, loop, fused = clones(base), clones(base), clones(base)
    kernel(auto, None)
    kernel(loop, False)
    kernel(fused, True)
    eps = torch.finfo(torch.float32).eps
    for a, b, c, w in zip(auto, loop, fused, base):
        assert torch.equal(a, b)  # on CPU the automatic choice is the loop, bit for bit
        # ... and agrees with the foreach path to an ulp, with the same exact zeros
        torch.testing.assert_close(a, c, rtol=2 * eps, atol=2 * eps * float(w.abs().max()))
        assert torch.equal(a == 0, c == 0)
    assert any(not torch.equal(a, w) for a, w in zip(auto, base))


def test_empty_list_is_a_no_op():
    for fe in (False, True):
        F.shrink_([], 0.5, foreach=fe)
        F.soft_threshold_([], 0.5, foreach=fe)
        F.elastic_net_prox_([], 0.5, 0.5, foreach=fe)
        F.pull_toward_([], [], 0.5, foreach=fe)
    F.group_soft_threshold_([], 0.5, [])
    F.div_([], 0.5, True)


# ---------------------------------------------------------------------------------------
# tensor scales: [K] strengths over a leading configuration dim, per-coordinate thresholds
# ---------------------------------------------------------------------------------------

K_SCALES = t64(0.05, 0.4, 1.7)


def _per_config(kernel, w, scales):
    """Run ``kernel(slice, float_scale)`` on each configuration separately."""
    out = w.clone()
    for k, s in enumerate(scales.tolist()):
        piece = out[k].clone()
        kernel(piece, s)
        out[k] = piece
    return out


@pytest.mark.parametrize(
    "name, kernel",
    [
        ("shrink_", lambda w, s: F.shrink_([w], s)),
        ("soft_threshold_", lambda w, s: F.soft_threshold_([w], s)),
        ("elastic_net_prox_", lambda w, s: F.elastic_net_prox_([w], s, 0.25)),
        ("div_", lambda w, s: F.div_([w], s, None)),
    ],
)
@pytest.mark.parametrize("shape", [(3, 6), (3, 4, 5), (3, 2, 2, 3, 3)])
def test_k_strengths_equal_separate_runs(name, kernel, shape):
    w = torch.randn(shape, dtype=f64)
    batched = w.clone()
    kernel(batched, K_SCALES)
    expected = _per_config(kernel, w, K_SCALES)
    torch.testing.assert_close(batched, expected, rtol=1e-15, atol=1e-300)
    assert torch.equal(batched == 0, expected == 0)
    # the configurations really got different strengths
    assert not torch.allclose(batched[0] / w[0], batched[2] / w[2])


@pytest.mark.parametrize(
    "grouping, shape",
    [(Rows, (3, 4, 5)), (Columns, (3, 4, 5)), (Channels, (3, 4, 2, 3, 3)), (Columns, (3, 4, 2, 3, 3))],
)
def test_k_strengths_group_soft_threshold_groups_within_each_config(grouping, shape):
    torch.manual_seed(0)
    w = torch.randn(shape, dtype=f64) * torch.rand(shape[:2] + (1,) * (len(shape) - 2), dtype=f64)
    batched = w.clone()
    F.group_soft_threshold_([batched], K_SCALES, [grouping(batch_dims=1)])
    expected = _per_config(lambda p, s: F.group_soft_threshold_([p], s, [grouping()]), w, K_SCALES)
    torch.testing.assert_close(batched, expected, rtol=1e-14, atol=1e-300)
    assert torch.equal(batched == 0, expected == 0)
    assert (batched == 0).any() and (batched != 0).any()  # some groups die, some live


def test_k_strengths_group_soft_threshold_indexed():
    ids = torch.tensor([[0, 0, 1], [2, 1, 2]])
    w = torch.randn(3, 2, 3, dtype=f64)
    batched = w.clone()
    F.group_soft_threshold_([batched], K_SCALES, [Indexed(lambda s: ids, batch_dims=1)])
    expected = _per_config(lambda p, s: F.group_soft_threshold_([p], s, [Indexed(lambda s_: ids)]), w, K_SCALES)
    torch.testing.assert_close(batched, expected, rtol=1e-14, atol=1e-300)


def test_k_strengths_pull_toward():
    w, ref = torch.randn(3, 4, dtype=f64), torch.randn(3, 4, dtype=f64)
    scales = t64(0.25, 0.5, 2.0)
    batched = w.clone()
    F.pull_toward_([batched], [ref], scales)
    expected = torch.stack([w[k] + min(s, 1.0) * (ref[k] - w[k]) for k, s in enumerate(scales.tolist())])
    torch.testing.assert_close(batched, expected, rtol=1e-15, atol=1e-15)
    assert torch.equal(batched[2], ref[2])


def test_per_coordinate_threshold():
    w = t64(1.0, -1.0, 0.5, -3.0)
    t = t64(0.5, 2.0, 0.125, 0.0)
    F.soft_threshold_([w], t)
    assert torch.equal(w, t64(0.5, 0.0, 0.375, -3.0))


def test_per_coordinate_thresholds_as_a_list():
    ws = [torch.randn(4, 3, dtype=f64), torch.randn(5, dtype=f64)]
    ts = [torch.rand(4, 3, dtype=f64), torch.rand(5, dtype=f64)]
    out = clones(ws)
    F.soft_threshold_(out, ts)
    for v, w, t in zip(out, ws, ts):
        torch.testing.assert_close(v, w.sign() * (w.abs() - t).clamp_min(0), rtol=0, atol=1e-15)
    out = clones(ws)
    F.elastic_net_prox_(out, ts, 0.5)
    for v, w, t in zip(out, ws, ts):
        expected = w.sign() * (w.abs() - 0.5 * t).clamp_min(0) / (1 + 0.5 * t)
        torch.testing.assert_close(v, expected, rtol=1e-15, atol=1e-15)


def test_per_coordinate_shrink_clamps():
    w = t64(2.0, -2.0, 2.0)
    F.shrink_([w], t64(0.5, 1.5, 0.0))
    assert torch.equal(w, t64(1.0, 0.0, 2.0))  # 1 - 1.5 < 0 is clamped: 0, not +1


# ---------------------------------------------------------------------------------------
# property tests: prox optimality, 0 in v - w + t * dR(v)
# ---------------------------------------------------------------------------------------

finite = st.floats(min_value=-100.0, max_value=100.0, allow_nan=False, allow_infinity=False)
vectors = st.lists(finite, min_size=1, max_size=12).map(lambda xs: torch.tensor(xs, dtype=f64))
steps = st.floats(min_value=0.0, max_value=20.0, allow_nan=False)
PROPS = settings(max_examples=150, deadline=None)


@st.composite
def matrices(draw):
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    xs = draw(st.lists(finite, min_size=rows * cols, max_size=rows * cols))
    m = torch.tensor(xs, dtype=f64).reshape(rows, cols)
    # sometimes an all-zero row, to exercise the zero-group guard
    if draw(st.booleans()):
        m[draw(st.integers(0, rows - 1))] = 0.0
    return m


def _tol(w, t):
    return 1e-12 * (1.0 + float(w.abs().max()) + t)


@PROPS
@given(w=vectors, t=steps)
def test_l1_prox_optimality(w, t):
    v = w.clone()
    dl.L1(1.0).prox_([v], t)  # prox of t * ||.||_1
    nz = v != 0
    resid = v[nz] - w[nz] + t * v[nz].sign()
    assert (resid.abs() <= _tol(w, t)).all()
    assert (w[~nz].abs() <= t).all()
    # the soft threshold never moves by more than t, and keeps the sign
    assert ((v - w).abs() <= t + _tol(w, t)).all() and (v * w >= 0).all()


@PROPS
@given(w=vectors, t=steps, r=st.floats(0.0, 1.0))
def test_elastic_net_prox_optimality(w, t, r):
    v = w.clone()
    dl.ElasticNet(1.0, l1_ratio=r).prox_([v], t)
    nz = v != 0
    resid = v[nz] - w[nz] + t * (r * v[nz].sign() + (1 - r) * v[nz])
    assert (resid.abs() <= _tol(w, t) * (1 + t)).all()
    assert (w[~nz].abs() <= t * r + _tol(w, t)).all()


@PROPS
@given(w=matrices(), t=steps)
def test_group_lasso_prox_optimality(w, t):
    v = w.clone()
    dl.GroupLasso(1.0, groups="rows").prox_([v], t)
    root = math.sqrt(w.shape[1])
    for vg, wg in zip(v, w):
        if t == 0:  # the prox of the zero function is the identity
            assert torch.equal(vg, wg)
        elif (vg != 0).any():
            unit = vg / vg.abs().max()  # scaled first: the norm of a tiny vg underflows to 0
            resid = vg - wg + t * root * unit / torch.linalg.vector_norm(unit)
            assert resid.abs().max() <= _tol(w, t) * (1 + t)
        else:
            assert torch.linalg.vector_norm(wg) <= t * root * (1 + 1e-12) + 1e-300
    assert torch.isfinite(v).all()


@PROPS
@given(w=vectors, t=steps)
def test_l2_prox_closed_form(w, t):
    v = w.clone()
    dl.L2(1.0).prox_([v], t)  # prox of t/2 ||.||^2 is w / (1 + t)
    torch.testing.assert_close(v, w / (1 + t), rtol=1e-15, atol=1e-300)
    assert (v - w + t * v).abs().max() <= _tol(w, t) * (1 + t)


def _objective(penalty, v, w, t):
    return 0.5 * float(((v - w) ** 2).sum()) + t * float(penalty.value([v]))


PROX_PENALTIES = {
    "L1": lambda: dl.L1(1.0),
    "L2": lambda: dl.L2(1.0),
    "ElasticNet": lambda: dl.ElasticNet(1.0, l1_ratio=0.3),
    "GroupLasso": lambda: dl.GroupLasso(1.0, groups="rows"),
}


@PROPS
@given(
    name=st.sampled_from(sorted(PROX_PENALTIES)),
    w=matrices(),
    t=steps,
    seed=st.integers(0, 2**31 - 1),
)
def test_prox_is_the_minimizer(name, w, t, seed):
    penalty = PROX_PENALTIES[name]()
    v = w.clone()
    penalty.prox_([v], t)
    best = _objective(penalty, v, w, t)
    g = torch.Generator().manual_seed(seed)
    for size in (1e-6, 1e-3, 1e-1, 10.0):
        for _ in range(4):
            other = v + size * torch.randn(v.shape, generator=g, dtype=f64)
            assert best <= _objective(penalty, other, w, t) + 1e-9 * (1 + abs(best))
    # and the natural competitors: w itself and zero
    for other in (w, torch.zeros_like(w)):
        assert best <= _objective(penalty, other, w, t) + 1e-9 * (1 + abs(best))


def test_group_prox_shrinks_every_tensor_of_a_list():
    a = torch.tensor([[3.0, 4.0]])
    b = torch.tensor([[6.0, 8.0]])
    F.group_soft_threshold_([a, b], 1.0, [Rows(), Rows()])  # thresholds sqrt(2): norms 5 and 10
    torch.testing.assert_close(a, torch.tensor([[3.0, 4.0]]) * (1 - math.sqrt(2) / 5))
    torch.testing.assert_close(b, torch.tensor([[6.0, 8.0]]) * (1 - math.sqrt(2) / 10))


def test_pull_toward_with_per_tensor_scales_of_another_dtype():
    w = [torch.tensor([2.0, 4.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)]
    refs = [torch.zeros(2, dtype=torch.float32), torch.zeros(1, dtype=torch.float32)]
    F.pull_toward_(w, refs, [torch.tensor([0.25, 0.5]), torch.tensor([2.0])])  # a list, float32 scales
    assert torch.equal(w[0], torch.tensor([1.5, 2.0], dtype=torch.float64))
    assert torch.equal(w[1], torch.tensor([0.0], dtype=torch.float64))  # clamped at the reference
