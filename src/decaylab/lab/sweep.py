"""λ sweeps: a grid of strengths (and learning rates) trained as stacked models.

A sweep trains one penalty at every ``alpha`` of a grid (optionally crossed with learning
rates), over one or more seeds, and writes an ordinary run folder (one ``runs/<point>``
folder per point and seed, as ``compare`` writes) plus ``sweep.json``: the regularization
path and the chosen strengths.

Cheap by construction:

* **Stacking**: the K points of one seed are one model whose Linear weights have shape
  ``[K, ...]`` (batched matmuls, one optimizer step for all); strengths are ``[K]`` tensors
  and learning rates a ``[K]`` scale. Configuration ``k`` of a stack computes what
  ``decaylab train`` computes for it alone (same seed, data order, init), up to fp32
  rounding of the batched matmul.
* **Successive halving** (default; ``full=True`` turns it off): at each rung the points
  ranked in the lower half by validation accuracy (on the first seed) stop; the rest go
  on to the full schedule. A stopped point is reported at the epoch it stopped, marked
  ``"stopped_early"``, and takes no part in the choice.

Selection (validation only; test is reported, never used to choose):

* ``best``: the point with the highest mean validation accuracy;
* ``one_se``: the *strongest* ``alpha`` (at ``best``'s learning rate) whose mean validation
  accuracy is within one standard error of ``best``'s (glmnet's ``lambda.1se``). The SE is
  the standard error of the mean over seeds, or with one seed the binomial standard error
  across validation examples, ``sqrt(p (1 - p) / n_val)``.

This module trains the points and writes the folder; the grid (strengths, point names,
memory, halving rungs) is :mod:`decaylab.lab.grid`, the stacked model and optimizer
:mod:`decaylab.lab.stack`, the path and the choice rule :mod:`decaylab.lab.path`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from torch import nn
from torch.nn import functional as F

import decaylab as dl

from . import build, loop, recipe, resuming, runfolder, sweep_func
from . import train as train_mod
from .measure import final_metrics, weight_stats
from .grid import SweepError, halving_rungs, make_points, memory_plan
from .path import summarize
from .stack import Stack

SWEEP_PENALTIES = tuple(k for k, e in build.PENALTIES.items() if e.sweeps)  # from the registry
STACKABLE = ("linear", "mlp", "lenet300")


def train_stack(cfg: dict, data, run: dict, points: list[dict], run_dir: Path, stops: dict,
                 rungs: list[int], progress=None, log_every: int = 1, halving=(2, 2), *,
                 checkpoint: dict | None = None) -> dict:
    """Train one seed's points stacked; returns {point name: epoch it stopped at}.

    ``stops`` maps point names to a decided stop epoch (from an earlier seed); points of
    the first seed are ranked at each rung in ``rungs`` instead. After each epoch (with
    ``train.checkpoint``, the default) the stack is checkpointed into its first point's
    folder, as a single run checkpoints into its own; ``checkpoint`` (that file, loaded)
    continues from it (the caller has cut the points' metrics back to its epoch).
    """
    tr = cfg["train"]
    if cfg["model"].get("factory") and not sweep_func.stackable(cfg, data):
        return sweep_func.train_points(cfg, data, run, points, run_dir, progress)
    stack = Stack(cfg, data, run, points)
    outs = {p["name"]: runfolder.run(run_dir, p["name"]) for p in points}
    stopped, last, point_times = {}, {}, []
    keeper = outs[points[0]["name"]]  # the stack's checkpoint lives in its first point's folder
    if checkpoint is not None:
        stack.load_state_dict(checkpoint)
        stopped, last, point_times = checkpoint["stopped"], checkpoint["last"], checkpoint["point_times"]

    def save():
        if tr.get("checkpoint", True):
            keeper.save_checkpoint({**stack.state_dict(), "stopped": stopped, "last": last,
                                    "point_times": point_times})
    loss_fn = nn.CrossEntropyLoss(reduction="none") if data.task == "classification" else None

    def loss(xb, yb):  # the sum of the K points' mean losses: each point's gradient is its own
        out, k = stack.model(xb), len(stack.points)
        if loss_fn is not None:
            return loss_fn(out.flatten(0, 1), yb.repeat(k)).view(k, -1).mean(1).sum()
        return F.mse_loss(out.squeeze(2), yb.expand(k, len(yb)), reduction="none").mean(1).sum()

    first = stack.epoch + 1
    for epoch in range(first, tr["epochs"] + 1):
        if epoch > first:
            save()  # the epoch before this one, its halving decided
        k = len(stack.points)
        lr = loop.epoch(stack, data.x_train, data.y_train, tr["batch_size"], loss)
        seconds = stack.times[-1] / k
        point_times.append(seconds)
        decide = epoch in rungs or (stops is not None and epoch in stops.values())
        if not (decide or epoch == tr["epochs"] or (log_every and epoch % log_every == 0)):
            continue
        rows = _log_epoch(stack, data, epoch, stack.step, lr, seconds, outs, progress)
        for p, row in zip(stack.points, rows):
            last[p["name"]] = row
        if epoch == tr["epochs"]:
            break
        drop = _to_stop(stack, rows, epoch, stops, rungs, *halving)
        if drop:
            for j in drop:
                p = stack.points[j]
                stopped[p["name"]] = epoch
                _finish_point(stack, j, last[p["name"]], outs[p["name"]], point_times, stopped=True)
            stack.keep([j for j in range(len(stack.points)) if j not in drop])
    for j, p in enumerate(stack.points):
        _finish_point(stack, j, last[p["name"]], outs[p["name"]], point_times, stopped=False)
    keeper.drop_checkpoint()
    return stopped


def _log_epoch(stack: Stack, data, epoch, step, lr, seconds, outs: dict, progress) -> list[dict]:
    evals = {s: stack.evaluate(getattr(data, f"x_{s}"), getattr(data, f"y_{s}"), data.task)
             for s in ("train", "val", "test")}
    stats = stack.weight_stats()
    rows = []
    for j, p in enumerate(stack.points):
        row = {"epoch": epoch, "step": step, "phase": "train"}
        for s, (losses, accs) in evals.items():
            row[f"{s}_loss"], row[f"{s}_acc"] = losses[j], accs[j]
        row.update({k: v for k, v in stats[j].items()}, lr=float(lr * p["lr"] / stack.cfg["train"]["lr"]),
                   epoch_time=seconds)
        outs[p["name"]].append_metrics(row)
        if progress is not None:
            progress(p["name"], row)
        rows.append(row)
    return rows


def _to_stop(stack: Stack, rows, epoch, stops, rungs, eta: int = 2, min_full: int = 2) -> list[int]:
    if stops is not None:  # decided on the first seed
        return [j for j, p in enumerate(stack.points) if stops.get(p["key"]) == epoch]
    if epoch not in rungs:
        return []
    keep = max(min(min_full, len(rows)), math.ceil(len(rows) / eta))
    score = [(_score(r), j) for j, r in enumerate(rows)]
    ranked = sorted(score, key=lambda s: (-s[0], s[1]))
    return sorted(j for _, j in ranked[keep:])


def _score(row: dict) -> float:
    v = row["val_acc"] if row["val_acc"] is not None else -row["val_loss"]
    return v if math.isfinite(v) else -math.inf


def _finish_point(stack: Stack, j: int, last: dict, out: runfolder.Run, times: list, stopped: bool) -> None:
    model = stack.unstack(j)
    out.save_model(model.state_dict())
    final = final_metrics(model, last, weight_stats(model))
    final.update(mean_epoch_time=sum(times) / max(len(times), 1), stopped_early=stopped,
                 warm_started=False, stacked_with=len(stack.points),
                 layer_l2={k: v["l2"] for k, v in dl.layer_stats(model).items()})
    out.write_final(final)


# -- the sweep -----------------------------------------------------------------------------------
def check_spec(cfg: dict, spec: dict) -> None:
    """Refuse a sweep that cannot start, before any folder is made."""
    if spec["penalty"] not in SWEEP_PENALTIES:
        raise SweepError(f"--penalty {spec['penalty']!r} is not one of {', '.join(SWEEP_PENALTIES)} "
                         f"(the unpenalized model needs no sweep)")
    if spec.get("eta", 2) < 2 or spec.get("min_full", 2) < 1 or spec.get("log_every", 0) < 0:
        raise SweepError(f"--eta {spec.get('eta')} must be >= 2, --min-full {spec.get('min_full')} >= 1 and "
                         f"--log-every {spec.get('log_every')} >= 0")
    if spec["seeds"] < 1:
        raise SweepError(f"--seeds {spec['seeds']} must be >= 1 (every point is trained once per seed)")
    if not cfg["model"].get("factory") and cfg["model"]["kind"] not in STACKABLE:
        raise SweepError(f"decaylab sweep stacks MLPs; model.kind={cfg['model']['kind']!r} is not one of "
                         f"{', '.join(STACKABLE)}; use --set model.kind=mlp or compare single runs")
    run = cfg["runs"][0]
    if run["finetune_epochs"]:
        raise SweepError("decaylab sweep does not fine-tune; set penalty.finetune_epochs=0")
    if cfg["model"]["dropout"]:
        raise SweepError("decaylab sweep needs model.dropout=0 (a stacked model draws other dropout masks "
                         "than a single run, so its points would not equal decaylab train)")
    for a in spec["alphas"]:
        recipe.describe({**run, "penalty": spec["penalty"], "alpha": a})


def run_sweep(cfg: dict, spec: dict, run_dir: Path, data=None, progress=None, say=print,
              resume: bool = False) -> dict:
    """Train every point of ``spec`` into ``run_dir`` (already made) and write ``sweep.json``.

    ``spec``: ``penalty``, ``alphas``, ``lrs`` (None = ``train.lr``), ``seeds`` (count),
    ``full`` (no halving), ``max_memory`` (bytes or None); optional ``eta`` and ``min_full``
    (halving keeps ``ceil(n / eta)`` points per rung until ``min_full`` are left; 2 and 2),
    ``log_every`` (metrics every N epochs; 0, the default, logs only the rungs and the last
    epoch, which is all the path needs and saves evaluation time).

    With ``resume=True`` (``decaylab resume`` of a sweep folder) a stack whose points all
    have ``final.json`` is kept; one with an unfinished point continues from its last
    epoch checkpoint (or, without one, trains again whole), so its halving and its metrics
    are an uninterrupted sweep's, bit for bit.
    """
    spec = dict(spec)  # gains "per_stack" (resuming.stack_size)
    lrs = spec.get("lrs") or [cfg["train"]["lr"]]
    seeds = [cfg["seed"] + i for i in range(spec["seeds"])]
    points = make_points(spec["alphas"], lrs, seeds)
    run = {**cfg["runs"][0], "penalty": spec["penalty"]}
    t_start = time.perf_counter()
    runfolder.set_status(run_dir, "running")
    if not resume:
        cfg_saved = {**cfg, "runs": [{**run, "name": p["name"], "alpha": p["alpha"]} for p in points]}
        runfolder.write_config(run_dir, cfg_saved, "sweep", versions=train_mod.versions(), sweep=spec)
    with runfolder.tracking(run_dir, train_mod.resume_command(run_dir)):
        stops, method = None, {}
        eta, min_full = spec.get("eta", 2), spec.get("min_full", 2)
        for seed in seeds:
            cfg_s = {**cfg, "seed": seed}
            mine = [p for p in points if p["seed"] == seed]
            done = {p["name"] for p in mine if resume and runfolder.run(run_dir, p["name"]).is_complete()}
            data_s = data if (data is not None and seed == cfg["seed"]) else (
                train_mod.load_data(cfg_s) if len(done) < len(mine) or seed == cfg["seed"] else None)
            if seed == cfg["seed"]:
                runfolder.write_data_info(run_dir, data_s.info())
            per_stack, per, budget = memory_plan(cfg, data_s or data, len(mine), spec.get("max_memory"))
            per_stack = resuming.stack_size(run_dir, spec, per_stack, resume)
            if per_stack < len(mine) and seed == cfg["seed"]:
                say(f"sweep: {len(mine)} points need about {len(mine) * per / 2**20:.0f} MiB stacked, over the "
                    f"{budget / 2**20:.0f} MiB allowed; training them in stacks of {per_stack}")
            stacked = sweep_func.stacked_or_say(cfg_s, data_s or data, say if seed == cfg["seed"] else (lambda _: None))
            method = {"stacked": stacked, "per_stack": per_stack if stacked else 1,
                      "stacks_per_seed": math.ceil(len(mine) / per_stack) if stacked else len(mine),
                      "stacking": ("torch.func (vmap of functional_call)" if cfg["model"].get("factory") else
                                   "StackedLinear") if stacked else "none: one point at a time",
                      "halving_rungs": [] if spec.get("full") or not stacked else
                      halving_rungs(min(per_stack, len(mine)), cfg["train"]["epochs"], eta, min_full),
                      "halving_on": "validation accuracy of the first seed",
                      "halving_eta": eta, "halving_min_full": min_full,
                      "logged_epochs": "every epoch" if spec.get("log_every") == 1 else
                      f"every {spec['log_every']} epochs, at rungs and the last" if spec.get("log_every")
                      else "at rungs and the last epoch", "warm_starts": False}
            # a stack with an unfinished point trains again whole: its halving decides as before
            stacks = [mine[i:i + per_stack] for i in range(0, len(mine), per_stack)]
            todo = [c for c in stacks if not all(p["name"] in done for p in c)]
            if resume and done:
                say(resuming.kept_points(seed, len(done), len(mine), sum(map(len, todo))))
            for chunk in todo:
                ckpt = runfolder.run(run_dir, chunk[0]["name"]).load_checkpoint() if resume and stacked else None
                for p in chunk:
                    out = runfolder.run(run_dir, p["name"])
                    if ckpt is None:
                        out.begin({**run, "name": p["name"], "alpha": p["alpha"], "lr": p["lr"], "seed": seed,
                                   "describe": recipe.describe({**run, "alpha": p["alpha"]})})
                    elif p["name"] in ckpt["points"]:  # still training at the checkpoint
                        out.keep_epochs(ckpt["epoch"])
                rungs = [] if spec.get("full") or not stacked else halving_rungs(len(chunk), cfg["train"]["epochs"], eta, min_full)
                train_stack(cfg_s, data_s, run, chunk, run_dir, stops, rungs, progress,
                             spec.get("log_every", 0), (eta, min_full), checkpoint=ckpt)
            if stops is None:  # the first seed's halving decides for the others
                finals = {p["key"]: runfolder.run(run_dir, p["name"]).final() for p in mine}
                stops = {k: f["epochs"] for k, f in finals.items() if f.get("stopped_early")}
        result = summarize(run_dir, spec, points, run, method)
        result["wall_time"] = time.perf_counter() - t_start
        runfolder.write_sweep(run_dir, result)
        if (cfg.get("pareto") or {}).get("reference", "none") == "magnitude":
            from .reference import train_reference

            result["reference"] = train_reference(cfg, result, run_dir, data, progress, say, resume)
            result["wall_time"] = time.perf_counter() - t_start
            runfolder.write_sweep(run_dir, result)
    return result


def resume_sweep(run_dir, progress=None, say=print) -> dict:
    """Continue a sweep folder (``decaylab resume``): finished points are kept, the rest
    continue from their stack's checkpoint (see :func:`run_sweep`). A Ray sweep resumes
    locally."""
    saved = runfolder.read_config(run_dir)
    spec = saved["sweep"]
    cfg = {k: v for k, v in saved.items() if k not in ("command", "versions", "created", "sweep")}
    cfg["runs"] = [{k: v for k, v in saved["runs"][0].items()}]
    train_mod.check_device(cfg["train"]["device"])
    return run_sweep(cfg, spec, Path(run_dir), progress=progress, say=say, resume=True)
