"""Statistics of a regularized model (decaylab.stats): the summary table of which parameters
got which penalty, sparsity, per-layer statistics, live groups and surviving inputs."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import decaylab as dl

from conftest import EveryLayer


_ROW = re.compile(r"(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)%\s+(\S+)$")


def _rows(text):
    out = {}
    for line in text.splitlines()[2:]:
        m = _ROW.search(line)
        assert m, line
        out[line[:32].strip()] = (m.group(1), int(m.group(2)), int(m.group(3)), float(m.group(4)), float(m.group(5)))
    return out


def test_summary_counts_tensors_and_elements():
    torch.manual_seed(0)
    net = EveryLayer()
    with torch.no_grad():
        net.fc2.weight.zero_()
    opt = dl.regularize(torch.optim.SGD(net.parameters(), lr=0.1), net, [
        dl.Rule(dl.L1(1e-3)),
        dl.Rule(dl.GroupLasso(1e-3, groups="inputs"), params="fc1.weight"),
        dl.Rule(None, params=["*.bias", dl.norm_layers]),
    ])
    text = dl.summary(opt)
    assert text.splitlines()[0].split() == ["rule", "penalty", "mode", "tensors", "elements", "zeros", "L2", "norm"]
    rows = _rows(text)
    assert list(rows) == ["weights >= 2-D", "fc1.weight", "*.bias | norm_layers", "(no rule)"]
    # (mode, tensors, elements, zero %, norm)
    conv_norm = float(net.conv.weight.detach().norm())
    assert rows["weights >= 2-D"][:4] == ("prox/auto", 2, 18 + 18, 50.0)  # fc2.weight is all zero
    assert rows["weights >= 2-D"][4] == pytest.approx(conv_norm, rel=2e-3)
    assert rows["fc1.weight"][:4] == ("prox/auto", 1, 48, 0.0)  # metric: set at step 1
    assert rows["*.bias | norm_layers"][:3] == ("-", 7, 2 + 2 + 2 + 6 + 6 + 6 + 3)
    assert rows["(no rule)"][:3] == ("-", 1, 40)
    assert "L1(alpha=0.001)" in text and "GroupLasso(alpha=" in text
    lines = {line[:32].strip(): line for line in text.splitlines()[2:]}
    assert " none " in lines["*.bias | norm_layers"] and " none " in lines["(no rule)"]


def test_summary_without_free_parameters_has_no_free_row():
    net = nn.Linear(3, 2)
    opt = dl.regularize(torch.optim.SGD(net.parameters(), lr=0.1), net, [dl.L2(1e-3), dl.Rule(None, params="bias")])
    assert "(no rule)" not in dl.summary(opt)


def test_sparsity_of_tensors_and_of_a_model():
    assert dl.sparsity([torch.tensor([0.0, 1.0]), torch.zeros(2, 3)]) == 7 / 8
    assert dl.sparsity([]) == 0.0
    net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
        net[2].weight.copy_(torch.tensor([[0.0, 3.0]]))
        net[0].bias.zero_()  # biases and norm parameters do not count
        net[1].bias.zero_()
    assert dl.sparsity(net) == 3 / 6


def test_layer_stats_on_hand_made_weights():
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Conv2d(2, 3, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[3.0, 0.0, -4.0], [0.0, 0.0, 0.0]]))
        net[2].weight.zero_()
        net[2].weight[1, 0, 0, 0] = -2.0
    s = dl.layer_stats(net)
    assert list(s) == ["0.weight", "2.weight"]
    assert s["0.weight"] == {"numel": 6, "zeros": 4, "zero_fraction": pytest.approx(4 / 6), "l1": 7.0,
                             "l2": 5.0, "live_rows": 1, "rows": 2}
    assert s["2.weight"] == {"numel": 6, "zeros": 5, "zero_fraction": pytest.approx(5 / 6), "l1": 2.0,
                             "l2": 2.0, "live_rows": 1, "rows": 3}


def test_live_groups_rows_columns_channels():
    w = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, -2.0, 0.0], [5.0, 0.0, 0.0]])
    assert dl.live_groups(w, "rows") == (3, 4)
    assert dl.live_groups(w, "outputs") == (3, 4)
    assert dl.live_groups(w, "columns") == (2, 3)
    assert dl.live_groups(w, "inputs") == (2, 3)
    conv = torch.zeros(4, 3, 2, 2)
    conv[1, 2, 1, 0] = 1.0
    conv[3, 2, 0, 0] = -1.0
    assert dl.live_groups(conv, "channels") == (2, 4)
    assert dl.live_groups(conv, "inputs") == (1, 3)
    assert dl.live_groups(torch.zeros(2, 2)) == (0, 2)


def test_surviving_inputs_linear_and_conv():
    w = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -3.0]])
    assert dl.surviving_inputs(w).tolist() == [False, True, False, True]
    conv = torch.zeros(2, 3, 2, 2)
    conv[1, 0, 1, 1] = 0.5
    assert dl.surviving_inputs(conv).tolist() == [True, False, False]
    conv1d = torch.zeros(2, 3, 5)
    conv1d[0, 2, 4] = 1.0
    assert dl.surviving_inputs(conv1d).tolist() == [False, False, True]


# -- updates: how each bucket was updated --------------------------------------------------
def test_updates_shows_each_bucket_before_and_after_its_first_step():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2).to(torch.bfloat16))
    opt = dl.regularize(torch.optim.Adam(m.parameters(), lr=0.1), m,
                        [dl.Rule(dl.L1(1e-2), params="*.weight", metric="adam"), dl.Rule(None, params="*.bias")],
                        fused=False)
    rows = dl.updates(opt)
    # one rule over two dtypes: two buckets; no rule, no bucket
    assert [(r["dtype"], r["tensors"], r["kernel"], r["mode"]) for r in rows] == [
        ("float32", 1, "not chosen", "prox/adam"), ("bfloat16", 1, "not chosen", "prox/adam")]
    assert rows[0]["penalty"] == "L1(alpha=0.01)"
    for _ in range(2):
        m[1](m[0](torch.randn(5, 4)).to(torch.bfloat16)).float().sum().backward()
        opt.step()
        opt.zero_grad()
    f32, bf16 = dl.updates(opt)
    assert f32["kernel"] == bf16["kernel"] == "eager" and f32["calls"] == f32["adam_calls"] == 0
    assert f32["level"] is None and f32["residual_bytes"] == 0
    assert bf16["residual_bytes"] == m[1].weight.numel() * 4  # its fp32 rounding residual
    assert f32["buffer_bytes"] == m[0].weight.numel() * 4  # the eager Adam-metric step buffer


def test_updates_finds_the_wrapper_inside_a_framework_optimizer():
    m = nn.Linear(4, 3)
    opt = dl.regularize(torch.optim.SGD(m.parameters(), lr=0.1), m, dl.L1(1e-3))

    class FrameworkWrapper:
        def __init__(self, optimizer):
            self.optimizer = optimizer

    assert dl.updates(FrameworkWrapper(opt)) == opt.updates() == dl.updates(opt)
    with pytest.raises(ValueError, match="decaylab"):
        dl.updates(torch.optim.SGD(m.parameters(), lr=0.1))


def test_updates_and_summary_show_the_same_mode_before_and_after_auto_resolves():
    m = nn.Linear(4, 3)
    opt = dl.regularize(torch.optim.Adam(m.parameters(), lr=0.1), m, dl.L1(1e-3), fused=False)
    for expected in ("prox/auto", "prox/adam"):  # Adam's state appears at the first step
        assert [r["mode"] for r in dl.updates(opt)] == [expected]
        assert _rows(dl.summary(opt))["weights >= 2-D"][0] == expected
        m(torch.ones(2, 4)).sum().backward()
        opt.step()
