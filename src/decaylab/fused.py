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
by ``Regularized._adam_fused_step``): one pass reading ``w, g, m, v`` and writing ``w, m, v``,
the traffic of a fused AdamW step alone, where Adam's step and a separate prox make nine
passes. Adam's state keeps torch's layout, so either path may take any step.

The choice is made once per bucket, at its first step: compiled when it is supported and
``torch.compile`` works here, else eager. A compilation that fails (no C++ compiler, an
unsupported platform, an inductor error) switches every bucket of the process to the eager
path, with one warning saying why. Results equal the eager path to within a few float32
ulps (float32: relative 1e-6): the compiled kernel forms ``lr * alpha`` in the weight's
precision instead of in Python's double, and evaluates ``t / d`` where the eager path
multiplies by a stored reciprocal, so thresholds can differ in the last bit; a weight
sitting exactly on a threshold may then be zeroed by one path and keep a last-bit residue
in the other.

Each bucket signature (shapes, dtypes, device, op) compiles its own copy of the kernel
(its own code object, so buckets never share a cache or its recompile limit), with static
shapes: a compilation is paid once per signature (a few seconds on a CPU; another wrapper
over a model of the same shapes reuses it), and the learning rate, the strength, its
schedule and Adam's bias correction are run-time inputs (one small tensor on the weights'
device), so the kernel does not recompile as they change. A step where only some of a bucket's tensors
have a gradient takes the eager path for that step rather than compiling a variant.

After its first call a bucket runs the compiled program without dynamo (:class:`_Compiled`):
dynamo's guard evaluation costs ~25 us a call on a CPU, a fifth of a small model's whole AdamW
step, and the signature above already fixes what the guards would check; each call compares
its tensors' shapes, strides, dtypes and devices with those the program was compiled for, and
anything else goes back through dynamo (which recompiles if it must).
"""

from __future__ import annotations

import math
import types
from typing import Callable, Sequence

import torch
from torch import Tensor

from ._warn import warn

__all__ = ["available", "disable", "plan", "Kernel", "CPU_MIN_NUMEL"]

# From this many penalized elements in a bucket, fused=None (auto) compiles on a CPU:
# below it the compile time is not won back in a typical run. bench/step_overhead.py
# (BENCHMARKS.md): a cold compile takes 5-15 s per bucket on the 2-core machine; on the
# 5.8M-weight MLP the Adam-metric prox costs ~12 ms a step eagerly (4.0x a 4 ms AdamW step,
# quiet machine) and ~2 ms fused (1.4-1.7x), so the compile pays after ~1,000 steps; a
# 270k-weight LeNet-300-100 saves well under 1 ms a step: 10,000+ steps to pay back.
CPU_MIN_NUMEL = 1 << 20
# Below this many weights a CPU bucket's compiled kernel runs on one thread (Kernel._compiled).
CPU_SINGLE_THREAD_NUMEL = 1 << 18
# Below this many weights a CPU bucket keeps Adam's step apart from its kernel: the inner
# optimizer runs anyway (for the biases), and on a small model its fixed cost, not memory
# traffic, is the step (LeNet-5, 61k weights: L1 metric=lr 1.8x an AdamW step with Adam's
# step inside the kernel, 1.4x without; bench/step_overhead.py, BENCHMARKS.md).
CPU_ADAM_MIN_NUMEL = 1 << 18

_BACKEND: object = "inductor"  # tests swap in a counting backend
# round low-precision casts as eager does: the residual w32 - float(bf16(w32)) is the
# whole point, and inductor otherwise folds the round trip away (residual 0)
_OPTIONS = {"emulate_precision_casts": True}
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
    """``(op, l1_ratio)`` for a rule the compiled kernel covers, else None.

    >>> from decaylab.penalties import L1, L2SP
    >>> plan(L1(1e-3), "prox", "adam"), plan(L2SP(1e-3), "decoupled", "lr")
    (('soft', 1.0), None)
    """
    from .groups import Indexed
    from .penalties import L1, L2, ElasticNet, GroupLasso

    kind = type(penalty)
    if mode == "coupled":
        return None
    if kind is L1 and mode in ("prox", "decoupled"):
        return "soft", 1.0
    if kind is ElasticNet:
        return ("enet" if mode == "prox" else "enet_decay"), penalty.l1_ratio
    if kind is GroupLasso and not isinstance(penalty.grouping, Indexed):
        return "group", 1.0
    if kind is L2 and metric == "lr":
        return ("div" if mode == "prox" else "shrink"), 1.0
    return None


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


def _apply(op: str, x: Tensor, t, r: float, dims: tuple) -> Tensor:
    if op == "soft":
        return _soft(x, t)
    if op == "enet":
        return _soft(x, t * r) / (1.0 + t * (1.0 - r))
    if op == "enet_decay":
        return _soft(x * torch.clamp_min(1.0 - t * (1.0 - r), 0.0), t * r)
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


def _bucket_update(ws: list, comps, vs, scalars: Tensor, alphas, eps: float, r: float, op: str, dims: tuple):
    """One bucket's update, in place: ``w <- op(w, threshold)``.

    ``scalars``: a tensor on the weights' device holding lr times the schedule, the
    strength (when it is a float) and, for the Adam metric, ``sqrt(1 - beta2**step)`` per
    tensor (a tensor, not Python floats: torch.compile specializes on floats, which would
    recompile at every new lr); ``alphas``: one broadcast strength view per tensor when
    the strength is a ``[K]`` tensor, else None; ``comps``: fp32 residuals of low-precision weights (the weight is updated
    as ``w + comp`` in fp32, rounded back, and the rounding error kept); ``vs``/``rbcs``:
    Adam's second moments (None: plain metric).
    """
    for i in range(len(ws)):
        w = ws[i]
        x = w if comps is None else w.float() + comps[i]
        a = scalars[1] if alphas is None else alphas[i]
        st = scalars[0]
        if vs is None:
            t = st * a
        else:
            t = _adam_threshold(op, st, a, torch.sqrt(vs[i].to(x.dtype)) / scalars[2 + i] + eps, dims[i])
        y = _apply(op, x, t, r, dims[i])
        if comps is None:
            w.copy_(y)
        else:
            lo = y.to(w.dtype)
            w.copy_(lo)
            comps[i].copy_(y - lo.float())


def _bucket_adam_update(ws: list, gs: list, ms: list, vs: list, scalars: Tensor, alphas, hyper: tuple,
                        r: float, op: str, dims: tuple):
    """Adam's (or AdamW's) step and the prox of one bucket in one pass, in place.

    Per coordinate, as ``torch.optim.Adam``/``AdamW`` do (``hyper`` = beta1, beta2, eps,
    weight decay, decoupled?, maximize?, prox in Adam's metric?)::

        g <- -g if maximize;  w <- w (1 - lr wd) if decoupled else g <- g + wd w
        m <- lerp(m, g, 1 - beta1);  v <- beta2 v + (1 - beta2) g^2
        d <- sqrt(v) / sqrt(1 - beta2^t) + eps;  w <- w - lr / (1 - beta1^t) * m / d

    and then ``w <- op(w, threshold)`` with the plain threshold ``step * alpha`` or, in
    Adam's metric, ``step * alpha / max(d, alpha)`` (the same ``d``). ``scalars``: the
    prox step, the strength, lr, then per tensor ``lr / (1 - beta1^t)`` and
    ``sqrt(1 - beta2^t)``. Reads w, g, m, v and writes w, m, v: the seven passes of a fused
    AdamW step, and no more.
    """
    beta1, beta2, eps, wd, decoupled, maximize, adam_metric = hyper
    st = scalars[0]
    lr = scalars[2]
    for i in range(len(ws)):
        w, g = ws[i], gs[i]
        a = scalars[1] if alphas is None else alphas[i]
        x = w
        if maximize:
            g = -g
        if wd != 0.0:
            if decoupled:
                x = x * (1.0 - lr * wd)
            else:
                g = g + wd * x
        m = torch.lerp(ms[i], g, 1.0 - beta1)
        v = vs[i] * beta2 + (1.0 - beta2) * g * g
        d = torch.sqrt(v) / scalars[4 + 2 * i] + eps
        x = x - scalars[3 + 2 * i] * m / d
        t = _adam_threshold(op, st, a, d, dims[i]) if adam_metric else st * a
        y = _apply(op, x, t, r, dims[i])
        ms[i].copy_(m)
        vs[i].copy_(v)
        w.copy_(y)


_COMPILED: dict = {}  # signature -> _Compiled (one code object each)


def _layout(ts: list) -> list:
    """Each tensor's shape, stride, dtype and device: part of a bucket's signature, and what
    the direct call checks of its tensors (any change goes back through dynamo)."""
    return [(t.shape, t.stride(), t.dtype, t.device) for t in ts]


def _signature(ws, comps, vs, alphas, eps, kernel) -> tuple:
    def desc(ts):
        return None if ts is None else tuple(_layout(ts))

    return (_BACKEND, kernel.op, kernel.r, kernel.dims, desc(ws), desc(comps), desc(vs), desc(alphas), float(eps))


def _backend(options: dict | None) -> Callable:
    """The backend callable for ``_BACKEND`` (inductor gets ``options`` as its config)."""
    if _BACKEND == "inductor":
        from torch._inductor.compile_fx import compile_fx

        return lambda gm, example_inputs: compile_fx(gm, example_inputs, config_patches=options or {})
    if isinstance(_BACKEND, str):
        return torch._dynamo.lookup_backend(_BACKEND)
    return _BACKEND


class _Compiled:
    """One signature's compiled function, called without dynamo once it has compiled.

    ``torch.compile`` checks its guards on every call: ~25 us on a CPU for a bucket of five
    tensors, a quarter of LeNet-5's whole AdamW step. The program dynamo hands its backend
    takes the graph's tensors positionally, so after the first call this keeps that program
    and where each of its inputs sits among the call's tensors, and later calls run it
    directly. Its guard is ours: every tensor's shape, stride, dtype and device as when it
    compiled, and grad mode off (the wrapper's step); the Python constants (op, dims,
    Adam's betas, eps) are part of the signature this object is keyed by. Anything else
    goes through dynamo, which recompiles if it must (and the new program is kept).
    """

    def __init__(self, body: Callable, tag: str, options: dict | None):
        self._captured: tuple | None = None
        self._direct: tuple | None = None  # (program, input positions, layout)
        backend = _backend(options)

        def capture(gm, example_inputs):
            program = backend(gm, example_inputs)
            self._captured = (program, list(example_inputs))
            return program

        self._dynamo = torch.compile(_fresh(body, tag), backend=capture, dynamic=False, fullgraph=True)

    def __call__(self, tensors: list, *args) -> None:
        """Run on ``args``; ``tensors``: every tensor in ``args``, flattened."""
        direct = self._direct
        if direct is not None and not torch.is_grad_enabled() and _layout(tensors) == direct[2]:
            program, order, _ = direct
            program(*[tensors[i] for i in order])
            return
        self._captured = None
        self._dynamo(*args)
        captured, self._captured = self._captured, None
        if captured is not None and not torch.is_grad_enabled():
            where = {id(t): i for i, t in enumerate(tensors)}
            order = [where.get(id(t)) for t in captured[1]]
            if None not in order:  # every graph input is one of ours (else: dynamo each call)
                self._direct = (captured[0], order, _layout(tensors))


def _fresh(fn: Callable, tag: str) -> Callable:
    """A copy of ``fn`` with its own code object: torch.compile keeps its cache (and its
    recompile limit) per code object, so each bucket gets a cache of its own."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


class Kernel:
    """The compiled update of one bucket.

    Calling it runs the compiled kernel and returns True, or returns False (having changed
    nothing) when compilation fails, after which :func:`available` is False.

    >>> k = Kernel("soft", 1.0, [(1,)], "demo")
    >>> k.op, k.calls
    ('soft', 0)
    """

    def __init__(self, op: str, r: float, dims: Sequence[tuple], tag: str):
        self.op, self.r, self.dims, self.calls = op, float(r), tuple(tuple(d) for d in dims), 0
        self.tag, self._fn = tag, None
        self._adam_fn, self._adam_key = None, None
        self._scalars: dict = {}  # the last run-time scalars: values -> tensor

    def __getstate__(self):  # a copy or a pickle finds its compiled function again
        return {**self.__dict__, "_fn": None, "_adam_fn": None, "_scalars": {}}

    def __setstate__(self, state):
        self.__dict__.update({"_scalars": {}, **state})

    def _compiled(self, key: tuple, body: Callable, ws) -> _Compiled:
        """The compiled function for this bucket's signature, shared by every bucket with
        the same one (another wrapper over a model of the same shapes compiles nothing).

        A small CPU bucket compiles single-threaded: its loops take microseconds, less than
        the OpenMP fork and barriers of each parallel loop (and far less when the cores are
        busy with other work, where a waiting thread spins)."""
        fn = _COMPILED.get(key)
        if fn is None:
            options = None
            if _BACKEND == "inductor":
                options = dict(_OPTIONS)
                if ws[0].device.type == "cpu" and sum(w.numel() for w in ws) < CPU_SINGLE_THREAD_NUMEL:
                    options["cpp.threads"] = 1
            fn = _COMPILED[key] = _Compiled(body, f"{self.tag}_{len(_COMPILED)}", options)
        return fn

    def __call__(self, ws, comps, vs, rbcs, s: float, alphas, eps: float) -> bool:
        if not available():
            return False
        w = ws[0]
        dtype = torch.promote_types(w.dtype, torch.float32)
        a, alphas = (float(alphas), None) if isinstance(alphas, float) else (1.0, list(alphas))
        if isinstance(rbcs, Tensor):  # Adam's step counters live on the device: no host sync
            scalars = torch.cat([torch.tensor([s, a], dtype=dtype, device=w.device), rbcs.to(dtype)])
        else:  # the same values as last step (a constant lr, the plain metric): the same tensor
            key = (s, a, *(rbcs or ()))
            scalars = self._scalars.get(key)
            if scalars is None or scalars.dtype != dtype or scalars.device != w.device:
                scalars = torch.tensor(key, dtype=dtype, device=w.device)
                self._scalars = {key: scalars}
        if self._fn is None:
            self._fn = self._compiled(_signature(ws, comps, vs, alphas, eps, self), _bucket_update, ws)
        ws = list(ws)
        tensors = [*ws, *(comps or ()), *(vs or ()), scalars, *(alphas or ())]
        return self._run(self._fn, tensors, ws, comps, vs, scalars, alphas, eps, self.r, self.op, self.dims)

    def adam(self, ws, gs, ms, vs, step_sizes, rbcs, s: float, lr: float, alphas, hyper: tuple) -> bool:
        """Adam's step and this bucket's prox in one compiled call (:func:`_bucket_adam_update`);
        ``step_sizes``/``rbcs``: ``lr / (1 - beta1^t)`` and ``sqrt(1 - beta2^t)`` per tensor
        (floats, or one device tensor each)."""
        if not available():
            return False
        w = ws[0]
        a, alphas = (float(alphas), None) if isinstance(alphas, float) else (1.0, list(alphas))
        if isinstance(rbcs, Tensor):
            head = torch.tensor([s, a, lr], dtype=w.dtype, device=w.device)
            scalars = torch.cat([head, torch.stack([step_sizes, rbcs], 1).reshape(-1).to(w.dtype)])
        else:
            per = [x for pair in zip(step_sizes, rbcs) for x in pair]
            scalars = torch.tensor([s, a, lr, *per], dtype=w.dtype, device=w.device)
        if self._adam_fn is None or self._adam_key != hyper:
            key = ("adam", hyper, *_signature(ws, None, vs, alphas, 0.0, self), _signature(gs, None, ms, None, 0.0, self))
            self._adam_fn, self._adam_key = self._compiled(key, _bucket_adam_update, ws), hyper
        ws, gs, ms, vs = list(ws), list(gs), list(ms), list(vs)
        tensors = [*ws, *gs, *ms, *vs, scalars, *(alphas or ())]
        return self._run(self._adam_fn, tensors, ws, gs, ms, vs, scalars, alphas, hyper, self.r, self.op, self.dims)

    @property
    def fresh(self) -> bool:
        """Nothing compiled yet for this bucket."""
        return self._fn is None and self._adam_fn is None

    def _run(self, fn: _Compiled, tensors: list, *args) -> bool:
        try:
            fn(tensors, *args)
        except Exception as err:  # noqa: BLE001 - any compiler failure means: eager from now on
            cause = getattr(err, "inner_exception", None) or err.__cause__ or err
            text = (str(cause).strip().splitlines() or [""])[0][:200]
            disable(f"torch.compile failed: {type(cause).__name__}: {text}")
            return False
        self.calls += 1
        return True


def reduce_dims(penalty, ctx, w: Tensor) -> tuple:
    """The dims a GroupLasso bucket reduces over for ``w`` (empty for other penalties)."""
    from .penalties import GroupLasso

    if isinstance(penalty, GroupLasso):
        return tuple(penalty._grouping(ctx)._reduce_dims(w))
    return ()
