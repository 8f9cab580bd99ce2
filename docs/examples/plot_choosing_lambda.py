"""
Choosing lambda: a sweep, the one-standard-error rule, and label noise
======================================================================

You will learn how to choose the strength of weight decay honestly: train a grid of
strengths, pick on the *validation* split, and only then look at the *test* split.
Two rules pick from the same sweep: the best validation score, and the
one-standard-error rule (the strongest ``lambda`` whose validation score is within one
standard error of the best; glmnet's ``lambda.1se``), which the lab's
``decaylab.lab.path.choose`` implements. We run the sweep twice, on clean labels
and with 30% of the training labels flipped, the case where a network memorises the
wrong answers unless something stops it.
"""

# %%
# The sweep
# ---------
# Digits, 500 training images, a one-hidden-layer MLP trained full batch with Adam and
# decaylab's decoupled ``dl.L2(lambda)`` (AdamW's decay). The label noise touches the
# training labels only (``data.load(label_noise=...)``); validation and test stay clean.
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import decaylab as dl
from decaylab.lab import data
from decaylab.lab.path import choose

FAST = os.environ.get("DECAYLAB_DOCS_FAST") == "1"
STEPS = 60 if FAST else 300
SEEDS = [0] if FAST else [0, 1, 2]
LAMS = [0.0, 0.1, 1.0, 10.0] if FAST else [0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
NOISES = [0.0, 0.3]
torch.set_num_threads(1)  # tiny models: one thread is fastest, and on a shared machine far faster


def train(ds, lam, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if lam:
        opt = dl.regularize(opt, model, dl.L2(lam))
    for _ in range(STEPS):
        loss = F.cross_entropy(model(ds.x_train), ds.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return {split: float((model(x).argmax(1) == y).float().mean())
                for split, x, y in [("train", ds.x_train, ds.y_train), ("val", ds.x_val, ds.y_val),
                                    ("test", ds.x_test, ds.y_test)]}


results = {}
for noise in NOISES:
    # the data split is fixed (seed 0); the seeds vary the network's initialisation
    ds = data.load("digits", n_train=500, seed=0, label_noise=noise)
    results[noise] = {lam: [train(ds, lam, s) for s in SEEDS] for lam in LAMS}
n_val = len(ds.y_val)
print(f"train 500, val {n_val}, test {len(ds.y_test)}; seeds {SEEDS}; {STEPS} full-batch steps")

# %%
# Choose on validation
# --------------------
# Each point's validation score is the mean over seeds; its standard error is the
# seeds' sd / sqrt(n) with several seeds, else the binomial ``sqrt(p(1-p)/n_val)``.
# ``choose`` returns the best point and the one-SE point.


def points(noise):
    out = []
    for lam in LAMS:
        v = np.array([r["val"] for r in results[noise][lam]])
        se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else np.sqrt(v[0] * (1 - v[0]) / n_val)
        t = np.array([r["test"] for r in results[noise][lam]])
        out.append({"alpha": lam, "lr": 1e-2, "val_acc": float(v.mean()), "val_acc_se": float(se),
                    "test_acc": float(t.mean()), "test_sd": float(t.std()),
                    "train_acc": float(np.mean([r["train"] for r in results[noise][lam]]))})
    return out


chosen = {}
for noise in NOISES:
    pts = points(noise)
    c = choose(pts)
    chosen[noise] = (pts, c)
    none = pts[0]
    print(f"label noise {noise:.0%}:")
    print(f"  no decay:          val {none['val_acc']:.3f}, test {none['test_acc']:.3f} ± {none['test_sd']:.3f}, "
          f"train (its own labels) {none['train_acc']:.3f}")
    for rule in ("best", "one_se"):
        p = c[rule]
        print(f"  {rule:>8} lambda={p['alpha']:<5g}: val {p['val_acc']:.3f} ± {p['val_acc_se']:.3f}, "
              f"test {p['test_acc']:.3f} ± {p['test_sd']:.3f}, train (its own labels) {p['train_acc']:.3f}")
    gain = c["best"]["test_acc"] - none["test_acc"]
    if c["best"]["alpha"] == LAMS[-1]:
        print("  the best lambda is the grid's largest: the grid should extend further")
    print(f"  test accuracy gained by the best-validation lambda over no decay: {gain:+.3f}")
    chosen[noise] = (pts, c, gain)

# %%
# The curves
# ----------
# Validation accuracy (mean ± SE over seeds) and train accuracy against ``lambda``; the
# dashed lines are no decay. The chosen strengths are marked.
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
for ax, noise in zip(axes, NOISES):
    pts, c, gain = chosen[noise]
    lam = np.array([p["alpha"] for p in pts[1:]])
    ax.errorbar(lam, [p["val_acc"] for p in pts[1:]], yerr=[p["val_acc_se"] for p in pts[1:]],
                marker="o", color="C0", label="validation")
    ax.plot(lam, [p["train_acc"] for p in pts[1:]], marker="s", color="C2", label="train (its own labels)")
    ax.axhline(pts[0]["val_acc"], color="C0", ls="--", lw=1)
    ax.axhline(pts[0]["train_acc"], color="C2", ls="--", lw=1)
    for rule, mk in (("best", "*"), ("one_se", "D")):
        p = c[rule]
        if p["alpha"] > 0:
            ax.plot(p["alpha"], p["val_acc"], mk, ms=13, mfc="none", mec="C3", label=f"{rule}: {p['alpha']:g}")
    ax.set(xscale="log", xlabel="lambda (decoupled L2)", title=f"{noise:.0%} of training labels flipped")
    ax.legend(fontsize=7, loc="lower left")
axes[0].set_ylabel("accuracy")
fig.tight_layout()
plt.show()

# %%
# What this shows, and what it does not
# -------------------------------------
# The printed lines are the result: the chosen strengths under each rule, their test
# accuracy (never used for choosing), and the gain over no decay with clean and with
# noisy labels. Train accuracy on the flipped labels measures memorisation: with 30%
# of them wrong, a model that fits more than about 70% + 30%/10 of them is fitting
# noise. The one-SE rule gives up at most one standard error of validation score for a
# stronger, simpler setting; whether that costs test accuracy is in the printout. One
# data set, one architecture, a fixed number of steps and three seeds: the standard
# errors are of the seed-to-seed spread, not of the data split, which is fixed.
for noise in NOISES:
    pts, c, gain = chosen[noise]
    assert c["one_se"]["alpha"] >= c["best"]["alpha"]  # the rule's direction
