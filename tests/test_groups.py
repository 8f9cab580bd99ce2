"""Groupings (decaylab.groups): a grouping that does not fit a weight, an unknown name and a
grouping function that returns no index are refused, naming the parameter and the fix."""

from __future__ import annotations

import pytest

import decaylab as dl

from conftest import reg


CASES = [
    pytest.param(lambda: dl.GroupLasso(1e-3, groups="neuronz"), r"unknown grouping 'neuronz'.*'channels'", id="grouping"),
    pytest.param(lambda: reg(dl.Rule(dl.GroupLasso(1e-3, groups="channels"), params="fc.weight")),
                 r"groups='channels'.*'fc\.weight' has shape \(3, 4\).*groups='rows'", id="channels-on-Linear"),
    pytest.param(lambda: reg(dl.Rule(dl.GroupLasso(1e-3, groups="rows"), params="fc.bias")),
                 r"groups='rows'.*'fc\.bias' has shape \(3,\)", id="rows-on-1-D"),
    pytest.param(lambda: reg(dl.Rule(dl.GroupLasso(1e-3, groups=lambda shape: None), params="fc.weight")),
                 r"groups=<function>\) on 'fc\.weight': a grouping function must return an integer tensor.*got None",
                 id="group-fn-returns-None"),
]


@pytest.mark.parametrize("make, match", CASES)
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
