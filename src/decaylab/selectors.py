"""Selectors: which parameters a rule names, and the conventions of the libraries people use.

A selector is a name glob, a module type, a predicate ``f(name, param, module) -> bool``,
or an object with ``for_model(model)`` that returns one of these for a given model
(:func:`preset`). The *default selection* (``Rule(params=None)``) is decaylab's own:

* every trainable parameter with 2 or more dimensions (Linear, Conv, Bilinear,
  ``MultiheadAttention.in_proj_weight``, LSTM/GRU matrices, bare ``nn.Parameter`` matrices),
* except biases (``bias``, ``bias_k``, ``*_bias``), normalization layers (:func:`is_norm`:
  torch's and any library's ``...Norm`` classes), embedding tables, and what the model
  declares exempt (``no_weight_decay()`` / ``no_weight_decay_keywords()``, timm's and
  Swin's convention; :func:`declared_no_decay`).

How it differs from the two ecosystems' own choices (:func:`preset` reproduces them exactly):

* Hugging Face's ``Trainer`` decays every parameter whose name contains no ``bias``,
  ``layernorm``, ``rmsnorm`` or ``norm`` component and that is not in an ``nn.LayerNorm``:
  it *decays embeddings* (word, position, token-type tables) and any 1-D parameter with
  another name (e.g. a learned scale), and ignores ``no_weight_decay()``.
* timm's ``create_optimizer_v2`` decays every trainable parameter of 2 or more dimensions
  not ending in ``.bias`` and not in the model's ``no_weight_decay()``: it *decays
  embeddings* and the norm layers' matrices (none in practice), and ignores norms' names.
* decaylab exempts embedding tables by default: with decoupled decay a row is shrunk at
  every step, also the steps where its token does not occur, so rare tokens' rows fade
  (select them with ``dl.embeddings`` to decay them).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Callable

import torch
from torch import nn

from . import _compat

__all__ = [
    "is_norm", "norm_layers", "embeddings", "biases", "weights", "default_selection",
    "declared_no_decay", "preset", "unwrap", "strip_wrappers",
]

_NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# a class named like a norm (LlamaRMSNorm, T5LayerNorm, timm's RmsNorm2d, LayerNormAct...),
# not like a distribution or a preprocessing step (Normal, Normalize)
_NORM_NAME = re.compile(r"Norm(?!al)")


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer: one of torch's, or a class named like one
    (``...Norm...``; libraries write their own RMSNorm/LayerNorm classes) whose own parameters
    are per-feature vectors (a scale and a shift, not a weight matrix).

    >>> class LlamaRMSNorm(nn.Module):
    ...     def __init__(self, d):
    ...         super().__init__()
    ...         self.weight = nn.Parameter(torch.ones(d))
    >>> is_norm(LlamaRMSNorm(4)), is_norm(nn.LayerNorm(4)), is_norm(nn.Linear(2, 2))
    (True, True, False)
    """
    if isinstance(module, _NORMS):
        return True
    return bool(_NORM_NAME.search(type(module).__name__)) and all(
        p.squeeze().ndim <= 1 for p in module.parameters(recurse=False))


def norm_layers(name: str, param: torch.Tensor, module: nn.Module) -> bool:
    """Selects every parameter of normalization layers (:func:`is_norm`): torch's
    BatchNorm/LayerNorm/GroupNorm/InstanceNorm/RMSNorm and the norm classes of other
    libraries (``LlamaRMSNorm``, ``T5LayerNorm``, timm's ``LayerNorm2d``, ...).

    >>> norm_layers("bn.weight", None, nn.BatchNorm1d(3))
    True
    """
    return is_norm(module)


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


def _is_bias(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.startswith("bias_") or leaf.endswith("_bias")


def default_selection(name: str, param: torch.Tensor, module: nn.Module) -> bool:
    """The default: weights of 2 or more dimensions, except biases, norms and embeddings.

    (Frozen parameters are left out by :func:`resolve`, not here.)

    >>> default_selection("attn.in_proj_weight", torch.zeros(6, 2), nn.MultiheadAttention(2, 1))
    True
    >>> default_selection("emb.weight", torch.zeros(3, 2), nn.Embedding(3, 2))
    False
    """
    if param is None or param.ndim < 2 or _is_bias(name):
        return False
    return not (is_norm(module) or isinstance(module, _EMBEDDINGS))


default_selection.__name__ = "weights >= 2-D"


def strip_wrappers(name: str) -> str:
    """Remove leading ``module.`` / ``_orig_mod.`` (DDP, DataParallel, torch.compile).

    >>> strip_wrappers("_orig_mod.module.fc1.weight")
    'fc1.weight'
    """
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel (``module.``) and torch.compile (``_orig_mod.``) wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif _compat.compiled_inner(model) is not None:
            model = _compat.compiled_inner(model)
        else:
            return model


def declared_no_decay(model: nn.Module) -> Callable[[str], bool]:
    """What a model declares exempt from weight decay, as a test on parameter names.

    Any submodule may declare it, relative to itself: ``no_weight_decay()`` returns names or
    ``fnmatch`` patterns (timm's convention: a ViT's ``cls_token``, ``pos_embed``) and
    ``no_weight_decay_keywords()`` substrings of the name (Swin's
    ``relative_position_bias_table``).

    >>> class ViTish(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
    ...     def no_weight_decay(self):
    ...         return {"pos_embed"}
    >>> exempt = declared_no_decay(nn.Sequential(ViTish()))
    >>> exempt("0.pos_embed"), exempt("0.other")
    (True, False)
    """
    patterns, keywords = [], []
    for prefix, module in unwrap(model).named_modules():
        head = f"{prefix}." if prefix else ""
        for attr, out in (("no_weight_decay", patterns), ("no_weight_decay_keywords", keywords)):
            declared = getattr(module, attr, None)
            if callable(declared):
                out.extend(head + n if out is patterns else n for n in declared())
    return lambda name: (any(fnmatch.fnmatchcase(name, p) for p in patterns)
                         or any(k in name for k in keywords))



class _Preset:
    """A library's own choice of the parameters to decay, as a selector (see :func:`preset`)."""

    def __init__(self, name: str, build: Callable[[nn.Module], Callable]):
        self.__name__, self._build = f"preset({name!r})", build

    def for_model(self, model: nn.Module) -> Callable[[str, torch.Tensor, nn.Module], bool]:
        select = self._build(model)
        select.__name__ = self.__name__
        return select

    def __repr__(self) -> str:
        return self.__name__


# Hugging Face Trainer.get_decay_parameter_names: a name (lower-cased) containing any of
# these, or a parameter of an nn.LayerNorm, is not decayed
_HF_NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def _hf(model: nn.Module):
    return lambda name, param, module: not (
        isinstance(module, nn.LayerNorm) or _HF_NO_DECAY.search(name.lower()))


def _timm(model: nn.Module):
    declared = getattr(model, "no_weight_decay", None)
    patterns = list(declared()) if callable(declared) else []
    return lambda name, param, module: (
        param.requires_grad and param.ndim > 1 and not name.endswith(".bias")
        and not any(fnmatch.fnmatch(name, p) for p in patterns))


_PRESETS = {"hf": _hf, "timm": _timm}


def preset(name: str) -> _Preset:
    """The parameters a library decays, as a selector: ``"hf"`` (Hugging Face
    ``Trainer.get_decay_parameter_names``) or ``"timm"`` (``timm.optim.create_optimizer_v2``
    with its default ``filter_bias_and_bn``), reproduced name for name.

    Use it to regularize exactly what a training recipe written for that library decayed;
    the module docstring lists how both differ from the default selection.

    >>> model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    >>> from decaylab.rules import resolve, Rule
    >>> from decaylab.penalties import L2
    >>> resolve(model, [Rule(L2(1e-2), params=preset("hf"))])[0][0].names
    ['0.weight', '2.weight']
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; use one of {sorted(_PRESETS)}")
    return _Preset(name, _PRESETS[name])
