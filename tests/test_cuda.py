"""CUDA checks: skipped without a GPU (CI has none); run on a lent GPU machine with
``python -m pytest tests/test_cuda.py`` or ``python tests/test_cuda.py``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import decaylab as dl
from decaylab import functional as F

from conftest import carried, mlp

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


@cuda
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_decoupled_l2_adam_equals_adamw(fused):
    model = mlp(20, 64, 5).cuda()
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
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_decoupled_l2_is_adamws_own_step_bit_for_bit(fused):
    """AdamW's own step takes the decay (decaylab._inner_decay): the same kernel calls as
    AdamW with weight-decay param groups, so the same bits (fused CUDA AdamW computes
    ``w - lr*wd*w``, not decaylab's ``w * (1 - lr*wd)``)."""
    model = mlp(20, 64, 5).cuda()
    ref = copy.deepcopy(model)
    ours = dl.regularize(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0, fused=fused), model,
                         dl.L2(0.1))
    theirs = torch.optim.AdamW([{"params": [ref[0].weight, ref[2].weight], "weight_decay": 0.1},
                                {"params": [ref[0].bias, ref[2].bias], "weight_decay": 0.0}], lr=1e-2, fused=fused)
    x, y = torch.randn(32, 20, device="cuda"), torch.randint(0, 5, (32,), device="cuda")
    for _ in range(20):
        for m, o in ((model, ours), (ref, theirs)):
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
            o.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


@cuda
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_l1_adam_metric_prox_gives_exact_zeros(fused):
    model = mlp(20, 64, 5).cuda()
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2), model,
                        dl.Rule(dl.L1(1e-3), metric="adam"), fused=fused)
    x, y = torch.randn(256, 20, device="cuda"), torch.randint(0, 5, (256,), device="cuda")
    for _ in range(200):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    assert dl.sparsity(model) > 0.1
    assert {r["kernel"] for r in dl.updates(opt)} == {"compiled" if fused else "eager"}


@cuda
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_bf16_adam_metric_prox_keeps_its_residual(fused):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)).cuda().to(torch.bfloat16)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-4), model,
                        dl.Rule(dl.L1(1e-3), metric="adam"), fused=fused)
    x = torch.randn(64, 20, device="cuda", dtype=torch.bfloat16)
    y = torch.randint(0, 5, (64,), device="cuda")
    for _ in range(50):
        nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
        opt.zero_grad()
    assert model[0].weight.dtype == torch.bfloat16
    assert dl.sparsity(model) > 0.0
    residuals = list(opt.state_dict()["decaylab"]["residuals"].values())
    assert residuals and any(bool((r != 0).any()) for r in residuals)  # sub-bf16 progress kept


def _train_cuda(rule, dtype, fused, adam_kwargs=None, steps=5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(),
                          nn.Linear(8, 5)).cuda().to(dtype)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=5e-2, **(adam_kwargs or {})), model,
                        [rule(), dl.Rule(None, params="*.bias")], fused=fused)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 20, generator=g).cuda().to(dtype)
    y = torch.randint(0, 5, (64,), generator=g).cuda()
    for _ in range(steps):
        nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
        opt.zero_grad()
    return carried(opt, model.parameters()), opt


CUDA_RULES = {
    "L1-lr": lambda: dl.Rule(dl.L1(0.5), metric="lr"),
    "L1-adam": lambda: dl.Rule(dl.L1(0.02)),
    "ElasticNet-adam": lambda: dl.Rule(dl.ElasticNet(0.03, 0.4)),
    "ElasticNet-decoupled": lambda: dl.Rule(dl.ElasticNet(0.3, 0.4), mode="decoupled"),
    "GroupLasso-rows-lr": lambda: dl.Rule(dl.GroupLasso(1.0, "rows"), metric="lr"),
    "GroupLasso-inputs-adam": lambda: dl.Rule(dl.GroupLasso(0.05, "inputs")),
    "L2-decoupled": lambda: dl.Rule(dl.L2(0.5)),
}


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(CUDA_RULES))
def test_cuda_fused_equals_eager(name, dtype):
    eager, _ = _train_cuda(CUDA_RULES[name], dtype, False)
    comp, opt = _train_cuda(CUDA_RULES[name], dtype, True)
    # an fp32 elementwise prox bucket takes Adam's step into its kernel from step 2 on
    # (step 1 is Adam's own, eager prox): 4 compiled calls; the others compile at step 1: 5
    for r in dl.updates(opt):
        fused_adam = r["mode"].startswith("prox") and r["dtype"] not in ("bfloat16", "float16") \
            and not r["penalty"].startswith("GroupLasso")
        assert r["kernel"] == "compiled" and r["calls"] == (4 if fused_adam else 5)
        assert (r["adam_calls"] > 0) == fused_adam
        # after its first call the kernel runs its program without dynamo's guards
        assert r["level"] == "direct" and r["guarded_calls"] == 1
    for a, b in zip(eager, comp):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


@cuda
@pytest.mark.parametrize("adam_kwargs", [{"fused": True}, {"capturable": True}], ids=["fused-adam", "capturable"])
def test_cuda_adam_step_counters_on_device(adam_kwargs):
    # Adam keeps its step counters on the GPU: the bias correction is taken there (no host sync)
    eager, _ = _train_cuda(CUDA_RULES["L1-adam"], torch.float32, False, adam_kwargs)
    comp, opt = _train_cuda(CUDA_RULES["L1-adam"], torch.float32, True, adam_kwargs)
    assert opt.state[opt.param_groups[0]["params"][0]]["step"].is_cuda
    for a, b in zip(eager, comp):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


@cuda
def test_cuda_fused_compiles_once(monkeypatch):
    from decaylab import fused

    compiles = []

    def counting(gm, example_inputs):
        compiles.append(1)
        return gm.forward

    monkeypatch.setattr(fused, "_BACKEND", counting)
    _, opt = _train_cuda(CUDA_RULES["GroupLasso-inputs-adam"], torch.float32, True, steps=6)
    assert len(compiles) == len(dl.updates(opt)) == 1 and dl.updates(opt)[0]["calls"] == 6


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
