"""
Gradient descent, momentum, Adam: what the same decay does under each
=====================================================================

You will learn why one value of ``lambda`` means different things under different
optimizers. Decoupled decay shrinks every weight by the same factor ``1 - lr*lambda``
per step under all three; what differs is the gradient step it is balanced against.

* Gradient descent: decoupled decay is exactly an L2 penalty ``lambda/2 * ||w||^2``
  (see the coupled-vs-decoupled example), so its fixed points are the stationary
  points of the penalised loss, whatever the learning rate.
* Heavy-ball momentum (``beta``): the gradient is averaged into a buffer that, at a fixed
  point, equals ``g / (1 - beta)`` while the decay is not averaged, so the fixed point
  is that of an L2 penalty of strength ``(1 - beta) * lambda``: ten times weaker for
  ``beta = 0.9``.
* Adam: each weight moves by at most about ``lr`` per step whatever the gradient's size,
  so the decay ``lr * lambda * w`` caps it near ``|w| ~ 1/lambda`` whatever the learning
  rate. That is a ceiling, reached by weights whose gradient keeps its sign; the others
  stay below it.

We train one MLP on the digits full batch (so the fixed points are clean) with each
optimizer over a grid of strengths and measure the final weight norm and test
accuracy, then test the momentum prediction by training gradient descent at
``(1 - beta) * lambda``.
"""

# %%
# The runs
# --------
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import decaylab as dl
from decaylab.lab import data

FAST = os.environ.get("DECAYLAB_DOCS_FAST") == "1"
STEPS = 80 if FAST else 400
SEEDS = [0] if FAST else [0, 1]
LAMS = [0.01, 1.0] if FAST else [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
BETA = 0.9
OPTS = {  # full batch; learning rates that train this MLP well without decay
    "gradient descent (lr 0.1)": lambda p: torch.optim.SGD(p, lr=0.1),
    f"momentum {BETA} (lr 0.1)": lambda p: torch.optim.SGD(p, lr=0.1, momentum=BETA),
    "Adam (lr 0.01)": lambda p: torch.optim.Adam(p, lr=1e-2),
}
torch.set_num_threads(1)  # tiny models: one thread is fastest, and on a shared machine far faster
ds = data.load("digits", n_train=500, seed=0)


def train(make_opt, lam, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = dl.regularize(make_opt(model.parameters()), model, dl.L2(lam))  # decoupled (the default)
    for _ in range(STEPS):
        loss = F.cross_entropy(model(ds.x_train), ds.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = [model[0].weight, model[2].weight]  # what the default selection decays
    with torch.no_grad():
        norm = float(torch.sqrt(sum((t ** 2).sum() for t in w)))
        acc = float((model(ds.x_test).argmax(1) == ds.y_test).float().mean())
    return norm, acc


res = {name: np.array([[train(make, lam, s) for s in SEEDS] for lam in LAMS]) for name, make in OPTS.items()}
gd_scaled = np.array([[train(OPTS["gradient descent (lr 0.1)"], (1 - BETA) * lam, s) for s in SEEDS]
                      for lam in LAMS])
# res[name][i_lambda, seed, 0=norm / 1=test accuracy]

# %%
# Weight norm and accuracy against lambda
# ---------------------------------------
# Left: the norm of the decayed weight matrices at the end (mean over seeds), log-log,
# with a line of slope ``-1`` (the ``1/lambda`` of Adam's ceiling) for reference. The dotted line is
# gradient descent trained at ``(1 - beta) * lambda``, drawn at ``lambda``: it should lie on
# the momentum curve if the fixed-point argument holds. Right: test accuracy.
fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.6))
for (name, r), c in zip(res.items(), ["C0", "C1", "C2"]):
    a1.plot(LAMS, r[:, :, 0].mean(1), "o-", color=c, label=name)
    a2.plot(LAMS, r[:, :, 1].mean(1), "o-", color=c, label=name)
a1.plot(LAMS, gd_scaled[:, :, 0].mean(1), "k:", marker="x", label=f"gradient descent at {1 - BETA:g}·lambda")
ref = res["Adam (lr 0.01)"][-1, :, 0].mean() * LAMS[-1] / np.array(LAMS)
a1.plot(LAMS, ref, color="0.7", lw=1, label="slope -1")
a1.set(xscale="log", yscale="log", xlabel="lambda (decoupled L2)", ylabel="weight norm at the end")
a2.set(xscale="log", xlabel="lambda (decoupled L2)", ylabel="test accuracy")
a1.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %%
# The numbers
# -----------
# Per optimizer: the norm at each strength, the log-log slope of norm against lambda
# over the three largest strengths, and the strength with the best test accuracy (this
# example only *describes* the curves; choosing a strength is done on validation, see
# the choosing-lambda example).
for name, r in res.items():
    n, a = r[:, :, 0].mean(1), r[:, :, 1].mean(1)
    k = min(3, len(LAMS))
    slope = np.polyfit(np.log(LAMS[-k:]), np.log(n[-k:]), 1)[0]
    print(f"{name:>26}: norm {' '.join(f'{v:.3g}' for v in n)}; slope at large lambda {slope:+.2f}; "
          f"test acc {a.min():.3f}..{a.max():.3f}, best at lambda={LAMS[int(np.argmax(a))]:g}")
    dead = [lam for lam, v in zip(LAMS, a) if v < 0.2]
    if dead:
        print(f"{'':>26}  test accuracy at chance (< 0.2) for lambda in {dead}: the weights went to ~0")
mom = res[f"momentum {BETA} (lr 0.1)"][:, :, 0].mean(1)
gds = gd_scaled[:, :, 0].mean(1)
gd = res["gradient descent (lr 0.1)"][:, :, 0].mean(1)
print(f"momentum norm / gradient-descent-at-(1-beta)*lambda norm: {' '.join(f'{v:.3f}' for v in mom / gds)}")
print(f"momentum norm / gradient-descent-at-lambda norm:          {' '.join(f'{v:.3f}' for v in mom / gd)}")
print(f"lambda grid {LAMS}; seeds {SEEDS}; {STEPS} full-batch steps; per-step shrink 1 - lr*lambda "
      f"(lr 0.1: {1 - 0.1 * LAMS[-1]:g} at the largest lambda; lr 0.01: {1 - 0.01 * LAMS[-1]:g})")

# %%
# What this shows, and what it does not
# -------------------------------------
# The two ratio lines test the momentum argument: if the fixed-point reasoning holds in
# this run, the first is close to 1 at every strength and the second is not (momentum
# at ``lambda`` behaves like gradient descent at a tenth of it). The fixed point is only
# reached where ``lr * lambda * steps`` is large; at the smallest strengths the runs stop
# before it, and the norms there are set by how far training got, not by the decay.
# The slopes say how the end norm scales with ``lambda`` per optimizer; Adam's
# ``1/lambda`` is a ceiling per weight, so its measured slope can be far flatter than
# ``-1``. Where a strength drives test accuracy to chance (listed, if any), the decay
# won outright: all weights at zero is a fixed point of a ReLU network, and with
# ``lr * lambda`` large enough gradient descent falls into it. This is full-batch training of one
# small MLP: with minibatches the gradient noise adds its own balance against the decay.
