"""Sweeps over your own model (``model.factory``): stacked with ``torch.func``, else one
point at a time.

:class:`FuncStacked` holds ``K`` copies of any module as one: every parameter and buffer
gets a leading ``[K]`` dimension, and the forward is ``vmap(functional_call)`` over them
(the batch is shared). The stacked tensors stay on a copy of the user's module tree, so
the library's default selection (Linear/Conv weights) and ``[K]`` strengths act on them as
on the lab's stacked MLPs. BatchNorm in train mode works per configuration: its running
statistics are stacked buffers, updated in place under ``vmap``. Random layers (dropout)
draw different masks per configuration (``randomness="different"``), so such a point is
a valid run but not bit-equal to ``decaylab train``.

A model ``vmap`` cannot run (data-dependent control flow, ``.item()``, in-place updates
of unstacked state) is trained point by point (:func:`train_points`), each exactly as
``decaylab train`` trains it; the sweep then does no successive halving.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, vmap

import decaylab as dl

from . import measure, runfolder
from . import train as train_mod
from .build import build_model


class FuncStacked(nn.Module):
    """``K`` configurations of ``base`` as one module: ``[N, ...] -> [K, N, out]``.

    >>> base = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    >>> s = FuncStacked(base, 5)
    >>> bool(torch.allclose(s.unstack(2).eval()(torch.ones(1, 3)), base.eval()(torch.ones(1, 3))))
    True
    >>> s(torch.randn(8, 3)).shape, s.net[0].weight.shape, s.net[1].running_mean.shape
    (torch.Size([5, 8, 2]), torch.Size([5, 4, 3]), torch.Size([5, 4]))
    """

    def __init__(self, base: nn.Module, k: int):
        super().__init__()
        self.__dict__["_shape_of"] = copy.deepcopy(base)  # not a submodule: holds no trained state
        self.net = copy.deepcopy(base)  # the same tree, its tensors stacked [K, ...]
        with torch.no_grad():
            for mod, leaf, p in _slots(self.net, params=True):
                setattr(mod, leaf, nn.Parameter(p.detach().unsqueeze(0).repeat(k, *[1] * p.ndim)))
            for mod, leaf, b in _slots(self.net, params=False):
                mod.register_buffer(leaf, b.unsqueeze(0).repeat(k, *[1] * b.ndim).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = dict(self.net.named_parameters())
        buffers = dict(self.net.named_buffers())
        self._shape_of.train(self.training)

        def one(p, b, xb):
            return functional_call(self._shape_of, (p, b), (xb,))

        return vmap(one, in_dims=(0, 0, None), randomness="different")(params, buffers, x)

    def unstack(self, k: int) -> nn.Module:
        """Configuration ``k`` as a plain copy of the base module."""
        out = copy.deepcopy(self._shape_of)
        out.load_state_dict({n: t[k] for n, t in self.net.state_dict().items()})
        return out

    def keep(self, index: torch.Tensor) -> dict:
        """Keep configurations ``index`` only; returns {old parameter: new parameter}."""
        moved = {}
        with torch.no_grad():
            for mod, leaf, p in _slots(self.net, params=True):
                new = nn.Parameter(p[index].clone())
                setattr(mod, leaf, new)
                moved[p] = new
            for mod, leaf, b in _slots(self.net, params=False):
                mod.register_buffer(leaf, b[index].clone())
        return moved


def _slots(net: nn.Module, params: bool):
    out = []
    for mod in net.modules():
        items = mod.named_parameters(recurse=False) if params else mod.named_buffers(recurse=False)
        out += [(mod, leaf, t) for leaf, t in items]
    return out


def why_not_stackable(base: nn.Module, x: torch.Tensor, task: str) -> str | None:
    """None if a 2-configuration :class:`FuncStacked` of ``base`` trains on ``x`` (a forward
    and a backward), else the reason (the error's first line)."""
    try:
        s = FuncStacked(base, 2)
        out = s(x)
        (out.float().pow(2).mean() if task != "classification" else out.logsumexp(-1).mean()).backward()
        s.eval()
        with torch.no_grad():
            s(x)
    except Exception as err:  # vmap's refusals come as several exception types
        text = str(err).strip().splitlines()
        return f"{type(err).__name__}: {text[0] if text else ''}"
    return None


def activations_per_example(model: nn.Module, x1: torch.Tensor) -> int:
    """Numbers every leaf module outputs for one example (``x1``: a batch of one), the
    activations a stacked configuration keeps per example.

    >>> activations_per_example(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), torch.zeros(1, 3))
    10
    """
    total = [0]

    def hook(mod, inp, out):
        if torch.is_tensor(out):
            total[0] += out.numel() // max(len(x1), 1)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(x1)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return total[0]


def _reason(cfg: dict, data) -> str | None:
    torch.manual_seed(cfg["seed"])  # the init the run gets: a stateless check
    return why_not_stackable(build_model(cfg, data), data.x_train[:4], data.task)


def stackable(cfg: dict, data) -> bool:
    """Whether this sweep's model trains stacked: the lab's MLPs always, a ``model.factory``
    model when ``torch.func`` runs it (else its points train one at a time)."""
    return not cfg["model"].get("factory") or _reason(cfg, data) is None


def stacked_or_say(cfg: dict, data, say) -> bool:
    """:func:`stackable`, saying why not on the terminal."""
    why = _reason(cfg, data) if cfg["model"].get("factory") else None
    if why is None:
        return True
    say(f"sweep: torch.func cannot stack model.factory={cfg['model']['factory']!r} ({why}); training its "
        f"points one at a time, without successive halving")
    return False


def weight_stats(stacked: FuncStacked) -> list[dict]:
    """Per-configuration weight statistics, as ``decaylab train`` logs them."""
    out = []
    for j in range(_k(stacked)):
        stats = measure.weight_stats(stacked.unstack(j))
        out.append({k: v for k, v in stats.items() if k not in ("input_mask", "zeros", "weights")})
    return out


def _k(stacked: FuncStacked) -> int:
    return next(stacked.parameters()).shape[0]


def train_points(cfg: dict, data, run: dict, points: list[dict], run_dir, progress=None) -> dict:
    """Train each point alone (the fallback when the model cannot be stacked): the run of
    ``decaylab train`` with the point's strength and learning rate. Returns {} (no halving)."""
    cfg_p = {**cfg, "train": {**cfg["train"], "checkpoint": False}}
    for p in points:
        tr = {**cfg_p["train"], "lr": p["lr"]}
        run_p = {**run, "name": p["name"], "alpha": p["alpha"]}
        out = runfolder.run(run_dir, p["name"])
        state = train_mod.build_state({**cfg_p, "train": tr}, data, run_p)
        train_mod.run_epochs(state, {**cfg_p, "train": tr}, data, run_p, out, progress)
        final = train_mod.finish_run(state, out)
        final.update(stopped_early=False, warm_started=False, stacked_with=1,
                     layer_l2={k: v["l2"] for k, v in dl.layer_stats(state.model).items()})
        out.write_final(final)
    return {}
