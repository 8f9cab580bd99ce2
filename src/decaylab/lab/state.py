"""The state of one training run: what the loop returns and what a checkpoint holds.

A :class:`TrainState` is everything the loop needs to continue a run from where it
stopped, bit for bit on CPU: the model, the optimizer (a ``dl.regularize`` wrapper carries
the regularizer's own state in its ``state_dict``), the LR scheduler, the phase ("train"
or "finetune", with the fine-tune masks), the data position (epoch, this epoch's batch
order and the next batch in it, and the shuffling generator), the random number
generators (torch, CUDA, numpy, Python), and the bookkeeping of the measurements.

``state_dict()`` holds only tensors and plain Python data, so it loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch import nn

FORMAT = 1  # bump when the checkpoint layout changes


def rng_state() -> dict:
    """The global random number generators' states, as tensors and plain data.

    >>> s = rng_state(); a = torch.rand(2); set_rng_state(s); bool((torch.rand(2) == a).all())
    True
    """
    out = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return out
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    out["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(gauss)}
    return out


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))


@dataclass
class TrainState:
    """One run in progress. The loop (``train.run_epochs``) advances it and returns it.

    Attributes:
        model, opt, sched: what trains; ``opt`` is the current phase's optimizer.
        batch_gen: the generator that shuffles the training set each epoch.
        regularized: the ``dl.regularize`` optimizer of the train phase (None without a
            penalty); ``rules.txt`` is written from it once the run ends.
        phase: "train" or "finetune".
        epoch: epochs finished, over both phases (the last metrics line's "epoch").
        step: optimizer steps taken.
        order, batch: inside an unfinished epoch (a Ctrl-C), this epoch's batch order and
            the index of the next batch; ``None`` and 0 between epochs.
        epoch_seconds: training time already spent in the unfinished epoch.
        times: training seconds of each finished epoch.
        last, last_stats: the last metrics row and its weight statistics (final.json).
        masks: fine-tune masks (True = weight kept) in ``selected_weights`` order.
    """

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: object | None
    batch_gen: torch.Generator
    regularized: torch.optim.Optimizer | None = None
    phase: str = "train"
    epoch: int = 0
    step: int = 0
    order: torch.Tensor | None = None
    batch: int = 0
    epoch_seconds: float = 0.0
    times: list = field(default_factory=list)
    last: dict | None = None
    last_stats: dict | None = None
    masks: list | None = None

    def state_dict(self) -> dict:
        """Everything needed to continue, as tensors and plain data (a checkpoint)."""
        return {
            "format": FORMAT, "phase": self.phase, "epoch": self.epoch, "step": self.step,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "batch_gen": self.batch_gen.get_state(), "order": self.order, "batch": self.batch,
            "epoch_seconds": self.epoch_seconds, "times": list(self.times),
            "last": self.last, "last_stats": self.last_stats,
            "masks": None if self.masks is None else [m.cpu() for m in self.masks],
            "rng": rng_state(),
        }

    def load_state_dict(self, ckpt: dict) -> None:
        """Continue from ``ckpt``. The model, optimizer and scheduler must already be built
        for ``ckpt["phase"]`` (``train.build_state`` then, for a fine-tune checkpoint,
        ``train.enter_finetune``), exactly as the interrupted run built them."""
        if ckpt.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {ckpt.get('format')!r} is not {FORMAT}; it was written "
                             f"by another decaylab version: start the run again")
        if ckpt["phase"] != self.phase:
            raise ValueError(f"checkpoint is in phase {ckpt['phase']!r} but the state was built for "
                             f"{self.phase!r}")
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        if self.sched is not None and ckpt["scheduler"] is not None:
            self.sched.load_state_dict(ckpt["scheduler"])
        self.batch_gen.set_state(ckpt["batch_gen"])
        self.epoch, self.step, self.batch = ckpt["epoch"], ckpt["step"], ckpt["batch"]
        self.order, self.epoch_seconds = ckpt["order"], ckpt["epoch_seconds"]
        self.times, self.last, self.last_stats = list(ckpt["times"]), ckpt["last"], ckpt["last_stats"]
        if ckpt["masks"] is not None:
            device = next(self.model.parameters()).device
            self.masks = [m.to(device) for m in ckpt["masks"]]
        set_rng_state(ckpt["rng"])
