"""
What "λ" and "½" mean in torch, Keras, scikit-learn, optax and decaylab
=======================================================================

The same word, *weight decay*, names different numbers: torch's SGD adds
``wd * w`` to the gradient, AdamW shrinks the weights outside Adam, scikit-learn's
``Ridge`` has no ``1/n`` and no ``½``, Keras's ``L2`` has no ``½``. Here the
conversions are written as data, one row per spelling, and every row whose library
is installed is checked numerically against that library.
"""

# %%
# The table
# ---------
# decaylab's penalties: ``L2(a) = a/2 ||w||^2``, ``L1(a) = a ||w||_1``. Each row maps a
# library's strength ``s`` to a decaylab penalty and mode, for a data loss written as
# that library writes it (``1/(2n) ||y - Xw||^2`` for the scikit-learn rows).
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

import decaylab as dl

FAST = os.environ.get("DECAYLAB_DOCS_FAST") == "1"
STEPS = 200 if FAST else 2000  # gradient steps for the scikit-learn rows
N = 40  # samples in the small regression problem

CONVERSIONS = [
    # library, its spelling, its objective/update, decaylab equivalent (s -> rule), checked against
    ("torch", "SGD(weight_decay=s)", "g <- g + s w", lambda s: dl.Rule(dl.L2(s), mode="coupled"), "torch"),
    ("torch", "Adam(weight_decay=s)", "g <- g + s w, then Adam", lambda s: dl.Rule(dl.L2(s), mode="coupled"), "torch"),
    ("torch", "AdamW(lr, weight_decay=s)", "w <- w - lr s w, then Adam", lambda s: dl.Rule(dl.L2(s)), "torch"),
    ("scikit-learn", "Ridge(alpha=s)", "||y-Xw||^2 + s ||w||^2", lambda s: dl.Rule(dl.L2(s / N)), "sklearn"),
    ("scikit-learn", "Lasso(alpha=s)", "1/(2n)||y-Xw||^2 + s ||w||_1", lambda s: dl.Rule(dl.L1(s)), "sklearn"),
    ("Keras", "regularizers.L2(l2=s)", "loss + s sum(w^2)", lambda s: dl.Rule(dl.L2(2 * s), mode="coupled"), "formula"),
    ("Keras", "regularizers.L1(l1=s)", "loss + s sum(|w|)", lambda s: dl.Rule(dl.L1(s)), "formula"),
    ("optax", "adamw(lr, weight_decay=s)", "u <- adam(g) + s w; w <- w - lr u", lambda s: dl.Rule(dl.L2(s)), "formula"),
]

# %%
# Checking each row
# -----------------
# torch rows: ten steps of the library's optimizer vs the same optimizer with
# ``weight_decay=0`` wrapped by ``dl.regularize``. scikit-learn rows: full-batch gradient
# descent to convergence vs the estimator's ``coef_``. Keras and optax are not
# installed here: their rows check the arithmetic of the conversion against the
# formula in their documentation (the penalty's value, or one decoupled step), not
# the packages themselves.
torch.manual_seed(0)
X = torch.randn(N, 5, dtype=torch.float64)
y = X @ torch.tensor([1.5, -2.0, 0.0, 0.3, 0.0], dtype=torch.float64) + 0.1 * torch.randn(N, dtype=torch.float64)


def fit(rule, opt_cls, lr, steps, **kw):
    model = torch.nn.Linear(5, 1, bias=False).double()
    torch.nn.init.constant_(model.weight, 0.5)
    opt = opt_cls(model.parameters(), lr=lr, **kw)
    if rule is not None:
        opt = dl.regularize(opt, model, [rule])
    for _ in range(steps):
        loss = 0.5 * ((model(X).squeeze(1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.weight.detach().ravel()


def check(row, s):
    lib, spelling, _, to_dl, against = row
    if against == "torch":
        cls = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}[spelling.split("(")[0]]
        return float((fit(None, cls, 0.05, 10, weight_decay=s) - fit(to_dl(s), cls, 0.05, 10, weight_decay=0.0)).abs().max())
    if against == "sklearn":
        from sklearn.linear_model import Lasso, Ridge
        est = (Ridge(alpha=s, fit_intercept=False) if spelling.startswith("Ridge")
               else Lasso(alpha=s, fit_intercept=False, tol=1e-12, max_iter=100_000))
        ref = torch.tensor(est.fit(X.numpy(), y.numpy()).coef_)
        lr = 1.0 / float(torch.linalg.eigvalsh(X.T @ X / N).max() + s / N)
        return float((fit(to_dl(s), torch.optim.SGD, lr, STEPS) - ref).abs().max())
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    if lib == "Keras":  # the value added to the loss, as Keras's docs write it
        theirs = s * (w ** 2).sum() if "L2" in spelling else s * w.abs().sum()
        return float((to_dl(s).penalty.value([w]) - theirs).abs())
    # optax adamw: the decay part of one update is -lr * s * w; decaylab's decoupled L2
    # takes -lr * a * grad(R) = -lr * a * w, so a = s
    lr, rule = 0.1, to_dl(s)
    return float((lr * rule.penalty.alpha * w - lr * s * w).abs().max())


S = 0.1
diffs = [check(row, S) for row in CONVERSIONS]
for (lib, spelling, objective, to_dl, against), d in zip(CONVERSIONS, diffs):
    r = to_dl(S)
    print(f"{lib:>12} {spelling:<27} {objective:<36} -> dl.{type(r.penalty).__name__}"
          f"({r.penalty.alpha:g}) mode={r.mode or 'default'}; checked against {against}: max diff {d:.1e}")

# %%
# The differences, drawn
# ----------------------
# Machine precision for the torch rows and the formulas; the scikit-learn rows are as
# close as gradient descent gets in the given steps.
fig, ax = plt.subplots(figsize=(7, 3.4))
labels = [f"{lib}: {spelling}" for lib, spelling, *_ in CONVERSIONS]
colors = [{"torch": "C0", "sklearn": "C1", "formula": "C7"}[row[4]] for row in CONVERSIONS]
ax.barh(labels, np.maximum(diffs, 1e-17), color=colors)
ax.set(xscale="log", xlabel=f"max |library - decaylab| at s={S}")
ax.tick_params(labelsize=7)
fig.tight_layout()
plt.show()

# %%
# What this shows, and what it does not
# -------------------------------------
# The torch and scikit-learn rows are tested against the libraries (also in
# ``tests/test_docs_conversions.py``). The Keras and optax rows are the formulas in
# their documentation, checked as arithmetic only, since neither package is installed
# here. One strength (``s=0.1``) and one small problem are checked; the scikit-learn
# rows hold for the loss ``1/(2n) ||y - Xw||^2`` and change with any other scaling.
