"""A magnitude-pruning reference curve for a sweep's accuracy-size (Pareto) figure.

With ``pareto.reference = "magnitude"`` a sweep also trains gradual magnitude pruning (Zhu &
Gupta 2017: global magnitude over the weights, cubic schedule; ``decaylab.TargetSparsity(0,
target)``), the strongest simple baseline for sparse networks, in the same folder, on the
same data, model, optimizer, learning rate (the sweep's chosen one), schedule, epochs and
seeds. Its exact-zero targets are ``pareto.targets``, or by default the exact-zero fractions
the sweep's points reached (at the chosen learning rate, between 5 % and 99.5 %), so each
point of the sweep has a magnitude-pruned model of the same sparsity next to it.

Each reference model is an ordinary run, ``runs/magnitude-z<target>[-s<seed>]``; the curve
(mean over seeds, validation and test) is ``sweep.json["reference"]``.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import config as config_mod
from . import runfolder
from .seeds import mean_sd
from . import train as train_mod

LOW, HIGH = 0.05, 0.995  # sweep points sparser than LOW get no reference (nothing to prune)


def ramp_epochs(epochs: int) -> tuple[int, int]:
    """Epochs where the cubic ramp starts and reaches the target: about 4 % and 55 % of the
    run (bench/sparsity.py's 1 and 15 of 28); after it the mask is held and the survivors train on.

    >>> ramp_epochs(28), ramp_epochs(2), ramp_epochs(1)
    ((1, 15), (0, 1), (0, 1))
    """
    begin = epochs // 20
    return begin, max(begin + 1, round(0.55 * epochs))


def _ramp_text(epochs: int) -> str:
    begin, end = ramp_epochs(epochs)
    return f"from {'the start' if begin == 0 else f'epoch {begin}'} to epoch {end} of {epochs}"


def targets(result: dict, asked: list[float]) -> list[float]:
    """The exact-zero fractions to prune to: ``asked``, else the sweep's points' (rounded to
    0.1 %, repeats dropped, those outside [5 %, 99.5 %] left out), increasing.

    >>> sw = {"chosen_lr": {"best": 1}, "points": [{"lr": 1, "zeros": z} for z in (0.0, 0.5004, 0.9, 0.9001)]}
    >>> targets(sw, []), targets(sw, [0.8])
    ([0.5, 0.9], [0.8])
    """
    if asked:
        return sorted(set(float(t) for t in asked))
    lr = result["chosen_lr"]["best"]
    zeros = {round(p["zeros"], 3) for p in result["points"] if p["lr"] == lr and p.get("zeros") is not None}
    return sorted(z for z in zeros if LOW <= z <= HIGH)


def make_run(target: float, cfg: dict, n_train: int, name: str) -> dict:
    """The run dict of one reference model (``penalty = "magnitude"``, see recipe.make_penalty)."""
    steps = math.ceil(n_train / cfg["train"]["batch_size"])
    begin, end = ramp_epochs(cfg["train"]["epochs"])
    return {**config_mod.RUN_DEFAULTS, "name": name, "penalty": "magnitude", "target": target,
            "ramp_steps": [begin * steps, end * steps], "every": max(1, steps // 8), "metric": "lr"}


def run_name(target: float, seed: int, n_seeds: int) -> str:
    """``magnitude-z0.9`` (``-s1`` with several seeds).

    >>> run_name(0.9, 1, 2)
    'magnitude-z0.9-s1'
    """
    return f"magnitude-z{target:g}" + (f"-s{seed}" if n_seeds > 1 else "")


def train_reference(cfg: dict, result: dict, run_dir: Path, data=None, progress=None, say=print,
                    resume: bool = False) -> dict:
    """Train the reference models of a finished sweep ``result``; returns the curve.

    With ``resume=True`` a reference run with ``final.json`` is kept and one with a
    checkpoint continues from it (as ``decaylab resume`` does for any run).
    """
    asked = cfg["pareto"]["targets"]
    want = targets(result, asked)
    lr = result["chosen_lr"]["best"]
    seeds = [cfg["seed"] + i for i in range(result["seeds"])]
    out = {"method": "magnitude", "targets": want, "asked": list(asked), "lr": lr,
           "describe": f"gradual magnitude pruning (Zhu & Gupta: global over the weights, cubic ramp "
                       f"{_ramp_text(cfg['train']['epochs'])}, then the mask held), lr {lr:g}",
           "targets_from": "pareto.targets" if asked else
           f"the exact-zero fractions of the sweep's points at lr {lr:g} (between {LOW:.0%} and {HIGH:.1%})",
           "points": []}
    if not want:
        out["note"] = (f"no sweep point has between {LOW:.0%} and {HIGH:.1%} exact zeros; "
                       f"set pareto.targets (e.g. [0.5, 0.9]) for a reference curve")
        say(f"reference: {out['note']}")
        return out
    say(f"reference: gradual magnitude pruning to {', '.join(f'{t:.1%}' for t in want)} zeros "
        f"({len(want) * len(seeds)} runs)")
    finals: dict[float, list] = {t: [] for t in want}
    for seed in seeds:
        cfg_s = {**cfg, "seed": seed, "train": {**cfg["train"], "lr": lr}}
        data_s = data if (data is not None and seed == cfg["seed"]) else train_mod.load_data(cfg_s)
        for t in want:
            name = run_name(t, seed, len(seeds))
            run = make_run(t, cfg_s, len(data_s.x_train), name)
            train_mod.train_run(cfg_s, data_s, run, runfolder.run(run_dir, name).path, progress, resume=resume)
            finals[t].append((name, runfolder.run(run_dir, name).final()))
    for t in want:
        out["points"].append(_point(t, finals[t], result["metric"] == "accuracy"))
    return out


def _point(target: float, items: list, classification: bool) -> dict:

    fs = [f for _, f in items]
    key = "acc" if classification else "loss"
    val, val_sd = mean_sd([f[f"val_{key}"] for f in fs])
    test, test_sd = mean_sd([f[f"test_{key}"] for f in fs])
    return {"target": target, "zeros": mean_sd([f["zero_fraction"] for f in fs])[0],
            "val_acc": val, "val_acc_sd": val_sd, "test_acc": test, "test_acc_sd": test_sd,
            "nonzero_params": mean_sd([f["nonzero_params"] for f in fs])[0], "n_params": fs[0]["n_params"],
            "epochs": fs[0]["epochs"], "runs": [name for name, _ in items]}


def check(cfg: dict, command: str, swept: bool) -> None:
    """Refuse a reference that no sweep would draw, before any folder is made."""
    if cfg["pareto"]["reference"] != "none" and not swept:
        raise config_mod.ConfigError(
            f"pareto.reference={cfg['pareto']['reference']!r} draws a reference curve on a sweep's Pareto "
            f"figure, and this decaylab {command} has no sweep; use decaylab sweep, or runs.NAME.alphas "
            f"with decaylab compare (or set pareto.reference=\"none\")")
