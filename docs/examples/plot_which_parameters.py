"""
Which parameters to decay: biases, norms, embeddings, tokens
============================================================

"Don't decay biases and LayerNorm" is folklore that each library writes down
differently. We build a small transformer in plain torch, with its own token
embedding, positional embedding, class token, LayerNorms and attention, and ask
which of its parameters Hugging Face's ``Trainer``, timm's ``create_optimizer_v2``
and decaylab's default selection would decay. ``dl.preset("hf")`` and
``dl.preset("timm")`` reproduce the first two name for name.
"""

# %%
# A small model with every kind of parameter
# ------------------------------------------
# ``no_weight_decay()`` is timm's convention for declaring exemptions; we declare the
# positional embedding and the class token, as timm's ViT does.
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import decaylab as dl
from decaylab.rules import resolve

FAST = os.environ.get("DECAYLAB_DOCS_FAST") == "1"  # nothing is trained: same size either way


class TinyTransformer(nn.Module):
    def __init__(self, vocab=50, dim=32, length=16, classes=3):
        super().__init__()
        self.tok_embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, length + 1, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.block = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=64, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def forward(self, tokens):
        x = self.tok_embed(tokens)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.block(x))[:, 0])


model = TinyTransformer()
print("output shape", tuple(model(torch.randint(0, 50, (2, 16))).shape))

# %%
# Ask each convention
# -------------------
# ``resolve`` is what :func:`decaylab.regularize` does with the rules: it tells which
# parameters each rule binds. ``Rule(penalty)`` with no ``params`` is the default
# selection.
selections = {
    "decaylab default": [dl.Rule(dl.L2(1e-2))],
    'dl.preset("hf")': [dl.Rule(dl.L2(1e-2), params=dl.preset("hf"))],
    'dl.preset("timm")': [dl.Rule(dl.L2(1e-2), params=dl.preset("timm"))],
}
names = [n for n, _ in model.named_parameters()]
decayed = {}
for label, rules in selections.items():
    bindings, _ = resolve(model, rules)
    decayed[label] = {n for b in bindings for n in b.names}

table = np.array([[n in decayed[label] for label in selections] for n in names], dtype=float)
fig, ax = plt.subplots(figsize=(6.5, 5.2))
ax.imshow(table, cmap="Blues", vmin=-0.3, vmax=1.2, aspect="auto")
ax.set_xticks(range(len(selections)), list(selections), fontsize=8)
ax.set_yticks(range(len(names)), names, fontsize=7)
for i in range(len(names)):
    for j in range(len(selections)):
        ax.text(j, i, "decay" if table[i, j] else "-", ha="center", va="center", fontsize=6)
ax.set_title("which parameters get weight decay")
fig.tight_layout()
plt.show()

# %%
# Where they disagree
# -------------------
params = dict(model.named_parameters())
for label in selections:
    n_el = sum(params[n].numel() for n in decayed[label])
    print(f"{label:>18}: {len(decayed[label])}/{len(names)} tensors, "
          f"{n_el}/{sum(p.numel() for p in params.values())} elements decayed")
for n in names:
    row = [n in decayed[label] for label in selections]
    if len(set(row)) > 1:
        print(f"  disagree on {n:<36} " + ", ".join(f"{l}: {'decay' if d else 'no'}"
                                                   for l, d in zip(selections, row)))

# %%
# What this shows, and what it does not
# -------------------------------------
# All three leave biases and LayerNorm scales alone and decay the matrices of the
# attention and the MLP. They differ on the tables: Hugging Face decays the token
# embedding, the positional embedding and the class token (it ignores
# ``no_weight_decay()``); timm decays the token embedding but honours the model's
# declaration; decaylab's default exempts all three, because decoupled decay shrinks a
# token's row at every step, also the steps where the token never appears. This is a
# statement about selection only: whether exempting embeddings helps is a training
# question (see the small-transformer example), and the answer depends on the data.
