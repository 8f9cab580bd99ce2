"""``decaylab select``: which of my features matter? The adaptive group lasso recipe.

0. Standardize each input on the training split (:func:`decaylab.selection.standardize_inputs`),
   so column norms compare inputs; a near-constant input (sd at most a tenth of the median
   input sd, e.g. an almost blank pixel) becomes 0, never divided by its tiny sd, and the
   path removes it.
1. Fit the network dense (``train.epochs``), regularized as well as the lab can: decoupled
   L2 at each strength of ``select.dense_l2`` (0 = none), the best on validation wins ->
   the baseline ``dense_val_acc`` (and ``dense_l2``) and the first layer's column norms
   ``||w0_j||`` (a regularized fit gives noise columns smaller norms than an overfit one).
2. A path of strengths ``alpha`` from ``select.alpha_max`` down to ``select.alpha_min``
   (``select.n_alphas``, geometric): from the dense weights, train ``select.path_epochs``
   with :class:`decaylab.AdaptiveGroupLasso` on the first layer's columns (strength
   ``alpha * (mean ||w0|| / ||w0_j||)^gamma`` per column), then refit
   ``select.refit_epochs`` with the penalty off and the dropped columns held at zero.
3. Choose by validation with the one-standard-error rule: the strongest ``alpha`` whose
   refit validation score is within one standard error of the best (glmnet's
   ``lambda.1se``: the fewest features the data cannot tell apart from the best).
4. Report the kept features, most important (largest column norm) first, the test score
   of the chosen refit model, and a figure.

The run folder holds ``config.json``, ``data.json``, ``path.json`` (every alpha: kept
features, validation score), ``selection.json`` and ``selection.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

import decaylab as dl
from decaylab.selection import standardize_inputs

from . import build, loop
from .state import TrainState


def _fit(model, data, tr: dict, epochs: int, rules=None, mask=None, seed: int = 0):
    from .recipe import make_optimizer

    opt = make_optimizer(tr, model.parameters())
    if rules:
        opt = dl.regularize(opt, model, rules)
    trainee = TrainState(model, opt, None, torch.Generator().manual_seed(seed))
    first = _first(model)

    @torch.no_grad()
    def hold_mask():
        first.weight.mul_(mask)

    model.train()
    for _ in range(epochs):
        loop.epoch(trainee, data.x_train, data.y_train, tr["batch_size"], lambda xb, yb: loop.task_loss(model(xb), yb, data.task),
                   after_step=hold_mask if mask is not None else None)
    model.eval()
    return model


def _first(model) -> nn.Linear:
    layer = model.get_submodule(model.first_layer)
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"decaylab select needs a model whose first layer is Linear (one column per input "
                         f"feature); model.kind gives {type(layer).__name__}; use model.kind = 'mlp', "
                         f"'linear' or 'lenet300'")
    return layer


@torch.no_grad()
def scores(model, x, y, task: str) -> np.ndarray:
    """Per-example score: 1/0 correct (classification) or minus the squared error.

    >>> scores(torch.nn.Identity(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1]), "classification")
    array([1., 0.])
    """
    out = model(x)
    if task == "classification":
        return (out.argmax(1) == y).double().numpy()
    return -((out.squeeze(1) - y) ** 2).double().numpy()


def one_se_choice(means: list[float], ses: list[float]) -> int:
    """Index of the first entry (strongest penalty first) within one SE of the best.

    >>> one_se_choice([0.80, 0.89, 0.90, 0.91], [0.01, 0.01, 0.01, 0.01])
    2
    """
    best = int(np.argmax(means))
    # "within" includes the edge: a model one example worse than a best one that errs once
    # sits exactly one SE below it ((n-2)/n vs (n-1)/n, SE 1/n), which rounding must not flip
    bar = means[best] - ses[best] - 1e-9 * max(1.0, abs(means[best]))
    return next(i for i, m in enumerate(means) if m >= bar)


def fit_dense(cfg: dict, data, say=print):
    """The dense network, regularized as well as the lab can: decoupled L2 (weight decay on
    the weights, not biases) at each strength of ``select.dense_l2``, the best validation
    score wins (ties: the stronger). -> ``(model, l2, per-example validation scores)``."""
    best = None
    for lam in sorted(cfg["select"]["dense_l2"], reverse=True):
        torch.manual_seed(cfg["seed"])
        model = build.build_model(cfg, data)
        _first(model)
        rules = [dl.Rule(dl.L2(lam))] if lam > 0 else None
        _fit(model, data, cfg["train"], cfg["train"]["epochs"], rules, seed=cfg["seed"])
        val = scores(model, data.x_val, data.y_val, data.task)
        say(f"dense, decoupled L2 {lam:g}: val {val.mean():.4f}")
        if best is None or val.mean() > best[2].mean():
            best = (model, float(lam), val)
    return best


def select_features(cfg: dict, data, say=print) -> tuple[dict, dict]:
    """Run the recipe on a loaded data set -> ``(selection, path)`` dicts (see module doc)."""
    sc, tr = cfg["select"], cfg["train"]
    (x_train, x_val, x_test), constant = standardize_inputs(data.x_train, data.x_val, data.x_test)
    data = dataclasses.replace(data, x_train=x_train, x_val=x_val, x_test=x_test)
    dense, dense_l2, dense_val = fit_dense(cfg, data, say)
    first_name = dense.first_layer
    w0 = _first(dense).weight.detach().clone()
    alphas = np.geomspace(sc["alpha_max"], sc["alpha_min"], sc["n_alphas"]).tolist()
    path = {"alphas": alphas, "kept": [], "val": [], "val_se": [], "features": []}
    models = []
    for alpha in alphas:
        model = copy.deepcopy(dense)
        rule = dl.Rule(dl.AdaptiveGroupLasso(alpha, w0, groups="inputs", gamma=sc["gamma"]),
                       params=f"{first_name}.weight")
        _fit(model, data, tr, sc["path_epochs"], [rule], seed=cfg["seed"] + 1)
        keep = dl.surviving_inputs(_first(model).weight)
        norms = _first(model).weight.detach().norm(dim=0)
        refit = copy.deepcopy(model)
        if sc["refit_epochs"] > 0:
            _fit(refit, data, tr, sc["refit_epochs"], mask=keep.to(w0.dtype), seed=cfg["seed"] + 2)
        val = scores(refit, data.x_val, data.y_val, data.task)
        se = float(val.std(ddof=1) / math.sqrt(len(val))) if len(val) > 1 else 0.0
        order = [int(j) for j in torch.argsort(norms, descending=True) if keep[j]]
        path["kept"].append(int(keep.sum()))
        path["val"].append(float(val.mean()))
        path["val_se"].append(se)
        path["features"].append(order)
        models.append((refit, norms))
        say(f"alpha {alpha:.3g}: {int(keep.sum())}/{data.n_features} features, val {val.mean():.4f}")
    i = one_se_choice(path["val"], path["val_se"])
    path["chosen"] = i
    refit, norms = models[i]
    names = data.feature_names or [f"x{j}" for j in range(data.n_features)]
    test = scores(refit, data.x_test, data.y_test, data.task)
    metric = "acc" if data.task == "classification" else "neg_mse"
    selection = {
        "features": [names[j] for j in path["features"][i]],
        "feature_indices": path["features"][i],
        f"val_{metric}": path["val"][i], f"dense_val_{metric}": float(dense_val.mean()), "dense_l2": dense_l2,
        f"test_{metric}": float(test.mean()),
        "dense_test_" + metric: float(scores(dense, data.x_test, data.y_test, data.task).mean()),
        "alpha": alphas[i], "rule": "one standard error (strongest alpha within 1 SE of the best validation)",
        "column_norms": norms.tolist(),
        "constant_features": [names[j] for j in range(data.n_features) if constant[j]],
    }
    return selection, path


def run_select(cfg: dict, say=print, data=None, run_dir: Path | None = None) -> Path:
    """``decaylab select``: a run folder with ``selection.json`` and the figure.

    ``data`` and ``run_dir`` (already made) may be given; ``status.json`` ends as
    "complete", "failed" or "interrupted" (a select run is short and keeps no checkpoints:
    it is run again, not resumed).
    """
    from . import runfolder
    from .train import new_run_dir, prepare, versions

    if run_dir is None:
        data = prepare(cfg)  # bad input (a CSV error) fails before any folder is made
        run_dir = new_run_dir(cfg, "select")
    runfolder.set_status(run_dir, "running")
    with runfolder.tracking(run_dir):
        runfolder.write_config(run_dir, cfg, "select", versions=versions())
        runfolder.write_data_info(run_dir, data.info())
        selection, path = select_features(cfg, data, say)
        written = runfolder.write_selection(run_dir, path, selection)
        figure(selection, data.image_shape, runfolder.selection_figure(run_dir))
    say(f"{len(selection['features'])} features kept: {', '.join(selection['features'][:20])}"
        f"{' ...' if len(selection['features']) > 20 else ''}")
    say(f"selection: {written}")
    return run_dir


def figure(selection: dict, image_shape, out: Path) -> None:
    """Ranked bar chart of the kept features (tabular) or a column-norm heat map (images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = np.asarray(selection["column_norms"])
    if image_shape:
        fig, ax = plt.subplots(figsize=(4, 4))
        im = ax.imshow(norms.reshape(image_shape), cmap="viridis")
        ax.set_title(f"first-layer column norms\n({len(selection['features'])} pixels kept)", fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    else:
        names, idx = selection["features"], selection["feature_indices"]
        fig, ax = plt.subplots(figsize=(6, 0.3 * max(len(names), 3) + 1))
        ax.barh(range(len(names))[::-1], norms[idx], color="tab:blue")
        ax.set_yticks(range(len(names))[::-1], names)
        ax.set_xlabel("first-layer column norm")
        ax.set_title(f"{len(names)} features kept, most important first")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
