import importlib.util

import pytest
import torch
from torch import nn

import decaylab

# the integrations import their framework: without it (README command 2 installs none)
# their modules are not collected for doctests; their tests skip with a reason
_FRAMEWORKS = {"src/decaylab/integrations/hf.py": ("transformers", "accelerate"),
               "src/decaylab/integrations/lightning.py": ("lightning",)}
collect_ignore = [path for path, needs in _FRAMEWORKS.items()
                  if any(importlib.util.find_spec(m) is None for m in needs)]


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
