"""Write a fake but valid run folder (docs/run-folder.md) with plausible, deterministic numbers,
and the sweep.json and compact.json contents the figure and page tests draw from."""
from __future__ import annotations

import json
import pathlib
import re

import numpy as np

# per penalty kind: final train/test accuracy, weight scale, soft threshold (L1 zeros)
_PROFILES = {
    "none": (0.995, 0.93, 0.30, 0.0),
    "l2": (0.975, 0.95, 0.10, 0.0),
    "l1": (0.965, 0.952, 0.12, 0.08),
}
_DESCRIBE = {"none": "no penalty", "l2": "L2(alpha=1e-3), decoupled", "l1": "L1(alpha=1e-4), prox"}
_HIDDEN = 16


def _kind(name):
    name = re.sub(r"-s\d+$", "", name)  # a compare over seeds: l2-s1 is an l2 run
    return name if name in _PROFILES else "l1"


def _safe_dir(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "run"


def _write_json(path, obj):
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _weights(kind, rng, n_inputs):
    _, _, scale, threshold = _PROFILES[kind]
    w = rng.laplace(0.0, scale, size=(_HIDDEN, n_inputs + 10))
    return np.sign(w) * np.maximum(np.abs(w) - threshold, 0.0)


def _input_mask(kind, image_shape, n_inputs):
    if kind != "l1":
        return [1] * n_inputs
    if image_shape is None:
        return [1 if i % 3 else 0 for i in range(n_inputs)]
    h, w = image_shape
    return [int(0 < i < h - 1 and 0 < j < w - 1) for i in range(h) for j in range(w)]


def _layers(w, n_inputs):
    fc1, fc2 = w[:, :n_inputs], w[:, n_inputs:]
    out = {}
    for name, part in (("fc1", fc1), ("fc2", fc2)):
        zeros = int((part == 0).sum())
        out[name] = {"numel": int(part.size), "zeros": zeros, "zero_fraction": zeros / part.size,
                     "live_rows": int((part != 0).any(axis=1).sum()), "rows": part.shape[0]}
    return out


def _epoch_row(kind, e, epochs, w, n_inputs, live, regression):
    train_end, test_end, _, _ = _PROFILES[kind]
    t = e / epochs
    train_acc, test_acc = 0.5 + (train_end - 0.5) * t, 0.5 + (test_end - 0.5) * t
    val_acc = test_acc + 0.004
    zero_frac = float((w == 0).mean()) * t
    return {"epoch": e, "step": 10 * e,
            "train_loss": 2 * (1 - train_acc), "train_acc": None if regression else train_acc,
            "val_loss": 2 * (1 - val_acc), "val_acc": None if regression else val_acc,
            "test_loss": 2 * (1 - test_acc), "test_acc": None if regression else test_acc,
            "weight_l2": float(np.sqrt((w ** 2).sum())) * (2 - t),
            "weight_l1": float(np.abs(w).sum()) * (2 - t), "zero_fraction": zero_frac,
            "layers": _layers(w, n_inputs), "live_inputs": live, "n_inputs": n_inputs,
            "lr": 1e-3, "epoch_time": 0.5 + 0.01 * e, "phase": "train"}


def final_metrics(rows, w, n_inputs, mask, regression):
    last = rows[-1]
    edges = np.linspace(w.min() - 1e-3, w.max() + 1e-3, 31)
    counts, _ = np.histogram(w, bins=edges)
    zeros = int((w == 0).sum())
    keys = ("test_acc", "test_loss", "train_acc", "train_loss", "val_acc", "val_loss")
    gap = (last["test_loss"] - last["train_loss"]) if regression else \
        last["train_acc"] - last["test_acc"]
    return {**{k: last[k] for k in keys}, "gap": gap,
            "zero_fraction": zeros / w.size, "zeros": zeros, "weights": int(w.size),
            "n_params": int(w.size) + 2 * _HIDDEN,
            "nonzero_params": int(w.size) - zeros + 2 * _HIDDEN,
            "live_inputs": sum(mask), "n_inputs": n_inputs, "input_mask": mask,
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist(), "exact_zeros": zeros},
            "layers": last["layers"],
            "mean_epoch_time": float(np.mean([r["epoch_time"] for r in rows]))}


def _write_run(root, index, name, *, epochs, image_shape, n_inputs, complete, partial, regression):
    kind = _kind(name)
    run_dir = root / "runs" / _safe_dir(name)
    run_dir.mkdir(parents=True)
    alpha = {"none": 0.0, "l2": 1e-3}.get(kind, 1e-4)
    _write_json(run_dir / "spec.json", {
        "name": name, "penalty": {"none": "none", "l2": "L2"}.get(kind, "L1"), "alpha": alpha,
        "mode": None if kind == "none" else ("decoupled" if kind == "l2" else "prox"),
        "l1_ratio": None, "groups": None, "describe": _DESCRIBE[kind]})
    rng = np.random.default_rng(index)
    w = _weights(kind, rng, n_inputs)
    mask = _input_mask(kind, image_shape, n_inputs)
    n_rows = epochs if complete else max(1, epochs - 1)
    rows = [_epoch_row(kind, e, epochs, w, n_inputs, sum(mask), regression)
            for e in range(1, n_rows + 1)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if partial:
        text += '{"epoch": ' + str(n_rows + 1) + ', "step": 4, "train_lo'
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")
    (run_dir / "model.pt").write_bytes(b"not a checkpoint: the report must never read this")
    if complete:
        _write_json(run_dir / "final.json", final_metrics(rows, w, n_inputs, mask, regression))


def make_run_folder(path, *, runs=("none", "l2", "l1"), epochs=3, image_shape=(8, 8),
                    incomplete=None, partial_line=False, task="classification", seeds=1, label_noise=0.0):
    """Write a run folder at ``path`` and return it as a Path.

    Args:
        runs: run names; "none", "l2", "l1" pick a profile, any other name behaves like L1.
        image_shape: (H, W) of image inputs, or None for tabular data (10 features).
        incomplete: a run name or names written without final.json (and one epoch short).
        partial_line: end metrics.jsonl with a cut-off line (in the incomplete runs, else
            in the last run), as a killed process leaves it.
        task: "classification" or "regression" (accuracies are null).
        seeds: > 1 names the runs ``<run>-s<seed>`` (a compare over seeds: ``base_runs`` in
            config.json, and compare.json with mean ± sd).
        label_noise: written as config ``data.label_noise``.
    """
    root = pathlib.Path(path)
    root.mkdir(parents=True, exist_ok=True)
    incomplete = {incomplete} if isinstance(incomplete, str) else set(incomplete or ())
    base = list(runs)
    if seeds > 1:
        runs = tuple(f"{n}-s{s}" for s in range(seeds) for n in base)
    regression = task == "regression"
    n_inputs = image_shape[0] * image_shape[1] if image_shape else 10
    _write_json(root / "config.json", {
        "command": "compare", "seed": 0, "created": "2025-01-02T03:04:05+00:00",
        "versions": {"decaylab": "0.1.0", "torch": "2.13.0", "numpy": "2.4.6",
                     "python": "3.11.7", "sklearn": "1.6.0"},
        "data": {"name": "digits", "label_noise": label_noise}, "model": {"name": "mlp", "hidden": [_HIDDEN]},
        "epochs": epochs, "batch_size": 64, "lr": 1e-3,
        "runs": [{"name": n} for n in runs], **({"base_runs": [{"name": n} for n in base]} if seeds > 1 else {})})
    _write_json(root / "status.json", {"state": "interrupted" if incomplete else "complete",
                                       "error": None, "updated": "2025-01-02T03:05:00+00:00"})
    _write_json(root / "data.json", {
        "name": "diabetes" if regression else "digits", "task": task,
        "n_train": 1000, "n_val": 200, "n_test": 597, "n_features": n_inputs,
        "n_classes": None if regression else 10,
        "image_shape": list(image_shape) if image_shape else None, "feature_names": None})
    partial_runs = incomplete or {runs[-1]}
    for i, name in enumerate(runs):
        _write_run(root, i, name, epochs=epochs, image_shape=image_shape, n_inputs=n_inputs,
                   complete=name not in incomplete, partial=partial_line and name in partial_runs,
                   regression=regression)
    if seeds > 1:
        _write_json(root / "compare.json", _compare(root, base, seeds))
    return root


def _compare(root, base, seeds):
    rows = []
    for n in base:
        finals = [json.loads((root / "runs" / _safe_dir(f"{n}-s{s}") / "final.json").read_text()) for s in range(seeds)]
        stats = {k: [float(np.mean([f[k] for f in finals])), float(np.std([f[k] for f in finals], ddof=1))]
                 for k in ("val_acc", "test_acc", "gap", "zero_fraction")}
        rows.append({"name": n, "penalty": _kind(n), "alpha": 0.0, "describe": _DESCRIBE[_kind(n)], "n": seeds,
                     **stats})
    return {"seeds": list(range(seeds)), "runs": rows, "verdicts": [], "note": "strengths chosen on validation"}


# -- sweep.json and compact.json contents, for figures and page text drawn from constructed data --
def sweep_point(a, v, *, zeros=0.3, stopped=False, nonzero=None, lr=1e-3):
    """One point of a sweep.json: strength ``a`` with validation accuracy ``v``."""
    return {"alpha": a, "lr": lr, "val_acc": v, "val_acc_sd": None, "val_acc_se": 0.01, "test_acc": v - 0.01,
            "test_acc_sd": None, "gap": 0.05, "zeros": zeros, "layer_norms": {"fc1": 1.0, "fc2": 2.0},
            "nonzero_params": nonzero if nonzero is not None else int(5000 * (1 - zeros)), "n_params": 5000,
            "stopped_early": stopped, "epochs": 15 if stopped else 30}


def sweep_of(points, best, one_se):
    """A sweep.json over ``points`` that chose ``best`` and ``one_se``."""
    return {"chosen": {"best": best, "one_se": one_se}, "chosen_lr": {"best": 1e-3}, "seeds": 1, "points": points}


# four L1 strengths, the two strongest stopped early; best and one-SE are the same point
SWEEP = sweep_of([sweep_point(0.1, 0.80, zeros=0.1), sweep_point(0.3, 0.83, zeros=0.3),
                  sweep_point(1.0, 0.82, zeros=0.5, stopped=True), sweep_point(3.0, 0.75, zeros=0.6, stopped=True)],
                 best=0.3, one_se=0.3)


def compact_result(kept_inputs, layers, dense_s=2e-3, small_s=5e-4):
    """A compact.json of a compacted run: 64 inputs, the kept units per layer, the times."""
    return {"compacted": True, "kept_inputs": kept_inputs, "n_inputs": 64, "layers": layers,
            "params_before": 1000, "params_after": 300, "max_abs_diff_test": 0.0,
            "time_dense_batch256": dense_s, "time_compact_batch256": small_s, "speedup_batch256": dense_s / small_s}
