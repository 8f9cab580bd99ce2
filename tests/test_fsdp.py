"""FSDP2 (``fully_shard``, DTensor parameters): 2 CPU processes on gloo (loopback only).

Each layer's parameters are sharded along dim 0 across the ranks; every rank trains on the
same whole batch, so the reduce-scattered gradients equal one process's. After a few steps
each rank's ``full_tensor()`` must equal one process training the unsharded model, for each
penalty, with ``fused=False`` and the default ``fused=None`` (``CPU_MIN_NUMEL`` set to 0 so
compiled kernels would be attempted on every bucket).
"""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

import decaylab as dl
import decaylab.fused

STEPS, BATCH, WORLD = 4, 16, 2

# name -> rules against the Sequential's names (0: Linear(10, 16), 2: Linear(16, 3))
CASES = {
    "l1-lr": lambda: [dl.Rule(dl.L1(3e-2), params="0.weight")],
    "l1-adam": lambda: [dl.Rule(dl.L1(3e-2), params="0.weight", metric="adam")],
    "l2-decoupled": lambda: [dl.Rule(dl.L2(1e-1), params="*", mode="decoupled")],
    "l2-coupled": lambda: [dl.Rule(dl.L2(1e-1), params="*", mode="coupled")],
    "elasticnet": lambda: [dl.Rule(dl.ElasticNet(3e-2, l1_ratio=0.5), params="*.weight")],
    "gl-rows": lambda: [dl.Rule(dl.GroupLasso(0.3, groups="rows"), params="0.weight")],
    "gl-inputs": lambda: [dl.Rule(dl.GroupLasso(0.5, groups="inputs"), params="*.weight")],
    "gl-inputs-adam": lambda: [dl.Rule(dl.GroupLasso(0.5, groups="inputs"), params="2.weight",
                                       metric="adam")],
    # penalties with per-parameter data (a reference, adaptive weights), a schedule, groups
    # spanning layers, a tensor strength
    "l2sp": lambda: [dl.Rule(dl.L2SP(1e-1, _reference()), params="*.weight")],
    "target-sparsity": lambda: [dl.Rule(dl.TargetSparsity(1e-2, target=0.5, begin=0, end=3), params="0.weight")],
    "coupled-gl": lambda: [dl.Rule(dl.CoupledGroupLasso(0.3, _setup()[0]), params=["0.*", "2.weight"])],
    "adaptive-gl": lambda: [dl.Rule(dl.AdaptiveGroupLasso(0.3, _reference(), groups="inputs"), params="0.weight")],
    "l1-tensor-alpha": lambda: [dl.Rule(dl.L1(torch.tensor(3e-2)), params="0.weight")],
}
FUSED = (False, None)


def _reference() -> dict:
    """A plain (unsharded) state_dict, as a pretrained checkpoint is: the reference of L2SP
    and AdaptiveGroupLasso."""
    g = torch.Generator().manual_seed(2)
    return {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in _setup()[0].state_dict().items()}


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(STEPS, BATCH, 10, generator=g), torch.randint(0, 3, (STEPS, BATCH), generator=g)


def _run(case: str, fused, shard=None) -> dict:
    model, xs, ys = _setup()
    if shard is not None:
        shard(model)
    opt = dl.regularize(torch.optim.AdamW(model.parameters(), lr=5e-2, weight_decay=0.0), model,
                        CASES[case](), fused=fused)
    for x, y in zip(xs, ys):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()}
    return full


def _shard(model):
    from torch.distributed.fsdp import fully_shard

    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    decaylab.fused.CPU_MIN_NUMEL = 0
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = {f"{c}/{f}": _run(c, f, _shard) for c in CASES for f in FUSED}
        out["warnings"] = [str(w.message) for w in caught if "decaylab" in str(w.message)]
        model = _setup()[0]
        _shard(model)
        try:
            dl.compact(model)
            out["compact"] = "no error"
        except ValueError as err:
            out["compact"] = str(err)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp2_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


@pytest.mark.slow
@pytest.mark.skipif(not _fsdp2_available(), reason="no torch.distributed gloo backend or no FSDP2 (fully_shard)")
def test_fully_shard_matches_one_process_for_every_penalty(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    # a DTensor bucket runs eager: no compile is attempted (it would fail, warn and cost time)
    assert r0.pop("warnings") == r1.pop("warnings") == []
    # compact() needs the whole model: one clear line naming the sharded parameter and the fix
    message = r0.pop("compact")
    assert message == r1.pop("compact") and "'0.weight' is sharded" in message and "unsharded copy" in message
    for key in r0:
        case, _ = key.split("/")
        ref = _run(case, False)
        for k, v in ref.items():
            assert torch.equal(r0[key][k], r1[key][k]), (key, k)  # no rank diverges
            torch.testing.assert_close(r0[key][k], v, rtol=1e-5, atol=1e-6, msg=f"{key} {k}")
    # the group cases switched whole groups off, across the shard boundary for inputs
    assert (r0["gl-inputs/False"]["0.weight"] == 0).all(0).any()
    assert (r0["l1-lr/None"]["0.weight"] == 0).any()
    assert (r0["target-sparsity/None"]["0.weight"] == 0).float().mean() >= 0.5
