import pytest
import torch
from torch import nn

import decaylab


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tests use tiny models: a second OpenMP thread only adds contention on 2-core CI.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["nn"] = nn
    for name in decaylab.__all__:
        doctest_namespace[name] = getattr(decaylab, name)
