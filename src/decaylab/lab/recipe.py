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
    kind, alpha = run["penalty"], run["alpha"]
    if kind == "l2":
        return dl.L2(alpha)
    if kind == "l1":
        return dl.L1(alpha)
    if kind == "elasticnet":
        return dl.ElasticNet(alpha, run["l1_ratio"])
    if kind == "grouplasso":
        return dl.GroupLasso(alpha, run["groups"])
    if kind == "l2sp":
        return dl.L2SP(alpha)  # toward the initial weights of this run
    if kind == "coupled":  # neurons/channels and inputs, each with all it owns; l1_ratio = its L1 share
        if model is None:  # config validation: check alpha and l1_ratio on a stand-in chain
            model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
        return dl.CoupledGroupLasso(alpha, model, l1_ratio=run["l1_ratio"])
    if kind == "magnitude":  # gradual magnitude pruning, the Pareto figure's reference (lab/reference.py)
        begin, end = run["ramp_steps"]
        return dl.TargetSparsity(0.0, run["target"], begin=begin, end=end, every=run["every"])
    raise ValueError(f"unknown penalty {kind!r}")


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
