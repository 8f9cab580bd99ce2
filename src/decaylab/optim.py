"""``regularize(optimizer, model, rules)``: penalties around any torch optimizer.

One real ``step()`` of the wrapper does, per rule and parameter group:

1. ``"coupled"`` rules: ``g <- g + alpha * grad R(w)`` (torch's ``weight_decay``);
2. ``"decoupled"`` rules: ``w <- w - lr * alpha * grad R(w)``, clamped (AdamW's decay,
   taken before the inner update exactly as ``torch.optim.AdamW`` takes it; an ``L2``
   under torch's own Adam/AdamW, or a coupled one under SGD, is taken by their step
   itself as its ``weight_decay``, see ``_inner_decay``);
3. the inner optimizer's ``step()``;
4. ``"prox"`` rules: ``w <- prox_{lr * alpha * R}(w)`` (exact zeros), with ``lr`` the
   group's current learning rate or, with ``metric="adam"``, Adam's per-coordinate step
   ``lr / (sqrt(v_hat) + eps)``.

Parameters without a gradient are skipped, as torch's optimizers skip them. Weights in
bf16/fp16 are updated in fp32 with a compensation buffer, so a decay smaller than the
format's rounding step accumulates instead of vanishing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from . import _compat, _inner_decay
from . import functional as F
from . import fused as fused_kernels
from ._sharded import any_sharded
from ._warn import warn
from .groups import Indexed
from .metric import takes_adam_step
from .penalties import L2SP, GroupLasso, Penalty
from .rules import Rule, named_params, resolve

__all__ = ["regularize", "Regularized"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# optimizers whose step reads the weights before their own decoupled decay (Adafactor's
# relative step uses their RMS): decoupled decays are added after their step
_DECAY_AFTER_READING = tuple(c for c in (getattr(torch.optim, "Adafactor", None),) if c is not None)


@dataclass(eq=False)  # compared by identity: equality would compare weight tensors
class _Bucket:
    """Parameters of one rule, one param group, one device and dtype: one kernel call.

    The bucket owns its scale: the rule's strength is prepared once for its tensors (a
    float, or per tensor a ``[K, 1, ...]`` view on the tensor's device) and multiplied by
    ``lr * schedule`` at each step in :meth:`scale`, nowhere else.
    """

    rule: Rule
    binding: int
    group: int
    params: list[Tensor]
    ctxs: list[object]
    low_precision: bool
    metric: str | None = None  # "lr" / "adam"; None: not resolved yet (first step)
    kernel: object = None  # a fused.Kernel, False (eager), None (not chosen yet)
    _alpha_src: object = None
    _alphas: object = None

    def alphas(self) -> F.Prepared:
        alpha = self.rule.penalty.alpha
        if alpha is not self._alpha_src:  # prepared again only when the strength is replaced
            self._alphas, self._alpha_src = F.prepare(alpha, self.params), alpha
        return self._alphas

    def scale(self, step: float, idx: list[int] | None = None) -> F.Prepared:
        """``alpha * step`` for the tensors ``idx`` (all when None)."""
        a = self.alphas()
        if idx is not None and not isinstance(a, float):
            a = [a[i] for i in idx]
        return F.times(a, step)


def _layout(p: Tensor) -> tuple:
    """What a bucket, its residual and its kernel were chosen for."""
    return p.dtype, p.device, p.shape, p.stride()


def _bias_correction(beta: float, steps: list) -> Tensor | list[float]:
    """Adam's ``1 - beta**t`` for each step counter: one float64 tensor where the counters
    live on a device (fused/capturable Adam: no host sync), else Python floats.

    >>> _bias_correction(0.5, [torch.tensor(1.0), torch.tensor(2.0)])
    [0.5, 0.75]
    """
    if isinstance(steps[0], Tensor) and steps[0].device.type != "cpu":
        return 1.0 - torch.pow(beta, torch.stack([x.reshape(()) for x in steps]).double())
    return [1.0 - beta ** float(x) for x in steps]


_step_hooked = _compat.step_hooked  # a step hook on the optimizer or global (or unreadable tables)


def _unhooked(opt: torch.optim.Optimizer) -> bool:
    """No step hook and no profiler running: torch's wrapper around ``opt.step`` would only
    call through."""
    return not (_compat.step_hooked(opt) or _compat.profiling())


def _as_rules(penalty_or_rules) -> list[Rule]:
    """A list of Rules from a Penalty, a Rule, or a sequence of them; a sequence may be a
    config library's (OmegaConf's ``ListConfig``), and a rule a mapping of a Rule's fields
    (what Hydra's ``instantiate`` makes of a ``Rule`` dataclass inside a list)."""
    if isinstance(penalty_or_rules, (Penalty, Rule)):
        penalty_or_rules = [penalty_or_rules]
    if not isinstance(penalty_or_rules, Sequence) or isinstance(penalty_or_rules, str):
        raise ValueError(
            f"regularize() needs a Penalty, a Rule or a list of them, got {penalty_or_rules!r}; "
            f"e.g. regularize(opt, model, dl.L2(1e-4))"
        )
    names = {f.name for f in fields(Rule)}
    rules = []
    for r in penalty_or_rules:
        if isinstance(r, Penalty):
            r = Rule(r)
        elif isinstance(r, Mapping) and "penalty" in r and set(r) <= names:
            r = Rule(**{k: r[k] for k in r if k != "label"})  # the label is made again from params
        if not isinstance(r, Rule):
            raise ValueError(f"expected a Penalty or a Rule, got {r!r}")
        rules.append(r)
    if not rules:
        raise ValueError("regularize() needs at least one Penalty or Rule")
    return rules


class Regularized(torch.optim.Optimizer):
    """An optimizer wrapper that applies penalties; build it with :func:`regularize`.

    It *is* a ``torch.optim.Optimizer`` that shares ``param_groups`` and ``state`` with the
    inner optimizer, so LR schedulers, ``GradScaler`` and checkpointing work unchanged.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, rules: Iterable[Rule],
                 fused: bool | None = None):
        if isinstance(optimizer, Regularized):
            raise ValueError("this optimizer is already regularized; pass all rules in one regularize() call")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"regularize() needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"regularize() needs the model (an nn.Module) to match parameter names, got "
                f"{type(model).__name__}; pass the model itself, not model.parameters()"
            )
        self.optimizer = optimizer
        _compat.init_optimizer(self)  # the hook tables Optimizer.__init__ would make
        self.bindings, self.unpenalized = resolve(model, rules)
        free = set(self.unpenalized)
        self.unpenalized_params = {n: p for n, p, _ in named_params(model) if n in free}
        self.fused = fused
        self.metrics = [self._initial_metric(b.rule) for b in self.bindings]
        self._pending = {i for i, m in enumerate(self.metrics) if m == "auto"}
        self._set_buckets()
        self._steps = 0
        self._comp: dict[int, Tensor] = {}  # global param index -> fp32 rounding residual
        self._buffers: dict[int, Tensor] = {}  # global param index -> Adam-metric step buffer
        self._index = {id(p): i for i, p in enumerate(self._all_params())}
        self._check_rules()
        self._warn_double_decay()
        if self._pending:  # an optimizer that has stepped before already shows what it keeps
            self._resolve_metrics()

    # -- torch.optim.Optimizer surface, shared with the inner optimizer ---------------
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.optimizer.param_groups = value

    @property
    def state(self):
        return self.optimizer.state

    @state.setter
    def state(self, value):
        self.optimizer.state = value

    @property
    def defaults(self):
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value):
        self.optimizer.defaults = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        """Adds a group to the inner optimizer; its parameters get no penalty."""
        self.optimizer.add_param_group(param_group)

    def _all_params(self):
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    # -- building --------------------------------------------------------------------
    def _set_buckets(self) -> None:
        """Buckets from the weights' current dtypes and devices (kernels chosen at their
        first step), and what :meth:`_follow_conversion` compares at each step."""
        self._buckets = self._build_buckets()
        self._by_mode = {m: [b for b in self._buckets if b.rule.mode == m] for m in ("coupled", "decoupled", "prox")}
        self._penalized = [p for b in self._buckets for p in b.params]
        self._marks = list(map(Tensor.data_ptr, self._penalized))
        self._layouts = [_layout(p) for p in self._penalized]

    def _follow_conversion(self) -> None:
        """Re-derive every choice made from the weights' dtypes, devices and layouts when
        the model was converted after ``regularize()`` (``model.to(torch.bfloat16)``,
        ``.double()``, ``.to(memory_format=torch.channels_last)``, a move to another
        device): the buckets (one per dtype and device), their low-precision residuals and
        their kernels, as if the wrapper had been built after the conversion.

        A conversion gives each weight new storage, so the check at each step is one
        ``data_ptr()`` per penalized weight. A weight whose layout changed loses its Adam
        step buffer; its residual follows it to a new device, is folded into a weight that
        left low precision, and is dropped when the low-precision dtype itself changed."""
        marks = list(map(Tensor.data_ptr, self._penalized))
        if marks == self._marks:
            return
        layouts = [_layout(p) for p in self._penalized]
        if layouts == self._layouts:  # new storage, nothing else (``p.data = p.data.clone()``)
            self._marks = marks
            return
        old = dict(zip(map(id, self._penalized), self._layouts))
        kernels = {tuple(map(id, b.params)): b.kernel for b in self._buckets  # of unchanged buckets
                   if all(_layout(p) == old[id(p)] for p in b.params)}
        self._set_buckets()
        for b in self._buckets:
            b.kernel = kernels.get(tuple(map(id, b.params)))
        for p in self._penalized:
            if _layout(p) == old[id(p)]:
                continue
            i = self._index[id(p)]
            self._buffers.pop(i, None)
            comp = self._comp.pop(i, None)
            if comp is not None and comp.shape == p.shape:
                if p.dtype not in _LOW_PRECISION:
                    p.add_(comp.to(p.device, p.dtype))
                elif p.dtype == old[id(p)][0]:
                    self._comp[i] = comp.to(p.device)

    def _build_buckets(self) -> list[_Bucket]:
        group_of = {id(p): gi for gi, g in enumerate(self.optimizer.param_groups) for p in g["params"]}
        buckets: dict[tuple, _Bucket] = {}
        for bi, b in enumerate(self.bindings):
            if b.rule.penalty is None:
                continue
            for name, p, ctx in zip(b.names, b.params, b.ctxs):
                if id(p) not in group_of:
                    raise ValueError(
                        f"rule {b.rule.penalty!r} selects '{name}', but the optimizer does not hold "
                        f"that parameter; build the optimizer from model.parameters() or exclude it"
                    )
                key = (bi, group_of[id(p)], p.device, p.dtype)
                if key not in buckets:
                    metric = self.metrics[bi] if self.metrics[bi] in ("lr", "adam") else None
                    buckets[key] = _Bucket(b.rule, bi, key[1], [], [], p.dtype in _LOW_PRECISION, metric)
                buckets[key].params.append(p)
                buckets[key].ctxs.append(ctx)
        return list(buckets.values())

    @staticmethod
    def _initial_metric(rule: Rule) -> str | None:
        """None (no prox), "lr", "adam", or "auto" (set at the first step by the state)."""
        if rule.penalty is None:
            return None
        if rule.metric is not None:
            return rule.metric
        if rule.mode == "prox" and rule.penalty.adam_metric_default:
            return "auto"
        return "lr"

    def _check_rules(self) -> None:
        """Fail at regularize() what would otherwise fail at the first step()."""
        for b in self.bindings:
            rule = b.rule
            if rule.schedule is not None:
                try:
                    rule.schedule(0)
                except TypeError as err:
                    raise ValueError(
                        f"schedule of {rule.penalty!r} must be a function f(step) -> multiplier; "
                        f"calling it with step 0 failed: {err}"
                    ) from None
                self._multiplier(rule)  # >= 0 and finite at step 0
            if rule.metric == "adam" and rule.penalty is not None:
                if isinstance(rule.penalty, GroupLasso) and isinstance(rule.penalty.grouping, Indexed):
                    raise ValueError(
                        "GroupLasso with groups=<function> supports metric='lr' only; use metric='lr' "
                        "or a built-in grouping ('rows', 'inputs', 'channels')"
                    )
        if getattr(self.optimizer, "is_second_order", False):  # timm's AdaHessian
            raise ValueError(
                f"{type(self.optimizer).__name__} differentiates through the gradient (Hessian-vector "
                f"products), which the penalties' in-place updates of the weights would break; use a "
                f"first-order optimizer, or add penalty.value(...) to the loss"
            )
        needs_lr = any(b.rule.mode in ("prox", "decoupled") for b in self._buckets)
        for gi, group in enumerate(self.optimizer.param_groups):
            lr = group.get("lr")
            if needs_lr and not isinstance(lr, (float, int, Tensor)):
                raise ValueError(
                    f"{type(self.optimizer).__name__} param group {gi} has lr={lr!r}: its step size is "
                    f"not a number decaylab can scale its prox and decoupled decay by; give it lr=<float> "
                    f"(transformers' Adafactor: relative_step=False, lr=1e-3) or use mode='coupled'"
                )
        if any(b.rule.metric == "adam" for b in self._buckets) and not takes_adam_step(self.optimizer):
            raise ValueError(
                f"metric='adam' needs an optimizer that takes Adam's step (torch's Adam, AdamW, NAdam, "
                f"RAdam, or one registered with dl.register_adam_metric); {type(self.optimizer).__name__} "
                f"is not: use metric='lr'"
            )

    def _warn_double_decay(self) -> None:
        for b in self._buckets:
            wd = self.optimizer.param_groups[b.group].get("weight_decay", 0)
            if wd:
                warn(f"{type(self.optimizer).__name__} param group {b.group} has weight_decay={wd} and "
                     f"also gets {b.rule.penalty!r}; pass weight_decay=0 to the optimizer unless you "
                     f"want both")
                return

    # -- the step --------------------------------------------------------------------
    def step(self, closure: Callable[[], Tensor] | None = None):
        """Coupled gradients, decoupled decay, inner step, prox; returns the closure's loss.

        Step hooks (this wrapper's own and the global ones) and the profiler's range work as
        on any torch optimizer; torch's own wrapper for them, which every optimizer's
        ``step`` gets, costs ~17 us a call even when there is nothing to run, so this one
        runs them itself and only when there is something to run."""
        return self._step(closure) if _unhooked(self) else self._hooked_step(closure)

    step.hooked = True  # torch's Optimizer leaves a step marked so unwrapped (_patch_step_function)

    def _hooked_step(self, *args, **kwargs):
        """:meth:`step` inside torch's own step wrapper: a profiler range, the pre hooks
        (global, then this optimizer's; one may return new ``(args, kwargs)``) and the post
        hooks (this optimizer's, then global), in torch's order and with torch's arguments."""
        return _compat.with_step_hooks(type(self)._step)(self, *args, **kwargs)

    @torch.no_grad()
    def _step(self, closure: Callable[[], Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._follow_conversion()
        by_mode = self._by_mode
        swapped: list = []
        # prox buckets whose Adam step runs inside their compiled kernel: the inner step
        # skips them (no gradient) and the kernel does Adam and the prox in one pass
        fused_adam = self._adam_fusable() if closure is None and by_mode["prox"] else []
        hidden = [(p, p.grad) for b in fused_adam for p in b.params]
        fused_ids = {id(b) for b in fused_adam}
        # L2 that torch's Adam/AdamW/SGD takes as its weight_decay: shown split param groups
        groups = self.optimizer.param_groups
        inner = (_inner_decay.plan(self.optimizer, by_mode, self._multiplier)
                 if closure is None and not _step_hooked(self.optimizer) else None)
        try:
            for b in by_mode["coupled"]:
                if inner is None or id(b) not in inner[1]:
                    self._couple(b, swapped)
            late = self._decay([b for b in by_mode["decoupled"] if inner is None or id(b) not in inner[1]])
            for p, _ in hidden:
                p.grad = None
            if closure is None:
                if inner is not None:
                    self.optimizer.param_groups = inner[0]
                self._inner_step()
            else:  # LBFGS and friends need it; most optimizers call it once and get `loss`
                self.optimizer.step(self._inner_closure(closure, loss, swapped))
        finally:
            if inner is not None:
                self.optimizer.param_groups = groups
            for p, grad in hidden:
                p.grad = grad
            for p, grad, tmp in swapped:  # the user's gradients come back unchanged
                if p.grad is tmp:
                    p.grad = grad
        for p, inc in late:
            p.add_(inc)
        if self._pending:
            self._resolve_metrics()
        for b in by_mode["prox"]:
            if not (id(b) in fused_ids and self._adam_fused_step(b)):
                self._apply(b, "prox")
        self._steps += 1
        return loss

    def _inner_step(self) -> None:
        """The inner optimizer's step, without its second profiling wrapper when that wrapper
        would do nothing.

        torch wraps every optimizer's ``step`` in a function that opens a profiler range and
        runs the step hooks: ~17 us on a CPU, a sixth of LeNet-5's AdamW step (this
        wrapper's own :meth:`step` does the same only when needed). With no hook registered (the inner
        optimizer's own or global), no profiler running and ``step`` not replaced on the
        instance (an LR scheduler built on the inner optimizer does that), the wrapper only
        calls through, so the step is called directly; otherwise through the wrapper."""
        opt = self.optimizer
        raw = _compat.unwrapped_step(opt)
        if raw is None or not _unhooked(opt):
            opt.step()
        else:
            raw(opt)

    def _inner_closure(self, closure: Callable[[], Tensor], loss, swapped: list) -> Callable[[], Tensor]:
        """The closure the inner optimizer sees: its first call returns the loss already
        computed (one evaluation, as torch's optimizers do); each further call (LBFGS's
        iterations and line search) re-evaluates the user's closure and adds the coupled
        rules' gradients again, and every call adds their value, so the inner optimizer
        minimizes loss + coupled penalties consistently."""
        coupled = self._by_mode["coupled"]
        calls = 0

        def inner():
            nonlocal calls
            calls += 1
            value = loss
            if calls > 1:
                with torch.enable_grad():
                    value = closure()
                with torch.no_grad():
                    for b in coupled:
                        self._couple(b, swapped)
            if coupled and value is not None:
                with torch.no_grad():
                    value = value + self._coupled_value()
            return value

        return inner

    def _coupled_value(self) -> Tensor:
        total = 0.0
        for b in self._by_mode["coupled"]:
            pen = b.rule.penalty
            v = pen.value(b.params, b.ctxs) if isinstance(pen, L2SP) else pen.value(b.params)
            total = total + v * self._multiplier(b.rule)
        return total

    def _multiplier(self, rule: Rule) -> float:
        if rule.schedule is None:
            return 1.0
        m = float(rule.schedule(self._steps))
        if not (math.isfinite(m) and m >= 0):
            raise ValueError(f"schedule of {rule.penalty!r} returned {m!r} at step {self._steps}; it must be >= 0")
        return m

    @staticmethod
    def _active(b: _Bucket):
        """(indices or None for all, params, ctxs) of the bucket's tensors with a gradient."""
        if all(p.grad is not None for p in b.params):
            return None, b.params, b.ctxs
        idx = [i for i, p in enumerate(b.params) if p.grad is not None]
        return idx, [b.params[i] for i in idx], [b.ctxs[i] for i in idx]

    def _couple(self, b: _Bucket, swapped: list) -> None:
        """``g + alpha * grad R(w)`` into a new tensor the inner step reads in place of
        ``p.grad`` (restored after it), as torch's ``weight_decay`` leaves ``p.grad`` alone.
        Under ``maximize=True`` the penalty gradient is subtracted, so that the negated
        gradient the inner optimizer follows still shrinks the weights (torch's rule)."""
        m = self._multiplier(b.rule)
        idx, params, ctxs = self._active(b)
        if not params or m == 0:
            return
        sign = -1.0 if self.optimizer.param_groups[b.group].get("maximize", False) else 1.0
        grads = [p.grad for p in params]
        new = b.rule.penalty.add_grad(grads, params, b.scale(m, idx), ctxs, sign)
        for p, g, tmp in zip(params, grads, new):
            swapped.append((p, g, tmp))
            p.grad = tmp

    def _decay(self, buckets: list[_Bucket]) -> list[tuple[Tensor, Tensor]]:
        """The decoupled decays, taken before the inner step as torch's AdamW takes its own.

        Adafactor computes its relative step from the weights *before* it decays them, so
        under it each decay is computed from the pre-step weights and returned as
        ``(param, increment)`` pairs that the caller adds after the inner step: torch's
        ``Adafactor(weight_decay)`` to float rounding (its update and the decay are summed
        in another order)."""
        if not isinstance(self.optimizer, _DECAY_AFTER_READING):
            for b in buckets:
                self._apply(b, "decay")
            return []
        late = []
        for b in buckets:
            params = self._active(b)[1]
            before = [p.detach().clone() for p in params]
            self._apply(b, "decay")
            for p, w in zip(params, before):
                late.append((p, p.detach() - w))
                p.copy_(w)
        return late

    def _apply(self, b: _Bucket, op: str) -> None:
        m = self._multiplier(b.rule)
        idx, params, ctxs = self._active(b)
        if not params or m == 0:
            return
        step = float(self.optimizer.param_groups[b.group]["lr"]) * m
        adam = b.metric == "adam"
        pen = b.rule.penalty
        if getattr(pen, "takes_steps", False):
            # penalties that own their update from the raw step (coupled groups, budgets,
            # adaptive weights): lr, or Adam's capped step lr / max(sqrt(v_hat) + eps, alpha)
            getattr(pen, f"{op}_")(params, self._adam_steps(b, step, idx, params) if adam else step,
                                   ctxs, b.rule.foreach)
            return
        comps = [self._residual(p) for p in params] if b.low_precision else None
        if idx is None and self._fused_step(b, step, comps):
            return
        per_group = adam and op == "prox" and isinstance(pen, GroupLasso)
        if per_group:
            scale = self._adam_group_thresholds(b, step, idx, params, ctxs)
        else:
            scale = self._adam_thresholds(b, step, idx, params) if adam else b.scale(step, idx)
        if op == "prox":
            fn = functools.partial(pen.prox_scaled_, per_coordinate=adam and not per_group)
        else:
            fn = pen.decay_scaled_
        if comps is None:
            fn(params, scale, ctxs, b.rule.foreach)
            if adam and b.kernel and self._buffers and self._adam_can_fuse(b):
                for p in params:  # from the next step on its kernel takes the step: no buffer kept
                    self._buffers.pop(self._index[id(p)], None)
            return
        wide = [p.float().add_(c) for p, c in zip(params, comps)]
        fn(wide, scale, ctxs, b.rule.foreach)
        for p, w, c in zip(params, wide, comps):
            p.copy_(w)
            torch.sub(w, p.float(), out=c)

    def _residual(self, p: Tensor) -> Tensor:
        i = self._index[id(p)]
        if i not in self._comp:
            self._comp[i] = torch.zeros_like(p, dtype=torch.float32)
        return self._comp[i]

    def _scratch(self, p: Tensor) -> Tensor:
        """A per-parameter buffer for the eager Adam-metric step sizes (kept between steps)."""
        i = self._index[id(p)]
        buf = self._buffers.get(i)
        if buf is None or buf.shape != p.shape:
            dtype = torch.promote_types(p.dtype, torch.float32)
            buf = self._buffers[i] = torch.empty_like(p, dtype=dtype, memory_format=torch.contiguous_format)
        return buf

    # -- fused kernels -----------------------------------------------------------------
    def _choose_kernel(self, b: _Bucket):
        """Compiled or eager, chosen once per bucket at its first step (see decaylab.fused)."""
        planned = fused_kernels.plan(b.rule.penalty, b.rule.mode, b.metric)
        want = self.fused
        if want is None:  # auto: on GPUs; on CPUs only for buckets big enough to repay the compile
            dev = b.params[0].device.type
            want = dev == "cuda" or (dev == "cpu" and sum(p.numel() for p in b.params) >= fused_kernels.CPU_MIN_NUMEL)
        if not (want and planned and fused_kernels.available()) or any_sharded(b.params):
            return False  # compiled kernels take plain tensors: a DTensor bucket stays eager
        dims = [b.rule.penalty.kernel_dims(c, p) for p, c in zip(b.params, b.ctxs)]
        return fused_kernels.Kernel(planned[0], planned[1], dims, tag=f"b{self._buckets.index(b)}")

    def _fused_step(self, b: _Bucket, step: float, comps) -> bool:
        if b.kernel is None:
            b.kernel = self._choose_kernel(b)
        if not b.kernel:
            return False
        if b.kernel.fresh and self._adam_can_fuse(b):
            return False  # its kernel will also take Adam's step from the next step on: no second compile
        vs = rbcs = None
        eps = 0.0
        if b.metric == "adam":
            vs, rbcs, eps = self._adam_state(b.group, b.params)
        if b.kernel(b.params, comps, vs, rbcs, step, b.alphas(), eps, b.rule.penalty.kernel_ratio()):
            return True
        b.kernel = False  # compilation failed: eager from now on (fused.disable warned)
        return False

    # -- Adam and the prox in one kernel ------------------------------------------------
    def _adam_fusable(self) -> list[_Bucket]:
        """The prox buckets whose inner Adam/AdamW step their compiled kernel takes over this
        step: :meth:`_adam_can_fuse`, with every gradient present (dense), Adam's state made
        (the first step is the inner optimizer's own, which also shows the metric) and the
        schedule not at zero."""
        state = self.optimizer.state
        return [b for b in self._by_mode["prox"]
                if b.kernel and b.metric is not None and self._adam_can_fuse(b)
                and all(p.grad is not None and not p.grad.is_sparse and "exp_avg_sq" in state.get(p, ())
                        for p in b.params)
                and self._multiplier(b.rule) > 0]

    def _adam_can_fuse(self, b: _Bucket) -> bool:
        """Whether ``b``'s compiled kernel may run the inner step for its weights: only
        torch's own ``Adam``/``AdamW`` (by type: a subclass may change the update) without
        amsgrad, ``capturable`` or ``differentiable``, with no step hooks (they would see the
        bucket's gradients hidden); fp32/fp64 weights; an elementwise prox (L1, ElasticNet,
        L2) of a penalty without ``takes_steps``."""
        opt = self.optimizer
        if type(opt) not in (torch.optim.Adam, torch.optim.AdamW) or _step_hooked(opt):
            return False
        group = opt.param_groups[b.group]
        # a group prox needs the whole updated group before it can scale it: inductor keeps
        # the updated weights in a fresh weight-sized buffer, which costs more on a CPU than
        # the separate prox pass it saves (measured: bench/step_overhead.py), so groups stay apart
        if b.kernel.op == "group":
            return False
        if b.params[0].device.type == "cpu" and sum(p.numel() for p in b.params) < fused_kernels.CPU_ADAM_MIN_NUMEL:
            return False
        return b.rule.mode == "prox" and not (
            b.low_precision or getattr(b.rule.penalty, "takes_steps", False)
            or group.get("amsgrad") or group.get("differentiable") or group.get("capturable")
            or any(p.dtype not in (torch.float32, torch.float64) for p in b.params))

    def _adam_fused_step(self, b: _Bucket) -> bool:
        """Adam's step and the prox of ``b`` in one compiled call; on a compile failure the
        inner optimizer steps the bucket's parameters alone, returning False (eager prox)."""
        opt = self.optimizer
        group = opt.param_groups[b.group]
        states = [opt.state[p] for p in b.params]
        steps = [st["step"] for st in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = (float(x) for x in group["betas"])
        lr = float(group["lr"])
        c1, c2 = _bias_correction(beta1, steps), _bias_correction(beta2, steps)
        if isinstance(c1, Tensor):
            sizes, rbcs = lr / c1, c2.sqrt()
        else:
            sizes, rbcs = [lr / c for c in c1], [math.sqrt(c) for c in c2]
        decoupled = bool(group.get("decoupled_weight_decay", isinstance(opt, torch.optim.AdamW)))
        hyper = (beta1, beta2, float(group["eps"]), float(group["weight_decay"]), decoupled,
                 bool(group.get("maximize", False)), b.metric == "adam")
        if b.kernel.adam(b.params, [p.grad for p in b.params], [st["exp_avg"] for st in states],
                         [st["exp_avg_sq"] for st in states], sizes, rbcs, lr * self._multiplier(b.rule), lr,
                         b.alphas(), hyper, b.rule.penalty.kernel_ratio()):
            return True
        torch._foreach_sub_(steps, 1)
        mine = {id(p) for p in b.params}
        others = [(p, p.grad) for p in self._all_params() if id(p) not in mine and p.grad is not None]
        try:
            for p, _ in others:
                p.grad = None
            opt.step()
        finally:
            for p, grad in others:
                p.grad = grad
        b.kernel = False
        return False

    # -- the Adam metric ---------------------------------------------------------------
    def _adam_state(self, group_index: int, params) -> tuple[list[Tensor], object, float]:
        """Adam's second moments, ``sqrt(1 - beta2**step)`` per tensor, and eps."""
        group = self.optimizer.param_groups[group_index]
        if "betas" not in group or "eps" not in group:
            raise ValueError(
                f"metric='adam' needs an Adam-family optimizer (Adam, AdamW, NAdam, RAdam); "
                f"{type(self.optimizer).__name__} has no betas/eps; use metric='lr'"
            )
        beta2 = group["betas"][1]
        key = "max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq"
        vs, steps = [], []
        for p in params:
            st = self.optimizer.state.get(p, {})
            if key not in st:
                raise ValueError(
                    f"metric='adam': no {key} state for a parameter of {type(self.optimizer).__name__}; "
                    f"use metric='lr' with optimizers that keep no second moment"
                )
            vs.append(st[key])
            steps.append(st["step"])
        c2 = _bias_correction(beta2, steps)
        if isinstance(c2, Tensor):
            rbcs = c2.sqrt().to(torch.promote_types(vs[0].dtype, torch.float32))
        else:
            rbcs = [math.sqrt(c) for c in c2]
        return vs, rbcs, float(group["eps"])

    def _adam_steps(self, b: _Bucket, step: float, idx, params) -> list[Tensor]:
        """Adam's per-coordinate step with the cap of :meth:`_adam_thresholds`,
        ``step / max(sqrt(v_hat) + eps, alpha)``, for penalties that form their own
        thresholds from it (``takes_steps``): the same objective gets the same update as
        under L1 and GroupLasso. In the kept buffers, valid until the next step."""
        return [d.reciprocal_().mul_(step) for _, _, d in self._capped_denominators(b, idx, params)]

    def _capped_denominators(self, b: _Bucket, idx, params):
        """Per tensor ``(param, alpha, max(sqrt(v_hat) + eps, alpha))``, the denominator in
        a kept buffer: on CPUs a fresh weight-sized tensor each step costs page faults that
        take longer than the arithmetic."""
        vs, rbcs, eps = self._adam_state(b.group, params)
        alphas = b.alphas()
        for i, (p, v) in enumerate(zip(params, vs)):
            a = alphas if isinstance(alphas, float) else alphas[i if idx is None else idx[i]]
            buf = self._scratch(p)
            if v.dtype == buf.dtype:
                torch.sqrt(v, out=buf)
            else:
                buf.copy_(v).sqrt_()
            buf.div_(rbcs[i]).add_(eps)
            if isinstance(a, float):
                buf.clamp_min_(a)
            else:
                torch.maximum(buf, a, out=buf)
            yield p, a, buf

    def _adam_thresholds(self, b: _Bucket, step: float, idx, params) -> list[Tensor]:
        """Per coordinate ``step * alpha / max(sqrt(v_hat) + eps, alpha)``: Adam's step
        ``step / (sqrt(v_hat) + eps)``, capped at ``step / alpha`` so that a coordinate with
        little or no gradient (a never-used embedding row, a zero-initialized LoRA factor)
        moves toward 0 by at most ``step`` (what Adam does with the L1 term in the loss)
        instead of being wiped by a threshold ``step * alpha / eps``."""
        return [d.reciprocal_().mul_(F.times(a, step) if isinstance(a, float) else a * step)
                for _, a, d in self._capped_denominators(b, idx, params)]

    def _adam_group_thresholds(self, b: _Bucket, step: float, idx, params, ctxs) -> list[Tensor]:
        """One threshold per group in Adam's metric: the harmonic mean of the capped
        per-coordinate thresholds of :meth:`_adam_thresholds` (``GroupLasso._group_steps``),
        taken in one pass as ``step * alpha / nanmean(max(sqrt(v_hat) + eps, alpha))``
        (what the compiled kernel computes; a NaN coordinate is left out of its group's mean).
        Three weight-sized operations fewer than forming each coordinate's threshold first."""
        pen = b.rule.penalty
        out = []
        for i, (p, a, d) in enumerate(self._capped_denominators(b, idx, params)):
            dims = pen.kernel_dims(ctxs[i], p)
            # mean, and nanmean only where a NaN coordinate (a NaN gradient) makes one NaN: on a
            # CPU nanmean costs 3-5x a mean, and the check is free; a GPU would sync on it
            mean = d.mean(dim=dims, keepdim=True)
            if d.device.type != "cpu" or mean.isnan().any():
                mean = torch.nanmean(d, dim=dims, keepdim=True)
            # out of place: a sharded weight's mean is a pending cross-shard reduction
            out.append(mean.reciprocal().mul_(step * a))
        return out

    def _resolve_metrics(self) -> None:
        """Give each pending rule its metric: "adam" for an optimizer that takes Adam's step
        (:mod:`decaylab.metric`) once it keeps ``exp_avg_sq``, "lr" for any other. Waits
        while none of the rule's parameters has state yet."""
        for bi in sorted(self._pending):
            states = [self.optimizer.state.get(p) for p in self.bindings[bi].params]
            states = [st for st in states if st]
            if not states:
                if any(p.grad is not None for p in self.bindings[bi].params):
                    self._set_metric(bi, "lr")  # it stepped and keeps no state (plain SGD)
                continue
            adam = takes_adam_step(self.optimizer) and all("exp_avg_sq" in st for st in states)
            self._set_metric(bi, "adam" if adam else "lr")

    def _set_metric(self, bi: int, metric: str) -> None:
        self.metrics[bi] = metric
        for b in self._buckets:
            if b.binding == bi:
                b.metric = metric
        self._pending.discard(bi)

    # -- introspection and checkpoints -----------------------------------------------
    @property
    def steps(self) -> int:
        """Real optimizer steps taken so far (what schedules see)."""
        return self._steps

    def penalty_values(self) -> list[Tensor | None]:
        """Each rule's penalty at the current weights, times its schedule (differentiable);
        None for a ``Rule(None)``."""
        out = []
        for b in self.bindings:
            pen = b.rule.penalty
            if pen is None:
                out.append(None)
                continue
            v = pen.value(b.params, b.ctxs) if isinstance(pen, L2SP) else pen.value(b.params)
            out.append(v * self._multiplier(b.rule))
        return out

    def penalty_value(self) -> Tensor:
        """The sum of every rule's penalty at the current weights (differentiable)."""
        values = [v for v in self.penalty_values() if v is not None]
        return sum(values[1:], values[0]) if values else torch.zeros(())

    def state_dict(self) -> dict:
        """The inner optimizer's state dict plus ``"decaylab"`` (steps, residuals,
        strengths, snapshots, penalty states); the state-dict hooks registered on this
        wrapper run around it as on any torch optimizer."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        sd = self.optimizer.state_dict()
        sd["decaylab"] = {
            "steps": self._steps,
            "residuals": {i: c.clone() for i, c in self._comp.items()},
            "alphas": [b.rule.penalty.alpha if b.rule.penalty is not None else None for b in self.bindings],
            # L2-SP snapshots (reference=None) of the starting weights: a resumed run must
            # keep pulling toward them, not toward the weights it resumed from
            "references": {
                i: [r.clone() for r in b.ctxs]
                for i, b in enumerate(self.bindings)
                if isinstance(b.rule.penalty, L2SP) and b.rule.penalty.reference is None
            },
            # penalties with a state of their own (budget schedules, held masks)
            "penalties": [b.rule.penalty.state_dict() if b.rule.penalty is not None else None
                          for b in self.bindings],
        }
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, sd)
            sd = sd if result is None else result
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            state_dict = state_dict if result is None else dict(result)
        extra = state_dict.pop("decaylab", None)
        self.optimizer.load_state_dict(state_dict)
        if extra is not None:
            self._load_extra(extra)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _load_extra(self, extra: dict) -> None:
        self._steps = int(extra["steps"])
        params = self._all_params()
        self._comp = {int(i): c.to(params[int(i)].device) for i, c in extra["residuals"].items()}
        for b, alpha in zip(self.bindings, extra["alphas"]):
            if b.rule.penalty is not None and alpha is not None:
                b.rule.penalty.alpha = alpha
        for i, refs in extra.get("references", {}).items():
            b = self.bindings[int(i)] if int(i) < len(self.bindings) else None
            if b is None or not isinstance(b.rule.penalty, L2SP) or len(b.ctxs) != len(refs):
                raise ValueError(
                    f"this checkpoint holds L2SP snapshots for rule {i}, which is not an L2SP rule "
                    f"over {len(refs)} parameters here; build the optimizer with the same rules"
                )
            for ref, saved in zip(b.ctxs, refs):
                ref.copy_(saved)  # in place: the penalty holds the same tensors
        for b, saved in zip(self.bindings, extra.get("penalties", [])):
            if b.rule.penalty is not None and saved:
                b.rule.penalty.load_state_dict(saved)

    def __repr__(self) -> str:
        rules = ", ".join(f"{b.rule.penalty!r}:{b.rule.mode} on {len(b.params)}" for b in self.bindings)
        return f"Regularized({type(self.optimizer).__name__}, [{rules}])"

    def __eq__(self, other) -> bool:
        """The wrapper and the optimizer it wraps are one optimizer (one ``param_groups``, one
        ``state``): equal, so a framework that unwraps ``.optimizer`` (Lightning's
        ``LearningRateMonitor``) finds the one it has seen and logs one lr, not two."""
        return other is self or other is self.optimizer

    __hash__ = object.__hash__

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        # a copy (deepcopy, pickle, torch.save) holds new parameter objects with new ids:
        # rebuild the id-keyed index so the residual and step buffers follow them
        self.__dict__.update(state)
        _compat.patch_step(self)
        self._index = {id(p): i for i, p in enumerate(self._all_params())}


def regularize(optimizer: torch.optim.Optimizer, model: nn.Module, penalty_or_rules,
               *, fused: bool | None = None) -> Regularized:
    """Wrap ``optimizer`` so each real ``step()`` applies the penalties to ``model``'s weights.

    Args:
        optimizer: any ``torch.optim.Optimizer`` over ``model``'s parameters (give it
            ``weight_decay=0``; the rules now own regularization).
        model: the module whose parameter names the rules match (DDP / ``torch.compile``
            wrappers are unwrapped).
        penalty_or_rules: a Penalty (applied to the default selection: trainable weights
            of 2 or more dimensions except biases, norms and embeddings), a Rule, or a list.
        fused: compiled kernels (``torch.compile``, see :mod:`decaylab.fused`): True to
            use them wherever supported, False for the eager kernels, None (default) for
            compiled kernels on GPUs and, on CPUs, for buckets of at least
            ``fused.CPU_MIN_NUMEL`` weights, where the compile time pays back. Without a
            working compiler the eager kernels run (one warning).

    Returns:
        A :class:`Regularized` optimizer; the training loop does not change.

    >>> model = nn.Linear(3, 2)
    >>> opt = regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, L1(1e-3))
    >>> model(torch.randn(4, 3)).sum().backward(); opt.step(); opt.zero_grad()
    >>> opt.steps
    1
    """
    return Regularized(optimizer, model, _as_rules(penalty_or_rules), fused=fused)
