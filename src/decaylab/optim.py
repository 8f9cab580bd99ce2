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

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from . import _checkpoint, _checks, _compat, _inner_decay, step_sizes
from .buckets import Bucket, Buckets
from .metric import takes_adam_step
from .penalty import Penalty
from .rules import Rule, named_params, resolve

__all__ = ["regularize", "Regularized"]

# optimizers whose step reads the weights before their own decoupled decay (Adafactor's
# relative step uses their RMS): decoupled decays are added after their step
_DECAY_AFTER_READING = tuple(c for c in (getattr(torch.optim, "Adafactor", None),) if c is not None)


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
    inner optimizer, so LR schedulers, ``GradScaler`` and checkpointing work unchanged. It
    orchestrates: each penalty does its own update (:meth:`decaylab.Penalty.update_`)
    with the step sizes of :mod:`decaylab.step_sizes`, which also says who takes Adam's step.
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
        self.metrics = [_checks.initial_metric(b.rule) for b in self.bindings]
        self._pending = {i for i, m in enumerate(self.metrics) if m == "auto"}
        self._buckets = Buckets(optimizer, self.bindings, self.metrics)
        self._steps = 0
        _checks.check_rules(optimizer, self.bindings, self._buckets.all, self._multiplier)
        _checks.warn_double_decay(optimizer, self._buckets.all)
        if self._pending:  # an optimizer that has stepped before already shows what it keeps
            self._resolve_metrics()

    # -- torch.optim.Optimizer surface, shared with the inner optimizer ---------------
    param_groups = property(lambda self: self.optimizer.param_groups,
                            lambda self, value: setattr(self.optimizer, "param_groups", value))
    state = property(lambda self: self.optimizer.state, lambda self, value: setattr(self.optimizer, "state", value))
    defaults = property(lambda self: self.optimizer.defaults,
                        lambda self, value: setattr(self.optimizer, "defaults", value))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        """Adds a group to the inner optimizer; its parameters get no penalty."""
        self.optimizer.add_param_group(param_group)

    # -- the step --------------------------------------------------------------------
    def step(self, closure: Callable[[], Tensor] | None = None):
        """Coupled gradients, decoupled decay, inner step, prox; returns the closure's loss.

        Step hooks (this wrapper's own and the global ones) and the profiler's range work as
        on any torch optimizer (in torch's order, with torch's arguments); torch's own wrapper
        for them costs a fixed time a call even when there is nothing to run, so it runs only when
        there is something to run."""
        if _compat.unhooked(self):
            return self._step(closure)
        return _compat.with_step_hooks(type(self)._step)(self, closure)

    step.hooked = True  # torch's Optimizer leaves a step marked so unwrapped (_patch_step_function)

    @torch.no_grad()
    def _step(self, closure: Callable[[], Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        opt = self.optimizer
        self._buckets.follow_conversion(self.metrics)
        by_mode = self._buckets.by_mode
        swapped: list = []
        # prox buckets whose compiled kernel takes Adam's step: the inner step skips them
        # (no gradient) and the kernel does Adam and the prox in one pass
        in_kernel = (step_sizes.adam_in_kernel(opt, by_mode["prox"], self._multiplier)
                     if closure is None and by_mode["prox"] else [])
        hidden = [(p, p.grad) for b in in_kernel for p in b.params]
        # L2 that torch's Adam/AdamW/SGD takes as its weight_decay: shown split param groups
        groups = opt.param_groups
        inner = (_inner_decay.plan(opt, by_mode, self._multiplier)
                 if closure is None and not _compat.step_hooked(opt) else None)
        taken = inner[1] if inner is not None else ()
        try:
            for b in by_mode["coupled"]:
                if id(b) not in taken:
                    self._couple(b, swapped)
            late = self._decay([b for b in by_mode["decoupled"] if id(b) not in taken])
            for p, _ in hidden:
                p.grad = None
            if closure is None:
                if inner is not None:
                    opt.param_groups = inner[0]
                _compat.call_step(opt)
            else:  # LBFGS and friends need it; most optimizers call it once and get `loss`
                opt.step(self._inner_closure(closure, loss, swapped))
        finally:
            if inner is not None:
                opt.param_groups = groups
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
            if not (b in in_kernel and step_sizes.fused_adam_step(opt, b, self._multiplier(b.rule))):
                self._apply(b, "prox")
        self._steps += 1
        return loss

    def _inner_closure(self, closure: Callable[[], Tensor], loss, swapped: list) -> Callable[[], Tensor]:
        """The closure the inner optimizer sees: its first call returns the loss already
        computed (one evaluation, as torch's optimizers do); each further call (LBFGS's
        iterations and line search) re-evaluates the user's closure and adds the coupled
        rules' gradients again, and every call adds their value, so the inner optimizer
        minimizes loss + coupled penalties consistently."""
        coupled = self._buckets.by_mode["coupled"]
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
                    for b in coupled:
                        value = value + b.rule.penalty.bound_value(b.params, b.ctxs) * self._multiplier(b.rule)
            return value

        return inner

    def _multiplier(self, rule: Rule) -> float:
        if rule.schedule is None:
            return 1.0
        m = float(rule.schedule(self._steps))
        if not (math.isfinite(m) and m >= 0):
            raise ValueError(f"schedule of {rule.penalty!r} returned {m!r} at step {self._steps}; it must be >= 0")
        return m

    def _couple(self, b: Bucket, swapped: list) -> None:
        """``g + alpha * grad R(w)`` into a new tensor the inner step reads in place of
        ``p.grad`` (restored after it), as torch's ``weight_decay`` leaves ``p.grad`` alone.
        Under ``maximize=True`` the penalty gradient is subtracted, so that the negated
        gradient the inner optimizer follows still shrinks the weights (torch's rule)."""
        m = self._multiplier(b.rule)
        idx, params, ctxs = b.active()
        if not params or m == 0:
            return
        sign = -1.0 if self.optimizer.param_groups[b.group].get("maximize", False) else 1.0
        grads = [p.grad for p in params]
        for p, g, tmp in zip(params, grads, b.rule.penalty.add_grad(grads, params, b.scale(m, idx), ctxs, sign)):
            swapped.append((p, g, tmp))
            p.grad = tmp

    def _decay(self, buckets: list[Bucket]) -> list[tuple[Tensor, Tensor]]:
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
            params = b.active()[1]
            before = [p.detach().clone() for p in params]
            self._apply(b, "decay")
            for p, w in zip(params, before):
                late.append((p, p.detach() - w))
                p.copy_(w)
        return late

    def _apply(self, b: Bucket, op: str) -> None:
        """Bucket ``b``'s ``op`` ("prox" or "decay"): its compiled kernel, or the penalty's own
        update; bf16/fp16 weights through fp32 copies that keep their rounding residual."""
        m = self._multiplier(b.rule)
        idx, params, ctxs = b.active()
        if not params or m == 0:
            return
        opt, pen, foreach = self.optimizer, b.rule.penalty, b.rule.foreach
        step = float(opt.param_groups[b.group]["lr"]) * m
        steps = step_sizes.StepSizes(opt, b, step, idx, params, self._buckets.scratch)
        if not pen.compensated:
            return pen.update_(op, params, steps, ctxs, foreach)
        comps = [self._buckets.residual(p) for p in params] if b.low_precision else None
        if idx is None:
            if b.kernel is None:
                b.kernel = step_sizes.choose_kernel(b, self.fused, tag=f"b{self._buckets.all.index(b)}")
            if step_sizes.run_kernel(opt, b, step, comps):
                return
        if comps is None:
            pen.update_(op, params, steps, ctxs, foreach)
            if steps.per_coordinate and b.kernel and self._buckets.buffers \
                    and step_sizes.kernel_takes_adam_step(opt, b):
                self._buckets.drop_buffers(params)  # from the next step on its kernel takes the step
            return
        wide = [p.float().add_(c) for p, c in zip(params, comps)]
        pen.update_(op, wide, steps, ctxs, foreach)
        for p, w, c in zip(params, wide, comps):
            p.copy_(w)
            torch.sub(w, p.float(), out=c)

    def _resolve_metrics(self) -> None:
        """Give each pending rule its metric: "adam" for an optimizer that takes Adam's step
        (:mod:`decaylab.metric`) once it keeps ``exp_avg_sq``, "lr" for any other. Waits
        while none of the rule's parameters has state yet."""
        for bi in sorted(self._pending):
            states = [st for st in map(self.optimizer.state.get, self.bindings[bi].params) if st]
            if states:
                adam = takes_adam_step(self.optimizer) and all("exp_avg_sq" in st for st in states)
                metric = "adam" if adam else "lr"
            elif any(p.grad is not None for p in self.bindings[bi].params):
                metric = "lr"  # it stepped and keeps no state (plain SGD)
            else:
                continue
            self.metrics[bi] = metric
            self._buckets.set_metric(bi, metric)
            self._pending.discard(bi)

    # -- introspection and checkpoints -----------------------------------------------
    @property
    def steps(self) -> int:
        """Real optimizer steps taken so far (what schedules see)."""
        return self._steps

    def updates(self) -> list[dict]:
        """How each bucket of weights is updated: :func:`decaylab.updates`."""
        return self._buckets.rows()

    def penalty_values(self) -> list[Tensor | None]:
        """Each rule's penalty at the current weights, times its schedule (differentiable);
        None for a ``Rule(None)``."""
        return [None if b.rule.penalty is None else
                b.rule.penalty.bound_value(b.params, b.ctxs) * self._multiplier(b.rule) for b in self.bindings]

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
        sd["decaylab"] = _checkpoint.extra_state(self._steps, self.bindings, self._buckets)
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
            self._steps = _checkpoint.load_extra(extra, self.bindings, self._buckets)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

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
        self._buckets.reindex()


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
