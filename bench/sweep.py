"""What does choosing λ cost? decaylab sweep against the 16 runs a user would write.

On the default setting (scikit-learn digits, MLP 64-256-128-10, Adam 1e-3, cosine, 40
epochs, batch 64, one thread), for decoupled L2 over 16 log-spaced strengths, measured
one after another in one process:

1. one full run (``decaylab train`` of one strength, the loop of ``train.train_run``);
2. the exhaustive sweep: the 16 runs one after another;
3. ``decaylab sweep`` over the same 16 strengths (stacked, successive halving);
4. its ``best`` scored by the *exhaustive* run at that strength (its full-schedule
   validation accuracy) against the exhaustive sweep's best validation accuracy.

Targets: ``sweep_cost_vs_single`` = (3) / (1) <= 4; ``chosen_val_acc_loss`` = exhaustive
best val acc - exhaustive val acc at decaylab's best <= 0.01 (one of 216 validation
images is 0.0046). Timing is wall time on whatever machine runs it (ours is shared).

Run: ``python bench/sweep.py [--alphas 1e-4:10:16] [--penalty l2] [--full-too]``.

``--byo [--epochs 10]`` measures instead a sweep over a user's own model (``model.factory``,
stacked with torch.func): see ``bench/sweep_byo.py``; target ``byo_sweep_cost_vs_single`` <= 4.

``--main-job-regret [CONFIG]`` (default ``experiments/main.toml``) measures instead how well
``decaylab compare`` chooses λ on the main job: for the seed sets 0, 10, 20, 30 (the config's
``seed``) and every run with ``alphas``, it runs compare's choice step (the sweep of
:func:`decaylab.lab.choose.choice_spec`, not the seeded final runs), the old rule (successive
halving, rungs at ``epochs / 2**j``) and an exhaustive full-schedule sweep of the same grid
(``full=True``, logged every epoch). Regret = the exhaustive sweep's best validation accuracy
minus the exhaustive validation accuracy at the chosen λ, averaged over seed sets and runs.
Target ``main_job_choice_regret`` <= 0.005. Cost is counted in point-epochs (deterministic)
and CPU seconds of the one-thread process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from decaylab.lab import config, grid, sweep, train

TARGETS = {"sweep_cost_vs_single": 4.0, "chosen_val_acc_loss": 0.01}


def _one(cfg, data, run, out: Path) -> dict:
    return train.train_run(cfg, data, run, out)


def main() -> None:
    if "--main-job-regret" in sys.argv:
        from sweep_regret import main_job_regret  # bench/ is on sys.path

        return main_job_regret(sys.argv[sys.argv.index("--main-job-regret") + 1:])
    if "--byo" in sys.argv:
        from sweep_byo import byo_bench  # bench/ is on sys.path

        return byo_bench(sys.argv[sys.argv.index("--byo") + 1:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--penalty", default="l2")
    ap.add_argument("--alphas", default="1e-4:10:16")
    ap.add_argument("--eta", type=int, default=2)
    ap.add_argument("--min-full", type=int, default=2)
    ap.add_argument("--full-too", action="store_true", help="also time the stacked sweep without halving")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = config.resolve({}, [f'penalty.penalty="{args.penalty}"'] + args.overrides, command="train")
    data = train.load_data(cfg)
    alphas = grid.parse_grid(args.alphas)
    run0 = cfg["runs"][0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))

    exhaustive, times = {}, []
    for i, a in enumerate(alphas):
        t0 = time.perf_counter()
        f = _one(cfg, data, {**run0, "alpha": a, "name": f"a{a:g}"}, tmp / "exhaustive" / f"a{a:g}")
        times.append(time.perf_counter() - t0)
        exhaustive[a] = f
    single = sorted(times)[len(times) // 2]  # the median run: one full run
    t_exh = sum(times)

    variants = [("decaylab sweep", False)] + ([("decaylab sweep --full", True)] if args.full_too else [])
    results = {}
    for label, full in variants:
        d = tmp / label.replace(" ", "_")
        d.mkdir()
        spec = {"penalty": args.penalty, "alphas": alphas, "lrs": None, "seeds": 1, "full": full, "max_memory": None,
                "eta": args.eta, "min_full": args.min_full, "log_every": 0}
        t0 = time.perf_counter()
        sw = sweep.run_sweep(cfg, spec, d, data=data, say=lambda s: None)
        results[label] = (time.perf_counter() - t0, sw)

    best_exh = max(alphas, key=lambda a: (exhaustive[a]["val_acc"], -a))
    print(f"decoupled {args.penalty} on digits, {len(alphas)} strengths {alphas[0]:g}..{alphas[-1]:g}, "
          f"{cfg['train']['epochs']} epochs, 1 thread")
    print(f"{'what':<34} {'wall s':>8} {'x one run':>10} {'best alpha':>11} {'val acc (exh.)':>15} {'test acc':>9}")
    print(f"{'one full run (median of 16)':<34} {single:>8.2f} {1.0:>10.2f}")
    print(f"{'exhaustive: 16 runs':<34} {t_exh:>8.2f} {t_exh / single:>10.2f} {best_exh:>11g} "
          f"{exhaustive[best_exh]['val_acc']:>15.4f} {exhaustive[best_exh]['test_acc']:>9.4f}")
    for label, (t, sw) in results.items():
        b = sw["chosen"]["best"]
        print(f"{label:<34} {t:>8.2f} {t / single:>10.2f} {b:>11g} {exhaustive[b]['val_acc']:>15.4f} "
              f"{exhaustive[b]['test_acc']:>9.4f}")
        stopped = [p["alpha"] for p in sw["points"] if p["stopped_early"]]
        print(f"  {len(stopped)} points stopped early (rungs {sw['method']['halving_rungs']}); "
              f"one_se alpha {sw['chosen']['one_se']:g}")
    print("per-strength val acc, exhaustive vs sweep (epochs):")
    sw = results["decaylab sweep"][1]
    for p in sw["points"]:
        print(f"  {p['alpha']:<10g} {exhaustive[p['alpha']]['val_acc']:.4f}  {p['val_acc']:.4f} ({p['epochs']})")
    t, sw = results["decaylab sweep"]
    measured = {"sweep_cost_vs_single": t / single,
                "chosen_val_acc_loss": exhaustive[best_exh]["val_acc"] - exhaustive[sw["chosen"]["best"]]["val_acc"]}
    for key, value in measured.items():
        verdict = "PASS" if value <= TARGETS[key] else "MISS"
        print(f"TARGET {key}: {value:.4f} (target <= {TARGETS[key]:g}) {verdict}")
    (tmp / "bench.json").write_text(json.dumps({k: v for k, v in measured.items()}))


if __name__ == "__main__":
    main()
