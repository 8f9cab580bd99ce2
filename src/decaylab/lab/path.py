"""The regularization path of a sweep and the choice on it (``sweep.json``).

Selection (validation only; test is reported, never used to choose):

* ``best``: the point with the highest mean validation accuracy;
* ``one_se``: the *strongest* ``alpha`` (at ``best``'s learning rate) whose mean validation
  accuracy is within one standard error of ``best``'s (glmnet's ``lambda.1se``). The SE is
  the standard error of the mean over seeds, or with one seed the binomial standard error
  across validation examples, ``sqrt(p (1 - p) / n_val)``.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import runfolder
from .seeds import mean_sd
from .recipe import describe


def choose(points: list[dict], higher_is_better: bool = True) -> dict:
    """``best`` and ``one_se`` among points with ``"eligible"`` not False.

    ``best`` has the best mean validation score ``val_acc``; ``one_se`` is the largest
    ``alpha`` at ``best``'s ``lr`` whose ``val_acc`` is within ``val_acc_se`` of it (SE of
    ``best``; None counts as 0).

    >>> pts = [{"alpha": a, "lr": 1, "val_acc": v, "val_acc_se": 0.02}
    ...        for a, v in [(0.1, 0.90), (1, 0.93), (10, 0.92), (100, 0.80)]]
    >>> r = choose(pts); (r["best"]["alpha"], r["one_se"]["alpha"])
    (1, 10)
    """
    ok = [p for p in points if p.get("eligible", True) and p["val_acc"] is not None]
    if not ok:
        raise ValueError("no point has a validation score to choose from")
    sign = 1 if higher_is_better else -1
    best = max(ok, key=lambda p: (sign * p["val_acc"], -p["alpha"]))
    se = best.get("val_acc_se") or 0.0
    near = [p for p in ok if p["lr"] == best["lr"] and sign * (best["val_acc"] - p["val_acc"]) <= se + 1e-12]
    return {"best": best, "one_se": max(near, key=lambda p: p["alpha"])}


def summarize(run_dir: Path, spec: dict, points: list[dict], run: dict, method: dict) -> dict:
    """Read every point's final.json and write the path and the choice (sweep.json)."""
    data_info = runfolder.read_data_info(run_dir)
    classification = data_info["task"] == "classification"
    n_val = data_info["n_val"]
    by_key: dict[str, list] = {}
    for p in points:
        f = runfolder.final(run_dir, p["name"])
        by_key.setdefault(p["key"], []).append((p, f))
    out_points = []
    for key, items in by_key.items():
        p0 = items[0][0]
        fs = [f for _, f in items]
        score = (lambda f, s: f[f"{s}_acc"]) if classification else (lambda f, s: f[f"{s}_loss"])
        val, val_sd = mean_sd([score(f, "val") for f in fs])
        test, test_sd = mean_sd([score(f, "test") for f in fs])
        if len(fs) > 1:
            se = val_sd / math.sqrt(len(fs))
        elif classification and val is not None:
            se = math.sqrt(max(val * (1 - val), 0.0) / n_val)
        else:
            se = None
        stopped = any(f.get("stopped_early") for f in fs)
        layer_names = list(fs[0].get("layer_l2", {}))
        out_points.append({
            "alpha": p0["alpha"], "lr": p0["lr"], "val_acc": val, "val_acc_sd": val_sd, "val_acc_se": se,
            "test_acc": test, "test_acc_sd": test_sd,
            "train_acc": mean_sd([score(f, "train") for f in fs])[0],
            "zeros": mean_sd([f["zero_fraction"] for f in fs])[0],
            "norm": mean_sd([f["weight_l2"] for f in fs])[0],
            "layer_norms": {n: mean_sd([f["layer_l2"][n] for f in fs])[0] for n in layer_names},
            "gap": mean_sd([f["gap"] for f in fs])[0],
            "nonzero_params": mean_sd([f["nonzero_params"] for f in fs])[0],
            "n_params": fs[0]["n_params"],
            "epochs": max(f["epochs"] for f in fs), "stopped_early": stopped, "warm_started": False,
            "eligible": not stopped, "runs": [q["name"] for q, _ in items],
        })
    picked = choose(out_points, higher_is_better=classification)
    one_seed = spec["seeds"] == 1
    return {
        "penalty": run["penalty"],
        "describe": describe({**run, "alpha": spec["alphas"][0]}).replace(f"alpha={spec['alphas'][0]:g}", "alpha=λ"),
        "metric": "accuracy" if classification else "mse (the *_acc fields hold the mean squared error; lower is better)",
        "alphas": spec["alphas"], "lrs": sorted({p["lr"] for p in out_points}), "seeds": spec["seeds"],
        "points": out_points,
        "chosen": {k: v["alpha"] for k, v in picked.items()},
        "chosen_lr": {k: v["lr"] for k, v in picked.items()},
        "chosen_val_acc": {k: v["val_acc"] for k, v in picked.items()},
        "chosen_test_acc": {k: v["test_acc"] for k, v in picked.items()},
        "selection": ("validation only (test is reported, never used to choose), among points trained the full "
                      "schedule; best = highest mean validation score; one_se = strongest alpha at best's lr "
                      "within one standard error of best"),
        "se": ("binomial standard error across the validation examples (one seed)" if one_seed and classification
               else "none with one seed for regression: one_se = best" if one_seed
               else f"standard error of the mean over {spec['seeds']} seeds"),
        "method": method,
    }


def describe_result(result: dict) -> str:
    """A few lines on the choice, for the terminal."""
    lines = [f"{result['describe']}: {len(result['points'])} points, chosen on validation"]
    for k in ("best", "one_se"):
        lr = f"  lr={result['chosen_lr'][k]:g}" if len(result.get("lrs") or []) > 1 else ""  # with --lrs
        lines.append(f"  {k:<7} alpha={result['chosen'][k]:g}{lr}  val {result['chosen_val_acc'][k]:.4f}  "
                     f"test {result['chosen_test_acc'][k]:.4f}")
    if stopped := sum(p["stopped_early"] for p in result["points"]):
        lines.append(f"  {stopped} points stopped early by successive halving (see sweep.json; --full trains all)")
    return "\n".join(lines)
