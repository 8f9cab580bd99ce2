"""A run's recipe from its config: the penalty, the penalty rules, the optimizer, the
learning-rate schedule, and the one line that describes a penalty setting.

Every trainer of the lab builds these pieces here (a single run, the stacked sweep, select
and the reference runs), so a setting means the same thing wherever it is trained.
"""

from __future__ import annotations

import torch
from torch import nn

import decaylab as dl

from . import build


# -- a penalty setting ------------------------------------------------------------------
def describe(run: dict, optimizer: str = "adam") -> str:
    """One human line for a penalty setting, e.g. ``"L1(alpha=1e-4), prox, adam metric"``.

    A prox rule names its metric: the one given, else the library's default for the
    lab's ``optimizer`` (Adam's for sparse penalties under adam/adamw, else lr).
    """
    if run["penalty"] == "none":
        return "no penalty"
    if run["penalty"] == "magnitude":  # the sweep's reference curve (lab/reference.py)
        begin, end = run["ramp_steps"]
        return f"magnitude pruning to {run['target']:.1%} zeros (cubic ramp, steps {begin}-{end}, then held)"
    pen = make_penalty(run, None)
    metric = run["metric"]
    mode = run["mode"] or ("prox" if metric == "adam" else pen.default_mode)
    text = f"{pen!r}, {mode}"
    if mode == "prox":
        if not metric:  # what regularize() picks: Adam's metric where the optimizer keeps exp_avg_sq
            metric = "adam" if pen.adam_metric_default and optimizer in ("adam", "adamw") else "lr"
        text += f", {metric} metric"
    if run["params"]:
        text += f", on {run['params']}"
    if run["warmup_epochs"]:
        text += f", warm-up {run['warmup_epochs']} ep"
    if run["finetune_epochs"]:
        text += f", fine-tune {run['finetune_epochs']} ep"
        if run["finetune_lr"]:
            text += f" at lr {run['finetune_lr']:g}"
    return text


def make_penalty(run: dict, model: nn.Module | None):
    """The penalty of a run spec, from the registry ``build.PENALTIES`` (``model`` may be
    None while a config is checked)."""
    kind = run["penalty"]
    if kind == "magnitude":  # gradual magnitude pruning, the Pareto figure's reference (lab/reference.py)
        begin, end = run["ramp_steps"]
        return dl.TargetSparsity(0.0, run["target"], begin=begin, end=end, every=run["every"])
    entry = build.PENALTIES.get(kind)
    if entry is None or entry.make is None:
        raise ValueError(f"penalty {kind!r} has no penalty to build; use one of "
                         f"{', '.join(k for k, e in build.PENALTIES.items() if e.make)}")
    return entry.make(run, model)


def make_rules(run: dict, model: nn.Module, steps_per_epoch: int) -> list[dl.Rule] | None:
    if run["penalty"] == "none":
        return None
    params = run["params"] or None
    if params == "first":
        params = f"{build.first_layer(model)}.weight"
    schedule = None
    if run["warmup_epochs"] > 0:
        ramp = run["warmup_epochs"] * steps_per_epoch
        schedule = lambda step: min(1.0, step / ramp)  # noqa: E731
    return [dl.Rule(make_penalty(run, model), params=params, mode=run["mode"] or None,
                    metric=run["metric"] or None, schedule=schedule)]


def make_optimizer(train: dict, params, lr: float | None = None) -> torch.optim.Optimizer:
    lr = train["lr"] if lr is None else lr
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train["momentum"])
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return torch.optim.Adam(params, lr=lr)


def cosine_schedule(opt, epochs: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
