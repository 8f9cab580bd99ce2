"""Coupled group lasso + compaction on real Fashion-MNIST LeNet-300-100, side by side with dense.

    PYTHONPATH=src python bench/compact.py                 # the BENCHMARKS.md run
    PYTHONPATH=src python bench/compact.py --epochs 2 --ramp 0,1 --alphas 1e-5   # a smoke run

Dense and sparse runs share the data order, the initialization, the optimizer (Adam,
lr 1e-3, cosine), batch 128 and the number of epochs. The sparse runs train with
``CoupledGroupLasso`` over input pixels and hidden neurons (each group: everything the
unit owns) in Adam's metric, with a budget: the smallest groups are removed until
``--remove-inputs`` of the pixels and ``--remove-neurons`` of each hidden layer are gone,
ramped on a cubic schedule over ``--ramp`` epochs and then held while the survivors train
on. The group-lasso strength is chosen on validation among ``--alphas`` (0 = structured
magnitude pruning with the same budget); test accuracy is reported for it. Inference is
timed on one CPU thread, batch 256, dense and compacted interleaved (median of repeats).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import decaylab as dl  # noqa: E402
from decaylab.lab import data as data_mod  # noqa: E402
from decaylab.lab.models import build_model  # noqa: E402

PUBLISHED = [("L0 (Louizos et al. 2018), MNIST", "266-88-33", "1.6% error"),
             ("SBP (Neklyudov et al. 2017), MNIST", "245-160-55", "1.6% error")]


def train(model, data, epochs, seed, rule=None, hold=None, lr=1e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if rule is not None:
        opt = dl.regularize(opt, model, rule)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(data.x_train), generator=gen).split(128):
            F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
            opt.zero_grad()
            if hold is not None:
                with torch.no_grad():
                    for p, m in hold:
                        p.mul_(m)
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    return sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(4096), y.split(4096))) / len(x)


def time_side_by_side(models, x, repeats):
    times = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m(x)
        for _ in range(repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ramp", default="1,6", help="first,last epoch of the group budget's cubic ramp")
    ap.add_argument("--remove-inputs", type=float, default=0.55, help="fraction of input pixels to remove")
    ap.add_argument("--remove-neurons", type=float, default=0.62, help="fraction of each hidden layer to remove")
    ap.add_argument("--alphas", default="0,3e-6,1e-5", help="comma-separated strengths (chosen on validation)")
    ap.add_argument("--metric", default="adam", choices=["adam", "lr"], help="prox metric of the penalty")
    ap.add_argument("--input-scale", type=float, default=1.0, help="input-pixel groups' strength multiplier")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)
    args.ramp = [int(x) for x in args.ramp.split(",")]
    torch.set_num_threads(1)
    t_start = time.time()
    data = data_mod.load("fashion-mnist", root=args.root, val_fraction=1 / 12, seed=args.seed, download=False)
    torch.manual_seed(args.seed)
    init = build_model("lenet300", 784, 10)
    dense = train(copy.deepcopy(init), data, args.epochs, args.seed)
    dense_val = accuracy(dense, data.x_val, data.y_val)
    dense_test = accuracy(dense, data.x_test, data.y_test)
    print(f"dense: val {dense_val:.4f} test {dense_test:.4f} ({time.time() - t_start:.0f}s)", flush=True)
    runs = []
    steps = -(-len(data.x_train) // 128)
    target = {"inputs": args.remove_inputs, "neurons": args.remove_neurons}
    for alpha in [float(a) for a in args.alphas.split(",")]:
        model = copy.deepcopy(init)
        pen = dl.CoupledGroupLasso(alpha, model, groups=("inputs", "neurons"), scale={"inputs": args.input_scale},
                                   target=target, begin=args.ramp[0] * steps, end=args.ramp[1] * steps,
                                   every=50)
        train(model, data, args.epochs, args.seed, dl.Rule(pen, metric=args.metric))
        live = pen.live(dict(model.named_parameters()))
        val = accuracy(model, data.x_val, data.y_val)
        runs.append((alpha, val, model, live))
        print(f"alpha {alpha:g}: val {val:.4f}, kept {live} ({time.time() - t_start:.0f}s)", flush=True)
    alpha, val, sparse, live = max(runs, key=lambda r: r[1])
    small = dl.compact(sparse)
    with torch.no_grad():
        diff = max(float((small(xb) - sparse(xb)).abs().max()) for xb in data.x_test.split(4096))
    test = accuracy(small, data.x_test, data.y_test)
    t = time_side_by_side({"dense": dense, "compacted": small}, data.x_test[:256], args.repeats)
    info = small.compaction
    kept_in = len(info.kept_inputs) if info.kept_inputs is not None else 784
    h1, h2 = info.layers["layers.0"][0], info.layers["layers.1"][0]
    print()
    print(f"chosen alpha {alpha:g} (best validation accuracy; budget: remove {args.remove_inputs:.0%} of "
          f"inputs, {args.remove_neurons:.0%} of each hidden layer, ramp epochs {args.ramp[0]}-{args.ramp[1]})")
    print(f"{'model':<38} {'kept (in-h1-h2)':>16} {'params':>9} {'test acc':>9} {'ms/batch256':>12}")
    print(f"{'dense LeNet-300-100':<38} {'784-300-100':>16} {sum(p.numel() for p in dense.parameters()):>9} "
          f"{dense_test:>9.4f} {t['dense'] * 1e3:>12.3f}")
    print(f"{'coupled group lasso, compacted':<38} {f'{kept_in}-{h1}-{h2}':>16} {info.params_after:>9} "
          f"{test:>9.4f} {t['compacted'] * 1e3:>12.3f}")
    for name, arch, err in PUBLISHED:
        print(f"{name:<38} {arch:>16} {'':>9} {err:>9}")
    print(f"max |compacted - sparse| on the test set: {diff:.2e}; wall {time.time() - t_start:.0f}s "
          f"(shared 2-core machine)")
    print(f"TARGET compact_inputs_removed: {1 - kept_in / 784:.3f} (target >= 0.5) "
          f"{'PASS' if 1 - kept_in / 784 >= 0.5 else 'MISS'}")
    removed_h = 1 - (h1 + h2) / 400
    print(f"TARGET compact_hidden_removed: {removed_h:.3f} (target >= 0.6) {'PASS' if removed_h >= 0.6 else 'MISS'}")
    drop = (dense_test - test) * 100
    print(f"TARGET compact_acc_drop_points: {drop:.2f} (target <= 1.0) {'PASS' if drop <= 1.0 else 'MISS'}")
    speed = t["dense"] / t["compacted"]
    print(f"TARGET compact_speedup_batch256: {speed:.2f} (target >= 3) {'PASS' if speed >= 3 else 'MISS'}")
    print(f"TARGET compact_max_abs_diff: {diff:.2e} (target <= 1e-5) {'PASS' if diff <= 1e-5 else 'MISS'}")


if __name__ == "__main__":
    main()
