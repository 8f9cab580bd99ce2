"""Every private torch API decaylab uses, each behind a fallback that costs speed, never a run.

torch promises nothing about these across releases; a torch upgrade that renames one must
leave a user's training running (slower at worst), with one warning saying what changed.
Nothing private is imported at module level: each use sits inside the ``try`` of its
fallback.

Private uses, and what happens when one fails:

* ``torch._inductor.compile_fx.compile_fx(gm, example_inputs, config_patches=...)`` (the
  inductor backend as a callable) and ``torch._dynamo.lookup_backend(name)`` (any other
  backend by name): :class:`Compiled` wraps them to capture the program a backend returns.
* the backend calling convention: that program takes the graph's tensors positionally,
  ``program(*inputs)`` (:func:`call_direct`), in the order of ``example_inputs``.
* inductor config keys ``emulate_precision_casts`` and ``cpp.threads``
  (:func:`inductor_options`), passed to inductor as patches or as ``torch.compile``'s
  ``options``.
* a copied code object (``CodeType.replace``, :func:`fresh`): torch.compile keeps its cache
  and recompile limit per code object, so each kernel gets its own.
* torch's optimizer hook tables (``Optimizer._optimizer_step_pre_hooks`` and the other five
  per-optimizer tables, ``torch.optim.optimizer._global_optimizer_pre_hooks`` /
  ``_post_hooks``), ``Optimizer._patch_step_function``, ``torch.autograd._profiler_enabled``
  and the ``hooked`` / ``__wrapped__`` marks torch leaves on ``Optimizer.step``:
  :func:`step_hooked`, :func:`profiling`, :func:`unwrapped_step`, :func:`init_optimizer`,
  :func:`patch_step`; ``Optimizer.profile_hook_step`` (torch's step wrapper, :func:`with_step_hooks`).

* ``OptimizedModule._orig_mod``, the module ``torch.compile(model)`` wraps
  (:func:`compiled_inner`); its name is also the ``_orig_mod.`` prefix of such a model's
  parameter names and state-dict keys, which :mod:`decaylab.rules` strips as a string.

A compiled kernel falls back on its own, never taking other kernels with it:
direct call of the captured program -> dynamo's guarded call of the same compiled function
-> ``torch.compile``'s public path (backend by name, inductor settings as ``options``,
guarded) -> eager (:meth:`Compiled.__call__` returns False and the caller runs the eager
kernels). The hook helpers answer "hooked" when the tables cannot be read, so the wrapper
and the inner optimizer take torch's own public ``step`` (hooks and profiler as torch runs
them). Every fallback warns once per reason, at the user's ``opt.step()`` line.

* ``torch._foreach_*`` multi-tensor ops (torch's own optimizers' foreach path is built on
  them): ``foreach_add``, ``foreach_add_``, ``foreach_mul_``, ``foreach_sub_``,
  ``foreach_clamp_max``, ``foreach_clamp_min_``, ``foreach_lerp_`` below, each a loop over
  the tensors where torch lacks the op.
"""

from __future__ import annotations

import types
from collections import OrderedDict
from typing import Callable

import torch

from ._warn import warn

try:  # a public module; its hook tables are not
    from torch.optim import optimizer as _optim_mod
except ImportError:  # pragma: no cover - torch without torch.optim.optimizer
    _optim_mod = None

__all__ = ["Compiled", "call_direct", "compiled_inner", "fresh", "inductor_options", "init_optimizer", "layout",
           "patch_step", "private_backend", "profiling", "step_hooked", "unwrapped_step", "warn_once",
           "with_step_hooks"]

_WARNED: set = set()  # messages already shown: one warning per reason


def warn_once(message: str) -> None:
    """:func:`decaylab._warn.warn` (pointing at the user's ``opt.step()``) once per process."""
    if message in _WARNED:
        return
    _WARNED.add(message)
    warn(message)


def _reason(err: BaseException) -> str:
    """``Type: first line`` of what went wrong (the compiler's own error where dynamo wraps it)."""
    cause = getattr(err, "inner_exception", None) or err.__cause__ or err
    text = (str(cause).strip().splitlines() or [""])[0][:200]
    return f"{type(cause).__name__}: {text}"


# -- multi-tensor ops -----------------------------------------------------------------------
def _foreach(op: str) -> Callable:
    """``torch._foreach_<op>``, or the same as a loop of ``Tensor.<op>`` over the tensors
    (``other``: one value for all, or one per tensor)."""
    fn = getattr(torch, "_foreach_" + op, None)
    if fn is not None:
        return fn

    def each(tensors, other, *args, **kwargs):
        others = other if isinstance(other, (list, tuple)) else [other] * len(tensors)
        out = [getattr(t, op)(o, *args, **kwargs) for t, o in zip(tensors, others)]
        return None if op.endswith("_") else out

    return each


foreach_add, foreach_add_, foreach_mul_, foreach_sub_ = map(_foreach, ("add", "add_", "mul_", "sub_"))
foreach_clamp_max, foreach_clamp_min_, foreach_lerp_ = map(_foreach, ("clamp_max", "clamp_min_", "lerp_"))


# -- compiled kernels -----------------------------------------------------------------------
def inductor_options(single_thread: bool) -> dict:
    """Inductor settings of a kernel: low-precision casts rounded as eager rounds them (the
    residual ``w32 - float(bf16(w32))`` is the point, and inductor otherwise folds the
    round trip away), and one thread for a small CPU kernel."""
    options: dict = {"emulate_precision_casts": True}
    if single_thread:
        options["cpp.threads"] = 1
    return options


def private_backend(backend, options: dict | None) -> Callable:
    """The callable behind ``backend`` (a name or a callable), for :class:`Compiled` to wrap;
    inductor gets ``options`` as its config patches."""
    if backend == "inductor":
        from torch._inductor.compile_fx import compile_fx

        patches = dict(options or {})
        return lambda gm, example_inputs: compile_fx(gm, example_inputs, config_patches=patches)
    if isinstance(backend, str):
        from torch._dynamo import lookup_backend

        return lookup_backend(backend)
    return backend


def call_direct(program: Callable, inputs: list) -> None:
    """Run a program a backend returned, on the graph's tensors in their order."""
    program(*inputs)


def fresh(fn: Callable, tag: str) -> Callable:
    """A copy of ``fn`` with its own code object, named ``<name>_<tag>``; ``fn`` itself where
    the copy cannot be made (kernels then share one cache and its recompile limit)."""
    try:
        code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
        return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    except Exception as err:  # noqa: BLE001 - any failure: the shared function still works
        warn_once(f"decaylab: could not give a compiled kernel its own code object ({_reason(err)}); "
                  f"kernels share torch.compile's cache, which may recompile more often")
        return fn


def layout(ts: list) -> list:
    """Each tensor's shape, stride, dtype and device: what a direct call checks of its tensors
    (any change goes back through dynamo)."""
    return [(t.shape, t.stride(), t.dtype, t.device) for t in ts]


class Compiled:
    """One kernel's compiled function, with its fallbacks; a call returns False when the
    kernel has fallen back to eager (nothing was changed: the caller runs eager kernels).

    ``torch.compile`` checks its guards on every call, a cost of the order of a small
    model's whole step on a CPU (bench/step_overhead.py --only direct). The program dynamo hands its backend takes the graph's tensors positionally,
    so after the first call this keeps that program and where each of its inputs sits among
    the call's tensors, and later calls run it directly. Its guard is ours: every tensor's
    shape, stride, dtype and device as when it compiled, and grad mode off (the wrapper's
    step); the Python constants of the call (op, group dims, flags; never a value that may
    change between steps) are part of the signature the caller keys this
    object by. Anything else goes through dynamo, which recompiles if it must (and the new
    program is kept).

    Levels, each tried once, each failure warned once per reason: ``"direct"`` (private
    backend hook and direct calls; a failing direct call alone drops to dynamo's guarded
    call of the same function), ``"guarded"`` (public ``torch.compile`` with the backend by
    name), ``"eager"``. A direct call that fails raises before the program runs (a changed
    calling convention), so the step is taken again through dynamo.

    ``path`` says how calls run now (``"direct"``, ``"guarded"`` or ``"eager"``, the level
    once a failed direct call has sent them through dynamo); ``guarded_calls`` counts the
    calls that went through dynamo (the first, a recompile, a changed layout).

    >>> c = Compiled(lambda x: x.mul_(2), "demo", "eager", None)
    >>> x = torch.ones(2)
    >>> c([x], x), x.tolist(), c.level
    (True, [2.0, 2.0], 'direct')
    >>> with torch.no_grad():
    ...     _ = c([x], x), c([x], x)
    >>> x.tolist(), c.guarded_calls, c.path  # the third call ran the kept program directly
    ([8.0, 8.0], 2, 'direct')
    """

    direct = True  # False: every call through dynamo (bench/step_overhead.py --only direct compares)

    def __init__(self, body: Callable, tag: str, backend, options: dict | None):
        self._body, self._tag, self._backend, self._options = body, tag, backend, options
        self.level = "direct"
        self._dynamo: Callable | None = None
        self._captured: tuple | None = None
        self._direct: tuple | None = None  # (program, input positions, layout)
        self._failed = ""  # why the "direct" level failed, warned once "guarded" works
        self.guarded_calls = 0

    def __call__(self, tensors: list, *args) -> bool:
        """Run on ``args``; ``tensors``: every tensor in ``args``, flattened."""
        direct = self._direct
        if direct is not None and self.direct and not torch.is_grad_enabled() and layout(tensors) == direct[2]:
            try:
                call_direct(direct[0], [tensors[i] for i in direct[1]])
                return True
            except Exception as err:  # noqa: BLE001 - e.g. a changed calling convention
                self.direct, self._direct = False, None
                warn_once(f"decaylab: a compiled kernel's direct call failed ({_reason(err)}; torch "
                          f"{torch.__version__}); it goes through torch.compile's guarded call from now on "
                          f"(same results, more time per step)")
        while self.level != "eager":
            try:
                self._captured = None
                (self._dynamo or self._build())(*args)
            except Exception as err:  # noqa: BLE001 - any failure: the next level, never a crash
                self._fall(err)
                continue
            self._keep(tensors)
            self.guarded_calls += 1
            if self._failed:
                warn_once(f"decaylab: a compiled kernel could not use torch's private compiler hooks "
                          f"({self._failed}; torch {torch.__version__}); it runs through torch.compile's "
                          f"guarded call (same results, more time per step)")
                self._failed = ""
            return True
        return False

    @property
    def path(self) -> str:
        return "guarded" if self.level == "direct" and not self.direct else self.level

    def _build(self) -> Callable:
        if self.level == "direct":
            backend = private_backend(self._backend, self._options)

            def capture(gm, example_inputs):
                program = backend(gm, example_inputs)
                self._captured = (program, list(example_inputs))
                return program

            fn = torch.compile(fresh(self._body, self._tag), backend=capture, dynamic=False, fullgraph=True)
        else:
            fn = torch.compile(fresh(self._body, f"{self._tag}_guarded"), backend=self._backend,
                               options=self._options, dynamic=False, fullgraph=True)
        self._dynamo = fn
        return fn

    def _fall(self, err: Exception) -> None:
        self._dynamo, self._captured, self._direct = None, None, None
        if self.level == "direct":
            self.level, self._failed = "guarded", _reason(err)
            return
        self.level = "eager"
        warn_once(f"decaylab: torch.compile failed for a kernel ({_reason(err)}); it uses the eager path "
                  f"(same results within 1e-6, more time per step); pass fused=False to skip compiling")

    def _keep(self, tensors: list) -> None:
        """Keep the program the backend just compiled, if every one of its inputs is one of
        ``tensors`` (else: dynamo each call)."""
        captured, self._captured = self._captured, None
        if captured is None or not self.direct or torch.is_grad_enabled():
            return
        where = {id(t): i for i, t in enumerate(tensors)}
        order = [where.get(id(t)) for t in captured[1]]
        if None not in order:
            self._direct = (captured[0], order, layout(tensors))


def compiled_inner(model) -> torch.nn.Module | None:
    """The module ``torch.compile(model)`` wrapped, or None (``model`` is no such wrapper).

    >>> inner = torch.nn.Linear(2, 2)
    >>> compiled_inner(torch.compile(inner)) is inner, compiled_inner(inner)
    (True, None)
    """
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, torch.nn.Module) else None


# -- optimizer step hooks -------------------------------------------------------------------
_HOOK_TABLES = ("step_pre", "step_post", "state_dict_pre", "state_dict_post",
                "load_state_dict_pre", "load_state_dict_post")


def _hooks_unreadable(what: str, err: Exception) -> None:
    warn_once(f"decaylab: could not read torch's {what} ({_reason(err)}; torch {torch.__version__}); "
              f"optimizer steps go through torch's public Optimizer.step wrapper (same results, more time "
              f"per step)")


def init_optimizer(opt: torch.optim.Optimizer) -> None:
    """What ``Optimizer.__init__`` gives an optimizer besides its parameters: empty hook
    tables (``register_step_pre_hook`` and friends write into them), and :func:`patch_step`."""
    for name in _HOOK_TABLES:
        setattr(opt, f"_optimizer_{name}_hooks", OrderedDict())
    patch_step(opt)


def patch_step(opt: torch.optim.Optimizer) -> None:
    """``Optimizer._patch_step_function``: names ``zero_grad``'s profiler range (and wraps a
    ``step`` not marked ``hooked``); also after unpickling, as torch does."""
    try:
        opt._patch_step_function()
    except Exception as err:  # noqa: BLE001 - it only names zero_grad's profiler range
        warn_once(f"decaylab: torch's Optimizer._patch_step_function failed ({_reason(err)}; torch "
                  f"{torch.__version__}); zero_grad's profiler range may be unnamed")


def step_hooked(opt: torch.optim.Optimizer) -> bool:
    """A step hook is registered on ``opt`` or globally; True also where torch's tables
    cannot be read (then torch's own step wrapper, which knows them, must run)."""
    try:
        return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
                    or _optim_mod._global_optimizer_pre_hooks or _optim_mod._global_optimizer_post_hooks)
    except Exception as err:  # noqa: BLE001 - AttributeError: a table renamed or gone
        _hooks_unreadable("optimizer step-hook tables", err)
        return True


def profiling() -> bool:
    """The autograd profiler is running (True where torch no longer says)."""
    try:
        return bool(torch.autograd._profiler_enabled())
    except Exception as err:  # noqa: BLE001 - renamed or gone
        _hooks_unreadable("profiler flag (torch.autograd._profiler_enabled)", err)
        return True


def unwrapped_step(opt: torch.optim.Optimizer) -> Callable | None:
    """``type(opt).step`` without torch's hook wrapper (called as ``raw(opt)``), or None where
    that cannot be had: the step is not torch's wrapper, or the instance replaced it (an LR
    scheduler built on it does)."""
    step = type(opt).step
    raw = getattr(step, "__wrapped__", None)
    if raw is None or not getattr(step, "hooked", False) or "step" in vars(opt):
        return None
    return raw


_WITH_HOOKS: dict = {}


def with_step_hooks(func: Callable) -> Callable:
    """``func`` (an optimizer's step, called with the optimizer first) inside torch's own step
    wrapper (``Optimizer.profile_hook_step``: the profiler range, then the step hooks in
    torch's order); ``func`` itself where torch has no such wrapper (warned)."""
    wrapped = _WITH_HOOKS.get(func)
    if wrapped is None:
        try:
            wrapped = torch.optim.Optimizer.profile_hook_step(func)
        except Exception as err:  # noqa: BLE001
            warn_once(f"decaylab: torch's Optimizer.profile_hook_step is unusable ({_reason(err)}; torch "
                      f"{torch.__version__}); the regularized optimizer's own step hooks are not run")
            wrapped = func
        _WITH_HOOKS[func] = wrapped
    return wrapped


def unhooked(opt: torch.optim.Optimizer) -> bool:
    """No step hook and no profiler running: torch's wrapper around ``opt.step`` would only
    call through."""
    return not (step_hooked(opt) or profiling())


def call_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()``, without torch's profiling wrapper when that wrapper would do nothing.

    torch wraps every optimizer's ``step`` in a function that opens a profiler range and
    runs the step hooks, a fixed cost per step that is a visible share of a small model's
    AdamW step on a CPU. With no hook
    registered (the optimizer's own or global), no profiler running and ``step`` not
    replaced on the instance (an LR scheduler built on it does that), the wrapper only
    calls through, so the step is called directly; otherwise through the wrapper."""
    raw = unwrapped_step(opt)
    if raw is None or not unhooked(opt):
        opt.step()
    else:
        raw(opt)
