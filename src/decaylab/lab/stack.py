"""The stacked model and its optimizer: the K live configurations of one seed.

The K points of one seed are one model whose Linear weights have shape ``[K, ...]``
(batched matmuls, one optimizer step for all); strengths are ``[K]`` tensors and learning
rates a ``[K]`` scale (:class:`PerConfigLR`). Configuration ``k`` of a stack computes what
``decaylab train`` computes for it alone (same seed, data order, init), up to fp32 rounding
of the batched matmul. A model.factory model is stacked with torch.func (lab/sweep_func.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import decaylab as dl

from . import sweep_func
from . import recipe
from .build import build_model
from .models import stack_models, unstack_model
from .state import FORMAT, rng_state, set_rng_state


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
        return recipe.make_optimizer(train, params)
    kind = "sgd" if train["optimizer"] == "sgd" else "adam"
    return PerConfigLR(params, lr_scale, kind=kind, lr=train["lr"], momentum=train["momentum"])


# -- one stack ---------------------------------------------------------------------------------
class Stack:
    """The K live configurations of one seed: model, optimizer, strengths, lr scales."""

    def __init__(self, cfg: dict, data, run: dict, points: list[dict]):
        tr = cfg["train"]
        torch.manual_seed(cfg["seed"])  # the init `decaylab train` gets with this seed
        self.base = build_model(cfg, data).to(tr["device"])
        self.func = bool(cfg["model"].get("factory"))  # your model: torch.func (lab/sweep_func.py)
        self.model = sweep_func.FuncStacked(self.base, len(points)) if self.func else \
            stack_models([self.base] * len(points))
        self.cfg, self.run, self.points = cfg, run, list(points)
        # the loop's position (lab/loop.py): the batches `decaylab train` draws with this seed
        self.batch_gen = torch.Generator().manual_seed(cfg["seed"])
        self.epoch, self.step, self.order, self.batch, self.epoch_seconds = 0, 0, None, 0, 0.0
        self.times: list[float] = []  # training seconds of each epoch, all K points together
        lrs = [p["lr"] for p in points]
        self.same_lr = all(lr == tr["lr"] for lr in lrs)
        steps_per_epoch = math.ceil(len(data.x_train) / tr["batch_size"])
        scale = None if self.same_lr else torch.tensor(lrs, dtype=torch.float64) / tr["lr"]
        self.inner = _inner_optimizer(tr, self.model.parameters(), scale)
        self.steps_per_epoch = steps_per_epoch
        # L2SP's reference: the initial weights, kept (and sliced by halving) here, since a
        # rung re-wraps the stack and a fresh L2SP would snapshot the weights of the rung
        self.init = {n: p.detach().clone() for n, p in self.model.named_parameters()} \
            if run["penalty"] == "l2sp" else None
        self.opt = self._wrap(0)
        self.sched = recipe.cosine_schedule(self.inner, tr["epochs"]) if tr["schedule"] == "cosine" else None

    def _alphas(self) -> torch.Tensor:
        """Strengths as a [K] tensor; with per-config lr, scaled so lr * alpha is each point's."""
        alphas = torch.tensor([p["alpha"] for p in self.points], dtype=torch.float64)
        mode = self.run["mode"] or recipe.make_penalty(self.run, None).default_mode
        if not self.same_lr and mode != "coupled":
            alphas = alphas * torch.tensor([p["lr"] for p in self.points], dtype=torch.float64) / self.cfg["train"]["lr"]
        return alphas

    def _wrap(self, steps: int):
        rules = recipe.make_rules({**self.run, "alpha": self._alphas(), "reference": self.init}, self.model,
                                  self.steps_per_epoch)
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
        if self.init is not None:
            self.init = {n: w[index].clone() for n, w in self.init.items()}
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

    def state_dict(self) -> dict:
        """Everything needed to continue after a finished epoch, as tensors and plain data:
        the live points, weights, optimizer (the wrapper's state included), schedule, data
        position and random generators (a checkpoint, as ``TrainState.state_dict``)."""
        return {"format": FORMAT, "points": [p["name"] for p in self.points],
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else None,
                "init": self.init, "batch_gen": self.batch_gen.get_state(), "epoch": self.epoch,
                "step": self.step, "times": list(self.times), "rng": rng_state()}

    def load_state_dict(self, ckpt: dict) -> None:
        """Continue from ``ckpt`` (of a stack built with the same points, seed and config):
        the points halving had stopped are dropped first, as the interrupted sweep did."""
        if ckpt.get("format") != FORMAT:
            raise ValueError(f"stack checkpoint format {ckpt.get('format')!r} is not {FORMAT}; it was "
                             f"written by another decaylab version: start the sweep again")
        names = [p["name"] for p in self.points]
        if ckpt["points"] != names:
            self.keep([names.index(n) for n in ckpt["points"]])
        self.model.load_state_dict(ckpt["model"])
        self.init = ckpt["init"]
        self.opt = self._wrap(0)
        self.opt.load_state_dict(ckpt["optimizer"])
        if self.sched is not None and ckpt["scheduler"] is not None:
            self.sched.load_state_dict(ckpt["scheduler"])
        self.batch_gen.set_state(ckpt["batch_gen"])
        self.epoch, self.step, self.times = ckpt["epoch"], ckpt["step"], list(ckpt["times"])
        set_rng_state(ckpt["rng"])

    def unstack(self, j: int) -> nn.Module:
        """Configuration ``j`` as the plain model ``decaylab train`` would have trained."""
        return self.model.unstack(j) if self.func else unstack_model(self.model, j, self.base)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, task: str):
        """Per-configuration (loss, accuracy) lists on one split."""
        return _evaluate(self.model, x, y, task)

    def weight_stats(self) -> list[dict]:
        """Per-configuration norms, zeros, per-layer sparsity and live inputs."""
        return sweep_func.weight_stats(self.model) if self.func else _weight_stats(self.model)



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
