"""Models of the lab: linear, MLP, LeNet-300-100 and a LeNet-5-style CNN.

Every model takes flat inputs ``[N, n_features]`` (images are reshaped inside) and names
its first layer in ``first_layer``, the layer whose columns are the input features.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

MODELS = ("linear", "mlp", "lenet300", "cnn")


class MLP(nn.Module):
    """Fully connected ReLU network; ``hidden=[]`` is a linear / logistic model.

    >>> MLP(4, 3, [8]).first_layer
    'layers.0'
    """

    def __init__(self, n_in: int, n_out: int, hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        widths = [n_in, *hidden, n_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.first_layer = "layers.0"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.dropout(torch.relu(layer(x)))
        return self.layers[-1](x)


class LeNet5(nn.Module):
    """LeNet-5-style CNN: two 5x5 conv + pool stages, then 120-84-out.

    Small images (8x8 digits) get 3x3 kernels with padding so the shapes still work.

    >>> LeNet5((8, 8), 10)(torch.zeros(2, 64)).shape
    torch.Size([2, 10])
    """

    def __init__(self, image_shape: Sequence[int], n_out: int, dropout: float = 0.0):
        super().__init__()
        h, w = image_shape
        k, pad = (5, 2) if min(h, w) >= 16 else (3, 1)
        self.image_shape = (h, w)
        self.conv1 = nn.Conv2d(1, 6, k, padding=pad)
        self.conv2 = nn.Conv2d(6, 16, k, padding=0 if k == 5 else 1)
        with torch.no_grad():
            n_flat = self._features(torch.zeros(1, 1, h, w)).shape[1]
        self.fc1 = nn.Linear(n_flat, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, n_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.first_layer = "conv1"

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._features(x.view(-1, 1, *self.image_shape))
        x = self.dropout(torch.relu(self.fc1(x)))
        x = self.dropout(torch.relu(self.fc2(x)))
        return self.fc3(x)


def build_model(kind: str, n_features: int, n_out: int, *, hidden: Sequence[int] = (128,),
                image_shape: Sequence[int] | None = None, dropout: float = 0.0) -> nn.Module:
    """Build a model by name.

    Args:
        kind: ``"linear"``, ``"mlp"`` (widths from ``hidden``), ``"lenet300"``
            (784-300-100-10 style: hidden 300, 100) or ``"cnn"`` (needs ``image_shape``).

    >>> sum(p.numel() for p in build_model("lenet300", 784, 10).parameters())
    266610
    """
    if kind == "linear":
        return MLP(n_features, n_out, [], dropout)
    if kind == "mlp":
        return MLP(n_features, n_out, list(hidden), dropout)
    if kind == "lenet300":
        return MLP(n_features, n_out, [300, 100], dropout)
    if kind == "cnn":
        if image_shape is None:
            raise ValueError("model.kind='cnn' needs image data (digits, mnist, fashion-mnist); "
                             "use model.kind='mlp' for tabular data")
        return LeNet5(image_shape, n_out, dropout)
    raise ValueError(f"unknown model.kind {kind!r}; use one of {MODELS}")
