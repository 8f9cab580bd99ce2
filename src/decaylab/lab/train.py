"""Training runs: one model, data and seed; one run per penalty setting; a run folder.

The folder layout is documented in docs/run-folder.md. Metrics are appended and flushed
each epoch, so a crash or Ctrl-C leaves every finished epoch readable, and
``status.json`` says how the run ended.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import decaylab as dl
from decaylab.stats import selected_weights

from . import data as data_mod
from .models import build_model


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def versions() -> dict:
    import numpy
    import sklearn

    return {"decaylab": dl.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "sklearn": sklearn.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


# -- building pieces from a config -----------------------------------------------------
def describe(run: dict) -> str:
    """One human line for a penalty setting, e.g. ``"L1(alpha=1e-4), prox, adam metric"``."""
    if run["penalty"] == "none":
        return "no penalty"
    pen = make_penalty(run, None)
    mode = run["mode"] or pen.default_mode
    text = f"{pen!r}, {mode}"
    if run["metric"] != "lr":
        text += f", {run['metric']} metric"
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
    raise ValueError(f"unknown penalty {kind!r}")


def make_rules(run: dict, model: nn.Module, steps_per_epoch: int) -> list[dl.Rule] | None:
    if run["penalty"] == "none":
        return None
    params = run["params"] or None
    if params == "first":
        params = f"{model.first_layer}.weight"
    schedule = None
    if run["warmup_epochs"] > 0:
        ramp = run["warmup_epochs"] * steps_per_epoch
        schedule = lambda step: min(1.0, step / ramp)  # noqa: E731
    return [dl.Rule(make_penalty(run, model), params=params, mode=run["mode"] or None,
                    metric=run["metric"], schedule=schedule)]


def make_optimizer(train: dict, params, lr: float | None = None) -> torch.optim.Optimizer:
    lr = train["lr"] if lr is None else lr
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train["momentum"])
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return torch.optim.Adam(params, lr=lr)


# -- measuring --------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> tuple[float, float | None]:
    model.eval()
    total, correct = 0.0, 0
    for i in range(0, len(x), 4096):
        out = model(x[i:i + 4096])
        yb = y[i:i + 4096]
        if task == "classification":
            total += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
        else:
            total += float(F.mse_loss(out.squeeze(1), yb, reduction="sum"))
    model.train()
    n = max(len(x), 1)
    return total / n, (correct / n if task == "classification" else None)


def weight_stats(model: nn.Module) -> dict:
    """Norms, exact zeros per layer, live inputs: over the Linear/Conv weights."""
    ws = [p.detach() for _, p in selected_weights(model)]
    zeros = sum(int((w == 0).sum()) for w in ws)
    numel = sum(w.numel() for w in ws)
    layers = {k: {f: v[f] for f in ("numel", "zeros", "zero_fraction", "live_rows", "rows")}
              for k, v in dl.layer_stats(model).items()}
    first = dict(model.named_parameters())[f"{model.first_layer}.weight"].detach()
    mask = dl.surviving_inputs(first) if first.ndim == 2 else None
    return {
        "weight_l2": float(torch.sqrt(sum((w.double() ** 2).sum() for w in ws))),
        "weight_l1": float(sum(w.double().abs().sum() for w in ws)),
        "zero_fraction": zeros / max(numel, 1),
        "zeros": zeros,
        "weights": numel,
        "layers": layers,
        "live_inputs": int(mask.sum()) if mask is not None else None,
        "n_inputs": int(mask.numel()) if mask is not None else None,
        "input_mask": [int(v) for v in mask.tolist()] if mask is not None else None,
    }


def histogram(model: nn.Module, bins: int = 81) -> dict:
    w = torch.cat([p.detach().flatten().double() for _, p in selected_weights(model)])
    edge = float(w.abs().max()) or 1.0
    counts = torch.histc(w, bins=bins, min=-edge, max=edge)
    edges = torch.linspace(-edge, edge, bins + 1)
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()], "exact_zeros": int((w == 0).sum())}


# -- the loop ---------------------------------------------------------------------------
class _Epochs:
    """Runs epochs of one phase, writing one metrics line per epoch."""

    def __init__(self, ctx: dict, model: nn.Module, opt, run: dict, metrics_file, progress):
        self.ctx, self.model, self.opt, self.run = ctx, model, opt, run
        self.metrics_file, self.progress = metrics_file, progress
        self.step = 0
        self.times: list[float] = []

    def loss_fn(self, out, yb):
        if self.ctx["data"].task == "classification":
            return F.cross_entropy(out, yb)
        return F.mse_loss(out.squeeze(1), yb)

    def run_phase(self, phase: str, epochs: int, sched, after_step=None) -> None:
        d, cfg = self.ctx["data"], self.ctx["cfg"]
        bs = cfg["train"]["batch_size"]
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            order = torch.randperm(len(d.x_train), generator=self.ctx["batch_gen"])
            for i in range(0, len(order), bs):
                idx = order[i:i + bs]
                loss = self.loss_fn(self.model(d.x_train[idx]), d.y_train[idx])
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"run '{self.run['name']}': loss became {float(loss.detach())} at {phase} epoch {epoch}, "
                        f"step {self.step}; lower train.lr or the penalty strength")
                loss.backward()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                if after_step is not None:
                    after_step()
                self.step += 1
            lr = self.opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            self.times.append(time.perf_counter() - t0)
            self.log(phase, epoch, lr, self.times[-1])

    def log(self, phase: str, epoch: int, lr: float, seconds: float) -> dict:
        d = self.ctx["data"]
        row = {"epoch": self.ctx["epoch_offset"] + epoch, "step": self.step, "phase": phase}
        for split in ("train", "val", "test"):
            loss, acc = evaluate(self.model, getattr(d, f"x_{split}"), getattr(d, f"y_{split}"), d.task)
            row[f"{split}_loss"], row[f"{split}_acc"] = loss, acc
        stats = weight_stats(self.model)
        self.ctx["last_stats"] = stats  # final.json reuses them: the weights do not change after
        row.update({k: v for k, v in stats.items() if k not in ("input_mask", "zeros", "weights")},
                   lr=float(lr), epoch_time=seconds)
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        self.ctx["last"] = row
        if self.progress is not None:
            self.progress(self.run["name"], row)
        return row


def _cosine(opt, epochs: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))


def train_run(cfg: dict, data, run: dict, run_dir: Path, progress=None) -> dict:
    """Train one penalty setting into ``run_dir``; returns what final.json holds."""
    run_dir.mkdir(parents=True)
    _write_json(run_dir / "spec.json", {**run, "describe": describe(run)})
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"]["kind"], data.n_features, data.n_classes or 1,
                        hidden=cfg["model"]["hidden"], image_shape=data.image_shape,
                        dropout=cfg["model"]["dropout"]).to(cfg["train"]["device"])
    tr = cfg["train"]
    steps_per_epoch = math.ceil(len(data.x_train) / tr["batch_size"])
    opt = make_optimizer(tr, model.parameters())
    rules = make_rules(run, model, steps_per_epoch)
    if rules is not None:
        opt = dl.regularize(opt, model, rules)
        (run_dir / "rules.txt").write_text(dl.summary(opt) + "\n")
    sched = _cosine(opt, tr["epochs"]) if tr["schedule"] == "cosine" else None
    ctx = {"cfg": cfg, "data": data, "epoch_offset": 0,
           "batch_gen": torch.Generator().manual_seed(cfg["seed"])}
    with open(run_dir / "metrics.jsonl", "a") as mf:
        loop = _Epochs(ctx, model, opt, run, mf, progress)
        loop.run_phase("train", tr["epochs"], sched)
        if run["finetune_epochs"] > 0:
            _finetune(loop, model, run, tr)
    torch.save(model.state_dict(), run_dir / "model.pt")
    final = _final(model, ctx["last"], ctx["last_stats"])
    final["mean_epoch_time"] = sum(loop.times) / max(len(loop.times), 1)
    _write_json(run_dir / "final.json", final)
    return final


def _finetune(loop: _Epochs, model: nn.Module, run: dict, tr: dict) -> None:
    """Retrain the surviving weights with the penalty off and the zeros held at zero."""
    masks = [(p, p.detach() != 0) for _, p in selected_weights(model)]
    lr = run["finetune_lr"] or tr["lr"] * 0.1
    loop.opt = make_optimizer(tr, model.parameters(), lr=lr)
    sched = _cosine(loop.opt, run["finetune_epochs"]) if tr["schedule"] == "cosine" else None
    loop.ctx["epoch_offset"] = tr["epochs"]

    @torch.no_grad()
    def hold_zeros():
        for p, mask in masks:
            p.mul_(mask)

    loop.run_phase("finetune", run["finetune_epochs"], sched, after_step=hold_zeros)


def _final(model: nn.Module, last: dict, stats: dict) -> dict:
    acc_gap = None
    if last["train_acc"] is not None:
        acc_gap = last["train_acc"] - last["test_acc"]
    n_params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p.detach() != 0).sum()) for p in model.parameters())
    return {
        **{k: last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")},
        "gap": acc_gap if acc_gap is not None else last["test_loss"] - last["train_loss"],
        **{k: stats[k] for k in ("zero_fraction", "zeros", "weights", "live_inputs", "n_inputs",
                                  "input_mask", "layers", "weight_l2", "weight_l1")},
        "n_params": n_params,
        "nonzero_params": nonzero,
        "histogram": histogram(model),
        "epochs": last["epoch"],
    }


# -- an experiment: a run folder with one run per penalty ---------------------------------
def _load_data(cfg: dict):
    if cfg["train"]["threads"] > 0:
        torch.set_num_threads(cfg["train"]["threads"])
    dc = cfg["data"]
    return data_mod.load(dc["name"], root=dc["root"] or None, val_fraction=dc["val_fraction"],
                         seed=cfg["seed"], download=dc["download"], n_train=dc["n_train"] or None,
                         **({"path": dc["path"], "target": dc["target"], "features": dc["features"] or None}
                            if dc["name"] == "csv" else {}))


def _worker(cfg: dict, run: dict, run_dir: str) -> str:
    """One run in a worker process (data loaded there; one result folder per run)."""
    train_run(cfg, _load_data(cfg), run, Path(run_dir) / "runs" / run["name"])
    return run["name"]


def _train_parallel(cfg: dict, run_dir: Path, progress) -> None:
    """Runs in ``train.jobs`` processes; each run is still seeded and ordered the same,
    so results equal a sequential run. Progress is reported per finished run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cfg["train"]["jobs"], mp_context=ctx) as pool:
        futures = [pool.submit(_worker, cfg, run, str(run_dir)) for run in cfg["runs"]]
        for fut in as_completed(futures):
            name = fut.result()
            if progress is not None:
                rows = (run_dir / "runs" / name / "metrics.jsonl").read_text().splitlines()
                progress(name, json.loads(rows[-1]))


def check_runs(cfg: dict) -> None:
    """Build every penalty once so a bad strength fails before any training starts."""
    for run in cfg["runs"]:
        try:
            describe(run)
        except ValueError as err:
            raise ValueError(f"run '{run['name']}': {err}") from None


def new_run_dir(cfg: dict, command: str) -> Path:
    check_runs(cfg)
    name = cfg["name"] or f"{command}-{cfg['data']['name']}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg["out"]) / name
    if path.exists():
        raise FileExistsError(
            f"run folder {str(path)!r} already exists and is never overwritten; choose another "
            f"--name or remove it")
    path.mkdir(parents=True)
    return path


def run_experiment(cfg: dict, command: str = "compare", progress=None, run_dir: Path | None = None) -> Path:
    """Load data, train every run of ``cfg`` into a new run folder, return the folder.

    ``status.json`` ends as "complete", "failed" (with the error) or "interrupted".
    """
    run_dir = run_dir or new_run_dir(cfg, command)
    _write_json(run_dir / "status.json", {"state": "running", "error": None, "updated": _now()})
    _write_json(run_dir / "config.json", {**cfg, "command": command, "versions": versions(), "created": _now()})
    state, error = "failed", None
    try:
        data = _load_data(cfg)
        _write_json(run_dir / "data.json", data.info())
        if cfg["train"]["jobs"] > 1 and len(cfg["runs"]) > 1:
            _train_parallel(cfg, run_dir, progress)
        else:
            for run in cfg["runs"]:
                train_run(cfg, data, run, run_dir / "runs" / run["name"], progress)
        state = "complete"
    except KeyboardInterrupt:
        state, error = "interrupted", "interrupted by the user (Ctrl-C)"
        raise
    except BaseException as err:
        error = f"{type(err).__name__}: {err}"
        raise
    finally:
        _write_json(run_dir / "status.json", {"state": state, "error": error, "updated": _now()})
    return run_dir
