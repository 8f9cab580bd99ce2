import pytest
import torch
from torch import nn

import decaylab


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["nn"] = nn
    for name in decaylab.__all__:
        doctest_namespace[name] = getattr(decaylab, name)
