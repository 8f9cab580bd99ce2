"""What the penalties do, in TensorBoard, from a plain training loop.

    python examples/tensorboard_loop.py runs/tb && tensorboard --logdir runs/tb

AdamW with an exact L1 prox on scikit-learn's digits; every 10 steps the loop writes
``dl.metrics`` (each rule's penalty value, each weight's exact-zero fraction and norm) as
scalars and ``dl.histograms`` (each penalized weight) as histograms.
"""

import sys

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import decaylab as dl


def main(logdir: str, steps: int = 200, every: int = 10) -> dict:
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = dl.regularize(torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0), model, dl.L1(1e-3))
    with SummaryWriter(logdir) as writer:
        for step in range(steps):
            idx = torch.randint(0, len(x), (64,))
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step % every == 0:
                writer.add_scalar("loss", loss.item(), step)
                for key, value in dl.metrics(opt).items():
                    writer.add_scalar(key, value, step)
                for name, values in dl.histograms(opt).items():
                    writer.add_histogram(f"weights/{name}", values, step)
    return dl.metrics(opt)


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "runs/tb"))
