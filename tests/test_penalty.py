"""The Penalty base (decaylab.penalty): every penalty's strength is checked where it is set
(a finite number >= 0, or a 1-D tensor of them, one per configuration), and binding refuses
weights it cannot penalize, naming the parameter, the value and the fix."""

from __future__ import annotations

import re

import pytest
import torch

import decaylab as dl

from conftest import Holder, reg

PENALTIES = [dl.L2, dl.L1, dl.ElasticNet, dl.GroupLasso, dl.L2SP]


BAD_STRENGTHS = [(-1.0, "-1.0"), (float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf")]

CASES = [
    *[
        pytest.param(lambda cls=cls, a=a: cls(a), rf"{cls.__name__}\(alpha\) must be finite and >= 0, got {re.escape(s)}",
                     id=f"{cls.__name__}-alpha={s}")
        for cls in PENALTIES for a, s in BAD_STRENGTHS
    ],
    *[
        pytest.param(lambda cls=cls: cls("1e-3"), rf"{cls.__name__}\(alpha\) must be a number, got '1e-3'",
                     id=f"{cls.__name__}-alpha=str")
        for cls in PENALTIES
    ],
    pytest.param(lambda: dl.L1("strong"), r"L1\(alpha\) must be a number, got 'strong'", id="alpha=word"),
    pytest.param(lambda: dl.L1(None), r"L1\(alpha\) must be a number, got None", id="alpha=None"),
    pytest.param(lambda: dl.L1(torch.ones(2, 2)), r"L1\(alpha\) must be a float or a 1-D tensor.*shape \(2, 2\)",
                 id="alpha=2-D"),
    pytest.param(lambda: dl.L2(torch.tensor([0.1, -1.0])), r"L2\(alpha\) must be finite and >= 0, got \[0.1.*, -1.0\]",
                 id="alpha=tensor-negative"),
    pytest.param(lambda: dl.L2(torch.tensor([0.1, float("nan")])), r"L2\(alpha\) must be finite and >= 0, got \[0.1.*, nan\]",
                 id="alpha=tensor-nan"),
    pytest.param(lambda: setattr(dl.L1(0.1), "alpha", -2.0), r"L1\(alpha\) must be finite and >= 0, got -2.0",
                 id="alpha-set-later"),
    pytest.param(lambda: reg(dl.Rule(dl.L1(torch.tensor([0.1, 0.2])), params="fc.weight")),
                 r"2 strengths.*'fc\.weight' has shape \(3, 4\); its leading dimension must be the 2 configurations", id="batched-K"),
    pytest.param(lambda: reg(dl.Rule(dl.L1(1e-3), params="w"), model=Holder(torch.zeros(2, 2, dtype=torch.complex64))),
                 r"L1 needs real floating-point weights; 'w' is torch\.complex64", id="L1-complex"),
    pytest.param(lambda: reg(dl.Rule(dl.L1(1e-3), params="w"), model=Holder(torch.ones(2, 2, dtype=torch.int64))),
                 r"L1 needs real floating-point weights; 'w' is torch\.int64", id="L1-integer"),
    pytest.param(lambda: dl.L1(True), r"L1\(alpha\) must be a number, got True", id="alpha=True"),
    pytest.param(lambda: dl.L1(torch.tensor([True, False])), r"L1\(alpha\) must be a number.*got a tensor of torch\.bool",
                 id="alpha=bool-tensor"),
]


@pytest.mark.parametrize("make, match", CASES)
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
