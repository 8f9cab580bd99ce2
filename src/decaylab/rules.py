"""Rules: which parameters get which penalty, in which mode.

A rule's ``params`` selects parameters by name glob (``fnmatch``, e.g. ``"*.bias"``,
``"fc1.weight"``), by module type (every parameter a module of that type owns directly),
by predicate ``f(name, param, module) -> bool``, or by a list of these (their union).

``params=None`` means the *default selection*: the trainable weights of Linear and Conv
layers (frozen ones, ``requires_grad=False``, are left alone).
Biases, norm layers and embeddings get nothing unless a rule names them. Explicit rules
take precedence over the default selection; two explicit rules naming one parameter is an
error, as is a rule that matches nothing.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from .penalties import MODES, Penalty

__all__ = [
    "Rule",
    "norm_layers",
    "embeddings",
    "biases",
    "weights",
    "default_selection",
    "named_params",
    "resolve",
    "Binding",
]

METRICS = ("lr", "adam")

_NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear)


def norm_layers(name: str, param: torch.Tensor, module: nn.Module) -> bool:
    """Selects every parameter of BatchNorm/LayerNorm/GroupNorm/InstanceNorm/RMSNorm layers.

    >>> norm_layers("bn.weight", None, nn.BatchNorm1d(3))
    True
    """
    return isinstance(module, _NORMS)


def embeddings(name: str, param: torch.Tensor, module: nn.Module) -> bool:
    """Selects the tables of Embedding/EmbeddingBag layers.

    >>> embeddings("emb.weight", None, nn.Embedding(3, 2))
    True
    """
    return isinstance(module, _EMBEDDINGS)


def biases(name: str, param: torch.Tensor, module: nn.Module) -> bool:
    """Selects parameters named ``bias`` (any layer).

    >>> biases("fc.bias", None, nn.Linear(2, 2))
    True
    """
    return name.rsplit(".", 1)[-1] == "bias"


def weights(*types: type) -> Callable[[str, torch.Tensor, nn.Module], bool]:
    """A predicate selecting the ``weight`` of modules of the given types.

    >>> weights(nn.Conv2d)("conv.weight", None, nn.Conv2d(1, 1, 3))
    True
    """

    def select(name: str, param: torch.Tensor, module: nn.Module) -> bool:
        return name.rsplit(".", 1)[-1] == "weight" and isinstance(module, types)

    select.__name__ = f"weights({', '.join(t.__name__ for t in types)})"
    return select


default_selection = weights(*_WEIGHTED)
default_selection.__name__ = "Linear/Conv weights"


@dataclass
class Rule:
    """One penalty for a selection of parameters.

    Args:
        penalty: a :class:`~decaylab.penalties.Penalty`, or ``None`` for "no penalty".
        params: selector(s); ``None`` = default selection (Linear/Conv weights).
        mode: ``"prox"``, ``"decoupled"`` or ``"coupled"``; ``None`` = the penalty's default.
        metric: ``"lr"`` (prox step = the group's lr) or ``"adam"`` (prox in Adam's
            metric: per-coordinate step ``lr / (sqrt(v_hat) + eps)``).
        schedule: optional ``f(step) -> multiplier`` of the strength (e.g. a warm-up);
            ``step`` counts real optimizer steps from 0.

    >>> Rule(L1(1e-4)).mode
    'prox'
    """

    penalty: Penalty | None
    params: object = None
    mode: str | None = None
    metric: str = "lr"
    schedule: Callable[[int], float] | None = None
    foreach: bool | None = None
    label: str = field(default="", compare=False)

    def __post_init__(self):
        if self.penalty is not None and not isinstance(self.penalty, Penalty):
            raise ValueError(f"Rule needs a Penalty or None, got {self.penalty!r}")
        if self.params is None and getattr(self.penalty, "selection", None) is not None:
            self.params = list(self.penalty.selection)  # penalties that know their tensors (coupled groups)
        if self.mode is None:  # metric="adam" is a prox metric, so it implies mode="prox"
            default = self.penalty.default_mode if self.penalty is not None else "prox"
            self.mode = "prox" if self.metric == "adam" else default
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r} in rule for {self.penalty!r}; use one of {MODES}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; use one of {METRICS}")
        if self.metric == "adam" and self.mode != "prox":
            raise ValueError(f"metric='adam' applies to mode='prox' only, got mode={self.mode!r}")
        if not self.label:
            self.label = describe_selector(self.params)

    @property
    def is_default(self) -> bool:
        return self.params is None


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


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel (``module.``) and torch.compile (``_orig_mod.``) wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def named_params(model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Module]]:
    """(name, parameter, owning module) for each distinct parameter, in model order."""
    seen, out = set(), []
    for mod_name, module in unwrap(model).named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                out.append((f"{mod_name}.{p_name}" if mod_name else p_name, p, module))
    return out


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
    if callable(sel):
        return bool(sel(name, param, module))
    raise ValueError(
        f"cannot select parameters with {sel!r}; use a name glob, a module type, a predicate "
        f"f(name, param, module) -> bool, or a list of these"
    )


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
    items = named_params(model)
    owner: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.is_default:
            continue
        for name, p, m in items:
            if _matches(rule.params, name, p, m):
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
            for name, p, m in items:
                # frozen weights (requires_grad=False) are not trained, so not decayed
                if name not in owner and p.requires_grad and _matches(None, name, p, m):
                    owner[name] = i
    bindings = []
    for i, rule in enumerate(rules):
        chosen = [(n, p) for n, p, _ in items if owner.get(n) == i]
        if not chosen:
            raise ValueError(
                f"rule {_rule_str(rule)} matches no parameter of {type(unwrap(model)).__name__}; "
                f"check the pattern against the names in model.named_parameters()"
            )
        ctxs = [rule.penalty.bind(n, p) if rule.penalty is not None else None for n, p in chosen]
        bindings.append(Binding(rule, [n for n, _ in chosen], [p for _, p in chosen], ctxs))
    free = [n for n, _, _ in items if n not in owner]
    return bindings, free


def _rule_str(rule: Rule) -> str:
    return f"Rule({rule.penalty!r}, params={rule.label!r})"
