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


# -- stacked models: K configurations of one MLP trained at once -----------------------------
class StackedLinear(nn.Linear):
    """``K`` Linear layers of one shape as one module: weight ``[K, out, in]``, bias ``[K, out]``.

    Input ``[N, in]`` (shared by every configuration) or ``[K, N, in]``; output ``[K, N, out]``.
    It is an ``nn.Linear``, so the library's default selection (Linear weights) picks its
    weight, and a ``[K]`` strength acts per configuration.

    >>> layer = StackedLinear.stack([nn.Linear(3, 2), nn.Linear(3, 2)])
    >>> layer(torch.zeros(5, 3)).shape, layer.weight.shape
    (torch.Size([2, 5, 2]), torch.Size([2, 2, 3]))
    """

    @classmethod
    def stack(cls, layers: Sequence[nn.Linear]) -> "StackedLinear":
        first = layers[0]
        out = cls(first.in_features, first.out_features, bias=first.bias is not None,
                  device="meta")
        out.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]).clone())
        if first.bias is not None:
            out.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]).clone())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.matmul(x, self.weight.transpose(1, 2))
        if x.ndim == 2:
            x = x.expand(self.weight.shape[0], *x.shape)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def extra_repr(self) -> str:
        return f"configs={self.weight.shape[0]}, " + super().extra_repr()


def stack_models(models: Sequence[nn.Module]) -> nn.Module:
    """One model whose Linear layers hold the ``K`` given MLPs' weights stacked ``[K, ...]``.

    The models must be MLPs of one architecture (``linear``, ``mlp``, ``lenet300``);
    the result maps ``[N, in]`` to ``[K, N, out]``, configuration ``k`` computing exactly
    what ``models[k]`` computes (up to floating-point rounding of the batched matmul).

    >>> a, b = MLP(4, 3, [8]), MLP(4, 3, [8])
    >>> s = stack_models([a, b])
    >>> x = torch.randn(5, 4)
    >>> bool(torch.allclose(s(x)[1], b(x), atol=1e-6))
    True
    """
    import copy

    if not models or not all(isinstance(m, MLP) for m in models):
        raise ValueError("stack_models() takes one or more MLPs (model.kind linear, mlp or lenet300); "
                         "train other models one configuration at a time")
    out = copy.deepcopy(models[0])
    out.layers = nn.ModuleList(StackedLinear.stack([m.layers[i] for m in models])
                               for i in range(len(models[0].layers)))
    return out


def unstack_model(stacked: nn.Module, k: int, like: nn.Module) -> nn.Module:
    """Configuration ``k`` of a stacked MLP as a plain copy of ``like`` (the unstacked model).

    >>> a, b = MLP(4, 3, [8]), MLP(4, 3, [8])
    >>> bool(torch.equal(unstack_model(stack_models([a, b]), 1, a).layers[0].weight, b.layers[0].weight))
    True
    """
    import copy

    out = copy.deepcopy(like)
    with torch.no_grad():
        for src, dst in zip(stacked.layers, out.layers):
            dst.weight.copy_(src.weight[k])
            if dst.bias is not None:
                dst.bias.copy_(src.bias[k])
    return out
