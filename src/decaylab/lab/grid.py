"""The grid of a sweep: strengths and learning rates, point names, memory and halving rungs.

``parse_grid`` reads ``--alphas`` / ``--lrs``; ``make_points`` crosses them with the seeds;
``memory_plan`` says how many configurations fit in one stack; ``halving_rungs`` says when
successive halving stops the lower part of the points (see :mod:`decaylab.lab.sweep`).
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from . import sweep_func
from .build import build_model


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


# -- points ------------------------------------------------------------------------------------
def make_points(alphas, lrs, seeds) -> list[dict]:
    """Every (seed, lr, alpha) of the grid, seed-major; ``key`` names the point across seeds.

    >>> [p["name"] for p in make_points([0.1, 1.0], [1e-3], [0])]
    ['a0.1', 'a1']
    """
    return [{"name": point_name(a, lr, s, len(lrs), len(seeds)), "key": point_name(a, lr, 0, len(lrs), 1),
             "alpha": a, "lr": lr, "seed": s}
            for s in seeds for lr in lrs for a in alphas]


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


def memory_plan(cfg: dict, data, n_points: int, max_memory: int | None) -> tuple[int, int, int]:
    """(configurations per stack, bytes per configuration, budget) for this sweep."""
    model = build_model(cfg, data)
    widths = sweep_func.activations_per_example(model, data.x_train[:1]) if cfg["model"].get("factory") else None
    per = bytes_per_config(model, cfg["train"]["batch_size"], min(4096, max(len(data.x_train), len(data.x_test))),
                           widths)
    budget = max_memory if max_memory is not None else available_memory() // 2
    return plan_chunks(n_points, per, budget), per, budget


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
