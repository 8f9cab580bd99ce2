"""CUDA checks: skipped without a GPU (CI has none); run on a lent GPU machine with
``python -m pytest tests/test_cuda.py`` or ``python tests/test_cuda.py``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import decaylab as dl
from decaylab import functional as F

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _tensors(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 32), (7,), (3, 4, 5, 5), (1000,), ()]
    return [torch.randn(s, generator=g, dtype=dtype).cuda() for s in shapes]


@cuda
@pytest.mark.parametrize("kernel", ["shrink", "soft", "enet", "pull"])
def test_cuda_foreach_path_equals_loop_path(kernel):
    a, b = _tensors(), _tensors()
    refs = [t * 0.5 for t in _tensors(1)]
    run = {
        "shrink": lambda ts, fe: F.shrink_(ts, 0.1, foreach=fe),
        "soft": lambda ts, fe: F.soft_threshold_(ts, 0.3, foreach=fe),
        "enet": lambda ts, fe: F.elastic_net_prox_(ts, 0.3, 0.4, foreach=fe),
        "pull": lambda ts, fe: F.pull_toward_(ts, refs, 0.2, foreach=fe),
    }[kernel]
    run(a, None)  # None picks foreach on CUDA
    run(b, False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
        assert torch.equal(x == 0, y == 0)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)).cuda()


@cuda
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_decoupled_l2_adam_equals_adamw(fused):
    model = _mlp()
    ref = copy.deepcopy(model)
    ours = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused), model,
                         dl.Rule(dl.L2(0.1), params="*"))
    theirs = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    x, y = torch.randn(32, 20, device="cuda"), torch.randint(0, 5, (32,), device="cuda")
    for _ in range(20):
        for m, o in ((model, ours), (ref, theirs)):
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
            o.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@cuda
def test_cuda_l1_prox_gives_exact_zeros():
    model = _mlp()
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2), model, dl.Rule(dl.L1(1e-3), metric="adam"))
    x, y = torch.randn(256, 20, device="cuda"), torch.randint(0, 5, (256,), device="cuda")
    for _ in range(200):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    assert dl.sparsity(model) > 0.1


@cuda
def test_cuda_bf16_decoupled_decay_accumulates():
    lin = nn.Linear(8, 8, bias=False).cuda().to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    opt = dl.regularize(torch.optim.SGD(lin.parameters(), lr=1e-3), lin, dl.L2(1e-2))  # 1 - 1e-5 == 1 in bf16
    for _ in range(500):
        lin.weight.grad = torch.zeros_like(lin.weight)
        opt.step()
    expected = (1 - 1e-5) ** 500
    assert abs(float(lin.weight[0, 0]) - expected) < 4e-3  # bf16 spacing near 1 is 2**-8
    assert float(lin.weight[0, 0]) < 1.0


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", ["L1-prox", "L2-decoupled"])
def test_cuda_low_precision_decay_below_rounding_accumulates(dtype, kind):
    lr, alpha, steps = 0.1, 1e-4, 300  # lr * alpha = 1e-5: far below bf16/fp16 rounding near 1
    w0 = torch.tensor([[1.0, -2.0, 0.75, 1.5]])
    lin = nn.Linear(4, 1, bias=False).cuda()
    with torch.no_grad():
        lin.weight.copy_(w0)
    lin = lin.to(dtype)
    pen = dl.L2(alpha) if kind == "L2-decoupled" else dl.L1(alpha)
    opt = dl.regularize(torch.optim.SGD(lin.parameters(), lr=lr), lin, pen)
    for _ in range(steps):
        lin.weight.grad = torch.zeros_like(lin.weight)
        opt.step()
    got = lin.weight.detach().cpu()
    assert got.dtype == dtype
    w = w0.double()
    exact = w * (1 - lr * alpha) ** steps if kind == "L2-decoupled" else torch.sign(w) * (w.abs() - steps * lr * alpha)
    assert torch.equal(got, exact.to(dtype)), (got, exact)  # the nearest representable value
    assert not torch.equal(got, w0.to(dtype))  # it moved, where a bf16 update would not


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-v"]))
