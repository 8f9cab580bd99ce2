"""Users' own tables: ``data.name = "csv"`` with ``data.path``, ``data.target`` and optional
``data.features`` (column names; default: every other column).

The first line names the columns. Feature cells must be numbers; an empty cell, ``NaN``
or text is an error naming the column and the line. The target may be text (class
labels, sorted and numbered from 0), integers with at most ``MAX_CLASSES`` distinct
values (classes) or other numbers (regression).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

MAX_CLASSES = 50


def _number(cell: str, column: str, line: int, path) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        what = "is empty" if not text else f"is not a number: {cell!r}"
        raise ValueError(f"{path}: column {column!r}, line {line} {what}; fill or drop that row, "
                         f"or leave the column out of data.features") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}: column {column!r}, line {line} is {text} (missing or infinite); "
                         f"fill or drop that row, or leave the column out of data.features")
    return value


def read_csv(path, target: str, features: list[str] | None = None):
    r"""Read a table -> ``(x, y, task, feature_names)``.

    Raises:
        ValueError: no such target or feature column, an empty table, or a bad cell
            (naming the column and the line).
        FileNotFoundError: no file at ``path``.

    >>> import tempfile, os
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
    >>> _ = f.write("age,income,label\n31,2.5,yes\n45,3.1,no\n"); f.close()
    >>> x, y, task, names = read_csv(f.name, "label"); os.unlink(f.name)
    >>> x.tolist(), y.tolist(), task, names
    ([[31.0, 2.5], [45.0, 3.1]], [1, 0], 'classification', ['age', 'income'])
    """
    path = Path(path)
    if not str(path) or not path.is_file():
        raise FileNotFoundError(f"data.path {str(path)!r} is not a file; set data.path to your CSV table")
    if not target:
        raise ValueError("data.name = 'csv' needs data.target, the name of the column to predict")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path} is empty; its first line must name the columns")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise ValueError(f"{path} has no target column {target!r}; its columns are {header}")
    names = list(features) if features else [h for h in header if h != target]
    missing = [n for n in names if n not in header]
    if missing:
        raise ValueError(f"{path} has no feature column(s) {missing}; its columns are {header}")
    if target in names:
        raise ValueError(f"data.features lists the target column {target!r}; leave it out")
    body = [(i + 2, r) for i, r in enumerate(rows[1:]) if any(c.strip() for c in r)]
    if not body:
        raise ValueError(f"{path} has a header but no rows")
    cols = [header.index(n) for n in names]
    t = header.index(target)
    x = np.empty((len(body), len(cols)), dtype=np.float64)
    labels = []
    for r, (line, row) in enumerate(body):
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line} has {len(row)} cells but the header has {len(header)}")
        for c, j in enumerate(cols):
            x[r, c] = _number(row[j], names[c], line, path)
        if not row[t].strip():
            raise ValueError(f"{path}: column {target!r}, line {line} is empty; every row needs a target")
        labels.append(row[t].strip())
    y, task = _target(labels, target, body, path)
    return x, y, task, names


def _target(labels: list[str], target: str, body, path):
    if len(set(labels)) == 1:
        raise ValueError(f"{path}: column {target!r} holds one value ({labels[0]!r}) in all {len(labels)} rows; "
                         f"there is nothing to predict: set data.target to a column with at least two "
                         f"classes (or values)")
    try:
        values = np.array([float(v) for v in labels])
    except ValueError:  # text labels: classes
        classes = sorted(set(labels))
        return np.array([classes.index(v) for v in labels], dtype=np.int64), "classification"
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"{path}: column {target!r}, line {body[bad[0]][0]} is {labels[bad[0]]}; "
                         f"every row needs a finite target")
    if np.all(values == np.round(values)) and len(np.unique(values)) <= MAX_CLASSES:
        _, y = np.unique(values, return_inverse=True)
        return y.astype(np.int64), "classification"
    return values, "regression"
