"""Experiment configuration: defaults in one place, TOML files, ``--set`` overrides.

A config is a nested dict. Every key has a default here, so a file or an override only
says what differs; unknown keys and wrong types are rejected with the valid keys listed.
The resolved config is saved in every run folder.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

from .build import DATASETS, MODELS  # the registries: the choices of data.name and model.kind
from .build import PENALTIES as PENALTY_KINDS  # and of penalty

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PENALTIES = tuple(PENALTY_KINDS)  # the registry (lab/build.py) is the source

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "seeds": 1,  # compare: every run over seeds seed, seed+1, ... (mean ± sd)
    "out": "runs",
    "name": "",
    "data": {"name": "digits", "root": "", "val_fraction": 0.15, "n_train": 0, "download": True,
             "label_noise": 0.0,  # share of training labels flipped (seeded); val/test stay clean
             "path": "", "target": "", "features": [],  # path/target/features: data.name = "csv"
             "factory": ""},  # "pkg.module:function" or "file.py:function": your data (lab/build.py)
    "model": {"kind": "mlp", "hidden": [256, 128], "dropout": 0.0,
              "factory": ""},  # "pkg.module:function" or "file.py:function": your model (lab/build.py)
    "train": {
        "epochs": 40,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 1e-3,
        "momentum": 0.9,
        "schedule": "cosine",
        "device": "cpu",
        "threads": 1,  # small models train fastest on one thread; 0 = torch's default
        "jobs": 1,  # runs trained at once in separate processes (each with `threads`)
        "checkpoint": True,  # an atomic checkpoint per epoch, for `decaylab resume`
    },
    # decaylab select: adaptive group lasso path on the first layer's columns (lab/select.py)
    "select": {"alpha_max": 64.0, "alpha_min": 1.0, "n_alphas": 12, "gamma": 2.0,
               "path_epochs": 30, "refit_epochs": 20,
               # the dense fit (baseline and adaptive weights): decoupled L2 strengths, best on validation
               "dense_l2": [0.0, 2.0, 8.0, 32.0]},
    # sweeps: a reference curve on the accuracy-size (Pareto) figure, trained in the same run
    # (lab/reference.py): "magnitude" = gradual magnitude pruning at the exact-zero fractions
    # `targets`, or at those the sweep's points reached when `targets` is empty
    "pareto": {"reference": "none", "targets": []},
}

# One penalty setting; "runs" (compare) is a list of these, "penalty" (train) is one.
RUN_DEFAULTS: dict[str, Any] = {
    "name": "",
    "penalty": "none",
    "alpha": 0.0,
    "mode": "",  # "" = the penalty's default (prox for L1/EN/GL, decoupled for L2/L2SP)
    "l1_ratio": 0.5,
    "groups": "inputs",
    "params": "",  # "" = the default selection (weights >= 2-D); "first" = the first layer's weight; or a glob
    "metric": "",  # "" = the library's default: Adam's metric for sparse prox rules under Adam/AdamW
    "warmup_epochs": 0,
    "finetune_epochs": 0,
    "finetune_lr": 0.0,  # 0 = a tenth of train.lr
    "alphas": "",  # compare: choose alpha from this grid (LO:HI:N or a,b,c) by a sweep on validation
}

# The default comparison (digits, MLP, Adam). Strengths were picked on the validation
# split so each penalty visibly acts; the sparse ones take Adam's metric (see README).
DEFAULT_RUNS: list[dict[str, Any]] = [
    {"name": "none", "penalty": "none"},
    {"name": "l2", "penalty": "l2", "alpha": 1e-2, "mode": "coupled"},
    {"name": "decoupled", "penalty": "l2", "alpha": 1.0, "mode": "decoupled"},
    {"name": "l1", "penalty": "l1", "alpha": 3e-4, "metric": "adam"},
    {"name": "elasticnet", "penalty": "elasticnet", "alpha": 6e-4, "l1_ratio": 0.5, "metric": "adam"},
    {"name": "grouplasso", "penalty": "grouplasso", "alpha": 5e-4, "groups": "inputs", "params": "first",
     "metric": "adam"},
]

CHOICES = {  # the lab's models and data sets come from their registries (lab/build.py)
    "data.name": tuple(DATASETS),
    "model.kind": tuple(MODELS),
    "train.optimizer": ("sgd", "adam", "adamw"),
    "train.schedule": ("none", "cosine"),
    "penalty": PENALTIES,
    "mode": ("", "prox", "decoupled", "coupled"),
    "metric": ("", "lr", "adam"),
    "pareto.reference": ("none", "magnitude"),
}


# Numeric keys and the values they accept (a penalty's alpha and l1_ratio are checked by
# the penalty itself, see train.check_runs): (low, high, low inclusive, high inclusive).
RANGES = {
    "seed": (0, None, True, True),
    "data.val_fraction": (0.0, 1.0, False, False),
    "data.n_train": (0, None, True, True),
    "model.dropout": (0.0, 1.0, True, False),
    "train.epochs": (1, None, True, True),
    "train.batch_size": (1, None, True, True),
    "train.lr": (0.0, None, False, True),
    "train.momentum": (0.0, 1.0, True, False),
    "train.threads": (0, None, True, True),
    "train.jobs": (1, None, True, True),
    "warmup_epochs": (0, None, True, True),
    "finetune_epochs": (0, None, True, True),
    "finetune_lr": (0.0, None, True, True),
}

# Models whose widths are fixed: model.hidden is set to what they really use.
FIXED_HIDDEN = {"linear": [], "lenet300": [300, 100], "cnn": [120, 84]}


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message lists what can."""


def _type_name(v) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}[type(v)]


def _check_value(key: str, default, value):
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif key == "data.features":  # column names of a CSV table
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
    elif key == "pareto.targets":  # exact-zero fractions
        ok = isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
        if ok and not all(0 < x < 1 for x in value):
            raise ConfigError(f"config key {key!r} = {value!r}: every target is a fraction of exact zeros in "
                              f"(0, 1), e.g. [0.5, 0.9, 0.98]")
        value = [float(x) for x in value] if ok else value
    elif key == "select.dense_l2":  # decoupled L2 strengths of the dense fit
        ok = isinstance(value, list) and bool(value) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in value)
        if not ok:
            raise ConfigError(f"config key {key!r} = {value!r}: give one or more strengths >= 0, e.g. "
                              f"[0.0, 1.0, 4.0, 16.0, 64.0] ([0.0] = an unregularized dense fit)")
        value = [float(x) for x in value]
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"config key {key!r} must be {_type_name(default)}, got {value!r}")
    short = key.split(".")[-1] if key.startswith(("runs", "penalty")) else key
    if short in CHOICES and value not in CHOICES[short]:
        raise ConfigError(f"config key {key!r} = {value!r} is not one of {CHOICES[short]}")
    if short in RANGES:
        _check_range(key, value, *RANGES[short])
    if short == "model.hidden" and any(w < 1 for w in value):
        raise ConfigError(f"config key {key!r} = {value!r}: every width must be >= 1")
    if short == "name" and value:
        _check_name(key, value)
    if short in ("model.factory", "data.factory") and value and ":" not in value:
        raise ConfigError(f"config key {key!r} = {value!r} is not a factory; write it as "
                          f"\"package.module:function\" or \"path/to/file.py:function\"")
    if short in ("model.factory", "data.factory") and value.rpartition(":")[0].endswith(".py"):
        import os  # a file travels as an absolute path: resume, report and Ray workers run elsewhere

        path, _, fn = value.rpartition(":")
        value = f"{os.path.abspath(os.path.expanduser(path))}:{fn}"
    return value


def _check_range(key: str, value, low, high, low_in: bool, high_in: bool) -> None:
    import math

    ok = math.isfinite(value) and (low is None or (value >= low if low_in else value > low)) \
        and (high is None or (value <= high if high_in else value < high))
    if not ok:
        lo = "" if low is None else f"{'[' if low_in else '('}{low}"
        hi = "inf)" if high is None else f"{high}{']' if high_in else ')'}"
        raise ConfigError(f"config key {key!r} = {value!r} is out of range; it must be in {lo}, {hi}")


def _check_name(key: str, value: str) -> None:
    from .runfolder import check_name

    try:
        check_name(value, f"config key {key!r}")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _merge(base: dict, update: dict, prefix: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        key = f"{prefix}{k}"
        if k not in base:
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {sorted(base)}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key {key!r} is a table; valid keys: {sorted(base[k])}")
            out[k] = _merge(base[k], v, key + ".")
        else:
            out[k] = _check_value(key, base[k], v)
    return out


def resolve_run(spec: dict, where: str) -> dict:
    """Fill a penalty setting's defaults and check it; its name defaults to the penalty."""
    run = _merge(RUN_DEFAULTS, spec, where + ".")
    run["name"] = run["name"] or run["penalty"]
    return run


def resolve(file_cfg: dict | None = None, overrides: list[str] | None = None, *, command: str = "compare") -> dict:
    """Defaults <- file <- ``--set key=value`` overrides, checked; returns the full config.

    >>> cfg = resolve({}, ["train.epochs=3", "runs.l1.alpha=0.01"])
    >>> cfg["train"]["epochs"], [r["alpha"] for r in cfg["runs"] if r["name"] == "l1"]
    (3, [0.01])
    """
    file_cfg = copy.deepcopy(file_cfg or {})
    runs = file_cfg.pop("runs", None)
    penalty = file_cfg.pop("penalty", None)
    cfg = _merge(DEFAULTS, file_cfg)
    auto_name = False
    if command == "train":
        if runs is not None:
            raise ConfigError("'runs' is for 'decaylab compare'; 'decaylab train' takes one [penalty] table")
        if penalty is not None and not isinstance(penalty, dict):
            raise ConfigError(f"'penalty' must be a table (e.g. [penalty] penalty = \"l1\"), got {penalty!r}")
        cfg["runs"] = [resolve_run(penalty or {}, "penalty")]
        auto_name = not (penalty or {}).get("name")
    else:
        if runs is not None and not (isinstance(runs, list) and all(isinstance(r, dict) for r in runs)):
            raise ConfigError(f"'runs' must be a list of [[runs]] tables, got {runs!r}")
        if penalty is not None:
            raise ConfigError("'penalty' is for 'decaylab train'; 'decaylab compare' takes [[runs]] tables")
        cfg["runs"] = [resolve_run(r, f"runs[{i}]") for i, r in enumerate(runs if runs is not None else DEFAULT_RUNS)]
    for item in overrides or []:
        _apply_override(cfg, item, command)
        if auto_name and item.partition("=")[0].strip() == "penalty.name":
            auto_name = False
    if auto_name:  # named after the penalty it ended with, e.g. --set penalty.penalty=l1
        cfg["runs"][0]["name"] = cfg["runs"][0]["penalty"]
    _check_consistent(cfg, command)
    names = [r["name"] for r in cfg["runs"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"run names must be unique, got {names}; set 'name' in each [[runs]] table")
    return cfg


def _check_consistent(cfg: dict, command: str) -> None:
    """Checks across keys: fixed model widths, a strength without a penalty."""
    model = cfg["model"]
    fixed = None if model["factory"] else FIXED_HIDDEN.get(model["kind"])
    if fixed is not None:  # the saved config (and the report header) says what was built
        model["hidden"] = list(fixed)
    for run in cfg["runs"]:
        if command == "train" and run["penalty"] == "none" and run["alpha"] != 0:
            raise ConfigError(f"penalty.alpha={run['alpha']} has no effect: the penalty is 'none'; add "
                              f"--set penalty.penalty=l1 (or l2, elasticnet, grouplasso, l2sp)")


def parse_value(text: str):
    """A TOML literal (``3``, ``1e-4``, ``true``, ``[64, 32]``, ``"x"``) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_override(cfg: dict, item: str, command: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set needs key=value, got {item!r} (e.g. --set train.epochs=5)")
    key, text = item.split("=", 1)
    key, value = key.strip(), parse_value(text.strip())
    parts = key.split(".")
    if parts[0] in ("runs", "penalty"):
        _override_run(cfg, parts, value, key, command)
        return
    node, default = cfg, DEFAULTS
    for p in parts[:-1]:
        if p not in default or not isinstance(default[p], dict):
            raise ConfigError(f"unknown config key {key!r}; valid top-level keys: {sorted(DEFAULTS) + ['runs']}")
        node, default = node[p], default[p]
    if parts[-1] not in default or isinstance(default[parts[-1]], dict):
        raise ConfigError(f"unknown config key {key!r}; valid keys here: {sorted(default)}")
    node[parts[-1]] = _check_value(key, default[parts[-1]], value)


def _override_run(cfg: dict, parts: list[str], value, key: str, command: str) -> None:
    if parts[0] == "penalty":
        if command != "train" or len(parts) != 2:
            raise ConfigError(f"{key!r}: use penalty.KEY with 'decaylab train', runs.NAME.KEY with compare")
        targets, field = cfg["runs"], parts[1]
    else:
        if len(parts) != 3:
            raise ConfigError(f"{key!r}: use runs.NAME.KEY (runs: {[r['name'] for r in cfg['runs']]})")
        targets = [r for r in cfg["runs"] if r["name"] == parts[1] or parts[1] == "*"]
        if not targets:
            raise ConfigError(f"{key!r}: no run named {parts[1]!r}; runs are {[r['name'] for r in cfg['runs']]}")
        field = parts[2]
    if field not in RUN_DEFAULTS:
        raise ConfigError(f"unknown config key {key!r}; valid keys of a run: {sorted(RUN_DEFAULTS)}")
    for run in targets:
        run[field] = _check_value(key, RUN_DEFAULTS[field], value)


def load_file(path) -> dict:
    """Read a TOML config file; a syntax error names the file and line."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if not isinstance(v, float) or v == v and abs(v) != float("inf") else \
            ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    # a TOML basic string: JSON's escapes are valid TOML; TOML also escapes DEL
    return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_table(header: str, table: dict) -> list[str]:
    lines = [header] if header else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    return lines


def to_toml(cfg: dict, command: str = "compare") -> str:
    """The resolved config as a TOML file that :func:`resolve` reads back to the same config
    (``decaylab compare --print-config``).

    >>> cfg = resolve({}, ["train.epochs=3"])
    >>> resolve(tomllib.loads(to_toml(cfg))) == cfg
    True
    """
    top = {k: v for k, v in cfg.items() if k != "runs"}
    lines = _toml_table("", top)
    for k, v in top.items():
        if isinstance(v, dict):
            lines += [""] + _toml_table(f"[{k}]", v)
    if command == "train":
        lines += [""] + _toml_table("[penalty]", cfg["runs"][0])
    else:
        for run in cfg["runs"]:
            lines += [""] + _toml_table("[[runs]]", run)
    return "\n".join(lines) + "\n"
