"""
Overfitting and the size of weights
===================================

A network trained on a hundred handwritten digits fits them perfectly and
generalises worse than it could; its weights keep growing while it does. Here we
train the same small MLP with and without an L2 penalty (decoupled, as AdamW takes
it, via :func:`decaylab.regularize`) and watch the train/test gap and the weight
norm side by side.
"""

# %%
# Data and model
# --------------
# ``decaylab.lab.data.load`` gives the scikit-learn digits with a fixed test split;
# we keep 100 training images so that overfitting is easy to see.
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import decaylab as dl
from decaylab.lab import data
from decaylab.stats import selected_weights

FAST = os.environ.get("DECAYLAB_DOCS_FAST") == "1"
EPOCHS = 60 if FAST else 500
SEEDS = [0] if FAST else [0, 1, 2]
ALPHA = 0.5  # decaylab's L2(alpha) is 1/2 * alpha * ||w||^2, taken decoupled

ds = data.load("digits", n_train=100, seed=0)
print("train", tuple(ds.x_train.shape), "test", tuple(ds.x_test.shape))


def train(alpha, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if alpha:
        opt = dl.regularize(opt, model, dl.L2(alpha))
    hist = {"train": [], "test": [], "norm": []}
    for _ in range(EPOCHS):  # full batch: one step is one epoch
        loss = F.cross_entropy(model(ds.x_train), ds.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            hist["train"].append(loss.item())
            hist["test"].append(F.cross_entropy(model(ds.x_test), ds.y_test).item())
            w = [p for _, p in selected_weights(model)]  # the default selection
            hist["norm"].append(float(torch.sqrt(sum((t ** 2).sum() for t in w))))
            hist["acc"] = (model(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    return hist


# %%
# Train with and without L2
# -------------------------
# Three seeds each; the figure shows the mean.
runs = {name: [train(a, s) for s in SEEDS] for name, a in [("no penalty", 0.0), (f"L2 alpha={ALPHA}", ALPHA)]}

fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
for (name, hs), color in zip(runs.items(), ["C3", "C0"]):
    tr = np.mean([h["train"] for h in hs], 0)
    te = np.mean([h["test"] for h in hs], 0)
    nm = np.mean([h["norm"] for h in hs], 0)
    axes[0].plot(tr, color=color, ls="--", label=f"{name}: train")
    axes[0].plot(te, color=color, label=f"{name}: test")
    axes[1].plot(nm, color=color, label=name)
axes[0].set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="train vs test loss")
axes[1].set(xlabel="epoch", ylabel="||W|| (weight matrices)", title="size of the weights")
axes[0].legend(fontsize=7)
axes[1].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %%
# The numbers
# -----------
# Final-epoch values, mean ± sd over the seeds (test set; no choice was made on it,
# ``alpha`` was fixed beforehand).
for name, hs in runs.items():
    gap = [h["test"][-1] - h["train"][-1] for h in hs]
    acc = [h["acc"] for h in hs]
    norm = [h["norm"][-1] for h in hs]
    print(f"{name:>16}: test-train loss gap {np.mean(gap):.3f} ± {np.std(gap):.3f}, "
          f"test acc {np.mean(acc):.3f} ± {np.std(acc):.3f}, ||W|| {np.mean(norm):.1f} ± {np.std(norm):.1f}"
          f"  (seeds {SEEDS})")

# %%
# What this shows, and what it does not
# -------------------------------------
# Without a penalty the training loss goes towards zero, the test loss turns up and
# the weights keep growing; L2 keeps the norm bounded and the gap smaller. It does
# not show that L2 always improves accuracy: with 100 images and a few seeds,
# differences of a point or two are within seed noise, and ``alpha`` was not tuned
# (see the example on choosing λ).
