"""The README's library snippet, run as written (extracted from README.md), gives exact zeros."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

import decaylab as dl

README = Path(__file__).parents[1] / "README.md"


def _library_snippet() -> str:
    text = README.read_text()
    section = text[text.index("## The library"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


class Net(nn.Module):
    """An MLP on 8x8 images with the names the snippet uses (fc1) and a norm layer."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm = nn.Linear(64, 64), nn.LayerNorm(64)
        self.fc2, self.fc3 = nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.norm(self.fc1(x))))))


def _images(n, gen):
    """Digit-like 8x8 inputs: a blank border (as in scikit-learn's digits), classes from a teacher."""
    x = torch.rand(n, 8, 8, generator=gen)
    x[:, 0, :] = x[:, :, 0] = x[:, :, 7] = 0
    x = x.flatten(1)
    teacher = torch.randn(64, 10, generator=torch.Generator().manual_seed(1))
    return x, (x @ teacher).argmax(1)


def test_readme_library_snippet_gives_exact_zeros(capsys):
    code = _library_snippet()
    setup, rest = code.split("# the training loop does not change:")
    loop_line, print_line = [line for line in rest.strip().splitlines()]
    assert "AdamW" in setup and "dl.L1(1e-5)" in setup  # the snippet is the one the README shows
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ns = {"model": Net()}
    exec(setup, ns)
    for _ in range(300):  # "the training loop does not change": the snippet's own step line
        x, y = _images(64, gen)
        ns["loss"] = nn.functional.cross_entropy(ns["model"](x), y)
        exec(loop_line, ns)
    exec(print_line, ns)
    out = capsys.readouterr().out
    opt, model = ns["opt"], ns["model"]
    assert opt.metrics[:2] == ["adam", "adam"]  # AdamW: Adam's metric by default
    assert "prox/adam" in out
    zeros = {n: float((p == 0).float().mean()) for n, p in model.named_parameters()}
    assert zeros["fc2.weight"] > 0.01 and zeros["fc3.weight"] > 0.01  # L1(1e-5), default selection
    assert zeros["fc1.weight"] >= 22 / 64  # GroupLasso on inputs: the 22 blank pixels, at least
    rows = {line[:32].strip(): line for line in out.splitlines()[2:]}
    assert not rows[dl.default_selection.__name__].split()[-2].startswith("0.0%")
