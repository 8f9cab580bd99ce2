"""Rules: which parameters get which penalty, in which mode.

A rule's ``params`` selects parameters by name glob (``fnmatch``, e.g. ``"*.bias"``,
``"fc1.weight"``), by module type (every parameter a module of that type owns directly),
by predicate ``f(name, param, module) -> bool``, or by a list of these (their union).
Names are those of the unwrapped model; a ``module.`` (DDP/DataParallel) or ``_orig_mod.``
(``torch.compile``) prefix, as in the wrapper's ``named_parameters()`` or ``state_dict()``,
is accepted too. A tied parameter (an LM head sharing the embedding table) is one
parameter with several names: any of them selects it, and it is listed under the first.

``params=None`` means the *default selection* (:mod:`decaylab.selectors`): every
trainable parameter with 2 or more dimensions except biases, normalization layers,
embedding tables and what the model declares in ``no_weight_decay()``. It is decaylab's own
choice; ``dl.preset("hf")`` and ``dl.preset("timm")`` select exactly what Hugging Face's
Trainer and timm decay. A tied weight is selected if any of its uses is (a tied LM head is
decayed, as its untied version would be). Explicit rules take precedence over the default
selection; two explicit rules naming one parameter is an error, as is a rule that matches
nothing.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from .penalties import MODES, Penalty
from .selectors import (WRAPPER_PREFIXES, biases, declared_no_decay, default_selection, embeddings,  # noqa: F401
                        is_norm, norm_layers, strip_wrappers, unwrap, weights)

__all__ = [
    "Rule",
    "norm_layers",
    "is_norm",
    "embeddings",
    "biases",
    "weights",
    "default_selection",
    "declared_no_decay",
    "named_params",
    "param_aliases",
    "resolve",
    "Binding",
]

METRICS = ("lr", "adam")


@dataclass
class Rule:
    """One penalty for a selection of parameters.

    Args:
        penalty: a :class:`~decaylab.Penalty`, or ``None`` for "no penalty".
        params: selector(s); ``None`` = default selection (trainable weights of 2 or more
            dimensions, except biases, norm layers and embeddings).
        mode: ``"prox"``, ``"decoupled"`` or ``"coupled"``; ``None`` = the penalty's default.
        metric: ``"lr"`` (prox step = the group's lr), ``"adam"`` (prox in Adam's
            metric: per-coordinate step ``lr / (sqrt(v_hat) + eps)``), or ``None``: Adam's
            metric for L1/ElasticNet/GroupLasso prox rules when the inner optimizer keeps
            Adam's ``exp_avg_sq`` (Adam, AdamW, NAdam, RAdam, ...; seen at the first step),
            else ``"lr"`` (SGD, Adagrad, Adamax, ...).
        schedule: optional ``f(step) -> multiplier`` of the strength (e.g. a warm-up);
            ``step`` counts real optimizer steps from 0.

    >>> Rule(L1(1e-4)).mode
    'prox'
    """

    penalty: Penalty | None
    params: object = None
    mode: str | None = None
    metric: str | None = None
    schedule: Callable[[int], float] | None = None
    foreach: bool | None = None
    label: str = field(default="", compare=False)

    def __post_init__(self):
        if self.penalty is not None and not isinstance(self.penalty, Penalty):
            raise ValueError(f"Rule needs a Penalty or None, got {self.penalty!r}")
        if isinstance(self.params, Sequence) and not isinstance(self.params, (str, list, tuple)):
            self.params = list(self.params)  # a config library's list (OmegaConf's ListConfig)
        if self.params is None and getattr(self.penalty, "selection", None) is not None:
            self.params = list(self.penalty.selection)  # penalties that know their tensors (coupled groups)
        if self.mode is None:  # metric="adam" is a prox metric, so it implies mode="prox"
            default = self.penalty.default_mode if self.penalty is not None else "prox"
            self.mode = "prox" if self.metric == "adam" else default
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r} in rule for {self.penalty!r}; use one of {MODES}")
        if self.penalty is not None and self.mode not in self.penalty.modes:
            raise ValueError(f"{self.penalty!r} acts through its prox only, got mode={self.mode!r}; "
                             f"use mode='prox' (its default) or leave mode out")
        if self.metric is not None and self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; use one of {METRICS}")
        if self.schedule is not None and not callable(self.schedule):
            raise ValueError(
                f"schedule must be a function f(step) -> multiplier, got {self.schedule!r}; "
                f"e.g. schedule=lambda step: min(1.0, step / 1000)"
            )
        if self.metric == "adam" and self.mode != "prox":
            raise ValueError(f"metric='adam' applies to mode='prox' only, got mode={self.mode!r}")
        if not self.label:
            self.label = describe_selector(self.params)

    @property
    def is_default(self) -> bool:
        return self.params is None

    def shown_mode(self, metric: str | None) -> str:
        """The mode as tables show it: a prox rule's carries its ``metric`` (``prox/lr``,
        ``prox/adam``, or ``prox/auto`` before the first step has shown what the inner
        optimizer keeps).

        >>> Rule(L1(1e-4)).shown_mode("auto"), Rule(L1(1e-4), mode="decoupled").shown_mode("lr")
        ('prox/auto', 'decoupled')
        """
        return self.mode + (f"/{metric}" if self.mode == "prox" and metric else "")


def describe_selector(sel) -> str:
    if sel is None:
        return default_selection.__name__
    if isinstance(sel, (list, tuple)):
        return " | ".join(describe_selector(s) for s in sel)
    if isinstance(sel, type):
        return sel.__name__
    if isinstance(sel, str):
        return sel
    return getattr(sel, "__name__", repr(sel))


def param_aliases(model: nn.Module) -> list[tuple[str, nn.Parameter, list[tuple[str, nn.Module]]]]:
    """(first name, parameter, [(name, owning module), ...]) for each distinct parameter.

    A tied parameter has one entry with every name it goes by.

    >>> m = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    >>> m[1].weight = m[0].weight
    >>> [(n, [a for a, _ in al]) for n, _, al in param_aliases(m)]
    [('0.weight', ['0.weight', '1.weight'])]
    """
    index: dict[int, int] = {}
    out: list[tuple[str, nn.Parameter, list]] = []
    for mod_name, module in unwrap(model).named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if id(p) in index:
                out[index[id(p)]][2].append((name, module))
            else:
                index[id(p)] = len(out)
                out.append((name, p, [(name, module)]))
    return out


def named_params(model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Module]]:
    """(name, parameter, owning module) for each distinct parameter, in model order."""
    return [(name, p, aliases[0][1]) for name, p, aliases in param_aliases(model)]


def _check_selector(sel) -> None:
    if sel is None or isinstance(sel, (str, torch.Tensor)) or hasattr(sel, "for_model"):
        return
    if isinstance(sel, (list, tuple)):
        for s in sel:
            _check_selector(s)
        return
    if isinstance(sel, type) and issubclass(sel, nn.Module):
        return
    if callable(sel) and not isinstance(sel, type):
        try:
            inspect.signature(sel).bind("name", None, None)
        except TypeError:
            raise ValueError(
                f"the predicate {getattr(sel, '__name__', sel)!r} must take (name, param, module); "
                f"write it as lambda name, param, module: ..."
            ) from None
        except ValueError:  # no signature to inspect (some builtins): call it and see
            pass
        return
    raise ValueError(
        f"cannot select parameters with {sel!r}; use a name glob, a module type, a predicate "
        f"f(name, param, module) -> bool, or a list of these"
    )


def _normalize(sel, names: list[str], model: nn.Module):
    """Patterns written against a wrapper (``module.``/``_orig_mod.``) match the unwrapped
    names; a pattern that matches as written (a submodule really named ``module``) stays.
    A selector that needs the whole model (``for_model``, e.g. :func:`decaylab.preset`)
    becomes its selector for this one."""
    if isinstance(sel, (list, tuple)):
        return [_normalize(s, names, model) for s in sel]
    if hasattr(sel, "for_model"):
        return sel.for_model(unwrap(model))
    if isinstance(sel, str) and sel.startswith(WRAPPER_PREFIXES):
        if not any(fnmatch.fnmatchcase(n, sel) for n in names):
            return strip_wrappers(sel)
    return sel


def _matches(sel, name: str, param, module) -> bool:
    if sel is None:
        return default_selection(name, param, module)
    if isinstance(sel, (list, tuple)):
        return any(_matches(s, name, param, module) for s in sel)
    if isinstance(sel, str):
        return fnmatch.fnmatchcase(name, sel)
    if isinstance(sel, type) and issubclass(sel, nn.Module):
        return isinstance(module, sel)
    if isinstance(sel, torch.Tensor):
        return sel is param
    return bool(sel(name, param, module))


def _matches_any(sel, param, aliases) -> bool:
    return any(_matches(sel, name, param, module) for name, module in aliases)


@dataclass
class Binding:
    """A rule with the parameters it got: names, tensors, and per-parameter contexts."""

    rule: Rule
    names: list[str]
    params: list[torch.Tensor]
    ctxs: list[object]


def resolve(model: nn.Module, rules: Iterable[Rule]) -> tuple[list[Binding], list[str]]:
    """Assign each parameter of ``model`` at most one rule.

    Returns the bindings (rule order) and the names of parameters with no rule.
    """
    rules = list(rules)
    items = param_aliases(model)
    all_names = [n for _, _, aliases in items for n, _ in aliases]
    owner: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.is_default:
            continue
        _check_selector(rule.params)
        sel = _normalize(rule.params, all_names, model)
        for name, p, aliases in items:
            if _matches_any(sel, p, aliases):
                if name in owner:
                    raise ValueError(
                        f"parameter '{name}' is selected by two rules ({_rule_str(rules[owner[name]])} "
                        f"and {_rule_str(rule)}); narrow one rule's params so each parameter has one"
                    )
                owner[name] = i
    for i, rule in enumerate(rules):
        if rule.is_default:
            if any(r.is_default for r in rules[:i]):
                raise ValueError("two rules use the default selection (params=None); give one of them params=")
            exempt = declared_no_decay(model)
            for name, p, aliases in items:
                # frozen weights (requires_grad=False) are not trained, so not decayed
                if (name not in owner and p.requires_grad and _matches_any(None, p, aliases)
                        and not any(exempt(n) for n, _ in aliases)):
                    owner[name] = i
    bindings = []
    for i, rule in enumerate(rules):
        chosen = [(n, p, aliases) for n, p, aliases in items if owner.get(n) == i]
        if not chosen:
            shown = ", ".join(f"'{n}'" for n, _, _ in items[:8]) + (", ..." if len(items) > 8 else "")
            raise ValueError(
                f"rule {_rule_str(rule)} matches no parameter of {type(unwrap(model)).__name__}; "
                f"its parameters are named {shown or '(none)'} (a 'module.' or '_orig_mod.' prefix "
                f"is optional); fix the pattern or drop the rule"
            )
        if rule.penalty is not None and rule.mode == "coupled":
            for n, _, aliases in chosen:
                if any(getattr(m, "sparse", False) is True for _, m in aliases):
                    raise ValueError(
                        f"rule {_rule_str(rule)} couples a penalty into the sparse gradient of '{n}' "
                        f"(an embedding with sparse=True); use mode='decoupled' or 'prox', or sparse=False"
                    )
        ctxs = [rule.penalty.bind(n, p) if rule.penalty is not None else None for n, p, _ in chosen]
        bindings.append(Binding(rule, [n for n, _, _ in chosen], [p for _, p, _ in chosen], ctxs))
    free = [n for n, _, _ in items if n not in owner]
    return bindings, free


def _rule_str(rule: Rule) -> str:
    return f"Rule({rule.penalty!r}, params={rule.label!r})"
