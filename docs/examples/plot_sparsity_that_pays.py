"""
Sparsity that pays: L1 and group lasso against magnitude pruning, and ``dl.compact``
====================================================================================

You will learn two things about sparse networks. First, how a penalty that makes
zeros during training (L1 for single weights, group lasso for whole neurons) compares
with the usual baseline, magnitude pruning of a dense model followed by fine-tuning,
*at the same sparsity*. Second, which zeros make a model faster: a weight matrix with
most of its entries zero is still a dense matrix to ``torch.matmul``, while a neuron whose weights are
all zero can be removed. :func:`decaylab.compact` removes them and returns a smaller,
equal model; we time it.
"""

# %%
# Five models per seed
# --------------------
# Digits (all 1294 training images), an MLP 64-256-256-10, Adam (lr 3e-3), full batch:
#
# * dense: no penalty, ``STEPS`` steps;
# * L1: ``dl.L1(1e-3)`` (prox, Adam metric), ``STEPS`` steps;
# * magnitude: the dense model with its smallest weights (over all three matrices) set
#   to zero until it has L1's share of zeros, then ``STEPS // 2`` steps of fine-tuning
#   with the zeros held;
# * group lasso: ``dl.CoupledGroupLasso(0.3, model, groups="neurons")``: each hidden
#   neuron's row, bias and outgoing column as one group, ``STEPS`` steps;
# * neuron magnitude: the dense model keeping, per layer, the same number of neurons as
#   group lasso kept (those with the largest incoming-row norm), then ``STEPS // 2`` steps
#   of fine-tuning.
#
# The strengths are fixed, not tuned; the pruning baselines get half again as many
# steps as the penalties (dense training plus fine-tuning).
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import decaylab as dl
from decaylab.lab import data
from decaylab.lab.compacting import time_inference

FAST = os.environ.get("DECAYLAB_DOCS_FAST") == "1"
STEPS = 40 if FAST else 200
SEEDS = [0] if FAST else [0, 1]
torch.set_num_threads(1)  # tiny models: one thread is fastest, and on a shared machine far faster
ds = data.load("digits", seed=0)


def mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 10))


def weights(m):
    return [m[0].weight, m[2].weight, m[4].weight]


def fit(model, penalty=None, steps=STEPS, masks=None):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    if penalty is not None:
        opt = dl.regularize(opt, model, penalty)
    for _ in range(steps):
        loss = F.cross_entropy(model(ds.x_train), ds.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if masks is not None:
            with torch.no_grad():
                for p, k in masks.items():
                    p.mul_(k)
    return model


@torch.no_grad()
def acc(model):
    return float((model.eval()(ds.x_test).argmax(1) == ds.y_test).float().mean())


def magnitude_masks(model, zero_share):
    w = weights(model)
    flat = torch.cat([t.detach().abs().flatten() for t in w])
    cut = flat.kthvalue(max(1, int(round(zero_share * len(flat))))).values
    return {t: (t.detach().abs() > cut).float() for t in w}


def neuron_masks(model, keep):
    masks = {}
    for layer, k in zip([model[0], model[2]], keep):
        top = layer.weight.detach().norm(dim=1).topk(k).indices
        row = torch.zeros(layer.out_features).index_fill_(0, top, 1.0)
        masks[layer.weight] = row[:, None].expand_as(layer.weight).clone()
        masks[layer.bias] = row
    return masks


def pruned_copy(dense, seed, masks_of):
    m = mlp(seed)
    m.load_state_dict(dense.state_dict())
    masks = masks_of(m)
    with torch.no_grad():
        for p, k in masks.items():
            p.mul_(k)
    one_shot = acc(m)
    fit(m.train(), steps=STEPS // 2, masks=masks)
    return m, one_shot


rows = []
models = {}
for seed in SEEDS:
    dense = fit(mlp(seed))
    l1 = mlp(seed)
    fit(l1, dl.L1(1e-3))
    share = dl.sparsity(weights(l1))
    mag, mag_one_shot = pruned_copy(dense, seed, lambda m: magnitude_masks(m, share))
    gl = mlp(seed)
    fit(gl, dl.CoupledGroupLasso(0.3, gl, groups="neurons"))
    keep = [dl.live_groups(gl[i].weight, "rows")[0] for i in (0, 2)]  # neurons with a nonzero row
    nmag, nmag_one_shot = pruned_copy(dense, seed, lambda m: neuron_masks(m, keep))
    rows.append({"seed": seed, "dense": acc(dense), "l1": acc(l1), "l1_zeros": share, "mag": acc(mag),
                 "mag_one_shot": mag_one_shot, "mag_zeros": dl.sparsity(weights(mag)), "gl": acc(gl),
                 "gl_keep": keep, "nmag": acc(nmag), "nmag_one_shot": nmag_one_shot})
    models[seed] = {"dense": dense, "l1": l1, "gl": gl, "nmag": nmag}


def ms(key):
    v = np.array([r[key] for r in rows])
    return f"{v.mean():.3f} ± {v.std():.3f}"


print(f"seeds {SEEDS}, test accuracy mean ± sd; {STEPS} steps (penalties), {STEPS}+{STEPS // 2} (pruning)")
print(f"  dense:                        {ms('dense')}")
print(f"  L1 (zeros {ms('l1_zeros')}):   {ms('l1')}")
print(f"  magnitude at the same zeros ({ms('mag_zeros')}): {ms('mag')} after fine-tuning, "
      f"{ms('mag_one_shot')} before")
print(f"  group lasso (neurons kept per layer {[r['gl_keep'] for r in rows]} of [256, 256]): {ms('gl')}")
print(f"  neuron magnitude, same neurons kept: {ms('nmag')} after fine-tuning, {ms('nmag_one_shot')} before")

# %%
# Which zeros make the model faster
# ---------------------------------
# ``dl.compact`` removes the neurons whose row (or outgoing column) is all zero and
# checks that the small model gives the same outputs on ``example_inputs``. We time one
# forward pass of 4096 rows (best of 20, one thread) for the dense model, the L1 model
# (its zeros stored as zeros) and the compacted models, seed 0.
x = ds.x_test.repeat(4096 // len(ds.x_test) + 1, 1)[:4096]
m0 = models[SEEDS[0]]
timed = {"dense": m0["dense"], "L1 (zeros kept in dense matrices)": m0["l1"]}
for label, key in [("group lasso, compacted", "gl"), ("neuron magnitude, compacted", "nmag")]:
    small = dl.compact(m0[key], x[:256])
    print(f"{label}: {small.compaction.summary()}")
    timed[label] = small
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # compact warns and returns the model itself if it has no zero neuron
    l1_small = dl.compact(m0["l1"], x[:256])
if l1_small is not m0["l1"]:
    print(f"L1, compacted: {l1_small.compaction.summary()}")
    timed["L1, compacted (its dead neurons)"] = l1_small
secs = {k: time_inference(m.eval(), x, repeats=20) for k, m in timed.items()}
for k, s in secs.items():
    n = sum(p.numel() for p in timed[k].parameters())
    print(f"{k:>36}: {1e3 * s:7.2f} ms per 4096 rows, {secs['dense'] / s:5.2f}x the dense speed, "
          f"{n} parameters")

fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
labels = ["dense", "L1", "magnitude\n(same zeros)", "group lasso", "neuron mag.\n(same neurons)"]
keys = ["dense", "l1", "mag", "gl", "nmag"]
vals = np.array([[r[k] for r in rows] for k in keys])
a1.bar(range(5), vals.mean(1), yerr=vals.std(1) if len(SEEDS) > 1 else None,
       color=["0.6", "C0", "C1", "C2", "C3"])
a1.set_xticks(range(5), labels, fontsize=7)
a1.set(ylim=(max(0.0, vals.min() - 0.05), 1.0), ylabel="test accuracy", title="accuracy at equal sparsity")
a2.barh(range(len(secs)), [1e3 * s for s in secs.values()], color="C0")
a2.set_yticks(range(len(secs)), list(secs), fontsize=7)
a2.set(xlabel="ms per forward pass of 4096 rows (one thread)", title="inference time")
fig.tight_layout()
plt.show()

# %%
# What this shows, and what it does not
# -------------------------------------
# The printed accuracies compare each penalty with its pruning baseline at the same
# sparsity; the timings show what the zeros buy. Zeros stored in dense matrices (the L1
# line) cost the same matrix products as the dense model; removed neurons shrink the
# matrices, and the measured speed-up is in the table. L1's zeros can also empty whole
# neurons by chance; if they did, the "L1, compacted" line shows what removing those
# gives. The compacted models are checked to give the same
# outputs as the originals (``dl.compact`` raises otherwise). Two seeds, one data set,
# fixed strengths, CPU timings of one forward pass on one thread: a speed-up on other
# hardware or batch sizes has to be measured there.
# checked when compaction removed most of the parameters (the full run; the shrunken docs
# build trains too briefly for that)
gl_small = timed["group lasso, compacted"]
if sum(p.numel() for p in gl_small.parameters()) < 0.5 * sum(p.numel() for p in m0["dense"].parameters()):
    assert secs["group lasso, compacted"] < secs["dense"], secs
