"""``decaylab compact RUN_DIR``: the compacted model of every run in a run folder.

For each ``runs/NAME/model.pt`` the model is rebuilt from ``config.json``, compacted with
:func:`decaylab.compact` (a ``model.factory`` model with its Torch-Pruning backend), checked on the test set (max abs difference of the outputs), and
saved as ``runs/NAME/compact.pt`` (the compacted module's ``state_dict``: tensors only, so
it loads with ``weights_only=True``; ``decaylab.compact`` on the run's model rebuilds the
module deterministically) with ``runs/NAME/compact.json``: kept input indices, units kept per layer, parameters
before and after, the test-set difference and the CPU inference time of one batch of 256 test
examples, dense and compacted (best of 20, measured one after the other), and their ratio.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch

import decaylab as dl

from .build import build_model


def _rebuild(cfg: dict, data, run) -> torch.nn.Module:
    model = build_model(cfg, data)
    model.load_state_dict(run.load_model())
    return model.eval()


def backend(cfg: dict) -> str:
    """The lab's own models are chains (decaylab's code); a ``model.factory`` model may be
    any graph (residual additions, BatchNorm), so it goes through Torch-Pruning.

    >>> backend({"model": {"factory": "my.models:resnet"}})
    'torch-pruning'
    """
    return "torch-pruning" if cfg["model"].get("factory") else "auto"


def time_inference(model: torch.nn.Module, x: torch.Tensor, repeats: int = 20) -> float:
    """Best-of-``repeats`` seconds for one forward pass of ``x`` (no grad).

    >>> time_inference(torch.nn.Linear(3, 2), torch.zeros(4, 3), repeats=2) > 0
    True
    """
    best = float("inf")
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t0)
    return best


def compact_run_folder(run_dir, say=print) -> dict:
    """Compact every run of ``run_dir``; returns ``{run name: compact.json contents}``."""
    from . import runfolder
    from .train import load_data, folder_config

    run_dir = Path(run_dir)
    cfg = folder_config(run_dir)
    trained = sorted((r for r in runfolder.runs(run_dir) if r.model_path.is_file()), key=lambda r: r.model_path)
    if not trained:
        raise FileNotFoundError(f"{run_dir} has no {runfolder.RUNS}/*/{runfolder.MODEL}; train first "
                                f"(decaylab compare/train)")
    data = load_data(cfg)
    out = {}
    for run in trained:
        model = _rebuild(cfg, data, run)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            how = backend(cfg)
            small = dl.compact(model, data.x_test[:64] if how == "torch-pruning" else None, backend=how)
        if small is model:
            result = {"compacted": False, "reason": str(caught[-1].message) if caught else "no zero group"}
        else:
            with torch.no_grad():
                diff = max(float((small(xb) - model(xb)).abs().max())
                           for xb in data.x_test.split(4096))
            batch = data.x_test[:256]
            info = small.compaction
            dense_s, small_s = time_inference(model, batch), time_inference(small, batch)
            result = {"compacted": True, "backend": how, "kept_inputs": info.kept_inputs, "n_inputs": info.n_inputs,
                      "layers": {k: list(v) for k, v in info.layers.items()},
                      "params_before": info.params_before, "params_after": info.params_after,
                      "max_abs_diff_test": diff, "batch": len(batch),
                      "time_dense_batch256": dense_s, "time_compact_batch256": small_s,
                      "speedup_batch256": dense_s / small_s}
        run.write_compact(result, None if small is model else small.state_dict())
        name = run.path.name
        say(f"{name}: " + (small.compaction.summary() + f"; test max |diff| {result['max_abs_diff_test']:.2g}, "
                           f"{speed_text(result['speedup_batch256'])} (batch 256)"
                           if result["compacted"] else result["reason"]))
        out[name] = result
    return out


def speed_text(ratio: float) -> str:
    """Dense time / compact time in words, honest when the compact model is slower.

    >>> speed_text(2.5), speed_text(0.8)
    ('2.50x faster', '1.25x slower')
    """
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
