"""Your own model and data in the decaylab lab: a small ResNet on the 8x8 digits.

    decaylab sweep --set model.factory=examples/byo_resnet.py:resnet \\
                   --set data.factory=examples/byo_resnet.py:digits \\
                   --penalty l2 --alphas 1e-4:1e-1:8 --set train.epochs=10
    decaylab compact runs/sweep-digits-...

``digits(seed)`` returns (train, val, test) as (x, y) tensor pairs, images [N, 1, 8, 8];
``resnet(input_shape, n_classes)`` a ResNet with BatchNorm and residual additions.
"""

import numpy as np
import torch
from torch import nn


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class SmallResNet(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, width: int = 16, blocks: int = 2):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(blocks)])
        self.head = nn.Linear(width, n_classes)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))


def resnet(input_shape, n_classes):
    """The model factory: ``input_shape`` is one example's shape, here (1, 8, 8)."""
    return SmallResNet(input_shape[0], n_classes)


def digits(seed=0):
    """The data factory: scikit-learn's 8x8 digits, split 60/20/20 (the split seeded)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y[order], dtype=torch.long)
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return (x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:])
