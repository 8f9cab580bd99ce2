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
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import decaylab as dl

from .seeds import mean_sd
from . import resuming, runfolder, sweep_func
from . import train as train_mod
from .build import build_model
from .models import stack_models, unstack_model

SWEEP_PENALTIES = ("l2", "l1", "elasticnet", "grouplasso", "l2sp")
STACKABLE = ("linear", "mlp", "lenet300")


class SweepError(ValueError):
    """A sweep that cannot start; the message names the value and the fix."""


# -- grids -------------------------------------------------------------------------------
def parse_grid(text: str, what: str = "--alphas") -> list[float]:
    """``LO:HI:N`` (N log-spaced values from LO to HI) or a comma list ``a,b,c``.

    Values must be finite and > 0 and given from weak to strong (increasing); ``LO:HI:N``
    with ``N = 1`` needs ``LO == HI``.

    >>> parse_grid("1e-3:1e-1:3")
    [0.001, 0.01, 0.1]
    >>> parse_grid("0.5, 1, 2")
    [0.5, 1.0, 2.0]
    """
    text = (text or "").strip()
    if not text:
        raise SweepError(f"{what} is empty; give LO:HI:N (e.g. 1e-4:1:9) or a comma list (e.g. 0.01,0.1,1)")
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
            _check_values([lo, hi], what, text)
            if n < 1:
                raise SweepError(f"{what} {text!r}: N={n} must be >= 1")
            if hi < lo:
                raise SweepError(f"{what} {text!r} is reversed (HI < LO); write it as {parts[1]}:{parts[0]}:{n}")
            if n == 1 and hi != lo:
                raise SweepError(f"{what} {text!r}: one value needs LO == HI; use N >= 2")
            values = [lo] if n == 1 else [  # 3 significant digits: readable names, exact ends
                float(f"{math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / (n - 1)):.3g}")
                for i in range(n)]
            values[0], values[-1] = lo, hi
        else:
            values = [float(v) for v in text.split(",")]
    except ValueError as err:
        if isinstance(err, SweepError):
            raise
        raise SweepError(f"{what} {text!r} is not LO:HI:N or a comma list of numbers "
                         f"(e.g. 1e-4:1:9 or 0.01,0.1,1)") from None
    _check_values(values, what, text)
    if any(b <= a for a, b in zip(values, values[1:])):
        raise SweepError(f"{what} {text!r} must increase from weak to strong without repeats; "
                         f"sort it, e.g. {','.join(f'{v:g}' for v in sorted(set(values)))}")
    return values


def _check_values(values, what, text):
    for v in values:
        if not math.isfinite(v) or v <= 0:
            raise SweepError(f"{what} {text!r} has {v!r}; every value must be finite and > 0 "
                             f"(the unpenalized model is the run 'none' of decaylab compare)")


def point_name(alpha: float, lr: float | None, seed: int, n_lrs: int, n_seeds: int) -> str:
    """Folder name of one point, e.g. ``a0.001`` or ``a0.001-lr0.003-s1``.

    >>> point_name(1e-3, 3e-3, 1, 2, 2)
    'a0.001-lr0.003-s1'
    """
    name = f"a{alpha:g}"
    if n_lrs > 1:
        name += f"-lr{lr:g}"
    if n_seeds > 1:
        name += f"-s{seed}"
    return name


# -- a learning rate per configuration ------------------------------------------------------
class PerConfigLR(torch.optim.Optimizer):
    """SGD (with momentum) or Adam over stacked weights with one learning rate per configuration.

    Each parameter's leading dimension is the ``K`` configurations; configuration ``k`` takes
    the step ``lr * scale[k]``, where ``lr`` is the group's (scheduled) learning rate. The
    arithmetic is torch's single-tensor SGD / Adam, so each configuration equals
    ``torch.optim.SGD`` / ``Adam`` with learning rate ``lr * scale[k]`` to fp32 rounding.
    Adam keeps ``exp_avg_sq`` and ``step`` as torch does (the Adam-metric prox reads them).

    >>> w = nn.Parameter(torch.ones(2, 3))
    >>> opt = PerConfigLR([w], torch.tensor([1.0, 0.0]), kind="sgd", lr=0.5)
    >>> w.grad = torch.ones(2, 3); opt.step(); w[:, 0].tolist()
    [0.5, 1.0]
    """

    def __init__(self, params, scale: torch.Tensor, *, kind: str, lr: float, momentum: float = 0.0,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        if kind not in ("sgd", "adam"):
            raise ValueError(f"PerConfigLR(kind={kind!r}); use 'sgd' or 'adam'")
        defaults = dict(lr=lr, momentum=momentum) if kind == "sgd" else dict(lr=lr, betas=betas, eps=eps)
        super().__init__(params, defaults)
        self.kind, self.scale = kind, scale.detach().double()
        self.takes_adam_step = kind == "adam"  # read by decaylab.metric.takes_adam_step

    def _scaled(self, p, lr):
        return (self.scale * -lr).to(p.dtype).view(-1, *([1] * (p.ndim - 1)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._sgd if self.kind == "sgd" else self._adam)(p, group)
        return loss

    def _sgd(self, p, group):
        d_p, st = p.grad, self.state[p]
        if group["momentum"]:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = d_p.detach().clone()
            else:
                buf.mul_(group["momentum"]).add_(d_p)
            d_p = buf
        p.add_(d_p * self._scaled(p, group["lr"]))

    def _adam(self, p, group):
        st = self.state[p]
        if not st:
            st["step"] = torch.tensor(0.0)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        st["step"] += 1
        st["exp_avg"].lerp_(p.grad, 1 - beta1)
        st["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        t = float(st["step"])
        step_size = group["lr"] / (1 - beta1 ** t)
        denom = (st["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
        p.add_(st["exp_avg"] / denom * self._scaled(p, step_size))


def _inner_optimizer(train: dict, params, lr_scale: torch.Tensor | None):
    """torch's optimizer when every point has the same lr (as ``train`` builds it, but Adam
    fused: the same arithmetic in one pass over the stacked weights, about ten times faster
    than the per-tensor loop on CPU; equal to fp32 rounding), else :class:`PerConfigLR`."""
    if lr_scale is None:
        if train["optimizer"] in ("adam", "adamw"):
            return torch.optim.Adam(params, lr=train["lr"], fused=True)
        return train_mod.make_optimizer(train, params)
    kind = "sgd" if train["optimizer"] == "sgd" else "adam"
    return PerConfigLR(params, lr_scale, kind=kind, lr=train["lr"], momentum=train["momentum"])


# -- memory --------------------------------------------------------------------------------
def bytes_per_config(model: nn.Module, batch: int, eval_rows: int = 4096, widths: int | None = None) -> int:
    """Rough bytes one configuration of a stack needs: weights, gradients, two optimizer
    buffers and an Adam-metric buffer (5 copies of the parameters), plus activations of
    one training batch (forward and backward) and one evaluation chunk.

    >>> bytes_per_config(nn.Linear(10, 10), batch=8)
    167000
    """
    n_params = sum(p.numel() for p in model.parameters())
    if widths is None:  # activations per example (a model.factory model: measured, sweep_func)
        widths = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return 4 * (5 * n_params + 3 * batch * widths + eval_rows * widths)


def available_memory() -> int:
    """Bytes of memory available now (Linux ``MemAvailable``; 4 GiB when unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def plan_chunks(n_points: int, per_config: int, budget: int) -> int:
    """How many configurations fit in one stack within ``budget`` bytes.

    Raises:
        SweepError: if not even one configuration fits.

    >>> plan_chunks(16, 100, 1000)
    10
    """
    fit = budget // max(per_config, 1)
    if fit < 1:
        raise SweepError(f"one configuration of this model needs about {per_config / 2**20:.1f} MiB, "
                         f"more than the {budget / 2**20:.1f} MiB allowed (--max-memory); "
                         f"raise --max-memory or use a smaller model")
    return int(min(fit, n_points))


# -- halving -----------------------------------------------------------------------------------
def halving_rungs(n_points: int, epochs: int, eta: int = 2, min_full: int = 2) -> list[int]:
    """Epochs after which the lower part of the points stop (successive halving).

    Each rung keeps ``ceil(n / eta)`` points, until ``min_full`` points are left to train
    the full schedule; rungs sit at ``epochs / eta**j``.

    >>> halving_rungs(16, 40)
    [5, 10, 20]
    >>> halving_rungs(16, 40, min_full=4)
    [10, 20]
    >>> halving_rungs(2, 40)
    []
    """
    n, halvings = n_points, 0
    while n > min_full:
        n, halvings = max(min_full, math.ceil(n / eta)), halvings + 1
    rungs = sorted({max(1, int(epochs / eta ** j)) for j in range(1, halvings + 1)})
    return [r for r in rungs if r < epochs]


# -- one stack ---------------------------------------------------------------------------------
class _Stack:
    """The K live configurations of one seed: model, optimizer, strengths, lr scales."""

    def __init__(self, cfg: dict, data, run: dict, points: list[dict]):
        tr = cfg["train"]
        torch.manual_seed(cfg["seed"])  # the init `decaylab train` gets with this seed
        self.base = build_model(cfg, data).to(tr["device"])
        self.func = bool(cfg["model"].get("factory"))  # your model: torch.func (lab/sweep_func.py)
        self.model = sweep_func.FuncStacked(self.base, len(points)) if self.func else \
            stack_models([self.base] * len(points))
        self.cfg, self.run, self.points = cfg, run, list(points)
        self.times: list[float] = []
        lrs = [p["lr"] for p in points]
        self.same_lr = all(lr == tr["lr"] for lr in lrs)
        steps_per_epoch = math.ceil(len(data.x_train) / tr["batch_size"])
        scale = None if self.same_lr else torch.tensor(lrs, dtype=torch.float64) / tr["lr"]
        self.inner = _inner_optimizer(tr, self.model.parameters(), scale)
        self.steps_per_epoch = steps_per_epoch
        self.opt = self._wrap(0)
        self.sched = train_mod.cosine_schedule(self.inner, tr["epochs"]) if tr["schedule"] == "cosine" else None

    def _alphas(self) -> torch.Tensor:
        """Strengths as a [K] tensor; with per-config lr, scaled so lr * alpha is each point's."""
        alphas = torch.tensor([p["alpha"] for p in self.points], dtype=torch.float64)
        mode = self.run["mode"] or train_mod.make_penalty(self.run, None).default_mode
        if not self.same_lr and mode != "coupled":
            alphas = alphas * torch.tensor([p["lr"] for p in self.points], dtype=torch.float64) / self.cfg["train"]["lr"]
        return alphas

    def _wrap(self, steps: int):
        rules = train_mod.make_rules({**self.run, "alpha": self._alphas()}, self.model, self.steps_per_epoch)
        opt = dl.regularize(self.inner, self.model, rules)
        opt._steps = steps
        return opt

    def keep(self, idx: list[int]) -> None:
        """Drop every configuration but ``idx`` (weights and optimizer state sliced)."""
        index = torch.tensor(idx)
        old = list(self.model.parameters())
        if self.func:
            self.model.keep(index)
        else:
            with torch.no_grad():
                for layer in self.model.layers:
                    layer.weight = nn.Parameter(layer.weight[index].clone())
                    if layer.bias is not None:
                        layer.bias = nn.Parameter(layer.bias[index].clone())
        new = list(self.model.parameters())
        state = {}
        for p_old, p_new in zip(old, new):
            st = self.inner.state.get(p_old, {})
            state[p_new] = {k: (v[index].clone() if torch.is_tensor(v) and v.ndim > 0 else v) for k, v in st.items()}
        self.inner.param_groups[0]["params"] = new
        self.inner.state.clear()
        self.inner.state.update(state)
        if isinstance(self.inner, PerConfigLR):
            self.inner.scale = self.inner.scale[index]
        self.points = [self.points[i] for i in idx]
        self.opt = self._wrap(self.opt.steps)

    def unstack(self, j: int) -> nn.Module:
        """Configuration ``j`` as the plain model ``decaylab train`` would have trained."""
        return self.model.unstack(j) if self.func else unstack_model(self.model, j, self.base)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str):
    """Per-configuration (loss, accuracy) lists of a stacked model on one split."""
    model.eval()
    loss = acc = None
    for i in range(0, len(x), 4096):
        out = model(x[i:i + 4096])  # [K, n, C]
        yb = y[i:i + 4096]
        k, n = out.shape[:2]
        if task == "classification":
            part = F.cross_entropy(out.flatten(0, 1), yb.repeat(k), reduction="none").view(k, n).double().sum(1)
            hit = (out.argmax(2) == yb).sum(1)
        else:
            part = F.mse_loss(out.squeeze(2), yb.expand(k, n), reduction="none").double().sum(1)
            hit = torch.zeros(k, dtype=torch.long)
        loss = part if loss is None else loss + part
        acc = hit if acc is None else acc + hit
    model.train()
    n = max(len(x), 1)
    return (loss / n).tolist(), ((acc.double() / n).tolist() if task == "classification" else [None] * len(loss))


@torch.no_grad()
def _weight_stats(model: nn.Module) -> list[dict]:
    """Per-configuration norms, zeros, per-layer sparsity and live inputs (over the weights)."""
    layers = [(f"layers.{i}.weight", m.weight.detach()) for i, m in enumerate(model.layers)]
    k = layers[0][1].shape[0]
    out = [{"layers": {}} for _ in range(k)]
    l2 = sum((w.double() ** 2).flatten(1).sum(1) for _, w in layers).sqrt().tolist()
    l1 = sum(w.double().abs().flatten(1).sum(1) for _, w in layers).tolist()
    zeros = [(w == 0).flatten(1).sum(1).tolist() for _, w in layers]
    live_rows = [w.ne(0).any(2).sum(1).tolist() for _, w in layers]
    live_in = layers[0][1].ne(0).any(1).sum(1).tolist()
    numel = sum(w[0].numel() for _, w in layers)
    for j in range(k):
        for (name, w), z, lr_ in zip(layers, zeros, live_rows):
            out[j]["layers"][name] = {"numel": w[0].numel(), "zeros": z[j], "zero_fraction": z[j] / w[0].numel(),
                                      "live_rows": lr_[j], "rows": w.shape[1]}
        z = sum(zz[j] for zz in zeros)
        out[j].update(weight_l2=l2[j], weight_l1=l1[j], zero_fraction=z / numel,
                      live_inputs=live_in[j], n_inputs=layers[0][1].shape[2])
    return out


def train_stack(cfg: dict, data, run: dict, points: list[dict], run_dir: Path, stops: dict,
                 rungs: list[int], progress=None, log_every: int = 1, halving=(2, 2)) -> dict:
    """Train one seed's points stacked; returns {point name: epoch it stopped at}.

    ``stops`` maps point names to a decided stop epoch (from an earlier seed); points of
    the first seed are ranked at each rung in ``rungs`` instead.
    """
    tr = cfg["train"]
    if cfg["model"].get("factory") and not sweep_func.stackable(cfg, data):
        return sweep_func.train_points(cfg, data, run, points, run_dir, progress)
    stack = _Stack(cfg, data, run, points)
    gen = torch.Generator().manual_seed(cfg["seed"])
    files = {p["name"]: open(run_dir / "runs" / p["name"] / "metrics.jsonl", "a") for p in points}
    stopped, last, step = {}, {}, 0
    loss_fn = nn.CrossEntropyLoss(reduction="none") if data.task == "classification" else None
    try:
        for epoch in range(1, tr["epochs"] + 1):
            t0 = time.perf_counter()
            order = torch.randperm(len(data.x_train), generator=gen)
            k = len(stack.points)
            for i in range(0, len(order), tr["batch_size"]):
                idx = order[i:i + tr["batch_size"]]
                out, yb = stack.model(data.x_train[idx]), data.y_train[idx]
                if loss_fn is not None:
                    per = loss_fn(out.flatten(0, 1), yb.repeat(k)).view(k, -1).mean(1)
                else:
                    per = F.mse_loss(out.squeeze(2), yb.expand(k, len(yb)), reduction="none").mean(1)
                per.sum().backward()
                stack.opt.step()
                stack.opt.zero_grad(set_to_none=True)
                step += 1
            lr = stack.inner.param_groups[0]["lr"]
            if stack.sched is not None:
                stack.sched.step()
            seconds = (time.perf_counter() - t0) / k
            stack.times.append(seconds)
            decide = epoch in rungs or (stops is not None and epoch in stops.values())
            if not (decide or epoch == tr["epochs"] or (log_every and epoch % log_every == 0)):
                continue
            rows = _log_epoch(stack, data, epoch, step, lr, seconds, files, progress)
            for p, row in zip(stack.points, rows):
                last[p["name"]] = row
            if epoch == tr["epochs"]:
                break
            drop = _to_stop(stack, rows, epoch, stops, rungs, *halving)
            if drop:
                for j in drop:
                    p = stack.points[j]
                    stopped[p["name"]] = epoch
                    _finish_point(stack, j, last[p["name"]], run_dir, stopped=True)
                stack.keep([j for j in range(len(stack.points)) if j not in drop])
        for j, p in enumerate(stack.points):
            _finish_point(stack, j, last[p["name"]], run_dir, stopped=False)
    finally:
        for f in files.values():
            f.close()
    return stopped


def _log_epoch(stack: _Stack, data, epoch, step, lr, seconds, files, progress) -> list[dict]:
    evals = {s: _evaluate(stack.model, getattr(data, f"x_{s}"), getattr(data, f"y_{s}"), data.task)
             for s in ("train", "val", "test")}
    stats = sweep_func.weight_stats(stack.model) if stack.func else _weight_stats(stack.model)
    rows = []
    for j, p in enumerate(stack.points):
        row = {"epoch": epoch, "step": step, "phase": "train"}
        for s, (losses, accs) in evals.items():
            row[f"{s}_loss"], row[f"{s}_acc"] = losses[j], accs[j]
        row.update({k: v for k, v in stats[j].items()}, lr=float(lr * p["lr"] / stack.cfg["train"]["lr"]),
                   epoch_time=seconds)
        files[p["name"]].write(json.dumps(row) + "\n")
        files[p["name"]].flush()
        if progress is not None:
            progress(p["name"], row)
        rows.append(row)
    return rows


def _to_stop(stack: _Stack, rows, epoch, stops, rungs, eta: int = 2, min_full: int = 2) -> list[int]:
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


def _finish_point(stack: _Stack, j: int, last: dict, run_dir: Path, stopped: bool) -> None:
    p = stack.points[j]
    model = stack.unstack(j)
    d = run_dir / "runs" / p["name"]
    runfolder.save_pt(model.state_dict(), d / "model.pt")
    final = train_mod.final_metrics(model, last, train_mod.weight_stats(model))
    final.update(mean_epoch_time=sum(stack.times) / max(len(stack.times), 1), stopped_early=stopped,
                 warm_started=False, stacked_with=len(stack.points),
                 layer_l2={k: v["l2"] for k, v in dl.layer_stats(model).items()})
    runfolder.write_json(d / "final.json", final)


# -- the sweep -----------------------------------------------------------------------------------
def make_points(alphas, lrs, seeds) -> list[dict]:
    """Every (seed, lr, alpha) of the grid, seed-major; ``key`` names the point across seeds.

    >>> [p["name"] for p in make_points([0.1, 1.0], [1e-3], [0])]
    ['a0.1', 'a1']
    """
    return [{"name": point_name(a, lr, s, len(lrs), len(seeds)), "key": point_name(a, lr, 0, len(lrs), 1),
             "alpha": a, "lr": lr, "seed": s}
            for s in seeds for lr in lrs for a in alphas]


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
        train_mod.describe({**run, "penalty": spec["penalty"], "alpha": a})


def memory_plan(cfg: dict, data, n_points: int, max_memory: int | None) -> tuple[int, int, int]:
    """(configurations per stack, bytes per configuration, budget) for this sweep."""
    model = build_model(cfg, data)
    widths = sweep_func.activations_per_example(model, data.x_train[:1]) if cfg["model"].get("factory") else None
    per = bytes_per_config(model, cfg["train"]["batch_size"], min(4096, max(len(data.x_train), len(data.x_test))),
                           widths)
    budget = max_memory if max_memory is not None else available_memory() // 2
    return plan_chunks(n_points, per, budget), per, budget


def run_sweep(cfg: dict, spec: dict, run_dir: Path, data=None, progress=None, say=print,
              resume: bool = False) -> dict:
    """Train every point of ``spec`` into ``run_dir`` (already made) and write ``sweep.json``.

    ``spec``: ``penalty``, ``alphas``, ``lrs`` (None = ``train.lr``), ``seeds`` (count),
    ``full`` (no halving), ``max_memory`` (bytes or None); optional ``eta`` and ``min_full``
    (halving keeps ``ceil(n / eta)`` points per rung until ``min_full`` are left; 2 and 2),
    ``log_every`` (metrics every N epochs; 0, the default, logs only the rungs and the last
    epoch, which is all the path needs and saves evaluation time).

    With ``resume=True`` (``decaylab resume`` of a sweep folder) a stack whose points all
    have ``final.json`` is kept; one with an unfinished point trains again whole, so its
    halving and its metrics are an uninterrupted sweep's, bit for bit.
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
        runfolder.write_json(run_dir / "config.json", {**cfg_saved, "command": "sweep", "sweep": spec,
                                                         "versions": train_mod.versions(), "created": runfolder.now()})
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
                for p in chunk:
                    runfolder.run(run_dir, p["name"]).begin({
                        **run, "name": p["name"], "alpha": p["alpha"], "lr": p["lr"], "seed": seed,
                        "describe": train_mod.describe({**run, "alpha": p["alpha"]})})
                rungs = [] if spec.get("full") or not stacked else halving_rungs(len(chunk), cfg["train"]["epochs"], eta, min_full)
                train_stack(cfg_s, data_s, run, chunk, run_dir, stops, rungs, progress,
                             spec.get("log_every", 0), (eta, min_full))
            if stops is None:  # the first seed's halving decides for the others
                finals = {p["key"]: runfolder.run(run_dir, p["name"]).final() for p in mine}
                stops = {k: f["epochs"] for k, f in finals.items() if f.get("stopped_early")}
        result = summarize(run_dir, spec, points, run, method)
        result["wall_time"] = time.perf_counter() - t_start
        runfolder.write_json(run_dir / "sweep.json", result)
        if (cfg.get("pareto") or {}).get("reference", "none") == "magnitude":
            from .reference import train_reference

            result["reference"] = train_reference(cfg, result, run_dir, data, progress, say, resume)
            result["wall_time"] = time.perf_counter() - t_start
            runfolder.write_json(run_dir / "sweep.json", result)
    return result


def resume_sweep(run_dir, progress=None, say=print) -> dict:
    """Continue a sweep folder (``decaylab resume``): finished points are kept, the rest
    trained again (see :func:`run_sweep`). A Ray sweep resumes locally."""
    saved = runfolder.read_config(run_dir)
    spec = saved["sweep"]
    cfg = {k: v for k, v in saved.items() if k not in ("command", "versions", "created", "sweep")}
    cfg["runs"] = [{k: v for k, v in saved["runs"][0].items()}]
    train_mod.check_device(cfg["train"]["device"])
    return run_sweep(cfg, spec, Path(run_dir), progress=progress, say=say, resume=True)


# -- the path and the choice -----------------------------------------------------------------------
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
    data_info = json.loads((run_dir / "data.json").read_text())
    classification = data_info["task"] == "classification"
    n_val = data_info["n_val"]
    by_key: dict[str, list] = {}
    for p in points:
        f = json.loads((run_dir / "runs" / p["name"] / "final.json").read_text())
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
        "describe": train_mod.describe({**run, "alpha": spec["alphas"][0]}).replace(f"alpha={spec['alphas'][0]:g}", "alpha=λ"),
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
