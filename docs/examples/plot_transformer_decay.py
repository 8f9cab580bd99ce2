"""
Weight decay in a small character-level transformer
===================================================

You will learn how to set up decoupled weight decay for a transformer language model
and what the usual exemptions change. We train a tiny character-level model on text
that ships with Python (the source of the standard library's ``argparse`` module,
comments and docstrings included) with AdamW-style decoupled decay
(``dl.L2(lambda)``, decaylab's default mode for L2) applied three ways: to every
parameter, to what Hugging Face's ``Trainer`` decays (``dl.preset("hf")``: biases and
LayerNorm exempt), and to decaylab's default selection (biases, norms *and* the
embedding tables exempt), and compare validation loss over a few strengths.
"""

# %%
# The text and the model
# ----------------------
# The module's source is split by position: the first 80% for training, the next 10%
# for validation, the last 10% for test. Characters outside the training text's
# alphabet are mapped to one "unknown" index.
import inspect
import argparse
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import decaylab as dl

FAST = os.environ.get("DECAYLAB_DOCS_FAST") == "1"
STEPS = 30 if FAST else 250
SEEDS = [0] if FAST else [0, 1]
LAMS = [1.0] if FAST else [0.3, 1.0, 3.0]
CONTEXT, BATCH, DIM = 32, 32, 32
torch.set_num_threads(1)  # tiny models: one thread is fastest, and on a shared machine far faster

text = inspect.getsource(argparse)
n = len(text)
parts = {"train": text[:int(0.8 * n)], "val": text[int(0.8 * n):int(0.9 * n)], "test": text[int(0.9 * n):]}
chars = sorted(set(parts["train"]))
index = {c: i + 1 for i, c in enumerate(chars)}  # 0 = unknown
ids = {k: torch.tensor([index.get(c, 0) for c in v]) for k, v in parts.items()}
VOCAB = len(chars) + 1
print(f"argparse source: {n} characters, vocabulary {VOCAB}; "
      + ", ".join(f"{k} {len(v)}" for k, v in ids.items()))


class CharLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Embedding(CONTEXT, DIM)
        layer = nn.TransformerEncoderLayer(DIM, nhead=4, dim_feedforward=4 * DIM, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(CONTEXT))

    def forward(self, x):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        return self.head(self.norm(self.blocks(h, mask=self.mask, is_causal=True)))


def batch(split, gen, size=BATCH):
    start = torch.randint(0, len(ids[split]) - CONTEXT - 1, (size,), generator=gen)
    rows = torch.stack([ids[split][s:s + CONTEXT + 1] for s in start.tolist()])
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def loss_on(model, split):
    model.eval()
    data = ids[split]
    starts = range(0, len(data) - CONTEXT - 1, CONTEXT)  # every window, no overlap
    rows = torch.stack([data[s:s + CONTEXT + 1] for s in starts])
    out = model(rows[:, :-1])
    model.train()
    return float(F.cross_entropy(out.reshape(-1, VOCAB), rows[:, 1:].reshape(-1)))


SELECTIONS = {
    "every parameter": "*",
    'dl.preset("hf")': dl.preset("hf"),
    "decaylab default": None,
}


def train(lam, params, seed):
    torch.manual_seed(seed)
    model = CharLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    if lam:
        opt = dl.regularize(opt, model, dl.Rule(dl.L2(lam), params=params))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        x, y = batch("train", gen)
        loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss_on(model, "val"), loss_on(model, "test")


# %%
# What each selection decays
# --------------------------
model = CharLM()
params_by_name = dict(model.named_parameters())
for label, params in SELECTIONS.items():
    reg = dl.regularize(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0), model,
                        dl.Rule(dl.L2(0.1), params=params))
    decayed = {n for b in reg.bindings for n in b.names}
    exempt = sorted(set(params_by_name) - decayed)
    biases = [n for n in exempt if n.endswith("bias")]
    norms = [n for n in exempt if "norm" in n and n not in biases]
    other = [n for n in exempt if n not in biases + norms]
    print(f"{label:>17}: decays {len(decayed)}/{len(params_by_name)} tensors, "
          f"{sum(params_by_name[n].numel() for n in decayed)}/{sum(p.numel() for p in params_by_name.values())} "
          f"elements; exempt: {len(biases)} biases, {len(norms)} norm scales, others: {other or 'none'}")

# %%
# Training
# --------
# ``STEPS`` steps of AdamW (lr 3e-3, its own ``weight_decay=0``: decaylab owns the
# decay), batches of 32 windows of 32 characters, seeds as printed. ``lambda = 0`` is
# trained once per seed and shared by the three selections.
base = [train(0.0, None, s) for s in SEEDS]
res = {label: np.array([[train(lam, params, s) for s in SEEDS] for lam in LAMS])
       for label, params in SELECTIONS.items()}
# res[label][i_lambda, seed, 0=val / 1=test]
b = np.array(base)
print(f"seeds {SEEDS}, {STEPS} steps; validation / test loss (nats per character), mean over seeds")
print(f"{'no decay':>17}: val {b[:, 0].mean():.4f}, test {b[:, 1].mean():.4f}")
for label, r in res.items():
    i = int(np.argmin(r[:, :, 0].mean(1)))
    print(f"{label:>17}: val " + ", ".join(f"lambda={lam:g}: {v:.4f}" for lam, v in zip(LAMS, r[:, :, 0].mean(1)))
          + f"; chosen on val lambda={LAMS[i]:g}: test {r[i, :, 1].mean():.4f} ± {r[i, :, 1].std():.4f}"
          + (" (the grid's edge: the best may lie beyond it)" if i in (0, len(LAMS) - 1) and len(LAMS) > 1 else ""))

fig, ax = plt.subplots(figsize=(6.5, 3.6))
for (label, r), c in zip(res.items(), ["C3", "C1", "C0"]):
    ax.errorbar(LAMS, r[:, :, 0].mean(1), yerr=r[:, :, 0].std(1) if len(SEEDS) > 1 else None,
                marker="o", color=c, label=label)
ax.axhline(b[:, 0].mean(), color="0.5", ls="--", label="no decay")
ax.set(xscale="log", xlabel="lambda (decoupled L2, AdamW's decay)", ylabel="validation loss (nats/char)")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# What this shows, and what it does not
# -------------------------------------
# The printed table is the result: for each selection, validation loss at each
# strength, the strength chosen on validation and its test loss, against no decay.
# Decaying LayerNorm scales pulls them toward zero, which scales down every block's
# input; decaying the embedding tables shrinks the rows of rare characters at every
# step, also the steps in which they do not occur. Whether either matters at these
# strengths is what the curves say for this run. This model is tiny (two layers,
# width 32) and trained for a few hundred steps on one text, far from the regime
# where large-model recipes were tuned; treat it as a way to run the comparison on
# your own model, not as its answer.
