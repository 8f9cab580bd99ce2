"""``python bench/sweep.py --byo``: what does a sweep over *your* model cost?

The model and data are the user's file ``examples/byo_resnet.py`` (a small ResNet with
BatchNorm and residual additions on the 8x8 digits, through ``model.factory`` and
``data.factory``). Measured one after another in one process, one thread, Adam 3e-3,
cosine, batch 64, ``--epochs`` epochs (default 10), decoupled L2:

1. one full run (``decaylab train`` of one strength: ``train.train_run``), median of 3;
2. ``decaylab sweep`` over 8 strengths 1e-4..1e-1, stacked with ``torch.func``
   (``vmap(functional_call)``), successive halving as by default;
3. the same sweep with ``--full`` (every point the whole schedule), for reference.

Target ``byo_sweep_cost_vs_single`` = (2) / (1) <= 4.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from decaylab.lab import config, grid, sweep, train

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "byo_resnet.py"
TARGET = 4.0


def byo_bench(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="bench/sweep.py --byo")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--alphas", default="1e-4:1e-1:8")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = config.resolve({}, [f'model.factory="{EXAMPLE}:resnet"', f'data.factory="{EXAMPLE}:digits"',
                              'penalty.penalty="l2"', f"train.epochs={args.epochs}", "train.lr=3e-3",
                              "train.checkpoint=false"], command="train")
    data = train.load_data(cfg)
    alphas = grid.parse_grid(args.alphas)
    tmp = Path(tempfile.mkdtemp(prefix="bench-byo-"))
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        train.train_run(cfg, data, {**cfg["runs"][0], "alpha": alphas[3], "name": f"one{i}"}, tmp / f"one{i}")
        times.append(time.perf_counter() - t0)
    single = sorted(times)[1]
    rows = {}
    for label, full in (("decaylab sweep", False), ("decaylab sweep --full", True)):
        d = tmp / label.replace(" ", "_")
        d.mkdir()
        spec = {"penalty": "l2", "alphas": alphas, "lrs": None, "seeds": 1, "full": full, "max_memory": None,
                "eta": 2, "min_full": 2, "log_every": 0}
        t0 = time.perf_counter()
        sw = sweep.run_sweep(cfg, spec, d, data=data, say=lambda s: None)
        rows[label] = (time.perf_counter() - t0, sw)
    print(f"examples/byo_resnet.py (ResNet, BatchNorm, residual) on digits 8x8, decoupled L2, "
          f"{len(alphas)} strengths {alphas[0]:g}..{alphas[-1]:g}, {args.epochs} epochs, 1 thread, "
          f"torch {torch.__version__}")
    print(f"{'what':<28} {'wall s':>8} {'x one run':>10} {'stacking':>38} {'best alpha':>11} {'val acc':>8} "
          f"{'test acc':>9}")
    print(f"{'one full run (median of 3)':<28} {single:>8.2f} {1.0:>10.2f}")
    for label, (t, sw) in rows.items():
        b = sw["chosen"]["best"]
        print(f"{label:<28} {t:>8.2f} {t / single:>10.2f} {sw['method']['stacking']:>38} {b:>11g} "
              f"{sw['chosen_val_acc']['best']:>8.4f} {sw['chosen_test_acc']['best']:>9.4f}")
    ratio = rows["decaylab sweep"][0] / single
    full_ratio = rows["decaylab sweep --full"][0] / single
    print(f"  --full: {full_ratio:.2f}x one run for {len(alphas)} full-schedule points "
          f"({full_ratio / len(alphas):.2f}x per point)")
    print(f"TARGET byo_sweep_cost_vs_single: {ratio:.4f} (target <= {TARGET:g}) "
          f"{'PASS' if ratio <= TARGET else 'MISS'}")
