"""``decaylab compare`` with strengths chosen on validation and results over seeds.

A run whose ``alphas`` is set (a grid, ``LO:HI:N`` or ``a,b,c``) gets its ``alpha`` from a
cheap stacked sweep (:mod:`decaylab.lab.sweep`, every point trained the full schedule; see
:func:`choice_spec`) on the first seed's validation split; the
sweep is kept in ``sweeps/<run>/`` as an ordinary sweep folder. Then every run is trained
with ``seeds`` seeds (``runs/<run>-s<seed>``) and ``compare.json`` holds, per run, the
chosen strength and mean ± sd over seeds of validation and test accuracy, the gap and the
zeros, plus a sentence per penalty saying whether it beat no penalty beyond seed noise.
"""

from __future__ import annotations

import math
from pathlib import Path

from .seeds import mean_sd
from . import grid, sweep as sweep_mod
from . import runfolder
from . import train as train_mod
from .recipe import describe

STATS = ("val_acc", "test_acc", "train_acc", "gap", "zero_fraction", "val_loss", "test_loss")


def wants_selection(cfg: dict) -> bool:
    return cfg.get("seeds", 1) != 1 or any(r.get("alphas") for r in cfg["runs"])


def check(cfg: dict) -> None:
    """Parse every grid before any folder is made."""
    if cfg.get("seeds", 1) < 1:
        raise grid.SweepError(f"config key 'seeds' = {cfg['seeds']} must be >= 1")
    for r in cfg["runs"]:
        if r.get("alphas"):
            if r["penalty"] == "none":
                raise grid.SweepError(f"run '{r['name']}' has no penalty; remove its 'alphas'")
            grid.parse_grid(r["alphas"], f"runs.{r['name']}.alphas")
            sweep_mod.check_spec({**cfg, "runs": [r]}, choice_spec(cfg, r))


def choice_spec(cfg: dict, r: dict) -> dict:
    """The sweep that chooses run ``r``'s strength: every point of its grid trained the full
    schedule, stacked, on the first seed (no successive halving).

    Halving ranks points part-way through training, when a strong penalty still lags: it
    fits more slowly and wins later (after a weakly penalized net has memorized label
    noise, or late in a schedule), so an early rung cuts strong λ and biases the choice
    toward weak ones (bench/sweep.py --main-job-regret). A stacked full sweep of a grid
    costs about ``len(grid)`` cheap stacked epochs per epoch, which is small next to the
    seeded runs; ``decaylab sweep`` keeps halving for large grids.

    >>> choice_spec({}, {"name": "l2", "penalty": "l2", "alphas": "0.1:3:4"})["full"]
    True
    """
    return {"penalty": r["penalty"], "alphas": grid.parse_grid(r["alphas"], f"runs.{r['name']}.alphas"),
            "lrs": None, "seeds": 1, "full": True, "max_memory": None, "eta": 2, "min_full": 2, "log_every": 0}


def _seed_name(name: str, seed: int, n: int) -> str:
    return f"{name}-s{seed}" if n > 1 else name


def run_compare(cfg: dict, run_dir: Path, progress=None, say=print, resume: bool = False) -> dict:
    """Choose strengths, train every run over the seeds, write ``compare.json``.

    With ``resume=True`` (``decaylab resume``; ``cfg["runs"]`` are the folder's
    ``base_runs``) a finished sweep is read back, an unfinished one resumed, and each
    seeded run kept, continued from its checkpoint or started again, as
    :func:`train.train_run` does: the result equals an uninterrupted run's.
    """
    with runfolder.lock(run_dir):
        return _run_compare(cfg, run_dir, progress, say, resume)


def _run_compare(cfg: dict, run_dir: Path, progress, say, resume: bool) -> dict:
    seeds = [cfg["seed"] + i for i in range(cfg.get("seeds", 1))]
    runs = [dict(r) for r in cfg["runs"]]
    expanded = [{**r, "name": _seed_name(r["name"], s, len(seeds))} for s in seeds for r in runs]
    runfolder.set_status(run_dir, "running")
    if not resume:
        runfolder.write_config(run_dir, {**cfg, "runs": expanded, "base_runs": runs}, "compare",
                               versions=train_mod.versions())
    with runfolder.tracking(run_dir, train_mod.resume_command(run_dir)):
        data0 = train_mod.load_data(cfg)
        runfolder.write_data_info(run_dir, data0.info())
        chosen = {}
        for r in runs:
            if r.get("alphas"):
                sw = _choose_alpha({**cfg, "runs": [r]}, choice_spec(cfg, r), runfolder.sweep_dir(run_dir, r["name"]),
                                   data0, resume)
                r["alpha"] = sw["chosen"]["best"]
                chosen[r["name"]] = {"grid": sw["alphas"], "best": sw["chosen"]["best"], "one_se": sw["chosen"]["one_se"],
                                     "sweep": runfolder.sweep_ref(r["name"])}
                say(f"{r['name']}: alpha {r['alpha']:g} chosen on validation from {len(sw['alphas'])} strengths "
                    f"({sw['wall_time']:.1f} s)")
        expanded = [{**r, "name": _seed_name(r["name"], s, len(seeds))} for s in seeds for r in runs]
        runfolder.update_config(run_dir, runs=expanded, base_runs=runs)
        for s in seeds:
            cfg_s = {**cfg, "seed": s}
            data = data0 if s == cfg["seed"] else train_mod.load_data(cfg_s)
            for r in runs:
                name = _seed_name(r["name"], s, len(seeds))
                train_mod.train_run(cfg_s, data, {**r, "name": name}, runfolder.run(run_dir, name).path, progress,
                                    resume)
        result = summarize(run_dir, runs, seeds, chosen)
        runfolder.write_compare(run_dir, result)
    return result


def _choose_alpha(cfg: dict, spec: dict, folder: Path, data, resume: bool) -> dict:
    """The sweep of one run's grid into ``folder``: run, resumed, or (finished) read back."""
    if resume and runfolder.read_status(folder).get("state") == "complete":
        done = runfolder.read_sweep(folder)
        if done is not None and "chosen" in done:
            return done
    started = resume and runfolder.has_config(folder)  # else killed before the sweep began
    folder.mkdir(parents=True, exist_ok=resume)
    return sweep_mod.run_sweep(cfg, spec, folder, data=data, say=lambda s: None, resume=started)


def resume_config(run_dir) -> dict:
    """The config to resume a compare-with-choice folder: its ``base_runs`` as the runs."""
    from . import config

    saved = runfolder.read_config(run_dir)
    base = {k: v for k, v in saved.items() if k not in train_mod.RUN_KEYS}
    try:
        return config.resolve({**base, "runs": saved["base_runs"]}, command="compare")
    except config.ConfigError as err:
        raise config.ConfigError(f"{Path(run_dir) / runfolder.CONFIG}: {err}") from None


def beats(a: dict, b: dict, key: str = "test_acc") -> bool:
    """True if ``a``'s mean beats ``b``'s by more than twice the standard error of the
    difference of two means over seeds (needs >= 2 seeds each).

    >>> beats({"n": 3, "test_acc": [0.83, 0.006]}, {"n": 3, "test_acc": [0.79, 0.008]})
    True
    >>> beats({"n": 3, "test_acc": [0.80, 0.02]}, {"n": 3, "test_acc": [0.79, 0.02]})
    False
    """
    (ma, sa), (mb, sb) = a[key], b[key]
    if a["n"] < 2 or b["n"] < 2 or sa is None or sb is None:
        return False
    return ma - mb > 2 * math.sqrt(sa ** 2 / a["n"] + sb ** 2 / b["n"])


def summarize(run_dir: Path, runs: list[dict], seeds: list[int], chosen: dict) -> dict:
    rows = []
    for r in runs:
        finals = [runfolder.final(run_dir, _seed_name(r["name"], s, len(seeds))) for s in seeds]
        row = {"name": r["name"], "penalty": r["penalty"], "alpha": r["alpha"],
               "describe": describe(r), "n": len(seeds), "chosen": chosen.get(r["name"])}
        row.update({k: list(mean_sd([f.get(k) for f in finals])) for k in STATS})
        rows.append(row)
    base = next((x for x in rows if x["penalty"] == "none"), None)
    verdicts = []
    for row in rows:
        if base is None or row is base:
            continue
        key = "test_acc" if row["test_acc"][0] is not None else None
        if key is None:
            continue
        diff = row[key][0] - base[key][0]
        val_diff = row["val_acc"][0] - base["val_acc"][0]
        d, vd = _points(diff), _points(val_diff)
        if beats(row, base, "test_acc") and beats(row, base, "val_acc"):
            text = (f"{row['name']} ({row['describe']}) beats no penalty beyond seed noise: test accuracy "
                    f"{d}, validation {vd} (mean over {row['n']} seeds).")
        elif diff > 0:
            text = (f"{row['name']} ({row['describe']}) does not clearly help: test accuracy {d} against no "
                    f"penalty, within seed noise (validation {vd}).")
        else:
            text = (f"{row['name']} ({row['describe']}) does not help here: test accuracy {d} against no "
                    f"penalty (validation {vd}).")
        row["beats_none"] = beats(row, base, "test_acc") and beats(row, base, "val_acc")
        verdicts.append(text)
    return {"seeds": seeds, "runs": rows, "verdicts": verdicts,
            "note": "strengths chosen on the first seed's validation split only; test is reported, never used to choose"}


def _points(diff: float) -> str:
    """An accuracy difference in percentage points, as the report's tables show accuracy in %.

    >>> _points(0.0383)
    '+3.8 points'
    """
    return f"{100 * diff:+.1f} points"


def markdown(result: dict) -> str:
    """The compare.json table: mean ± sd over seeds, then the verdicts."""
    n = len(result["seeds"])
    lines = ["| run | penalty (λ chosen on validation) | val acc | test acc | train−test gap | exact zeros |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]

    def ms(v, signed=False):
        m, s = v
        if m is None:
            return "-"
        f = (lambda x: f"{x:+.1%}") if signed else (lambda x: f"{x:.1%}")
        return f(m) + (f" ± {s:.1%}" if s is not None else "")

    for r in result["runs"]:
        lines.append(f"| {r['name']} | {r['describe']} | {ms(r['val_acc'])} | {ms(r['test_acc'])} | "
                     f"{ms(r['gap'], True)} | {ms(r['zero_fraction'])} |")
    lines += ["", f"Mean ± sd over {n} seed{'s' if n > 1 else ''}."] + [f"- {v}" for v in result["verdicts"]]
    return "\n".join(lines)
