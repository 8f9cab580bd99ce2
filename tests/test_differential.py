"""Differential fuzz test: ``fused=True``, ``fused=None`` and ``fused=False`` take the same steps.

Each case (drawn from a seed by :func:`make_case`) is a small model, an optimizer, rules, an
LR scheduler and mutations between steps (param-group values, penalty attributes,
``add_param_group``, channels_last, a dtype change, ``state_dict`` round trips, missing
gradients). Three copies of it run in lockstep from the same weights and gradients, and
after every step their weights (with the low-precision residual the wrapper carries) and
optimizer state must agree to a few float32 ulps (a weight sitting on a threshold may be
zeroed by one path and keep a last-bit residue in the other: a few such exact-zero
mismatches are allowed). Two further properties ride along:

* a compiled kernel recompiles only after a change of dtype, layout or kind of update,
  never after a change of value (lr, betas, eps, weight decay, alpha, l1_ratio,
  schedules): design.md section 6;
* a model converted to another dtype after ``regularize()`` (before its first step) trains
  as one converted before it.

CI runs ``CI_SEEDS`` with the ``aot_eager`` backend (the traced program run by eager
kernels: what decaylab adds around the compiler, at a fraction of inductor's compile
time). Many more, outside CI (``--triage`` names the known bug a failure needs, and
shrinks any other failure to a smaller case)::

    DECAYLAB_FUZZ_CASES=500 python -m pytest tests/test_differential.py -k many
    python tests/test_differential.py --cases 500 [--start 1000] [--backend inductor] [--triage]
    python tests/test_differential.py --seed 17          # one case: its description and result
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import random
import sys
import traceback
import warnings
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import decaylab as dl
from decaylab import _compat, fused


# -- cases ------------------------------------------------------------------------------------
ARCHS = ("mlp", "norm", "conv")
OPTIMIZERS = ("Adam", "AdamW", "NAdam", "RAdam", "SGD", "Adagrad", "RMSprop")
# weighted toward what the compiled kernels cover (L2SP and coupled mode stay eager)
PENALTIES = ("L1", "L1", "L1", "L2", "L2", "ElasticNet", "ElasticNet", "GroupLasso", "GroupLasso", "L2SP")
SCHEDULES = {  # a rule's strength multiplier f(step)
    "warmup": lambda s: min(1.0, (s + 1) / 3),
    "off-at-1": lambda s: 0.0 if s == 1 else 1.0,
    "decay": lambda s: 1.0 / (1 + s),
}
VALUE_KEYS = ("lr", "eps", "betas", "weight_decay", "momentum", "alpha", "l1_ratio")


@dataclass
class Case:
    seed: int
    arch: str
    opt: str
    opt_kwargs: dict
    groups: int  # 1: one param group; 2: weights and the rest apart (second lr halved)
    rules: list  # (penalty, args, params, mode, metric, schedule)
    scheduler: tuple | None  # (name, kwargs)
    steps: int
    mutations: dict = field(default_factory=dict)  # step -> [(what, args...)], before that step
    no_grad: dict = field(default_factory=dict)  # step -> names whose gradient is dropped
    backend: str = "aot_eager"
    auto_min_numel: int = 0  # fused=None copy: fused.CPU_MIN_NUMEL
    auto_adam_min_numel: int = 0  # fused=None copy: fused.CPU_ADAM_MIN_NUMEL
    dtype_check: bool = True  # a step-0 dtype change: also run a copy converted before regularize()
    closure: bool = False  # opt.step(closure) (the wrapper then keeps Adam's step apart)

    def describe(self) -> str:
        lines = [f"seed {self.seed}: {self.arch} model, {self.opt}({_kw(self.opt_kwargs)}), "
                 f"{self.groups} param group(s), {self.steps} steps{', step(closure)' * self.closure}, "
                 f"backend {self.backend}, "
                 f"fused=None thresholds {self.auto_min_numel}/{self.auto_adam_min_numel}"]
        for pen, args, params, mode, metric, sched in self.rules:
            lines.append(f"  Rule({pen}({', '.join(map(repr, args))}), params={params!r}, "
                         f"mode={mode!r}, metric={metric!r}, schedule={sched!r})")
        lines.append(f"  scheduler: {self.scheduler}")
        for k in range(self.steps):
            for m in self.mutations.get(k, []):
                lines.append(f"  before step {k + 1}: {m[0]} {m[1:] if len(m) > 1 else ''}")
            if self.no_grad.get(k):
                lines.append(f"  step {k + 1}: no gradient for {self.no_grad[k]}")
        return "\n".join(lines)


def _kw(d: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items())


class Net(nn.Module):
    """A body plus ``extra``, a 1-D parameter outside the optimizer until ``add_param_group``."""

    def __init__(self, arch: str):
        super().__init__()
        if arch == "mlp":
            self.body = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
        elif arch == "norm":
            self.body = nn.Sequential(nn.Linear(8, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 3, bias=False))
        else:
            # no bias before the BatchNorm: its gradient is rounding noise, which Adam's
            # normalized step turns into +-lr, differently in any two runs
            self.body = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 3, 3), nn.Flatten(), nn.Linear(12, 3))
        self.extra = nn.Parameter(torch.zeros(3))
        self.arch = arch

    def inputs(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (6, 2, 4, 4) if self.arch == "conv" else (6, 8)
        return torch.randn(shape, generator=gen), torch.randn(6, 3, generator=gen)

    def forward(self, x):
        return self.body(x) + self.extra


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.3g}")


def _optimizer_kwargs(rng: random.Random, name: str) -> dict:
    kw: dict = {}
    if name in ("Adam", "AdamW", "NAdam", "RAdam"):
        kw["lr"] = _log_uniform(rng, 1e-3, 0.1)
        kw["betas"] = (rng.choice([0.8, 0.9, 0.95]), rng.choice([0.99, 0.999]))
        kw["eps"] = rng.choice([1e-8, 1e-8, 1e-6, 1e-3])
        kw["weight_decay"] = rng.choice([0.0, 0.0, 0.0, 0.01])
        if name in ("Adam", "AdamW") and rng.random() < 0.3:
            kw["amsgrad"] = True
        if name in ("Adam", "AdamW") and rng.random() < 0.15:
            kw["fused"] = True
    elif name == "SGD":
        kw["lr"] = _log_uniform(rng, 1e-3, 0.3)
        kw["momentum"] = rng.choice([0.0, 0.9])
        kw["nesterov"] = kw["momentum"] > 0 and rng.random() < 0.5
        kw["weight_decay"] = rng.choice([0.0, 0.0, 0.01])
    elif name == "Adagrad":
        kw["lr"] = _log_uniform(rng, 1e-3, 0.1)
    else:  # RMSprop
        kw["lr"] = _log_uniform(rng, 1e-3, 0.03)
        kw["momentum"] = rng.choice([0.0, 0.9])
        kw["centered"] = rng.random() < 0.3
    if rng.random() < 0.2:
        kw["maximize"] = True
    if "fused" not in kw and rng.random() < 0.3:
        kw["foreach"] = rng.choice([False, True])
    return kw


def _penalty_spec(rng: random.Random, weights_only: bool) -> tuple:
    kinds = PENALTIES if weights_only else [k for k in PENALTIES if k != "GroupLasso"]
    pen = rng.choice(kinds)
    alpha = _log_uniform(rng, 1e-3, 3.0)
    args: tuple = (alpha,)
    if pen == "ElasticNet":
        args = (alpha, rng.choice([0.2, 0.5, 0.8]))
    elif pen == "GroupLasso":
        args = (alpha, rng.choice(["rows", "inputs", "channels"]))
    mode = rng.choice([None, None, None, "prox", "decoupled", "coupled"])
    metric = rng.choice([None, None, "lr", "adam"])
    sched = rng.choice([None, None, *SCHEDULES])
    return pen, args, mode, metric, sched


def _rule_specs(rng: random.Random, model: Net) -> list:
    weights = [n for n, p in model.named_parameters() if p.ndim >= 2]
    rng.shuffle(weights)
    cut = rng.randint(1, len(weights))
    chunks = [weights[:cut], weights[cut:]] if rng.random() < 0.5 else [weights[:cut]]
    specs = []
    for i, chunk in enumerate(c for c in chunks if c):
        pen, args, mode, metric, sched = _penalty_spec(rng, weights_only=True)
        params = None if i == 0 and rng.random() < 0.3 else sorted(chunk)  # default selection
        specs.append((pen, args, params, mode, metric, sched))
    if rng.random() < 0.3:
        pen, args, mode, metric, sched = _penalty_spec(rng, weights_only=False)
        specs.append((pen, args, "*.bias", mode, metric, sched))
    return specs


def _make_rules(specs) -> list:
    rules = []
    for pen, args, params, mode, metric, sched in specs:
        penalty = getattr(dl, pen)(*args)
        rules.append(dl.Rule(penalty, params=params, mode=mode, metric=metric,
                             schedule=SCHEDULES[sched] if sched else None))
    return rules


def _scheduler_spec(rng: random.Random, name: str, kw: dict, steps: int) -> tuple | None:
    pick = rng.choice([None, "StepLR", "CosineAnnealingLR", "LambdaLR", "OneCycleLR", "OneCycleLR"])
    if pick == "StepLR":
        return pick, {"step_size": rng.choice([1, 2]), "gamma": 0.7}
    if pick == "CosineAnnealingLR":
        return pick, {"T_max": steps}
    if pick == "LambdaLR":
        return pick, {}
    if pick == "OneCycleLR":  # moves beta1 (or momentum) every step where there is one
        cycle = "betas" in kw or kw.get("momentum", 0) > 0
        return pick, {"max_lr": kw["lr"], "total_steps": steps + 2, "cycle_momentum": cycle}
    return None


def _mutation(rng: random.Random, case: Case, model: Net, k: int, added: list) -> tuple | None:
    kw = case.opt_kwargs
    options = ["lr", "alpha"]
    options += ["eps"] * ("eps" in kw or case.opt in ("Adagrad", "RMSprop"))
    options += ["betas"] * ("betas" in kw)
    options += ["weight_decay", "maximize", "foreach", "resume"]
    options += ["momentum"] * (case.opt == "SGD")  # RMSprop has no momentum buffer to start from
    options += ["l1_ratio"] * any(r[0] == "ElasticNet" for r in case.rules)
    options += ["channels_last"] * (case.arch == "conv")
    if not added and (case.scheduler is None or case.scheduler[0] == "StepLR"):
        options.append("add_param_group")  # torch's other schedulers hold one value per group
    what = rng.choice(options)
    group = rng.choice(["all", 0])
    if what == "lr":
        return what, group, _log_uniform(rng, 1e-3, 0.1)
    if what == "eps":
        return what, group, rng.choice([1e-8, 1e-4, 1e-2, 1.0])
    if what == "betas":
        return what, group, (rng.choice([0.5, 0.85, 0.9]), rng.choice([0.9, 0.99, 0.999]))
    if what == "weight_decay":
        return what, group, rng.choice([0.0, 0.01, 0.1])
    if what == "momentum":
        return what, group, rng.choice([0.0, 0.5, 0.9])
    if what in ("maximize", "foreach"):
        return what, group, rng.choice([False, True])
    if what == "alpha":
        return what, rng.randrange(len(case.rules)), _log_uniform(rng, 1e-3, 3.0)
    if what == "l1_ratio":
        i = rng.choice([i for i, r in enumerate(case.rules) if r[0] == "ElasticNet"])
        return what, i, rng.choice([0.0, 0.3, 0.7, 1.0])
    if what == "add_param_group":
        added.append(k)
        return what, _log_uniform(rng, 1e-3, 0.1)
    if what == "resume":  # through state_dict(): into itself, or into a new optimizer (maybe of a new dtype)
        how = rng.choice(["inplace", "new", "new"])
        dtype = rng.choice([None, None, "float64", "bfloat16"]) if how == "new" else None
        return what, how, dtype
    return (what,)


def make_case(seed: int, backend: str = "aot_eager") -> Case:
    """The case of ``seed``: every choice from one ``random.Random(seed)``."""
    rng = random.Random(seed)
    arch = rng.choice(ARCHS)
    model = Net(arch)
    opt = rng.choice(OPTIMIZERS)
    kw = _optimizer_kwargs(rng, opt)
    for _ in range(50):  # draw rules until regularize() accepts them (invalid combinations raise)
        specs = _rule_specs(rng, model)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dl.regularize(getattr(torch.optim, opt)(model.parameters(), **kw), model, _make_rules(specs))
            break
        except ValueError:
            continue
    steps = rng.randint(3, 6)
    case = Case(seed, arch, opt, kw, rng.choice([1, 2]), specs, _scheduler_spec(rng, opt, kw, steps), steps,
                backend=backend)
    numel = sum(p.numel() for p in model.parameters())
    case.auto_min_numel = rng.choice([0, 0, rng.randint(1, numel)])
    case.auto_adam_min_numel = rng.choice([0, fused.CPU_ADAM_MIN_NUMEL])
    case.closure = rng.random() < 0.2
    if rng.random() < 0.25:  # before step 1, after regularize(): a dtype and/or layout change
        case.mutations[0] = [("dtype", rng.choice(["float64", "bfloat16"]))]
    added: list = []
    for k in range(1, steps):
        if rng.random() < 0.6:
            ms = [_mutation(rng, case, model, k, added) for _ in range(rng.choice([1, 1, 2]))]
            case.mutations[k] = [m for m in ms if m]
        if rng.random() < 0.25:
            names = [n for n, _ in model.named_parameters() if n != "extra"]
            case.no_grad[k] = sorted(rng.sample(names, rng.randint(1, 2)))
    return case


# -- running one copy -------------------------------------------------------------------------
class _CountingBackend:
    """The case's backend, counting compilations (one object per backend name, so the compiled
    kernels, keyed by it, are shared by every case of a process)."""

    def __init__(self, name: str):
        self.name, self.count = name, 0

    def __call__(self, gm, example_inputs):
        self.count += 1
        options = _compat.inductor_options(single_thread=False)
        return _compat.private_backend(self.name, options)(gm, example_inputs)


_BACKENDS: dict = {}


@contextlib.contextmanager
def _patched(backend: _CountingBackend, min_numel: int, adam_min_numel: int):
    saved = (fused._BACKEND, fused.CPU_MIN_NUMEL, fused.CPU_ADAM_MIN_NUMEL)
    fused._BACKEND, fused.CPU_MIN_NUMEL, fused.CPU_ADAM_MIN_NUMEL = backend, min_numel, adam_min_numel
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*weight_decay.*also gets")
            warnings.filterwarnings("error", message=".*compiled kernels are off")
            yield
    finally:
        fused._BACKEND, fused.CPU_MIN_NUMEL, fused.CPU_ADAM_MIN_NUMEL = saved


class Run:
    """One copy of a case: model, wrapper and scheduler, stepped and mutated by the case."""

    def __init__(self, case: Case, flag: bool | None, dtype_before_wrap: bool = False):
        self.case, self.flag = case, flag
        self.thresholds = (case.auto_min_numel, case.auto_adam_min_numel) if flag is None else (0, 0)
        self.backend = _BACKENDS.setdefault(case.backend, _CountingBackend(case.backend))
        torch.manual_seed(case.seed)
        self.model = Net(case.arch)
        self.gen = torch.Generator().manual_seed(case.seed)
        if dtype_before_wrap:
            self.convert(case.mutations[0][0][1])
        self.rules = _make_rules(case.rules)
        with self.patched():
            self.opt = dl.regularize(self.new_inner(), self.model, self.rules, fused=flag)
        self.sched = self.new_scheduler(self.opt)

    def patched(self):
        return _patched(self.backend, *self.thresholds)

    def new_inner(self, groups=None) -> torch.optim.Optimizer:
        cls = getattr(torch.optim, self.case.opt)
        if groups is None:
            named = [(n, p) for n, p in self.model.named_parameters() if n != "extra"]
            groups = [[p for n, p in named if p.ndim >= 2], [p for n, p in named if p.ndim < 2]]
            if self.case.groups == 1:
                groups = [groups[0] + groups[1]]
            groups = [{"params": g} for g in groups]
            if len(groups) == 2:
                groups[1]["lr"] = self.case.opt_kwargs["lr"] / 2
        return cls(groups, **self.case.opt_kwargs)

    def new_scheduler(self, opt):
        if self.case.scheduler is None:
            return None
        name, kw = self.case.scheduler
        if name == "LambdaLR":
            kw = {"lr_lambda": lambda s: 1.0 / (1 + s)}
        return getattr(torch.optim.lr_scheduler, name)(opt, **kw)

    def convert(self, dtype: str) -> None:
        self.model.to(getattr(torch, dtype))

    def groups(self, which):
        return self.opt.param_groups if which == "all" else [self.opt.param_groups[which]]

    def mutate(self, m: tuple) -> None:
        what = m[0]
        if what in ("lr", "eps", "betas", "weight_decay", "momentum", "maximize", "foreach"):
            for g in self.groups(m[1]):
                if what in g:
                    g[what] = m[2]
        elif what == "alpha":
            self.rules[m[1]].penalty.alpha = m[2]
        elif what == "l1_ratio":
            self.rules[m[1]].penalty.l1_ratio = m[2]
        elif what == "add_param_group":
            self.opt.add_param_group({"params": [self.model.extra], "lr": m[1]})
        elif what == "channels_last":
            self.model.to(memory_format=torch.channels_last)
        elif what == "dtype":
            self.convert(m[1])
        elif what == "resume":
            self.resume(m[1], m[2])

    def resume(self, how: str, dtype: str | None) -> None:
        """A checkpoint round trip: into the same optimizer, or into new ones (as a resumed
        run builds them), the model converted to ``dtype`` first."""
        sd = copy.deepcopy(self.opt.state_dict())
        if how == "inplace":
            self.opt.load_state_dict(sd)
            return
        if dtype:
            self.convert(dtype)
        groups = [{"params": list(g["params"])} for g in self.opt.param_groups]
        with self.patched():
            opt = dl.regularize(self.new_inner(groups), self.model, self.rules, fused=self.flag)
        sched = self.new_scheduler(opt)
        opt.load_state_dict(sd)
        if sched is not None:
            sched.load_state_dict(self.sched.state_dict())
        self.opt, self.sched = opt, sched

    def step(self, k: int) -> int:
        """Step ``k`` (from 0); returns how many kernels it compiled."""
        x, y = self.model.inputs(self.gen)
        dtype = next(self.model.body.parameters()).dtype

        def closure():
            loss = ((self.model(x.to(dtype)).float() - y) ** 2).mean()
            loss.backward()
            for name, p in self.model.named_parameters():
                if name in self.case.no_grad.get(k, ()):
                    p.grad = None
            return loss

        with self.patched():
            before = self.backend.count
            if self.case.closure:
                self.opt.step(closure)
            else:
                closure()
                self.opt.step()
            compiled = self.backend.count - before
        if self.sched is not None:
            self.sched.step()
        self.opt.zero_grad(set_to_none=k % 2 == 0)
        return compiled

    def values(self) -> dict:
        """Every parameter, its fp32 residual added (the value the wrapper carries), and every
        tensor of the optimizer state, by name."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        residuals = self.opt.state_dict()["decaylab"]["residuals"]
        flat = [p for g in self.opt.param_groups for p in g["params"]]
        out = {}
        for n, p in self.model.named_parameters():
            out[n] = p.detach()
        for i, c in residuals.items():
            out[f"{names[id(flat[int(i)])]} (+ residual)"] = flat[int(i)].detach().float() + c
        for p, st in self.opt.state.items():
            for key, v in st.items():
                if isinstance(v, torch.Tensor):
                    out[f"{names[id(p)]} state[{key!r}]"] = v
        return out


# -- comparing --------------------------------------------------------------------------------
def _tolerance(dtype: torch.dtype) -> float:
    if dtype in (torch.bfloat16, torch.float16):
        return 2.0 ** -6  # two ulps of bf16
    if dtype == torch.float64:
        return 1e-10
    return 2e-6


def compare(ref: dict, other: dict, label: str, exact: bool = False, floor: float = 0.0) -> None:
    """Equal to a few ulps (``exact``: bit for bit); an exact zero against a last-bit residue
    is allowed in at most one element in 50 of a tensor."""
    assert ref.keys() == other.keys(), f"{label}: different tensors {sorted(ref.keys() ^ other.keys())}"
    for name, a in ref.items():
        b = other[name]
        assert a.dtype == b.dtype and a.shape == b.shape, f"{label} {name}: {b.dtype}{list(b.shape)} " \
                                                          f"against {a.dtype}{list(a.shape)}"
        a, b = a.double(), b.double()
        tol = 0.0 if exact else max(_tolerance(ref[name].dtype), floor)
        scale = max(float(a.abs().max()) if a.numel() else 0.0, 1e-3)
        bad = ~torch.isclose(b, a, rtol=tol, atol=tol * scale, equal_nan=True)
        if not bad.any():
            continue
        if exact:
            raise AssertionError(f"{label}: {name} differs in {int(bad.sum())} of {a.numel()} elements")
        zero = bad & ((a == 0) | (b == 0)) & ((a - b).abs() <= 1e-3 * scale)
        if int(zero.sum()) <= max(1, a.numel() // 50) and not (bad & ~zero).any():
            continue
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{label}: {name} differs in {int(bad.sum())} of {a.numel()} elements "
            f"(first at flat index {i}: {b.flatten()[i].item()!r}, eager {a.flatten()[i].item()!r})")


STRUCTURAL = ("dtype", "channels_last", "resume", "maximize", "foreach", "add_param_group")


def _structural(m: tuple, groups: list) -> bool:
    """A change after which a kernel may compile (a new dtype, layout or kind of update); a
    weight decay switched on or off counts, a weight decay changed from one value to another
    does not."""
    if m[0] == "weight_decay":
        olds = [g.get("weight_decay", 0.0) for g in (groups if m[1] == "all" else groups[:1])]
        return any((old == 0.0) != (m[2] == 0.0) for old in olds)
    return m[0] in STRUCTURAL


def run_case(case: Case) -> list[str]:
    """Run the three copies in lockstep; raise AssertionError on the first difference. Returns
    notes (an error every copy raised alike ends the case early: noted, not failed)."""
    fused._STATE["disabled"] = ""
    fused._COMPILED.clear()  # compiled kernels are shared by signature: a case must not depend on the one before
    flags = {"fused=True": True, "fused=None": None, "fused=False": False}
    runs = {label: Run(case, flag) for label, flag in flags.items()}
    # Adagrad makes its state when it is built (converting the model after it is torch's own
    # mismatch), and an L2SP snapshot taken before the conversion is rightly more precise
    if case.dtype_check and case.mutations.get(0, [(None,)])[0][0] == "dtype" and case.opt != "Adagrad" and \
            not any(r[0] == "L2SP" for r in case.rules):
        runs["dtype before wrap"] = Run(case, False, dtype_before_wrap=True)  # must train as converted after it
    ref = runs["fused=False"]
    quiet_from, since = 2, []  # from step quiet_from on, with only value changes since, nothing compiles
    floor = 0.0  # the loosest tolerance of a dtype the weights have been stepped in: differences carry over
    compiles = 0
    for k in range(case.steps):
        muts = case.mutations.get(k, [])
        since += muts
        if any(_structural(m, ref.opt.param_groups) for m in muts) or case.no_grad.get(k - 1) or \
                case.no_grad.get(k) or any(k and r[5] and SCHEDULES[r[5]](k - 1) == 0 for r in case.rules):
            quiet_from, since = k + 2, list(muts)
        outcome = {}
        for label, run in runs.items():
            try:
                for m in muts if not (label == "dtype before wrap" and k == 0) else []:
                    run.mutate(m)
                outcome[label] = run.step(k)
            except Exception as err:  # noqa: BLE001 - compared across the copies below
                outcome[label] = err
        errors = {label: o for label, o in outcome.items() if isinstance(o, BaseException)}
        if errors:
            kinds = {type(e) for e in errors.values()}
            if len(errors) == len(runs) and len(kinds) == 1:
                return [f"step {k + 1}: every copy raised {next(iter(errors.values()))!r}"]
            label, err = next(iter(errors.items()))
            raise AssertionError(f"step {k + 1}: {label} raised, "
                                 f"{[lb for lb in runs if lb not in errors]} did not:\n"
                                 + "".join(traceback.format_exception(err)))
        compiles += sum(outcome.values())
        floor = max(floor, _tolerance(next(ref.model.body.parameters()).dtype))
        expected = ref.values()
        for label, run in runs.items():
            if label != "fused=False":
                compare(expected, run.values(), f"step {k + 1}, {label} against fused=False",
                        exact=label == "dtype before wrap", floor=floor)
            if k >= quiet_from and outcome[label]:
                raise AssertionError(f"step {k + 1}: {label} compiled {outcome[label]} kernel(s) again after "
                                     f"only value changes since step {quiet_from - 1}: {since}")
    return [f"{compiles} kernel(s) compiled"]


# -- CI: a fixed set of seeds -------------------------------------------------------------------
# seeds that once failed, each with the bug it caught (kept as regression cases)
CAUGHT: dict[int, str] = {
    7: "ElasticNet.l1_ratio changed mid-run was ignored by the compiled prox",
    17: "Adam's eps changed after step 1 was ignored by the compiled prox",
    18: "a model converted to bf16 after regularize() got no fp32 residual",
    59: "OneCycleLR moves beta1, which recompiled the Adam kernel every step",
}
# seeds 0-59 that compile at least one kernel, plus the four above
CI_SEEDS = [0, 1, 2, 4, 9, 19, 20, 26, 27, 30, 37, 38, 42, 44, 50, 53, 7, 17, 18, 59]


def _param(seed: int):
    return pytest.param(seed, id=f"seed_{seed}")


@pytest.mark.parametrize("seed", [_param(s) for s in CI_SEEDS])
def test_fused_auto_and_eager_take_the_same_steps(seed):
    case = make_case(seed)
    try:
        run_case(case)
    except AssertionError as err:
        raise AssertionError(f"{case.describe()}\n{err}\nrerun: python tests/test_differential.py --seed {seed}") from None


@pytest.mark.skipif(not os.environ.get("DECAYLAB_FUZZ_CASES"), reason="set DECAYLAB_FUZZ_CASES=N to run N cases")
def test_many_cases():
    n = int(os.environ["DECAYLAB_FUZZ_CASES"])
    start = int(os.environ.get("DECAYLAB_FUZZ_START", "1000"))
    failures = _fuzz(range(start, start + n), os.environ.get("DECAYLAB_FUZZ_BACKEND", "aot_eager"))
    assert not failures, "\n\n".join(failures)


# -- the known bugs, one deterministic test each -----------------------------------------------
def _train_small(fused_flag, opt_cls, opt_kw, rule, steps=5, mutate=None, sched=None, backend="aot_eager",
                 adam_min_numel=None):
    """A two-layer MLP trained ``steps`` steps; ``mutate(k, opt)`` runs before step ``k``.
    Returns the model, the wrapper and the number of kernels compiled."""
    backend = _CountingBackend(backend)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 3, generator=gen)
    adam_min = fused.CPU_ADAM_MIN_NUMEL if adam_min_numel is None else adam_min_numel
    fused._STATE["disabled"] = ""
    with _patched(backend, 0, adam_min):
        opt = dl.regularize(opt_cls(model.parameters(), **opt_kw), model, [rule(), dl.Rule(None, params="*.bias")],
                            fused=fused_flag)
        scheduler = sched(opt) if sched else None
        for k in range(steps):
            if mutate:
                mutate(k, opt)
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
            opt.zero_grad()
            if scheduler:
                scheduler.step()
    return model, opt, backend.count


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=2e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")


def _set(key, value, at=2):
    def mutate(k, opt):
        if k == at:
            for g in opt.param_groups:
                g[key] = value
    return mutate


def test_eps_changed_after_the_first_steps_reaches_the_compiled_adam_metric_prox():
    # Adam's own step apart from the kernel (a small CPU bucket's default): the Adam-metric
    # threshold lr * alpha / max(sqrt(v_hat) + eps, alpha) must follow the new eps
    rule = lambda: dl.Rule(dl.L1(0.05), params="*.weight", metric="adam")  # noqa: E731
    kw = {"lr": 0.05, "eps": 1e-8}
    eager, _, _ = _train_small(False, torch.optim.Adam, kw, rule, mutate=_set("eps", 1.0))
    comp, opt, _ = _train_small(True, torch.optim.Adam, kw, rule, mutate=_set("eps", 1.0))
    assert {r["kernel"] for r in dl.updates(opt)} == {"compiled"}
    _same_weights(eager, comp)


def test_l1_ratio_changed_mid_run_reaches_the_compiled_elastic_net_prox():
    pens = []

    def rule():
        pens.append(dl.ElasticNet(0.5, l1_ratio=0.5))
        return dl.Rule(pens[-1], params="*.weight", metric="lr")

    def mutate(k, opt):
        if k == 2:
            pens[-1].l1_ratio = 1.0

    eager, _, _ = _train_small(False, torch.optim.SGD, {"lr": 0.1}, rule, mutate=mutate)
    comp, opt, _ = _train_small(True, torch.optim.SGD, {"lr": 0.1}, rule, mutate=mutate)
    assert {r["kernel"] for r in dl.updates(opt)} == {"compiled"}
    _same_weights(eager, comp)


@pytest.mark.parametrize("flag", [False, True], ids=["eager", "fused"])
def test_a_model_converted_to_bf16_after_regularize_still_decays(flag):
    # lr * alpha = 1e-3 a step: 1 - 1e-3 rounds to 1 in bf16, so only the fp32 residual decays
    def run(before: bool):
        torch.manual_seed(0)
        model = nn.Linear(6, 4)
        if before:
            model.to(torch.bfloat16)
        with _patched(_BACKENDS.setdefault("aot_eager", _CountingBackend("aot_eager")), 0, 0):
            opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                                dl.Rule(dl.L2(0.01), params="weight"), fused=flag)
            model.to(torch.bfloat16)
            start = model.weight.detach().float().clone()
            for _ in range(30):
                model.weight.grad = torch.zeros_like(model.weight)
                opt.step()
        return start, model.weight.detach().float()

    start, before = run(True)
    _, after = run(False)
    assert (before.abs() < start.abs()).float().mean() > 0.5  # decayed by ~3 %: several bf16 steps
    torch.testing.assert_close(after, before, rtol=0, atol=0)


RECOMPILE_TRIGGERS = {
    "OneCycleLR moves beta1": dict(sched=lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=10, cycle_momentum=True)),
    "eps changed": dict(mutate=_set("eps", 1e-3)),
    "weight_decay changed": dict(mutate=_set("weight_decay", 0.02), kw={"weight_decay": 0.01}),
}


@pytest.mark.parametrize("trigger", list(RECOMPILE_TRIGGERS))
def test_adam_hyperparameters_changing_every_step_compile_nothing_new(trigger):
    # Adam's step inside the prox kernel (allowed for this small bucket): compiled once at
    # step 2 (step 1 is Adam's own, making the state); values moving never compile again
    t = RECOMPILE_TRIGGERS[trigger]
    rule = lambda: dl.Rule(dl.L1(0.02), params="*.weight")  # noqa: E731
    kw = {"lr": 0.05, **t.get("kw", {})}
    eager, _, _ = _train_small(False, torch.optim.Adam, kw, rule, steps=6, mutate=t.get("mutate"),
                               sched=t.get("sched"))
    comp, opt, compiles = _train_small(True, torch.optim.Adam, kw, rule, steps=6, mutate=t.get("mutate"),
                                       sched=t.get("sched"), adam_min_numel=0)
    _same_weights(eager, comp)
    assert dl.updates(opt)[0]["calls"] == 5
    assert compiles == 1


def _fuzz(seeds, backend: str, out=None, shrunk: bool = False) -> list[str]:
    failures = []
    for seed in seeds:
        case = make_case(seed, backend)
        try:
            notes = run_case(case)
        except AssertionError as err:
            known = explain(case) if shrunk else None
            if known:
                notes = [f"FAIL (known: {known}) " + str(err).splitlines()[0]]
                if out:
                    print(f"seed {seed}: {'; '.join(notes)}", file=out, flush=True)
                continue
            if shrunk:
                case = shrink(case)
                try:
                    run_case(case)
                except AssertionError as small:
                    err = small
            failures.append(f"{case.describe()}\n{err}")
            notes = ["FAIL " + str(err).splitlines()[0]]
        if out:
            print(f"seed {seed}: {'; '.join(notes) or 'ok'}", file=out, flush=True)
    return failures


def _failure(case: Case) -> str | None:
    """The kind of failure of ``case`` (None: it passes)."""
    try:
        run_case(case)
    except AssertionError as err:
        first = str(err).splitlines()[0]
        for kind in ("compiled", "different tensors", "raised", "differs"):
            if kind in first:
                return kind + (" (dtype before wrap)" if "before wrap" in first else "")
        return first
    return None


def shrink(case: Case) -> Case:
    """A smaller case failing the same way: drops mutations, missing gradients, the scheduler,
    rules and steps while the failure stays (outside CI: for reports)."""
    kind = _failure(case)
    if kind is None:
        return case

    def variants(c: Case):
        last = max([k for k, ms in c.mutations.items() if ms] + [0]) + 1
        if last < c.steps:
            yield _with(c, steps=last)
        for k, ms in c.mutations.items():
            for i in range(len(ms)):
                yield _with(c, mutations={**c.mutations, k: ms[:i] + ms[i + 1:]})
        for k in c.no_grad:
            yield _with(c, no_grad={j: v for j, v in c.no_grad.items() if j != k})
        if c.scheduler:
            yield _with(c, scheduler=None)
        for i in range(len(c.rules)):
            if len(c.rules) > 1 and not any(m[0] in ("alpha", "l1_ratio") for ms in c.mutations.values() for m in ms):
                yield _with(c, rules=c.rules[:i] + c.rules[i + 1:])

    smaller = True
    while smaller:
        smaller = False
        for c in variants(case):
            if c.steps >= 1 and _failure(c) == kind:
                case, smaller = c, True
                break
    return case


KNOWN_BUGS = ("eps", "betas", "weight_decay", "l1_ratio", "OneCycleLR", "dtype before wrap")


def without(case: Case, bugs=KNOWN_BUGS) -> Case:
    """``case`` without what the known ``bugs`` need (mutations of those names, OneCycleLR
    moving beta1, the dtype-before-wrap copy): for triage."""
    sched = None if "OneCycleLR" in bugs and case.scheduler and case.scheduler[0] == "OneCycleLR" else case.scheduler
    muts = {k: [m for m in ms if m[0] not in bugs] for k, ms in case.mutations.items()}
    return _with(case, mutations=muts, scheduler=sched, dtype_check="dtype before wrap" not in bugs)


def explain(case: Case) -> str | None:
    """Which known bug a failing case needs (the one whose removal makes it pass), or None
    when it fails without any of them."""
    if _failure(without(case)) is not None:
        return None
    alone = [bug for bug in KNOWN_BUGS if _failure(without(case, (bug,))) is None]
    return " or ".join(alone) if alone else "several of " + ", ".join(KNOWN_BUGS)


def _with(case: Case, **changes) -> Case:
    c = copy.copy(case)
    for key, value in changes.items():
        setattr(c, key, value)
    return c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--start", type=int, default=1000, help="first seed (CI takes 0-15)")
    ap.add_argument("--seed", type=int, help="one case: print it and run it")
    ap.add_argument("--backend", default="aot_eager", choices=["aot_eager", "inductor"])
    ap.add_argument("--triage", action="store_true", help="a failure the known bugs explain: one line; any other: shrunk")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.cases)
    if args.seed is not None:
        print(make_case(args.seed, args.backend).describe())
    failures = _fuzz(seeds, args.backend, out=sys.stdout, shrunk=args.triage)
    print("\n\n".join(failures))
    print(f"{len(failures)} of {len(seeds)} cases failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
