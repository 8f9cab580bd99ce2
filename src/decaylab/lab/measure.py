"""What a run measures: loss and accuracy on a split, weight statistics, a histogram of
the weights, and the final metrics a run folder's ``final.json`` holds.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import decaylab as dl
from decaylab.stats import selected_weights

from . import build
from .state import TrainState


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> tuple[float, float | None]:
    model.eval()
    total, correct = 0.0, 0
    device = next(model.parameters()).device
    for i in range(0, len(x), 4096):
        out = model(x[i:i + 4096].to(device))
        yb = y[i:i + 4096].to(device)
        if task == "classification":
            total += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
        else:
            total += float(F.mse_loss(out.squeeze(1), yb, reduction="sum"))
    model.train()
    n = max(len(x), 1)
    return total / n, (correct / n if task == "classification" else None)


def weight_stats(model: nn.Module) -> dict:
    """Norms, exact zeros per layer, live inputs: over the default selection (weights >= 2-D)."""
    ws = [p.detach() for _, p in selected_weights(model)]
    zeros = sum(int((w == 0).sum()) for w in ws)
    numel = sum(w.numel() for w in ws)
    layers = {k: {f: v[f] for f in ("numel", "zeros", "zero_fraction", "live_rows", "rows")}
              for k, v in dl.layer_stats(model).items()}
    first = dict(model.named_parameters())[f"{build.first_layer(model)}.weight"].detach()
    mask = dl.surviving_inputs(first) if first.ndim == 2 else None
    return {
        "weight_l2": float(torch.sqrt(sum((w.double() ** 2).sum() for w in ws))),
        "weight_l1": float(sum(w.double().abs().sum() for w in ws)),
        "zero_fraction": zeros / max(numel, 1),
        "zeros": zeros,
        "weights": numel,
        "layers": layers,
        "live_inputs": int(mask.sum()) if mask is not None else None,
        "n_inputs": int(mask.numel()) if mask is not None else None,
        "input_mask": [int(v) for v in mask.tolist()] if mask is not None else None,
    }


def histogram(model: nn.Module, bins: int = 81) -> dict:
    w = torch.cat([p.detach().flatten().double() for _, p in selected_weights(model)])
    edge = float(w.abs().max()) or 1.0
    counts = torch.histc(w, bins=bins, min=-edge, max=edge)
    edges = torch.linspace(-edge, edge, bins + 1)
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()], "exact_zeros": int((w == 0).sum())}


def final_metrics(model: nn.Module, last: dict, stats: dict) -> dict:
    acc_gap = last["train_acc"] - last["test_acc"] if last["train_acc"] is not None else None
    n_params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p.detach() != 0).sum()) for p in model.parameters())
    return {
        **{k: last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")},
        "gap": acc_gap if acc_gap is not None else last["test_loss"] - last["train_loss"],
        **{k: stats[k] for k in ("zero_fraction", "zeros", "weights", "live_inputs", "n_inputs",
                                  "input_mask", "layers", "weight_l2", "weight_l1")},
        "n_params": n_params,
        "nonzero_params": nonzero,
        "histogram": histogram(model),
        "epochs": last["epoch"],
    }


def epoch_row(state: TrainState, data, lr: float, seconds: float) -> dict:
    """The metrics line of the epoch ``state`` just finished; keeps it (and its weight
    statistics) on ``state`` for final.json."""
    row = {"epoch": state.epoch, "step": state.step, "phase": state.phase}
    for split in ("train", "val", "test"):
        loss, acc = evaluate(state.model, getattr(data, f"x_{split}"), getattr(data, f"y_{split}"), data.task)
        row[f"{split}_loss"], row[f"{split}_acc"] = loss, acc
    stats = weight_stats(state.model)
    state.last_stats = stats  # final.json reuses them: the weights do not change after
    row.update({k: v for k, v in stats.items() if k not in ("input_mask", "zeros", "weights")},
               lr=float(lr), epoch_time=seconds)
    state.last = row
    return row
