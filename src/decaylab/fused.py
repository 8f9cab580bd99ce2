"""Compiled (``torch.compile``) versions of the wrapper's per-bucket updates.

One compiled call updates every tensor of a bucket (one rule, one param group, one device
and dtype): it reads each weight (and, for the Adam metric, Adam's ``exp_avg_sq``) and
writes the weight, with the threshold, the group norms and the low-precision residual
computed inside the kernel. Nothing weight-sized is kept between steps: the eager path
keeps one fp32 buffer per weight for the Adam metric's step sizes, the fused path none.

What is fused (everything else takes the eager kernels of :mod:`decaylab.functional`):

* ``"soft"``  L1 prox, plain or Adam metric;
* ``"enet"``  ElasticNet prox, plain or Adam metric; ``"enet_decay"`` its decoupled step;
* ``"group"`` GroupLasso prox/decoupled over rows, columns or channels, plain or Adam
  metric (a function grouping stays eager);
* ``"shrink"`` decoupled L2, ``"div"`` L2's prox.

Under torch's own Adam/AdamW, an elementwise prox bucket (``soft``, ``enet``, ``div``) also
takes Adam's step for its weights into the same kernel (:func:`_bucket_adam_update`, driven
by :func:`decaylab.step_sizes.fused_adam_step`): one pass reading ``w, g, m, v`` and writing ``w, m, v``,
the traffic of a fused AdamW step alone, where Adam's step and a separate prox make nine
passes. Adam's state keeps torch's layout, so either path may take any step.

The choice is made once per bucket, at its first step: compiled when it is supported and
``torch.compile`` exists, else eager. Results equal the eager path to within a few float32
ulps (float32: relative 1e-6): the compiled kernel forms ``lr * alpha`` in the weight's
precision instead of in Python's double, and evaluates ``t / d`` where the eager path
multiplies by a stored reciprocal, so thresholds can differ in the last bit; a weight
sitting exactly on a threshold may then be zeroed by one path and keep a last-bit residue
in the other.

Nothing here raises from ``opt.step()``: every private torch API (inductor's
``compile_fx``, dynamo's backend lookup and calling convention, inductor config keys, the
code-object copy) lives in :mod:`decaylab._compat`, imported inside its fallback, and each
kernel falls back on its own: direct call of the captured program, then dynamo's guarded
call, then ``torch.compile``'s public path, then eager (a compilation that fails, say with
no C++ compiler, leaves that kernel eager: each kernel tries, and pays, its own compile).
Each fallback warns once per reason. :func:`disable` still turns compilation off for the
whole process.

Each bucket signature (shapes, dtypes, device, op) compiles its own copy of the kernel
(its own code object, so buckets never share a cache or its recompile limit), with static
shapes: a compilation is paid once per signature (a few seconds on a CPU; another wrapper
over a model of the same shapes reuses it). A step where only some of a bucket's tensors
have a gradient takes the eager path for that step rather than compiling a variant.

**Nothing a user can change between steps is a compile-time constant.** The learning rate,
the strength and its schedule, eps, ``l1_ratio``, Adam's betas, weight decay, ``maximize``
and the bias corrections reach the kernel as run-time data (one small ``scalars`` tensor
on the weights' device, ``_STEP`` ... ``_ADAM_HEAD``), so no guard can miss a change and
no scheduler recompiles anything (OneCycleLR moves beta1 every step). A program's identity
is only what cannot change silently: each tensor's shape, stride, dtype and device, the
op and its group dims (which penalty), and for the Adam kernel two flags (weight decay
none, coupled or decoupled; the prox's metric), compared at every call so that a change
selects its own program. The wrapper follows a model converted after ``regularize()``
(bf16, float64, channels_last, another device): its buckets, residuals and kernels are
chosen again at the next step (:meth:`decaylab.buckets.Buckets.follow_conversion`).

After its first call a bucket runs the compiled program without dynamo
(:class:`decaylab._compat.Compiled`): dynamo's guard evaluation costs a fixed time a call,
a visible share of a small model's whole AdamW step on a CPU (the "via dynamo" rows of
``bench/step_overhead.py --only direct``), and the signature above already fixes what the
guards would check; each call compares its tensors' shapes, strides, dtypes and devices with
those the program was compiled for, and anything else goes back through dynamo (which
recompiles if it must).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import _compat
from ._compat import layout as _layout
from ._warn import warn

__all__ = ["available", "disable", "plan", "Kernel", "CPU_MIN_NUMEL"]

# From this many penalized elements in a bucket, fused=None (auto) compiles on a CPU:
# below it the compile time is not won back in a typical run (how long it takes to pay
# back: bench/step_overhead.py, "first two calls" and the step tables, BENCHMARKS.md).
CPU_MIN_NUMEL = 1 << 20
# Below this many weights a CPU bucket's compiled kernel runs on one thread (Kernel._compiled).
CPU_SINGLE_THREAD_NUMEL = 1 << 18
# Below this many weights a CPU bucket keeps Adam's step apart from its kernel: the inner
# optimizer runs anyway (for the biases), and on a small model its fixed cost, not memory
# traffic, is the step (the LeNet-5 rows of bench/step_overhead.py, BENCHMARKS.md).
CPU_ADAM_MIN_NUMEL = 1 << 18

_BACKEND: object = "inductor"  # tests swap in a counting backend
_STATE = {"disabled": ""}  # non-empty: why compilation is off for this process


def available() -> bool:
    """Whether compiled kernels may be used in this process.

    >>> isinstance(available(), bool)
    True
    """
    return not _STATE["disabled"] and hasattr(torch, "compile")


def disable(reason: str) -> None:
    """Turn compiled kernels off for this process (one warning naming ``reason``)."""
    if not _STATE["disabled"]:
        warn(f"decaylab: compiled kernels are off, using the eager path ({reason})")
    _STATE["disabled"] = reason or "disabled"


def plan(penalty, mode: str, metric: str) -> tuple[str, float] | None:
    """``(op, l1_ratio)`` for a rule the compiled kernel covers, else None: the penalty says
    (:meth:`decaylab.Penalty.kernel_op`).

    >>> from decaylab.penalties import L1, L2SP
    >>> plan(L1(1e-3), "prox", "adam"), plan(L2SP(1e-3), "decoupled", "lr")
    (('soft', 1.0), None)
    """
    op = penalty.kernel_op(mode, metric)
    return None if op is None else (op, penalty.kernel_ratio())


# -- the kernel body: traced by torch.compile, also runnable eagerly -------------------------
def _soft(x: Tensor, t) -> Tensor:
    return x - torch.clamp(x, -t, t)  # exact zeros wherever |x| <= t


def _group_factor(x: Tensor, t, dims: tuple) -> Tensor:
    """``relu(1 - t sqrt|g| / ||x_g||)`` per group, from the sum of squares.

    The edge cases come out of IEEE arithmetic, with no branch per group: a zero (or
    underflowed) norm gives ``rsqrt = inf``, so ``1 - inf`` clamps to 0 (a zero group stays
    zero); under a zero threshold that is ``0 * inf = NaN``, and a NaN entry makes the sum
    NaN: a NaN factor becomes 1, which leaves the group alone, as the eager kernel does. Five
    scalar operations per group: inductor recomputes the factor for every vector of a row
    (it cannot hoist it past the row's stores), so each one counts on small rows.
    """
    size = 1
    for d in dims:
        size *= x.shape[d]
    y = 1.0 - (t * math.sqrt(size)) * torch.rsqrt((x * x).sum(dim=dims, keepdim=True))
    return torch.where(y == y, y, 1.0).clamp_min(0.0)


def _apply(op: str, x: Tensor, t, r, dims: tuple) -> Tensor:
    """``op`` of ``x`` with threshold ``t``; ``r``: ``(l1_ratio, 1 - l1_ratio)`` (ElasticNet)."""
    if op == "soft":
        return _soft(x, t)
    if op == "enet":
        return _soft(x, t * r[0]) / (1.0 + t * r[1])
    if op == "enet_decay":
        return _soft(x * torch.clamp_min(1.0 - t * r[1], 0.0), t * r[0])
    if op == "shrink":
        return x * torch.clamp_min(1.0 - t, 0.0)
    if op == "div":
        return x / (1.0 + t)
    return x * _group_factor(x, t, dims)  # "group"


def _adam_threshold(op: str, st: Tensor, a, d: Tensor, dims: tuple) -> Tensor:
    """Given Adam's denominator ``d = sqrt(v_hat) + eps``: ``st * a / max(d, a)`` per
    coordinate; per group, ``a`` times the harmonic mean of the coordinates' steps
    ``st / max(d, a)``."""
    d = torch.maximum(d, a)
    if op != "group":
        return st * a / d
    ok = d == d  # not NaN (vectorizes; isnan does not): a NaN entry is left out of the mean, as eagerly
    count = ok.sum(dim=dims, keepdim=True, dtype=d.dtype)
    return st * a * count / torch.where(ok, d, 0.0).sum(dim=dims, keepdim=True)


# where each run-time value sits in a kernel's ``scalars`` tensor (Kernel builds it):
# both kernels start with the prox step, the strength, eps, l1_ratio and 1 - l1_ratio;
# _bucket_update then has sqrt(1 - beta2^t) per tensor (the Adam metric); _bucket_adam_update
# has Adam's values, then lr / (1 - beta1^t) and sqrt(1 - beta2^t) per tensor
_STEP, _ALPHA, _EPS, _L1_SHARE, _L2_SHARE, _HEAD = range(6)
_LR, _BETA1_C, _BETA2, _BETA2_C, _WD, _WD_KEEP, _SIGN, _ADAM_HEAD = range(_HEAD, _HEAD + 8)


def _bucket_update(ws: list, comps, vs, scalars: Tensor, alphas, op: str, dims: tuple):
    """One bucket's update, in place: ``w <- op(w, threshold)``.

    ``scalars``: a tensor on the weights' device holding every value that may change
    between steps: lr times the schedule, the strength (when it is a float), Adam's eps,
    ``l1_ratio`` and ``1 - l1_ratio``, then for the Adam metric ``sqrt(1 - beta2**step)``
    per tensor (a tensor, not Python floats: a float would be a compile-time constant, stale
    or recompiled when it changes); ``alphas``: one broadcast strength view per tensor when
    the strength is a ``[K]`` tensor, else None; ``comps``: fp32 residuals of low-precision
    weights (the weight is updated as ``w + comp`` in fp32, rounded back, and the rounding
    error kept); ``vs``: Adam's second moments (None: plain metric). ``op`` and ``dims``
    (which penalty, which groups) are the only constants.
    """
    st, eps, r = scalars[_STEP], scalars[_EPS], (scalars[_L1_SHARE], scalars[_L2_SHARE])
    for i in range(len(ws)):
        w = ws[i]
        x = w if comps is None else w.float() + comps[i]
        a = scalars[_ALPHA] if alphas is None else alphas[i]
        if vs is None:
            t = st * a
        else:
            t = _adam_threshold(op, st, a, torch.sqrt(vs[i].to(x.dtype)) / scalars[_HEAD + i] + eps, dims[i])
        y = _apply(op, x, t, r, dims[i])
        if comps is None:
            w.copy_(y)
        else:
            lo = y.to(w.dtype)
            w.copy_(lo)
            comps[i].copy_(y - lo.float())


def _bucket_adam_update(ws: list, gs: list, ms: list, vs: list, scalars: Tensor, alphas, flags: tuple,
                        op: str, dims: tuple):
    """Adam's (or AdamW's) step and the prox of one bucket in one pass, in place.

    Per coordinate, as ``torch.optim.Adam``/``AdamW`` do::

        g <- sign g  (sign = -1 under maximize);  w <- w (1 - lr wd) if decoupled else g <- g + wd w
        m <- lerp(m, g, 1 - beta1);  v <- beta2 v + (1 - beta2) g^2
        d <- sqrt(v) / sqrt(1 - beta2^t) + eps;  w <- w - lr / (1 - beta1^t) * m / d

    and then ``w <- op(w, threshold)`` with the plain threshold ``step * alpha`` or, in
    Adam's metric, ``step * alpha / max(d, alpha)`` (the same ``d``). ``scalars`` (run-time
    data, see ``_STEP`` ... ``_ADAM_HEAD``): the prox step, the strength, eps, ``l1_ratio``,
    ``1 - l1_ratio``, lr, ``1 - beta1``, beta2, ``1 - beta2``, weight decay, ``1 - lr wd``,
    the sign, then per tensor ``lr / (1 - beta1^t)`` and ``sqrt(1 - beta2^t)``; ``flags``
    (constants: they choose the program): ``(decay, adam_metric)`` with decay None (no
    weight decay), "coupled" or "decoupled". Reads w, g, m, v and writes w, m, v: the seven
    passes of a fused AdamW step, and no more.
    """
    decay, adam_metric = flags
    st, eps, r = scalars[_STEP], scalars[_EPS], (scalars[_L1_SHARE], scalars[_L2_SHARE])
    for i in range(len(ws)):
        w, g = ws[i], gs[i] * scalars[_SIGN]
        a = scalars[_ALPHA] if alphas is None else alphas[i]
        x = w
        if decay == "decoupled":
            x = x * scalars[_WD_KEEP]
        elif decay == "coupled":
            g = g + scalars[_WD] * x
        m = torch.lerp(ms[i], g, scalars[_BETA1_C])
        v = vs[i] * scalars[_BETA2] + scalars[_BETA2_C] * g * g
        d = torch.sqrt(v) / scalars[_ADAM_HEAD + 2 * i + 1] + eps
        x = x - scalars[_ADAM_HEAD + 2 * i] * m / d
        t = _adam_threshold(op, st, a, d, dims[i]) if adam_metric else st * a
        y = _apply(op, x, t, r, dims[i])
        ms[i].copy_(m)
        vs[i].copy_(v)
        w.copy_(y)


_COMPILED: dict = {}  # signature -> _compat.Compiled (one code object each), at most _COMPILED_MAX
# signatures kept for reuse by later buckets (the oldest goes first; a live kernel keeps its
# own program): the keys hold layouts and flags only, never a value, so this bound is only
# reached by a process that builds many differently shaped models
_COMPILED_MAX = 64



def _signature(ws, comps, vs, alphas, kernel) -> tuple:
    """What fixes a program: the backend, the op, its group dims and each tensor's layout;
    no value that may change between steps (those are in the ``scalars`` tensor)."""
    def desc(ts):
        return None if ts is None else tuple(_layout(ts))

    return (_BACKEND, kernel.op, kernel.dims, desc(ws), desc(comps), desc(vs), desc(alphas))


class Kernel:
    """The compiled update of one bucket.

    Calling it runs the compiled kernel and returns True, or returns False (having changed
    nothing) once this kernel has fallen back to eager (:class:`decaylab._compat.Compiled`);
    other kernels are not affected.
    Its identity is ``op`` and ``dims``; every value (lr, strength, eps, ``l1_ratio``,
    Adam's betas and weight decay) comes with each call. ``r`` is the ``l1_ratio`` of calls
    that pass none.

    What it did is public: ``calls`` (compiled calls that ran), ``adam_calls`` (of them,
    those that took Adam's step inside the kernel), ``guarded_calls`` (of them, those that
    went through dynamo's guards rather than straight to the kept program: the first call,
    a recompile, a changed tensor layout) and ``level`` (:class:`decaylab._compat.Compiled`).

    >>> k = Kernel("soft", 1.0, [(1,)], "demo")
    >>> k.op, k.calls, k.level
    ('soft', 0, None)
    """

    def __init__(self, op: str, r: float, dims: Sequence[tuple], tag: str):
        self.op, self.r, self.dims, self.calls = op, float(r), tuple(tuple(d) for d in dims), 0
        self.adam_calls = self.guarded_calls = 0
        self.tag, self._fn, self._last = tag, None, None
        self._adam_fn, self._adam_key = None, None
        self._scalars: dict = {}  # the last run-time scalars: values -> tensor (one entry)

    def __getstate__(self):  # a copy or a pickle finds its compiled function again
        return {**self.__dict__, "_fn": None, "_adam_fn": None, "_last": None, "_scalars": {}}

    def __setstate__(self, state):
        self.__dict__.update({"_scalars": {}, "_last": None, "adam_calls": 0, "guarded_calls": 0, **state})

    def _compiled(self, key: tuple, body: Callable, ws) -> _compat.Compiled:
        """The compiled function for this bucket's signature, shared by every bucket with
        the same one (another wrapper over a model of the same shapes compiles nothing).

        A small CPU bucket compiles single-threaded: its loops take microseconds, less than
        the OpenMP fork and barriers of each parallel loop (and far less when the cores are
        busy with other work, where a waiting thread spins)."""
        fn = _COMPILED.get(key)
        if fn is None:
            options = None
            if _BACKEND == "inductor":
                small = ws[0].device.type == "cpu" and sum(w.numel() for w in ws) < CPU_SINGLE_THREAD_NUMEL
                options = _compat.inductor_options(single_thread=small)
            while len(_COMPILED) >= _COMPILED_MAX:
                del _COMPILED[next(iter(_COMPILED))]
            fn = _COMPILED[key] = _compat.Compiled(body, f"{self.tag}_{len(_COMPILED)}", _BACKEND, options)
        return fn

    def __call__(self, ws, comps, vs, rbcs, s: float, alphas, eps: float, r: float | None = None) -> bool:
        """``w <- op(w, s * alpha)`` (or in Adam's metric with ``vs``, ``rbcs``, ``eps``);
        ``r``: ElasticNet's current ``l1_ratio``."""
        if not available():
            return False
        w = ws[0]
        dtype = torch.promote_types(w.dtype, torch.float32)
        a, alphas = (float(alphas), None) if isinstance(alphas, float) else (1.0, list(alphas))
        r = self.r if r is None else float(r)
        head = (s, a, float(eps), r, 1.0 - r)
        if isinstance(rbcs, Tensor):  # Adam's step counters live on the device: no host sync
            scalars = torch.cat([torch.tensor(head, dtype=dtype, device=w.device), rbcs.to(dtype)])
        else:  # the same values as last step (a constant lr, the plain metric): the same tensor
            key = (*head, *(rbcs or ()))
            scalars = self._scalars.get(key)
            if scalars is None or scalars.dtype != dtype or scalars.device != w.device:
                scalars = torch.tensor(key, dtype=dtype, device=w.device)
                self._scalars = {key: scalars}
        if self._fn is None:
            self._fn = self._compiled(_signature(ws, comps, vs, alphas, self), _bucket_update, ws)
        ws = list(ws)
        tensors = [*ws, *(comps or ()), *(vs or ()), scalars, *(alphas or ())]
        return self._run(self._fn, tensors, ws, comps, vs, scalars, alphas, self.op, self.dims)

    def adam(self, ws, gs, ms, vs, step_sizes, rbcs, s: float, lr: float, alphas, hyper: tuple,
             r: float | None = None) -> bool:
        """Adam's step and this bucket's prox in one compiled call (:func:`_bucket_adam_update`);
        ``step_sizes``/``rbcs``: ``lr / (1 - beta1^t)`` and ``sqrt(1 - beta2^t)`` per tensor
        (floats, or one device tensor each); ``hyper``: beta1, beta2, eps, weight decay,
        decoupled?, maximize?, prox in Adam's metric?; ``r``: ElasticNet's ``l1_ratio``.

        The values go into the run-time ``scalars``; the flags that choose a program
        (decoupled or coupled decay, none at ``weight_decay=0``; the metric) are compared
        at every call, so a change selects its own program, never a stale one."""
        if not available():
            return False
        w = ws[0]
        beta1, beta2, eps, wd, decoupled, maximize, adam_metric = hyper
        a, alphas = (float(alphas), None) if isinstance(alphas, float) else (1.0, list(alphas))
        r = self.r if r is None else float(r)
        head = [s, a, float(eps), r, 1.0 - r, lr, 1.0 - beta1, beta2, 1.0 - beta2, wd, 1.0 - lr * wd,
                -1.0 if maximize else 1.0]
        if isinstance(rbcs, Tensor):
            scalars = torch.cat([torch.tensor(head, dtype=w.dtype, device=w.device),
                                 torch.stack([step_sizes, rbcs], 1).reshape(-1).to(w.dtype)])
        else:
            per = [x for pair in zip(step_sizes, rbcs) for x in pair]
            scalars = torch.tensor([*head, *per], dtype=w.dtype, device=w.device)
        flags = (None if wd == 0.0 else "decoupled" if decoupled else "coupled", bool(adam_metric))
        if self._adam_fn is None or self._adam_key != flags:
            key = ("adam", flags, *_signature(ws, None, vs, alphas, self), _signature(gs, None, ms, None, self))
            self._adam_fn, self._adam_key = self._compiled(key, _bucket_adam_update, ws), flags
        ws, gs, ms, vs = list(ws), list(gs), list(ms), list(vs)
        tensors = [*ws, *gs, *ms, *vs, scalars, *(alphas or ())]
        ran = self._run(self._adam_fn, tensors, ws, gs, ms, vs, scalars, alphas, flags, self.op, self.dims)
        self.adam_calls += ran
        return ran

    @property
    def fresh(self) -> bool:
        """Nothing compiled yet for this bucket."""
        return self._fn is None and self._adam_fn is None

    @property
    def level(self) -> str | None:
        """How the last call's program runs: ``"direct"``, ``"guarded"`` (through dynamo at
        every call), ``"eager"`` (it fell back: the eager kernels run), or None before the
        first call."""
        return None if self._last is None else self._last.path

    def _run(self, fn: _compat.Compiled, tensors: list, *args) -> bool:
        """Never raises: a failure falls back within ``fn`` (this kernel only, warned once)
        and ends, at worst, in False: the caller runs the eager kernels, from then on."""
        self._last, guarded = fn, fn.guarded_calls
        if not fn(tensors, *args):
            return False
        self.calls += 1
        self.guarded_calls += fn.guarded_calls - guarded  # fn may be shared with other buckets
        return True

