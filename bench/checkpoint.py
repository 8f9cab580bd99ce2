"""What does a checkpoint per epoch cost? LeNet-300-100 on Fashion-MNIST, in one run.

The lab's own loop (``decaylab.lab.train.run_epochs``) trains LeNet-300-100 on the full
Fashion-MNIST training split (54,000 images, batch 128, Adam, L1 with the Adam metric so
the regularizer's state is in the checkpoint, one thread). Epochs alternate: odd epochs
write the checkpoint (model, Adam state, regularizer state, scheduler, RNG states, data
position: ``TrainState.state_dict()`` to a temp file, fsync, rename), even epochs skip it;
the first epoch is a warm-up and not counted. Reported per epoch:

* ``checkpoint s``: the checkpoint itself (state_dict + torch.save + fsync + rename), timed
  around the call;
* ``epoch s``: wall time from the end of one epoch to the end of the next (training,
  evaluation on train/val/test, the metrics line, and the checkpoint if written), and
  ``epoch cpu s``, the process CPU time of the same span (one thread, so what the epoch
  costs on a core of its own).

``TARGET checkpoint_overhead`` = median checkpoint wall seconds / median CPU seconds of the
epochs without one: conservative on a shared machine, where contention inflates the
checkpoint's wall time (and its fsync wait) but not the epoch's CPU time. The side-by-side
difference of the two epoch kinds' wall times is printed as a cross-check; on a shared
machine it is within the noise of the epoch time.

Run: ``python bench/checkpoint.py [--epochs 7] [--n-train 0]`` (``--n-train`` trims the
training set for a quick look; the target is measured on the full set).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from decaylab.lab import config, recipe, runfolder, train

TARGET = 2.0  # percent of an epoch


class _Timed(runfolder.Run):
    """A run folder that checkpoints only odd epochs and times each checkpoint."""

    def __init__(self, path):
        super().__init__(path)
        self.seconds: dict[int, float] = {}

    def checkpoint(self, state) -> None:
        if state.epoch % 2 == 0:
            return
        t0 = time.perf_counter()
        super().checkpoint(state)
        self.seconds[state.epoch] = time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--n-train", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = config.resolve({"data": {"name": "fashion-mnist", "val_fraction": 0.1, "n_train": args.n_train},
                          "model": {"kind": "lenet300"},
                          "train": {"epochs": args.epochs, "batch_size": 128, "optimizer": "adam", "lr": 1e-3},
                          "penalty": {"penalty": "l1", "alpha": 1e-4, "metric": "adam"}}, command="train")
    run = cfg["runs"][0]
    data = train.prepare(cfg)
    ends, cpus = [time.perf_counter()], [time.process_time()]

    def tick(name, row):
        ends.append(time.perf_counter())
        cpus.append(time.process_time())

    with tempfile.TemporaryDirectory() as tmp:
        out = _Timed(Path(tmp) / "runs" / run["name"])
        out.begin({**run, "describe": recipe.describe(run)})
        state = train.build_state(cfg, data, run)
        train.run_epochs(state, cfg, data, run, out, progress=tick)
        size = out.checkpoint_path.stat().st_size
    walls = {e: ends[e] - ends[e - 1] for e in range(2, args.epochs + 1)}  # epoch 1: warm-up
    cpu = {e: cpus[e] - cpus[e - 1] for e in walls}
    with_ckpt = [walls[e] for e in walls if e % 2 == 1]
    without = [walls[e] for e in walls if e % 2 == 0]
    ckpt = [out.seconds[e] for e in walls if e % 2 == 1]
    print(f"LeNet-300-100, Fashion-MNIST: {len(data.x_train)} training images, batch 128, Adam + L1 (Adam "
          f"metric), 1 thread; checkpoint {size / 1e6:.2f} MB; epochs 2..{args.epochs} "
          f"(epoch 1 is a warm-up)\n")
    print(f"{'epoch':>5}  {'checkpoint':>10}  {'epoch s':>8}  {'epoch cpu s':>11}  {'checkpoint s':>12}")
    for e, wall in walls.items():
        c = f"{out.seconds[e]:.4f}" if e in out.seconds else "-"
        print(f"{e:>5}  {'yes' if e % 2 else 'no':>10}  {wall:>8.2f}  {cpu[e]:>11.2f}  {c:>12}")
    med_plain, med_ckpt = statistics.median(without), statistics.median(ckpt)
    med_cpu = statistics.median(cpu[e] for e in walls if e % 2 == 0)
    overhead = 100 * med_ckpt / med_cpu
    side = 100 * (statistics.median(with_ckpt) - med_plain) / med_plain
    print(f"\nmedian epoch without a checkpoint: {med_plain:.2f} s wall, {med_cpu:.2f} s CPU; "
          f"median checkpoint: {med_ckpt * 1e3:.1f} ms wall")
    print(f"side by side: median epoch with a checkpoint is {side:+.1f}% (noise of a shared machine included)")
    print(f"TARGET checkpoint_overhead: {overhead:.2f}% (target <= {TARGET:g}%) {'PASS' if overhead <= TARGET else 'MISS'}")


if __name__ == "__main__":
    main()
