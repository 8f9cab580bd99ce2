"""Groupings: which entries of a weight form one group for GroupLasso.

A grouping answers three questions about a weight tensor ``w``:

* ``check(name, shape)`` - does it fit? (raises ``ValueError`` naming the fix)
* ``norms(w)`` - each group's L2 norm and size, broadcast to ``w``'s shape
* ``live(w)`` - how many groups are not exactly zero

Groupings are kept apart from the penalty so compaction can later swap in groups that
couple a layer's rows with the next layer's columns. ``batch_dims`` leading dimensions
(stacked configurations of a batched sweep) are never mixed: groups are taken within each
configuration.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["Grouping", "Rows", "Columns", "Channels", "Indexed", "make_grouping", "GROUPINGS"]


class Grouping:
    """Base class. Subclasses set ``dim``: the axis (after batch dims) indexing groups."""

    name = "grouping"
    dim = 0
    min_ndim = 2

    def __init__(self, batch_dims: int = 0):
        self.batch_dims = batch_dims

    def with_batch_dims(self, batch_dims: int) -> "Grouping":
        return type(self)(batch_dims)

    def check(self, name: str, shape: Sequence[int]) -> None:
        ndim = len(shape) - self.batch_dims
        if ndim < self.min_ndim:
            raise ValueError(
                f"GroupLasso(groups='{self.name}') needs a weight with at least {self.min_ndim} "
                f"dimensions{' after the configuration dimension' if self.batch_dims else ''}; "
                f"'{name}' has shape {tuple(shape)}. Use groups='rows' for Linear layers, "
                f"'channels' for Conv layers, or exclude '{name}' from this rule."
            )

    def reduce_dims(self, w: Tensor) -> list[int]:
        keep = set(range(self.batch_dims)) | {self.batch_dims + self.dim}
        return [d for d in range(w.ndim) if d not in keep]

    def norms(self, w: Tensor) -> tuple[Tensor, int]:
        """Group L2 norms (float32 or wider, broadcast to ``w``) and the group size."""
        dims = self.reduce_dims(w)
        dtype = torch.promote_types(w.dtype, torch.float32)
        norms = torch.linalg.vector_norm(w, dim=dims, keepdim=True, dtype=dtype)
        size = 1
        for d in dims:
            size *= w.shape[d]
        return norms, size

    def live(self, w: Tensor) -> tuple[int, int]:
        """(groups with a nonzero entry, all groups), summed over configurations.

        >>> Rows().live(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        (1, 2)
        """
        norms, _ = self.norms(w.detach())
        return int((norms != 0).sum()), norms.numel()

    def __repr__(self) -> str:
        return repr(self.name)


class Rows(Grouping):
    """Rows of a weight: a Linear layer's output neurons (``weight[i, :]``)."""

    name = "rows"
    dim = 0


class Columns(Grouping):
    """Columns: a layer's input features (``weight[:, j]``; a Conv's input channels)."""

    name = "columns"
    dim = 1


class Channels(Grouping):
    """A Conv layer's output channels (``weight[c, :, :, :]``)."""

    name = "channels"
    dim = 0
    min_ndim = 3

    def check(self, name: str, shape: Sequence[int]) -> None:
        if len(shape) - self.batch_dims < self.min_ndim:
            raise ValueError(
                f"GroupLasso(groups='channels') needs a Conv weight (3-D or more); '{name}' has "
                f"shape {tuple(shape)}. Use groups='rows' for Linear layers."
            )


class Indexed(Grouping):
    """User grouping: ``fn(shape) -> LongTensor`` of group ids, one per entry.

    ``shape`` excludes batch dims. Ids must be in ``[0, n_groups)``.

    >>> g = Indexed(lambda shape: torch.tensor([0, 0, 1]))
    >>> g.live(torch.tensor([0.0, 0.0, 2.0]))
    (1, 2)
    """

    name = "indexed"
    min_ndim = 1

    def __init__(self, fn: Callable[[torch.Size], Tensor], batch_dims: int = 0):
        super().__init__(batch_dims)
        self.fn = fn

    def with_batch_dims(self, batch_dims: int) -> "Indexed":
        return Indexed(self.fn, batch_dims)

    def _ids(self, shape: Sequence[int], device=None) -> Tensor:
        ids = self.fn(torch.Size(shape))
        if not isinstance(ids, Tensor):
            try:
                ids = torch.as_tensor(ids)
            except (TypeError, RuntimeError, ValueError):
                raise ValueError(
                    f"a grouping function must return an integer tensor of shape {tuple(shape)}, "
                    f"got {ids!r}"
                ) from None
        ids = ids.to(device) if device is not None else ids
        if tuple(ids.shape) != tuple(shape) or ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"a grouping function must return an integer tensor of shape {tuple(shape)}, "
                f"got {ids.dtype} of shape {tuple(ids.shape)}"
            )
        if ids.numel() and int(ids.min()) < 0:
            raise ValueError("a grouping function returned a negative group id; ids start at 0")
        return ids.long()

    def check(self, name: str, shape: Sequence[int]) -> None:
        try:
            self._ids(shape[self.batch_dims:])
        except ValueError as err:
            raise ValueError(f"GroupLasso(groups=<function>) on '{name}': {err}") from None

    def norms(self, w: Tensor) -> tuple[Tensor, Tensor]:
        inner = w.shape[self.batch_dims:]
        ids = self._ids(inner, w.device).flatten()
        flat = w.reshape(-1, ids.numel()).to(torch.promote_types(w.dtype, torch.float32))
        n_groups = int(ids.max()) + 1 if ids.numel() else 0
        sq = flat.new_zeros(flat.shape[0], n_groups).index_add_(1, ids, flat * flat)
        # sqrt has an infinite derivative at 0 (NaN gradients of value() at a zero group,
        # which the prox produces): take the subgradient 0 there instead
        root = torch.where(sq > 0, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), sq)  # 0 (or NaN)
        norms = root[:, ids].reshape(w.shape)
        sizes = torch.bincount(ids, minlength=n_groups)[ids].reshape(inner).to(norms.dtype)
        return norms, sizes

    def live(self, w: Tensor) -> tuple[int, int]:
        inner = w.shape[self.batch_dims:]
        ids = self._ids(inner, w.device).flatten()
        flat = w.detach().reshape(-1, ids.numel())
        n_groups = int(ids.max()) + 1 if ids.numel() else 0
        nz = flat.new_zeros(flat.shape[0], n_groups).index_add_(1, ids, (flat != 0).to(flat.dtype))
        present = torch.bincount(ids, minlength=n_groups) > 0
        return int((nz[:, present] > 0).sum()), int(present.sum()) * flat.shape[0]


GROUPINGS = {
    "rows": Rows,
    "outputs": Rows,
    "neurons": Rows,
    "columns": Columns,
    "inputs": Columns,
    "channels": Channels,
}


def make_grouping(groups) -> Grouping:
    """Turn ``"rows"``/``"inputs"``/``"channels"``/..., a Grouping or a callable into a Grouping.

    >>> make_grouping("inputs")
    'columns'
    """
    if isinstance(groups, Grouping):
        return groups
    if isinstance(groups, str):
        if groups not in GROUPINGS:
            raise ValueError(
                f"unknown grouping {groups!r}; use one of {sorted(GROUPINGS)} or a function "
                f"shape -> LongTensor of group ids"
            )
        return GROUPINGS[groups]()
    if callable(groups):
        return Indexed(groups)
    raise ValueError(f"groups must be a name, a Grouping or a function, got {groups!r}")
