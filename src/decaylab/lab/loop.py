"""The lab's one training loop: every model the lab trains steps through its epochs here.

A single run (``decaylab train`` / ``compare``, the magnitude-pruning reference), a stack
of K sweep points trained as one model, and feature selection's fits all go through
:func:`epoch`. What differs between them is only *what* trains and its loss; *how* it
trains is written once:

- the batch order: a fresh permutation of the training set each epoch, drawn from the
  trainee's own generator (so a stacked point sees the batches its single run would);
- the position inside an epoch (next batch, training time spent), so a run stopped
  mid-epoch continues from the same batch;
- one step: forward, the trainee's loss, ``backward``, ``opt.step``,
  ``opt.zero_grad(set_to_none=True)``, then ``after_step`` (e.g. holding fine-tune zeros);
- a stop request (Ctrl-C, :func:`request_stop`): after the current step, the caller's
  ``on_stop`` checkpoints and :class:`Interrupted` is raised;
- the end of an epoch: the learning rate it trained at is read, the schedule steps, the
  epoch's training time is kept.

A *trainee* is any object with these attributes (a :class:`~decaylab.lab.state.TrainState`
is one; the sweep's :class:`~decaylab.lab.stack.Stack` is another): ``model``, ``opt``,
``sched`` (or None), ``batch_gen`` (a ``torch.Generator``), and the position ``epoch``,
``step``, ``order``, ``batch``, ``epoch_seconds``, ``times``.

>>> from torch import nn
>>> from types import SimpleNamespace as NS
>>> torch.manual_seed(0); model = nn.Linear(3, 1)  # doctest: +ELLIPSIS
<...>
>>> t = NS(model=model, opt=torch.optim.SGD(model.parameters(), lr=0.1), sched=None,
...        batch_gen=torch.Generator().manual_seed(0), epoch=0, step=0, order=None, batch=0,
...        epoch_seconds=0.0, times=[])
>>> x, y = torch.randn(10, 3), torch.randn(10)
>>> loss = lambda xb, yb: nn.functional.mse_loss(model(xb).squeeze(1), yb)
>>> for _ in range(2):
...     lr = epoch(t, x, y, 4, loss)
>>> t.epoch, t.step, lr, len(t.times), t.order is None
(2, 6, 0.1, 2, True)
"""

from __future__ import annotations

import threading
import time

import torch
from torch.nn import functional as F


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or :func:`request_stop`): the run stopped after a step and checkpointed."""


STOP = threading.Event()  # set by a SIGINT handler; the loop stops after the current step


def request_stop() -> None:
    """Ask the running loop to stop after its current step and checkpoint (as Ctrl-C does)."""
    STOP.set()


def task_loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """The lab's loss of one model's outputs: cross-entropy for a classification, else the
    mean squared error of the one regression output."""
    if task == "classification":
        return F.cross_entropy(out, y)
    return F.mse_loss(out.squeeze(1), y)


def steps(trainee, x: torch.Tensor, y: torch.Tensor, batch_size: int, loss, *,
          after_step=None, on_stop=None, name: str = "run") -> None:
    """Train ``trainee`` on the rest of its current epoch's batches.

    ``loss(xb, yb)`` returns the scalar to differentiate (for a stack: the sum of its
    members' losses). With ``on_stop`` given, a stop request is honoured after a step:
    ``on_stop(trainee)`` (a checkpoint), then :class:`Interrupted`.
    """
    t0 = time.perf_counter()
    if trainee.order is None:
        trainee.order = torch.randperm(len(x), generator=trainee.batch_gen)
        trainee.batch, trainee.epoch_seconds = 0, 0.0
    device = next(trainee.model.parameters()).device
    while trainee.batch * batch_size < len(trainee.order):
        idx = trainee.order[trainee.batch * batch_size:(trainee.batch + 1) * batch_size]
        loss(x[idx].to(device), y[idx].to(device)).backward()
        trainee.opt.step()
        trainee.opt.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()
        trainee.step += 1
        trainee.batch += 1
        if on_stop is not None and STOP.is_set():
            trainee.epoch_seconds += time.perf_counter() - t0
            on_stop(trainee)
            raise Interrupted(f"run '{name}' stopped at step {trainee.step} and checkpointed")
    trainee.epoch_seconds += time.perf_counter() - t0


def end_epoch(trainee) -> float:
    """Close the finished epoch: step the schedule, keep its time, reset the position.
    Returns the learning rate the epoch trained at (the first param group's)."""
    lr = trainee.opt.param_groups[0]["lr"]
    if trainee.sched is not None:
        trainee.sched.step()
    trainee.times.append(trainee.epoch_seconds)
    trainee.epoch, trainee.order, trainee.batch, trainee.epoch_seconds = trainee.epoch + 1, None, 0, 0.0
    return lr


def epoch(trainee, x: torch.Tensor, y: torch.Tensor, batch_size: int, loss, **kw) -> float:
    """:func:`steps` to the end of the epoch, then :func:`end_epoch`; returns its lr."""
    steps(trainee, x, y, batch_size, loss, **kw)
    return end_epoch(trainee)
