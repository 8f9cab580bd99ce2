"""
Coupled L2 or decoupled decay: the same for SGD, not for Adam
=============================================================

You will learn when "weight decay" and "an L2 penalty" are the same thing and when they
are not. Adding ``lambda/2 * ||w||^2`` to the loss (*coupled*: its gradient
``lambda * w`` goes through the optimizer) and shrinking the weights by
``1 - lr * lambda`` each step (*decoupled*, AdamW's decay) give the same plain SGD
step; under Adam the penalty's gradient is divided by Adam's ``sqrt(v)`` like any other
gradient and the two are different methods. We check the first claim to float
precision, then map validation accuracy over a grid of learning rates and strengths for
Adam with coupled L2 and Adam with decoupled decay, and look at where each one's best
strength sits as the learning rate changes (along a constant ``lambda``, or a constant
``lr * lambda``: the run says which).
"""

# %%
# The same step for SGD, not for momentum or Adam
# -----------------------------------------------
# One model, one initialisation, 50 full-batch steps on the digits; ``torch.optim``'s own
# ``weight_decay`` (coupled) against decaylab's decoupled ``dl.L2`` (``w <- w * (1 -
# lr*lambda)`` before the optimizer's step, as AdamW takes it). For Adam, the coupled
# side is ``dl.Rule(dl.L2(lam), mode="coupled")``.
import copy
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import decaylab as dl
from decaylab.lab import data

FAST = os.environ.get("DECAYLAB_DOCS_FAST") == "1"
STEPS = 60 if FAST else 300
SEEDS = [0] if FAST else [0, 1]
LRS = [1e-3, 1e-2] if FAST else [1e-3, 3e-3, 1e-2, 3e-2]
LAMS = [1e-2, 1.0] if FAST else [1e-3, 1e-2, 1e-1, 1.0, 10.0]

torch.set_num_threads(1)  # tiny models: one thread is fastest, and on a shared machine far faster
ds = data.load("digits", n_train=300, seed=0)
print("train", tuple(ds.x_train.shape), "val", tuple(ds.x_val.shape), "test", tuple(ds.x_test.shape))


def mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def run(model, opt, steps):
    for _ in range(steps):  # full batch
        loss = F.cross_entropy(model(ds.x_train), ds.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def max_diff(make_coupled, make_decoupled, steps=50):
    a, b = mlp(0), mlp(0)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    run(a, make_coupled(a), steps)
    run(b, make_decoupled(b), steps)
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


LAM, LR = 0.1, 0.05
# decaylab's default selection decays weight matrices only, so torch's flag gets the same
# two parameter groups: matrices with weight_decay, biases without
def groups(m, wd):
    return [{"params": [m[0].weight, m[2].weight], "weight_decay": wd},
            {"params": [m[0].bias, m[2].bias], "weight_decay": 0.0}]


diffs = {
    "SGD": max_diff(lambda m: torch.optim.SGD(groups(m, LAM), lr=LR),
                    lambda m: dl.regularize(torch.optim.SGD(m.parameters(), lr=LR), m, dl.L2(LAM))),
    "SGD, momentum 0.9": max_diff(
        lambda m: torch.optim.SGD(groups(m, LAM), lr=LR, momentum=0.9),
        lambda m: dl.regularize(torch.optim.SGD(m.parameters(), lr=LR, momentum=0.9), m, dl.L2(LAM))),
    "Adam": max_diff(
        lambda m: dl.regularize(torch.optim.Adam(m.parameters(), lr=1e-2), m, dl.Rule(dl.L2(LAM), mode="coupled")),
        lambda m: dl.regularize(torch.optim.Adam(m.parameters(), lr=1e-2), m, dl.L2(LAM))),
}
for name, d in diffs.items():
    print(f"{name:>18}: coupled vs decoupled, max |w_coupled - w_decoupled| after 50 steps = {d:.2e}")
# the claims of this section, checked (the build fails if they are false)
assert diffs["SGD"] < 1e-5, diffs
assert diffs["SGD, momentum 0.9"] > 100 * diffs["SGD"] and diffs["Adam"] > 100 * diffs["SGD"], diffs

# %%
# For plain SGD the two runs agree to float rounding: the same update, written two ways.
# With momentum they drift apart (the penalty's gradient enters the momentum buffer;
# the decoupled shrink does not), and under Adam they are different algorithms.
#
# A grid of learning rates and strengths
# --------------------------------------
# Adam with coupled L2 (``mode="coupled"``) and Adam with decoupled decay (AdamW's
# rule), each trained full batch from the same initialisations over the grid; the
# number in each cell is validation accuracy, mean over the seeds.


def train(lr, lam, mode, seed):
    model = mlp(seed)
    opt = dl.regularize(torch.optim.Adam(model.parameters(), lr=lr), model, dl.Rule(dl.L2(lam), mode=mode))
    run(model, opt, STEPS)
    with torch.no_grad():
        return [float((model(x).argmax(1) == y).float().mean())
                for x, y in [(ds.x_val, ds.y_val), (ds.x_test, ds.y_test)]]


MODES = ["coupled", "decoupled"]
acc = {m: np.array([[[train(lr, lam, m, s) for s in SEEDS] for lam in LAMS] for lr in LRS]) for m in MODES}
# acc[mode][i_lr, j_lam, seed, 0=val / 1=test]
val = {m: acc[m][..., 0].mean(2) for m in MODES}
test = {m: acc[m][..., 1].mean(2) for m in MODES}

fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
for ax, m in zip(axes, MODES):
    vmin = min(v.min() for v in val.values())
    im = ax.imshow(val[m], cmap="viridis", vmin=vmin, vmax=1, origin="lower")
    for i in range(len(LRS)):
        j_best = int(np.argmax(val[m][i]))
        for j in range(len(LAMS)):
            ax.text(j, i, f"{val[m][i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="k" if val[m][i, j] > (vmin + 1) / 2 else "w",
                    fontweight="bold" if j == j_best else "normal")
    ax.set_xticks(range(len(LAMS)), [f"{v:g}" for v in LAMS])
    ax.set_yticks(range(len(LRS)), [f"{v:g}" for v in LRS])
    ax.set(xlabel="lambda", title=f"Adam + {m} L2")
axes[0].set_ylabel("learning rate")
fig.colorbar(im, ax=axes, label="validation accuracy", shrink=0.8)
plt.show()

# %%
# Where the best strength sits
# ----------------------------
# For each learning rate, the strength with the best validation accuracy (bold in the
# maps), and the product ``lr * lambda`` at that strength: if the optimum follows a
# line of constant ``lr * lambda`` the product stays put while ``lambda`` moves; if it
# follows a constant ``lambda``, the reverse. Then the grid's best cell for each method
# (chosen on validation) and its test accuracy.
spread = {}
for m in MODES:
    best = [LAMS[int(np.argmax(val[m][i]))] for i in range(len(LRS))]
    prods = [lr * lam for lr, lam in zip(LRS, best)]
    spread[m] = (np.ptp(np.log10(best)), np.ptp(np.log10(prods)))
    print(f"{m:>9}: best lambda per lr {[f'{b:g}' for b in best]}, lr*lambda {[f'{p:.1e}' for p in prods]}; "
          f"range over lrs: lambda {spread[m][0]:.1f} decades, lr*lambda {spread[m][1]:.1f} decades")
for m in MODES:
    i, j = np.unravel_index(int(np.argmax(val[m])), val[m].shape)
    t = acc[m][i, j, :, 1]
    print(f"{m:>9}: chosen lr={LRS[i]:g}, lambda={LAMS[j]:g} (val {val[m][i, j]:.3f}); "
          f"test acc {t.mean():.3f} ± {t.std():.3f} (seeds {SEEDS})")
for m in MODES:
    follows = "constant lr*lambda" if spread[m][1] < spread[m][0] else (
        "constant lambda" if spread[m][0] < spread[m][1] else "neither line more than the other")
    print(f"{m:>9}: on this grid, the best strength follows {follows}")

# %%
# What this shows, and what it does not
# -------------------------------------
# The first section is exact and checked: for plain SGD, coupled L2 and decoupled
# decay are one update. The maps are one small data set (300 training digits), one
# MLP, full-batch training for a fixed number of steps, and a coarse grid; the printed
# "range over lrs" lines say which line the best strength followed in this run. Two
# views predict different lines for decoupled decay under Adam. Over a fixed budget
# the total shrink is ``(1 - lr*lambda)^steps``, which predicts diagonals of constant
# ``lr * lambda``. At equilibrium, Adam moves each weight by about ``lr`` per step and the
# decay pulls it back by ``lr * lambda * w``, so the weights settle where ``|w|`` is about
# ``1/lambda`` whatever the learning rate: ``lambda`` sets the size of the weights and
# ``lr * lambda`` only how fast they get there, which predicts a constant ``lambda`` once
# training is long enough. Coupled L2 under Adam has neither product (Adam rescales the
# penalty's gradient together with the loss's). Validation accuracy on 144 examples is
# coarse (one example is 0.7 points), so neighbouring cells often tie and the best cell
# can move by one grid step between seeds.
