"""Rules from a Hydra/OmegaConf config (extras; skipped where hydra-core is absent)."""

from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("hydra", reason="the integrations extra (hydra-core) is not installed")
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import decaylab as dl  # noqa: E402

pytestmark = pytest.mark.extras
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hydra_rules.yaml"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def test_the_example_yaml_builds_rules_that_train():
    rules = instantiate(OmegaConf.load(EXAMPLE).rules)  # a ListConfig of DictConfigs
    model = Net()
    opt = dl.regularize(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0), model, rules)
    assert [b.names for b in opt.bindings] == [
        ["fc2.weight"], ["fc1.weight"], ["fc1.bias", "norm.weight", "norm.bias", "fc2.bias"]]
    assert opt.bindings[2].rule.label == "*.bias | norm.*"
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    assert opt.steps == 1


def test_a_listconfig_selector_is_a_list():
    rule = dl.Rule(None, params=OmegaConf.create(["*.bias"]))
    assert rule.params == ["*.bias"] and rule.label == "*.bias"
