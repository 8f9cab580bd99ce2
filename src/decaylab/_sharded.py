"""Sharded (DTensor / FSDP2 ``fully_shard``) parameters: what the wrapper does with them.

Element-wise penalties act on each rank's local shard as they are. A group norm of a
DTensor is a DTensor reduced across its shards by DTensor's own ops (a pending
all-reduce that is resolved when the norm is used), so GroupLasso is exact whichever
dimension is sharded. Compiled kernels (``decaylab.fused``) see plain tensors only:
a bucket holding a DTensor runs the eager path. A penalty's per-parameter data (L2SP's
reference, AdaptiveGroupLasso's weights) is made a DTensor on the parameter's mesh
(:func:`like`), so the update mixes no plain tensor with a sharded one.
"""

from __future__ import annotations

from torch import Tensor

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed
    DTensor = None


def is_sharded(p: Tensor) -> bool:
    """Whether ``p`` is a DTensor (an FSDP2 or tensor-parallel parameter)."""
    return DTensor is not None and isinstance(p, DTensor)


def any_sharded(params) -> bool:
    """Whether any of ``params`` is a DTensor."""
    return any(map(is_sharded, params))


def like(t: Tensor, param: Tensor) -> Tensor:
    """``t`` (the same on every rank) placed as ``param`` is: sharded as it is when the
    shapes agree, replicated when ``t`` broadcasts against it; ``t`` itself when ``param``
    is not sharded (or ``t`` already is)."""
    if not is_sharded(param) or is_sharded(t):
        return t
    from torch.distributed.tensor import Replicate, distribute_tensor

    mesh = param.device_mesh
    if tuple(t.shape) == tuple(param.shape):
        return distribute_tensor(t, mesh, param.placements)
    return distribute_tensor(t, mesh, [Replicate()] * mesh.ndim)
