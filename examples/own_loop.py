"""decaylab in your own training loop: L1 that gives exact zeros, no decay on biases.

    python examples/own_loop.py

Trains a small MLP on scikit-learn's digits with AdamW + an exact L1 prox (in Adam's
metric) on the Linear weights and a group lasso on the input pixels, then prints what got
which penalty and how many weights and pixels are exactly zero.
"""

import torch
from sklearn.datasets import load_digits
from torch import nn

import decaylab as dl


def main(epochs: int = 30) -> dict:
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    opt = dl.regularize(opt, model, [
        dl.Rule(dl.L1(3e-4), metric="adam"),                                   # Linear weights
        dl.Rule(dl.GroupLasso(1e-3, groups="inputs"), params="0.weight", metric="adam"),
        dl.Rule(None, params="*.bias"),                                          # say it explicitly
    ])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for _ in range(epochs):  # the loop is plain PyTorch
        for idx in torch.randperm(len(x)).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
        sched.step()

    acc = float((model(x).argmax(1) == y).float().mean())
    kept = int(dl.surviving_inputs(model[0].weight).sum())
    print(dl.summary(opt))
    print(f"train accuracy {acc:.3f}, exact zeros {dl.sparsity(model):.1%}, input pixels kept {kept}/64")
    return {"acc": acc, "sparsity": dl.sparsity(model), "kept": kept}


if __name__ == "__main__":
    main()
