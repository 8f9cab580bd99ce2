"""Data sets for the lab: small ones bundled or generated, MNIST-style ones from IDX files.

Every data set comes back as a :class:`Dataset` of flattened float32 feature tensors with a
fixed test split and a seeded validation split carved from the training portion (for
choosing λ; the test set is kept for the end). Features are normalized with statistics of
the final training split only:

* images (``digits``, ``mnist``, ``fashion-mnist``) and the ``mnist1d`` signal: pixels
  scaled to [0, 1] (digits /16, MNIST /255), then ``(x - mean) / std`` with one scalar
  mean and std of the training split;
* tabular sets (``breast_cancer``, ``diabetes``, ``synthetic``): per-feature
  standardization. The ``diabetes`` regression target is standardized the same way.

``seed`` picks the validation split and the ``n_train`` subsample; the train/test split and
the generated data sets are fixed, so every run is scored on the same test set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .idx import load_idx

DATASETS = ("digits", "breast_cancer", "diabetes", "mnist1d", "synthetic", "fashion-mnist", "mnist", "csv")
_SPLIT_SEED = 0  # fixed train/test split of the bundled and generated sets


@dataclass
class Dataset:
    """A data set split into train / validation / test tensors.

    Attributes:
        name: The name passed to :func:`load`.
        task: ``"classification"`` or ``"regression"``.
        x_train, x_val, x_test: float32 features, shape ``[N, n_features]`` (images flattened).
        y_train, y_val, y_test: int64 labels (classification) or float32 targets.
        n_features: Number of features per example.
        n_classes: Number of classes, ``None`` for regression.
        image_shape: ``(H, W)`` for image data sets, else ``None``.
        feature_names: One name per feature for tabular sets, else ``None``.
        input_shape: One example's shape when ``x`` is not flat (a ``data.factory``'s
            images ``[N, C, H, W]``), else ``None``.
    """

    name: str
    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_features: int
    n_classes: int | None
    image_shape: tuple[int, int] | None
    feature_names: list[str] | None
    input_shape: tuple[int, ...] | None = None

    def info(self) -> dict:
        """Return a JSON-able summary (the run folder's ``data.json``).

        >>> load("digits").info()["n_features"]
        64
        """
        return {"name": self.name, "task": self.task, "n_train": len(self.x_train),
                "n_val": len(self.x_val), "n_test": len(self.x_test),
                "n_features": self.n_features, "n_classes": self.n_classes,
                "image_shape": list(self.image_shape) if self.image_shape else None,
                "feature_names": self.feature_names,
                **({"input_shape": list(self.input_shape)} if self.input_shape else {})}


_TEMPLATES = np.array([  # ten digit-like strokes, 12 control points each
    [0, 4, 8, 8, 4, 0, 0, 4, 8, 8, 4, 0], [0, 0, 0, 0, 0, 9, 9, 0, 0, 0, 0, 0],
    [6, 8, 6, 2, 0, -2, -4, -6, -6, 6, 6, 6], [6, 8, 4, 0, 4, 8, 4, 0, 4, 8, 4, 0],
    [0, 0, 6, 6, 6, 6, -6, -6, 0, 0, 0, 0], [8, 8, 8, 0, -4, -6, -4, 0, 4, 4, 0, 0],
    [0, 2, 4, 6, 8, 8, 6, -4, -6, -4, 0, 0], [8, 8, 8, 8, 6, 4, 2, 0, -2, -4, -6, -8],
    [0, 6, 0, -6, 0, 6, 0, -6, 0, 6, 0, -6], [-6, -8, -6, 0, 6, 8, 8, 8, 8, 8, 8, 8],
], dtype=np.float64) / 8


def make_mnist1d(n: int, seed: int = 0, length: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Generate an MNIST-1D-like set: digit strokes, stretched, shifted, sheared and noised.

    Each class is a 12-point stroke; a sample stretches it to 24-30 points, scales its
    amplitude by U(0.7, 1.3), places it at a random offset in a zero signal of ``length``,
    adds a random linear trend, Gaussian-smoothed noise (σ = 2 samples) and white noise.
    A linear model gets about 40 % of the test set, an MLP about 85 % (chance 10 %).

    >>> x, y = make_mnist1d(5)
    >>> x.shape, x.dtype.name, y.dtype.name
    ((5, 40), 'float32', 'int64')
    """
    if length < 30:
        raise ValueError(f"make_mnist1d(length={length}) is too short for the 24-30 point "
                         f"strokes; use length >= 30 (40 is the default)")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    width = rng.integers(24, 31, (n, 1))
    offset = (rng.random((n, 1)) * (length - width + 1)).astype(np.int64)
    t = (np.arange(length) - offset) * 11.0 / (width - 1)  # position along the stroke
    i0 = np.minimum(np.clip(t, 0, 11).astype(np.int64), 10)
    frac = np.clip(t, 0, 11) - i0
    strokes = _TEMPLATES[y]
    signal = (np.take_along_axis(strokes, i0, 1) * (1 - frac)
              + np.take_along_axis(strokes, i0 + 1, 1) * frac)
    x = np.where((t >= 0) & (t <= 11), signal * rng.uniform(0.7, 1.3, (n, 1)), 0.0)
    x += rng.uniform(-0.5, 0.5, (n, 1)) * np.linspace(-1, 1, length)
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    noise = np.lib.stride_tricks.sliding_window_view(rng.normal(size=(n, length + 12)), 13, 1)
    x += 0.25 * noise @ (kernel / np.linalg.norm(kernel)) + 0.1 * rng.normal(size=(n, length))
    return x.astype(np.float32), y.astype(np.int64)


def _load_small(name: str):
    """Bundled/generated sets: (x, y, task, image_shape, feature_names, kind)."""
    from sklearn import datasets as skd

    if name == "digits":
        d = skd.load_digits()
        return d.data / 16.0, d.target, "classification", (8, 8), None, "image"
    if name in ("breast_cancer", "diabetes"):
        d = getattr(skd, f"load_{name}")()
        task = "classification" if name == "breast_cancer" else "regression"
        return d.data, d.target, task, None, [str(f) for f in d.feature_names], "tabular"
    if name == "mnist1d":
        x, y = make_mnist1d(5000, seed=_SPLIT_SEED)
        return x, y, "classification", None, None, "signal"
    k = 5  # synthetic: shuffle=False keeps the informative features first
    x, y = skd.make_classification(n_samples=3000, n_features=40, n_informative=k,
                                   n_redundant=0, n_classes=3, shuffle=False,
                                   random_state=_SPLIT_SEED)
    names = [f"informative_{i}" for i in range(k)] + [f"noise_{i}" for i in range(40 - k)]
    return x, y, "classification", None, names, "tabular"


def _split(n: int, fraction: float, seed: int, labels: np.ndarray | None):
    """Seeded split of ``range(n)`` -> (keep, held), ``round(fraction * n)`` held out.

    With ``labels`` it is stratified: every example gets its within-class quantile in a
    random order, and the lowest quantiles are held out, so each class gives its share.
    """
    k = int(round(fraction * n))
    if not 0 < k < n:
        raise ValueError(f"a {fraction} split of {n} examples leaves one side empty; "
                         f"use a fraction nearer 0.5 or more data (larger n_train)")
    perm = np.random.default_rng(seed).permutation(n)
    group = np.zeros(n, np.int64) if labels is None else np.unique(
        labels[perm], return_inverse=True)[1].ravel()
    counts = np.bincount(group)
    order = np.argsort(group, kind="stable")
    rank = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    quantile = np.empty(n)
    quantile[order] = (rank + 0.5) / counts[group[order]]
    mask = np.zeros(n, dtype=bool)
    mask[perm[np.argsort(quantile, kind="stable")[:k]]] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _normalize(train: np.ndarray, *others: np.ndarray, per_feature: bool, center: bool = True):
    """Standardize with train statistics. Images are only scaled (``center=False``), so a
    blank pixel stays exactly 0 and carries no signal: sparse penalties can switch it off."""
    mean = train.mean(axis=0) if per_feature else train.mean()
    mean = mean if center else np.zeros_like(mean)
    std = train.std(axis=0) if per_feature else train.std()
    # a column that differs only in rounding (sd at most 1e-9 of its magnitude) is constant:
    # divided by its tiny sd it would become large noise a network can fit
    constant = std <= 1e-9 * (np.abs(train).max(axis=0) if per_feature else np.abs(train).max())
    mean, std = np.asarray(mean, train.dtype), np.where(constant | ~(std > 0), 1, std).astype(train.dtype)
    return [((a - mean) / std).astype(np.float32, copy=False) for a in (train, *others)]


def flip_labels(y: np.ndarray, fraction: float, n_classes: int, seed: int) -> np.ndarray:
    """A copy of ``y`` with ``round(fraction * len(y))`` labels (seeded choice) set to
    another class drawn uniformly from the other ``n_classes - 1``.

    >>> y = np.zeros(10, np.int64)
    >>> int((flip_labels(y, 0.3, 10, seed=0) != 0).sum())
    3
    """
    rng = np.random.default_rng([seed, 7])
    out = y.copy()
    idx = rng.choice(len(y), int(round(fraction * len(y))), replace=False)
    out[idx] = (y[idx] + rng.integers(1, n_classes, len(idx))) % n_classes
    return out


def load(name: str = "digits", *, root: str | os.PathLike | None = None,
         val_fraction: float = 0.1, seed: int = 0, download: bool = True,
         n_train: int | None = None, label_noise: float = 0.0,
         path: str | os.PathLike | None = None,
         target: str | None = None, features: list[str] | None = None) -> Dataset:
    """Load a data set with a fixed test split and a seeded validation split.

    Args:
        name: One of :data:`DATASETS`.
        root: Folder holding the IDX files (``mnist``, ``fashion-mnist``); searched first.
        val_fraction: Share of the training portion held out for validation, in (0, 1).
        seed: Seed of the validation split and of the ``n_train`` subsample.
        download: Fetch missing IDX files into the user cache (MD5-checked).
        n_train: Keep only this many training examples (seeded); validation is unchanged.
        label_noise: Share of *training* labels replaced by a different class drawn
            uniformly (seeded by ``seed``); validation and test labels stay clean.
        path, target, features: For ``name="csv"``: the table, the column to predict and
            the feature columns (default: all others); see :mod:`decaylab.lab.csvdata`.

    Raises:
        ValueError: Unknown name, ``val_fraction`` outside (0, 1), a bad ``n_train``, or
            ``label_noise`` outside [0, 1) or set for a regression set.
        idx.DataNotFoundError: IDX files not found and not downloadable (a FileNotFoundError).

    >>> ds = load("digits", n_train=100)
    >>> ds.x_train.shape, ds.image_shape, ds.n_classes, len(ds.x_val)
    (torch.Size([100, 64]), (8, 8), 10, 144)
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1), e.g. 0.1")
    if not 0 <= label_noise < 1:
        raise ValueError(f"label_noise={label_noise} must be in [0, 1), e.g. 0.2 flips a fifth of the training labels")
    if name in ("mnist", "fashion-mnist"):
        x, y, x_test, y_test, image_shape = load_idx(name, root, download)
        task, names, kind = "classification", None, "image"
    else:
        if name == "csv":
            from .csvdata import read_csv

            x, y, task, names = read_csv(path or "", target or "", features)
            image_shape, kind = None, "tabular"
        else:
            x, y, task, image_shape, names, kind = _load_small(name)
        strat = y if task == "classification" else None
        trainval, test = _split(len(x), 0.2, _SPLIT_SEED, strat)
        x, y, x_test, y_test = x[trainval], y[trainval], x[test], y[test]
    train, val = _split(len(x), val_fraction, seed, y if task == "classification" else None)
    if n_train is not None:
        if not 0 < n_train <= len(train):
            raise ValueError(f"n_train={n_train} but {name} has {len(train)} training examples "
                             f"after the validation split; pass 1..{len(train)} or None")
        train = np.sort(np.random.default_rng(seed + 1).permutation(train)[:n_train])
    xs = _normalize(x[train], x[val], x_test, per_feature=kind == "tabular", center=kind == "tabular")
    if task == "regression":
        if label_noise > 0:
            raise ValueError(f"label_noise={label_noise} needs a classification data set; {name} is regression")
        ys = _normalize(y[train], y[val], y_test, per_feature=False)
    else:
        ys = [a.astype(np.int64) for a in (y[train], y[val], y_test)]
        if label_noise > 0:
            ys[0] = flip_labels(ys[0], label_noise, int(max(y.max(), y_test.max())) + 1, seed)
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (*xs, *ys)]
    return Dataset(name, task, t[0], t[3], t[1], t[4], t[2], t[5], n_features=xs[0].shape[1],
                   n_classes=int(max(y.max(), y_test.max())) + 1 if ys[0].dtype == np.int64
                   else None,
                   image_shape=image_shape, feature_names=names)
