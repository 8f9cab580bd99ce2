"""Config -> data and model: the registries of the lab's models and data sets, and the
user's own (``model.factory`` / ``data.factory``).

The registries are the single source of ``model.kind`` and ``data.name``: the config's
choices and the CLI's help read them. A factory is ``"package.module:function"`` or
``"path/to/file.py:function"`` (a relative path is taken from the working directory):

* ``data.factory`` is called with ``seed=`` (the config's seed) if its signature takes it,
  else with no argument, and returns three splits ``(train, val, test)``, each an
  ``(x, y)`` pair of tensors or a ``torch.utils.data.Dataset`` of ``(x, y)`` items
  (it may also return a dict with keys ``train``, ``val``, ``test``). Integer labels make
  a classification task, float targets ``[N]`` a regression.
* ``model.factory`` is called with the keywords its signature names among
  ``input_shape`` (one example's shape, e.g. ``(1, 8, 8)``), ``n_features`` (their
  product) and ``n_classes`` (the outputs it must give; 1 for regression), all of them
  if it takes ``**kwargs``; it returns an ``nn.Module`` mapping ``[N, *input_shape]`` to
  ``[N, n_classes]``.

Every mistake is one line naming the key, the value and the fix (:class:`FactoryError`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

import decaylab as dl

from . import data as data_mod
from .models import build_model as _zoo_model

MODELS = {  # model.kind -> what it is (the CLI help and the config's choices read this)
    "linear": "logistic / linear regression on the flat inputs",
    "mlp": "ReLU MLP, widths from model.hidden",
    "lenet300": "LeNet-300-100 (MLP 300-100)",
    "cnn": "LeNet-5-style CNN (image data only)",
}
DATASETS = {  # data.name -> what it is
    "digits": "8x8 handwritten digits (scikit-learn, bundled)",
    "breast_cancer": "30-column tabular classification (bundled)",
    "diabetes": "10-column tabular regression (bundled)",
    "mnist1d": "generated 1-D digit strokes",
    "synthetic": "generated tabular classification",
    "fashion-mnist": "28x28 clothing images (IDX files, downloaded)",
    "mnist": "28x28 digits (IDX files, downloaded)",
    "csv": "your table: data.path, data.target, data.features",
}
assert tuple(DATASETS) == data_mod.DATASETS, "data.DATASETS and build.DATASETS disagree"


class PenaltyKind(NamedTuple):
    """One choice of ``penalty`` in a config: its help line, how it is built from a run
    spec (and the model, for penalties that read its graph), and whether ``decaylab sweep``
    can stack a grid of its strengths (a ``[K]`` alpha tensor)."""

    help: str
    make: Callable | None
    sweeps: bool = False


def _coupled(run: dict, model: nn.Module | None):
    if model is None:  # config validation: check alpha and l1_ratio on a stand-in chain
        model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    return dl.CoupledGroupLasso(run["alpha"], model, l1_ratio=run["l1_ratio"])


PENALTIES = {  # penalty -> what it is (the config's choices, the sweep's and the CLI help read this)
    "none": PenaltyKind("no penalty", None),
    "l2": PenaltyKind("L2 (decoupled weight decay under Adam)", lambda r, m: dl.L2(r["alpha"]), True),
    "l1": PenaltyKind("L1, exact zeros by its prox", lambda r, m: dl.L1(r["alpha"]), True),
    "elasticnet": PenaltyKind("L1 + L2, l1_ratio the L1 share",
                              lambda r, m: dl.ElasticNet(r["alpha"], r["l1_ratio"]), True),
    "grouplasso": PenaltyKind("group lasso over groups (rows, inputs, channels)",
                              lambda r, m: dl.GroupLasso(r["alpha"], r["groups"]), True),
    "l2sp": PenaltyKind("L2 toward the run's initial weights",
                        lambda r, m: dl.L2SP(r["alpha"], r.get("reference")), True),
    "coupled": PenaltyKind("coupled group lasso: neurons/channels and inputs with all they own",
                           _coupled),
}


class FactoryError(ValueError):
    """A ``model.factory`` / ``data.factory`` that cannot be used; one line with the fix."""


def help_text() -> str:
    """The model and data choices, for ``--help``.

    >>> "model.factory" in help_text()
    True
    """
    return (f"model.kind: {', '.join(MODELS)} (or model.factory=\"pkg.module:function\"); "
            f"data.name: {', '.join(DATASETS)} (or data.factory=\"path/file.py:function\"); "
            f"penalty: {', '.join(PENALTIES)}")


def load_factory(value: str, key: str):
    """The function a ``"package.module:function"`` or ``"file.py:function"`` names.

    >>> load_factory("decaylab.lab.models:MLP", "model.factory").__name__
    'MLP'
    """
    fix = 'write it as "package.module:function" or "path/to/file.py:function"'
    mod_name, sep, fn_name = value.rpartition(":")
    if not sep or not mod_name or not fn_name.isidentifier():
        raise FactoryError(f"{key} = {value!r} is not a factory; {fix}")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).expanduser().resolve()
            if not path.is_file():
                raise FactoryError(f"{key} = {value!r}: the file {str(path)!r} does not exist; {fix}")
            name = f"_decaylab_factory_{path.stem}_{abs(hash(str(path)))}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module  # dataclasses and pickling find it
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            module = importlib.import_module(mod_name)
    except FactoryError:
        raise
    except Exception as err:
        raise FactoryError(f"{key} = {value!r}: importing {mod_name!r} failed ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); check the module is importable "
                           f"(on PYTHONPATH, or give its file path)") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise FactoryError(f"{key} = {value!r}: {mod_name!r} has no function {fn_name!r}; name a function "
                           f"defined there")
    return fn


def _kwargs(fn, offered: dict) -> dict:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return offered
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return offered
    return {k: v for k, v in offered.items() if k in params}


def _call(fn, kwargs: dict, key: str, value: str, takes: str):
    try:
        return fn(**kwargs)
    except Exception as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
        text = str(err).splitlines()[0] if str(err) else ""
        raise FactoryError(f"{key} = {value!r} failed when called with {shown} ({type(err).__name__}: {text}); "
                           f"it is called with the keywords it names among {takes}") from None


# -- data ------------------------------------------------------------------------------------
def _as_xy(split, key: str, value: str, which: str):
    if isinstance(split, torch.utils.data.Dataset) and not isinstance(split, (tuple, list)):
        try:
            items = [split[i] for i in range(len(split))]
            x = torch.stack([torch.as_tensor(a) for a, _ in items])
            y = torch.stack([torch.as_tensor(b) for _, b in items])
        except Exception as err:
            raise FactoryError(f"{key} = {value!r}: the {which} Dataset's items are not (x, y) tensor pairs "
                               f"({type(err).__name__}: {err}); return (x, y) from __getitem__") from None
        return x, y
    if isinstance(split, (tuple, list)) and len(split) == 2 and all(torch.is_tensor(t) for t in split):
        return split[0], split[1]
    raise FactoryError(f"{key} = {value!r}: the {which} split is a {type(split).__name__}; return "
                       f"(train, val, test), each an (x, y) pair of tensors or a Dataset of (x, y)")


def _factory_data(dc: dict, seed: int) -> data_mod.Dataset:
    key, value = "data.factory", dc["factory"]
    fn = load_factory(value, key)
    out = _call(fn, _kwargs(fn, {"seed": seed}), key, value, "seed (or nothing)")
    if isinstance(out, dict) and set(out) >= {"train", "val", "test"}:
        out = (out["train"], out["val"], out["test"])
    if not (isinstance(out, (tuple, list)) and len(out) == 3):
        raise FactoryError(f"{key} = {value!r} returned a {type(out).__name__}; return three splits "
                           f"(train, val, test), each an (x, y) pair of tensors or a Dataset")
    splits = [_as_xy(s, key, value, w) for s, w in zip(out, ("train", "val", "test"))]
    shapes = {tuple(x.shape[1:]) for x, _ in splits}
    for (x, y), which in zip(splits, ("train", "val", "test")):
        if len(x) != len(y) or len(x) == 0 or y.ndim != 1:
            raise FactoryError(f"{key} = {value!r}: the {which} split has x {tuple(x.shape)} and y "
                               f"{tuple(y.shape)}; give N >= 1 examples, x [N, ...] and y [N] (labels or targets)")
    if len(shapes) != 1:
        raise FactoryError(f"{key} = {value!r}: the splits' examples differ in shape {sorted(shapes)}; give "
                           f"train, val and test the same example shape")
    classification = not splits[0][1].is_floating_point()
    xs = [x.float().contiguous() for x, _ in splits]
    ys = [(y.long() if classification else y.float()).contiguous() for _, y in splits]
    n_classes = int(max(int(y.max()) for y in ys)) + 1 if classification else None
    if classification and min(int(y.min()) for y in ys) < 0:
        raise FactoryError(f"{key} = {value!r}: labels must be 0..C-1, got a negative one")
    input_shape = tuple(xs[0].shape[1:])
    return data_mod.Dataset(fn.__name__, "classification" if classification else "regression",
                            xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], n_features=math.prod(input_shape),
                            n_classes=n_classes, image_shape=None, feature_names=None,
                            input_shape=input_shape)


def build_data(cfg: dict) -> data_mod.Dataset:
    """The config's data: ``data.factory`` when set, else the registry's ``data.name``."""
    if cfg["train"]["threads"] > 0:
        torch.set_num_threads(cfg["train"]["threads"])
    dc = cfg["data"]
    if dc.get("factory"):
        return _factory_data(dc, cfg["seed"])
    return data_mod.load(dc["name"], root=dc["root"] or None, val_fraction=dc["val_fraction"],
                         seed=cfg["seed"], download=dc["download"], n_train=dc["n_train"] or None,
                         label_noise=dc.get("label_noise", 0.0),
                         **({"path": dc["path"], "target": dc["target"], "features": dc["features"] or None}
                            if dc["name"] == "csv" else {}))


# -- models ----------------------------------------------------------------------------------
def input_shape(data) -> tuple:
    """One example's shape (``(n_features,)`` for the lab's flat data sets)."""
    return tuple(getattr(data, "input_shape", None) or (data.n_features,))


def _factory_model(value: str, data) -> nn.Module:
    key = "model.factory"
    fn = load_factory(value, key)
    n_out = data.n_classes or 1
    offered = {"input_shape": input_shape(data), "n_features": data.n_features, "n_classes": n_out}
    model = _call(fn, _kwargs(fn, offered), key, value, "input_shape, n_features and n_classes")
    if not isinstance(model, nn.Module):
        raise FactoryError(f"{key} = {value!r} returned a {type(model).__name__}, not a torch.nn.Module; "
                           f"return the model (e.g. `return MyNet(n_classes)`)")
    if not any(True for _ in model.parameters()):
        raise FactoryError(f"{key} = {value!r} returned a model without parameters; nothing to regularize")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.x_train[:2])
    except Exception as err:
        raise FactoryError(f"{key} = {value!r}: the model fails on a batch of shape {tuple(data.x_train[:2].shape)} "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); it receives "
                           f"[N, *input_shape] with input_shape={offered['input_shape']}") from None
    finally:
        model.train(was)
    if not (torch.is_tensor(out) and tuple(out.shape) == (len(data.x_train[:2]), n_out)):
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise FactoryError(f"{key} = {value!r}: the model's output for a batch of 2 is {got}; it must be "
                           f"(2, {n_out}) ({'n_classes logits' if data.n_classes else 'one regression output'})")
    return model


def build_model(cfg: dict, data) -> nn.Module:
    """The config's model for ``data``: ``model.factory`` when set, else ``model.kind``.

    >>> from decaylab.lab import config
    >>> cfg = config.resolve({}, ["model.hidden=[8]"])
    >>> type(build_model(cfg, build_data(cfg))).__name__
    'MLP'
    """
    mc = cfg["model"]
    if mc.get("factory"):
        return _factory_model(mc["factory"], data)
    shape = getattr(data, "input_shape", None)
    if shape and len(shape) > 1:
        raise FactoryError(f"model.kind={mc['kind']!r} takes flat inputs [N, features], but data.factory gives "
                           f"examples of shape {tuple(shape)}; return x as [N, {data.n_features}] from the "
                           f"data factory, or give your model with model.factory")
    return _zoo_model(mc["kind"], data.n_features, data.n_classes or 1, hidden=mc["hidden"],
                      image_shape=data.image_shape, dropout=mc["dropout"])


def first_layer(model: nn.Module) -> str:
    """The module whose weight sees the inputs: the model's ``first_layer``, else the first
    Linear/Conv layer in registration order.

    >>> first_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    '1'
    """
    name = getattr(model, "first_layer", None)
    if isinstance(name, str):
        return name
    for n, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return n
    raise ValueError(f"{type(model).__name__} has no Linear or Conv layer; penalty params='first' needs one")
