"""``python bench/sweep.py --main-job-regret [CONFIG]``: the regret of compare's choice of λ.

See the docstring of ``bench/sweep.py``. Prints, per seed set and run: the λ each rule
picks, its exhaustive full-schedule validation accuracy, the regret, the point-epochs
trained and CPU time; then what a single rung at other epochs would have picked (read
from the exhaustive sweep's per-epoch metrics), the cost ratio and the TARGET line.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from decaylab.lab import choose, config, sweep, train

TARGET = 0.005
SEED_SETS = (0, 10, 20, 30)


def _old_spec(grid: list[float]) -> dict:
    """The rule before issue #14: successive halving, eta 2, two points to the end."""
    return {"penalty": None, "alphas": grid, "lrs": None, "seeds": 1, "full": False, "max_memory": None,
            "eta": 2, "min_full": 2, "log_every": 0}


def _run(cfg, run, spec, data, out: Path):
    out.mkdir(parents=True)
    t0 = time.process_time()  # CPU seconds of this (one-thread) process: robust to a shared machine
    sw = sweep.run_sweep({**cfg, "runs": [run]}, spec, out, data=data, say=lambda s: None)
    return sw, time.process_time() - t0


def _point_epochs(sw) -> int:
    return sum(p["epochs"] for p in sw["points"])


def _curves(out: Path, sw) -> dict:
    """alpha -> {epoch: val_acc} from an exhaustive sweep logged every epoch."""
    res = {}
    for p in sw["points"]:
        rows = [json.loads(x) for x in (out / "runs" / p["runs"][0] / "metrics.jsonl").read_text().splitlines()]
        res[p["alpha"]] = {r["epoch"]: r["val_acc"] for r in rows if r.get("phase") == "train"}
    return res


def _one_rung_pick(curves: dict, grid, rung: int, epochs: int, keep: int = 2) -> float:
    ranked = sorted(range(len(grid)), key=lambda j: (-curves[grid[j]][rung], j))[:keep]
    return max((grid[j] for j in ranked), key=lambda a: (curves[a][epochs], -a))


def main_job_regret(argv: list[str]) -> None:
    path = argv[0] if argv and not argv[0].startswith("-") else "experiments/main.toml"
    torch.set_num_threads(1)
    base = config.resolve(config.load_file(path), [], command="compare")
    epochs = base["train"]["epochs"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-regret-"))
    probe = sorted({max(1, epochs // 2), (2 * epochs) // 3, (3 * epochs) // 4, (5 * epochs) // 6, epochs - 1})
    rows, cost = [], {"old": [0, 0.0], "compare": [0, 0.0], "exhaustive": [0, 0.0]}
    print(f"{path}: {epochs} epochs, seed sets {', '.join(map(str, SEED_SETS))}, 1 thread; val acc is the exhaustive "
          f"full-schedule one")
    print(f"{'seed':>4} {'run':<10} {'rule':<11} {'alpha':>8} {'val acc':>8} {'regret':>7} {'pt-epochs':>9} {'cpu s':>7}")
    for s in SEED_SETS:
        cfg = {**base, "seed": s}
        data = train.load_data(cfg)
        for r in (r for r in cfg["runs"] if r.get("alphas")):
            new = choose.choice_spec(cfg, r) if hasattr(choose, "choice_spec") else choose._spec(r)
            grid = new["alphas"]
            exh_spec = {**new, "full": True, "log_every": 1}
            d = tmp / f"s{s}-{r['name']}"
            exh, t_exh = _run(cfg, r, exh_spec, data, d / "exhaustive")
            curves = _curves(d / "exhaustive", exh)
            val = {a: curves[a][epochs] for a in grid}
            best = max(val.values())
            arms = {"exhaustive": (exh, t_exh)}
            old = {**_old_spec(grid), "penalty": new["penalty"]}
            arms["old"] = _run(cfg, r, old, data, d / "old")
            arms["compare"] = arms["old"] if new == old else _run(cfg, r, new, data, d / "new")
            for name in ("old", "compare", "exhaustive"):
                sw, t = arms[name]
                a = sw["chosen"]["best"]
                cost[name][0] += _point_epochs(sw)
                cost[name][1] += t
                rows.append({"seed": s, "run": r["name"], "rule": name, "regret": best - val[a]})
                print(f"{s:>4} {r['name']:<10} {name:<11} {a:>8g} {val[a]:>8.4f} {best - val[a]:>7.4f} "
                      f"{_point_epochs(sw):>9} {t:>7.1f}")
            picks = {e: _one_rung_pick(curves, grid, e, epochs) for e in probe}
            print(f"{'':>4} {'':<10} one rung at epoch e keeps 2 of {len(grid)}: " +
                  ", ".join(f"e={e}: {a:g} (regret {best - val[a]:.4f})" for e, a in picks.items()))
    print()
    mean = {k: sum(x["regret"] for x in rows if x["rule"] == k) / max(1, sum(x["rule"] == k for x in rows))
            for k in cost}
    for k, (pe, t) in cost.items():
        print(f"{k:<11} mean regret {mean[k]:.4f}  point-epochs {pe:>5}  cpu {t:7.1f} s")
    print(f"choice-step cost, compare's rule / old rule: point-epochs {cost['compare'][0] / cost['old'][0]:.2f}, "
          f"cpu {cost['compare'][1] / cost['old'][1]:.2f} (the exhaustive arm also evaluates every epoch)")
    print(f"TARGET main_job_choice_regret: {mean['compare']:.4f} (target <= {TARGET:g}) "
          f"{'PASS' if mean['compare'] <= TARGET else 'MISS'}")
