"""
Quickstart: L1 gives exact zeros
================================

A linear model on scikit-learn's digits, trained with AdamW and an exact L1 prox through
:func:`decaylab.regularize`. The figure counts the weights that are exactly zero after each
epoch: the prox sets them to 0.0, not to "small".
"""

import os

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits

import decaylab as dl

FAST = os.environ.get("DECAYLAB_DOCS_FAST") == "1"
epochs = 5 if FAST else 20

torch.manual_seed(0)
x, y = load_digits(return_X_y=True)
x = torch.tensor(x / 16.0, dtype=torch.float32)
y = torch.tensor(y)
model = torch.nn.Linear(64, 10)
opt = dl.regularize(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0),
                    model, dl.L1(1e-3))

zeros = []
for epoch in range(epochs):
    for i in range(0, len(x), 128):
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 128]), y[i:i + 128])
        loss.backward()
        opt.step()
        opt.zero_grad()
    zeros.append(dl.sparsity(model.weight))

print(dl.summary(opt))

# %%
# The share of exact zeros in the weight matrix, epoch by epoch.
plt.plot(range(1, epochs + 1), zeros, marker="o")
plt.xlabel("epoch")
plt.ylabel("exact-zero fraction of the weights")
plt.title("L1(1e-3), prox mode, AdamW")
plt.show()
