"""DistributedDataParallel: 2 CPU processes on the gloo backend (loopback only).

Each rank trains on its half of every global batch; DDP averages the gradients, and the
regularizer, given the unwrapped model (rules name ``fc1.weight``, not
``module.fc1.weight``), must then act identically on every rank. The replicas must stay
bit-identical, and equal one process training on the whole global batch to fp32 tolerance.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

import decaylab as dl

STEPS, GLOBAL_BATCH, WORLD = 6, 32, 2


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _setup():
    torch.manual_seed(0)
    model = _Net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, GLOBAL_BATCH, 10, generator=g)
    y = torch.randint(0, 3, (STEPS, GLOBAL_BATCH), generator=g)
    return model, x, y


def _rules():
    # written against the unwrapped model's names
    return [dl.Rule(dl.L1(3e-2), params="fc1.weight", metric="adam"),
            dl.Rule(dl.GroupLasso(0.5, groups="inputs"), params="fc2.weight"),
            dl.Rule(dl.L2(1e-2), params="*.bias", mode="coupled")]


def _train(model, opt, xs, ys):
    for x, y in zip(xs, ys):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model, x, y = _setup()
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = dl.regularize(torch.optim.Adam(ddp.parameters(), lr=5e-2), ddp.module, _rules())
        half = GLOBAL_BATCH // WORLD
        _train(ddp, opt, x[:, rank * half:(rank + 1) * half], y[:, rank * half:(rank + 1) * half])
        torch.save(ddp.module.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_ddp_replicas_stay_identical_and_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)

    model, x, y = _setup()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=5e-2), model, _rules())
    _train(model, opt, x, y)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(r0[k], v, rtol=1e-5, atol=1e-6)
        assert not torch.equal(v, start[k])  # the run moved every tensor
    assert (r0["fc1.weight"] == 0).any() and torch.equal(r0["fc1.weight"] == 0, model.fc1.weight == 0)
    assert (r0["fc2.weight"] == 0).all(0).any()  # a whole input column of fc2 switched off


def test_gradient_accumulation_applies_the_penalty_once_per_real_step():
    model, x, y = _setup()
    twin, _, _ = _setup()
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=5e-2), model, _rules())
    acc = dl.regularize(torch.optim.Adam(twin.parameters(), lr=5e-2), twin, _rules())
    _train(model, opt, x, y)
    for xb, yb in zip(x, y):  # two micro-batches of half the size, one real step
        for part in (slice(0, GLOBAL_BATCH // 2), slice(GLOBAL_BATCH // 2, None)):
            (F.cross_entropy(twin(xb[part]), yb[part]) / 2).backward()
        acc.step()
        acc.zero_grad(set_to_none=True)
    assert acc.steps == opt.steps == STEPS
    for k, v in model.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[k], v, rtol=1e-5, atol=1e-6)
