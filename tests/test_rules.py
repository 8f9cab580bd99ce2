"""Rules (decaylab.rules): which parameter gets which penalty; unwrapping; tied weights;
the default selection; bad rules and selections named."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

import decaylab as dl

from conftest import EveryLayer, reg, zero_grads


ALL = ["emb.weight", "conv.weight", "conv.bias", "bn.weight", "bn.bias",
       "fc1.weight", "fc1.bias", "ln.weight", "ln.bias", "fc2.weight", "fc2.bias"]
BIASES = ["conv.bias", "bn.bias", "fc1.bias", "ln.bias", "fc2.bias"]


def _sgd(model, lr=0.1):
    return torch.optim.SGD(model.parameters(), lr=lr)


def test_default_selection_is_linear_and_conv_weights_only():
    net = EveryLayer()
    opt = dl.regularize(_sgd(net), net, dl.L1(1e-3))
    assert [b.names for b in opt.bindings] == [["conv.weight", "fc1.weight", "fc2.weight"]]
    assert opt.unpenalized == [n for n in ALL if n not in ("conv.weight", "fc1.weight", "fc2.weight")]


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("*.bias", BIASES),
        ("fc1.weight", ["fc1.weight"]),
        (nn.Conv2d, ["conv.weight", "conv.bias"]),
        (dl.norm_layers, ["bn.weight", "bn.bias", "ln.weight", "ln.bias"]),
        (dl.embeddings, ["emb.weight"]),
        (dl.biases, BIASES),
        (dl.weights(nn.Linear), ["fc1.weight", "fc2.weight"]),
        (["fc1.weight", dl.embeddings, nn.Conv2d], ["emb.weight", "conv.weight", "conv.bias", "fc1.weight"]),
        (["*.bias", dl.norm_layers], ["conv.bias", "bn.weight", "bn.bias", "fc1.bias", "ln.weight", "ln.bias", "fc2.bias"]),
    ],
    ids=["glob-bias", "glob-name", "type", "norm_layers", "embeddings", "biases", "weights(Linear)",
         "list-union", "list-overlapping"],
)
def test_selectors(selector, expected):
    net = EveryLayer()
    opt = dl.regularize(_sgd(net), net, dl.Rule(dl.L2(1e-3), params=selector))
    assert opt.bindings[0].names == expected
    assert opt.unpenalized == [n for n in ALL if n not in expected]


def test_selector_by_tensor():
    net = EveryLayer()
    opt = dl.regularize(_sgd(net), net, dl.Rule(dl.L2(1e-3), params=net.fc2.bias))
    assert opt.bindings[0].names == ["fc2.bias"]


@pytest.mark.parametrize("default_first", [True, False])
def test_explicit_rules_take_precedence_over_default(default_first):
    """design.md's example: default L1 + GroupLasso on fc1 + explicit nothing on bias/norm."""
    torch.manual_seed(0)
    net = EveryLayer()
    lr, a1, a2 = 0.1, 0.05, 0.3
    default = dl.Rule(dl.L1(a1))
    rest = [dl.Rule(dl.GroupLasso(a2, groups="inputs"), params="fc1.weight"),
            dl.Rule(None, params=["*.bias", dl.norm_layers])]
    rules = [default, *rest] if default_first else [*rest, default]
    opt = dl.regularize(_sgd(net, lr), net, rules)
    with torch.no_grad():
        net.fc1.weight[:, 0] *= 0.01  # a weak input the group prox must remove

    names = {b.rule.label: b.names for b in opt.bindings}
    assert names["weights >= 2-D"] == ["conv.weight", "fc2.weight"]
    assert names["fc1.weight"] == ["fc1.weight"]
    assert names["*.bias | norm_layers"] == [
        "conv.bias", "bn.weight", "bn.bias", "fc1.bias", "ln.weight", "ln.bias", "fc2.bias"]
    assert opt.unpenalized == ["emb.weight"]

    # and the step does what the table says (zero gradients: only the penalties act)
    with torch.no_grad():
        net.bn.weight.fill_(0.5)  # BatchNorm defaults are 1/0; make them shrinkable
        net.ln.weight.fill_(0.5)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    zero_grads(net)
    opt.step()
    after = dict(net.named_parameters())
    for n in ("conv.weight", "fc2.weight"):
        assert torch.equal(after[n], Fn.softshrink(before[n], lr * a1)), n
    w = before["fc1.weight"]  # [6 out, 8 in]: 8 input groups of size 6
    col = w.norm(dim=0, keepdim=True)
    expected = w * (1 - lr * a2 * math.sqrt(6) / col).clamp_min(0)
    assert torch.allclose(after["fc1.weight"], expected, atol=1e-7)
    assert (after["fc1.weight"].abs().sum(0) == 0).tolist() == [True] + [False] * 7
    for n in ["emb.weight", *BIASES, "bn.weight", "ln.weight"]:
        assert torch.equal(after[n], before[n]), n


class _CompiledLike(nn.Module):
    """What ``torch.compile(model)`` returns (an OptimizedModule holding ``_orig_mod``),
    without importing dynamo."""

    def __init__(self, mod):
        super().__init__()
        self._orig_mod = mod

    def forward(self, *args):
        return self._orig_mod(*args)


@pytest.mark.parametrize("wrapper", ["DataParallel", "DistributedDataParallel", "compiled", "nested"])
def test_wrappers_are_unwrapped(wrapper, tmp_path):
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(4, 3))
    net.add_module("fc2", nn.Linear(3, 2))
    if wrapper == "DataParallel":
        model = nn.DataParallel(net)  # on a CPU-only machine it just holds .module
    elif wrapper == "compiled":
        model = _CompiledLike(net)
    elif wrapper == "nested":
        model = _CompiledLike(nn.DataParallel(net))
    else:
        # a DDP instance holding the net, built without a process group: an in-process gloo
        # group here hung the suite now and then (futex wait in DDP's collectives); real DDP
        # across two processes is tests/test_ddp.py
        model = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
        nn.Module.__init__(model)
        model.module = net
    assert any(n.startswith(("module.", "_orig_mod.")) for n, _ in model.named_parameters())
    rules = [dl.Rule(dl.L1(1e-2)), dl.Rule(dl.GroupLasso(1e-2), params="fc1.weight"),
             dl.Rule(None, params="*.bias")]
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, rules)
    assert [b.names for b in opt.bindings] == [["fc2.weight"], ["fc1.weight"], ["fc1.bias", "fc2.bias"]]
    assert opt.unpenalized == []
    (model.module if wrapper == "DistributedDataParallel" else model)(torch.randn(5, 4)).sum().backward()
    opt.step()
    assert opt.steps == 1


def test_tied_parameters_are_counted_once():
    lr, alpha = 0.5, 0.25
    a, b = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    b.weight = a.weight  # tied
    model = nn.Sequential(a, nn.Tanh(), b, nn.Tanh(), a)  # and a module used twice
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=lr), model, dl.L1(alpha))
    assert [len(b.params) for b in opt.bindings] == [1]
    assert re.search(r"\s1\s+4\s+\S+%", dl.summary(opt).splitlines()[2])
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, -0.75], [0.5, -0.125]]))
    zero_grads(model)
    opt.step()
    # shrunk by lr*alpha = 0.125 once, not twice
    assert torch.equal(a.weight.detach(), torch.tensor([[0.875, -0.625], [0.375, 0.0]]))


def test_adam_metric_implies_prox_mode_when_no_mode_is_given():
    assert dl.Rule(dl.L2(1e-3), metric="adam").mode == "prox"
    assert dl.Rule(dl.L2(1e-3)).mode == "decoupled"


# -- names written against wrappers or their state_dict --------------------------------


def _two_layers():
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(4, 3))
    net.add_module("fc2", nn.Linear(3, 2))
    return net


@pytest.mark.parametrize("pattern", ["module.fc1.weight", "_orig_mod.fc1.weight", "_orig_mod.module.fc1.weight",
                                     "module.fc1.w*"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_names_with_wrapper_prefixes_are_accepted(pattern, wrapped):
    net = _two_layers()
    model = nn.DataParallel(net) if wrapped else net
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                        [dl.Rule(dl.L1(1e-2), params=pattern), dl.Rule(None, params="*.bias")])
    assert opt.bindings[0].names == ["fc1.weight"]
    assert opt.unpenalized == ["fc2.weight"]


def test_a_submodule_really_named_module_is_matched_as_written():
    net = nn.Sequential()
    net.add_module("module", nn.Linear(2, 2))
    net.add_module("weight_user", nn.Linear(2, 2))
    opt = dl.regularize(torch.optim.SGD(net.parameters(), lr=0.1), net, dl.Rule(dl.L2(1e-2), params="module.*"))
    assert opt.bindings[0].names == ["module.weight", "module.bias"]


def test_l2sp_reference_from_a_ddp_state_dict_is_accepted():
    net = _two_layers()
    ddp_sd = {f"module.{k}": v.clone() + 1.0 for k, v in net.state_dict().items()}
    opt = dl.regularize(torch.optim.SGD(net.parameters(), lr=0.1), net, dl.L2SP(1e-2, ddp_sd))
    assert opt.bindings[0].names == ["fc1.weight", "fc2.weight"]
    assert torch.equal(opt.bindings[0].ctxs[0], ddp_sd["module.fc1.weight"])
    compiled_sd = {f"_orig_mod.{k}": v for k, v in net.state_dict().items()}
    dl.regularize(torch.optim.SGD(net.parameters(), lr=0.1), net, dl.L2SP(1e-2, compiled_sd))


def test_a_rule_matching_nothing_lists_the_names_it_could_match():
    model = nn.DataParallel(_two_layers())
    with pytest.raises(ValueError, match=r"matches no parameter of Sequential; its parameters are named "
                                         r"'fc1\.weight', 'fc1\.bias', 'fc2\.weight', 'fc2\.bias'"):
        dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.Rule(dl.L1(1e-3), params="fc3.*"))


# -- tied weights: one tensor, several names ------------------------------------------


class TiedLM(nn.Module):
    """A language model whose output head shares the embedding table."""

    def __init__(self, extra_linear=False):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.mix = nn.Linear(4, 4) if extra_linear else None
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


@pytest.mark.parametrize("selector", ["head.weight", "emb.weight", dl.embeddings, dl.weights(nn.Linear)])
def test_a_tied_weight_is_selectable_by_either_name(selector):
    model = TiedLM()
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.Rule(dl.L2(1e-2), params=selector))
    assert opt.bindings[0].params == [model.emb.weight]
    assert opt.bindings[0].names == ["emb.weight"]  # listed once, under its first name


@pytest.mark.parametrize("extra_linear", [False, True])
def test_the_default_selection_decays_a_tied_head_once(extra_linear):
    lr, alpha = 0.5, 0.25
    model = TiedLM(extra_linear)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=lr), model, dl.L2(alpha))
    names = opt.bindings[0].names
    assert "emb.weight" in names and ("mix.weight" in names) == extra_linear
    before = model.emb.weight.detach().clone()
    zero_grads(model)
    opt.step()
    assert torch.equal(model.emb.weight.detach(), before * (1 - lr * alpha))  # once, not twice


def test_two_rules_on_the_two_names_of_a_tied_weight_is_an_error():
    model = TiedLM()
    with pytest.raises(ValueError, match=r"'emb\.weight' is selected by two rules"):
        dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model,
                      [dl.Rule(dl.L2(1e-2), params="emb.weight"), dl.Rule(dl.L1(1e-2), params="head.weight")])


# -- the default selection: every trainable >= 2-D weight but embeddings and norms -----


class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True)  # in_proj_weight, bias_k (1, 1, 8)
        self.lstm = nn.LSTM(8, 4)
        self.ln = nn.LayerNorm(8)
        self.pos = nn.Parameter(torch.zeros(5, 8))  # a bare >= 2-D parameter
        self.frozen = nn.Linear(8, 8)
        self.frozen.weight.requires_grad_(False)
        self.gain = nn.Parameter(torch.ones(8))


def test_default_selection_is_every_trainable_matrix_except_embeddings_and_norms():
    model = Zoo()
    opt = dl.regularize(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1),
                        model, dl.L2(1e-2))
    assert opt.bindings[0].names == [
        "pos", "attn.in_proj_weight", "attn.out_proj.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0",
    ]
    for name in ("emb.weight", "attn.bias_k", "attn.bias_v", "attn.in_proj_bias", "lstm.bias_ih_l0",
                 "ln.weight", "frozen.weight", "frozen.bias", "gain"):
        assert name in opt.unpenalized, name


def test_default_selection_on_an_lstm_alone_works():
    model = nn.LSTM(3, 2, num_layers=2)
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.1), model, dl.L1(1e-3))
    assert len(opt.bindings[0].names) == 4


def test_frozen_weights_are_not_decayed_by_the_default_selection():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    opt = dl.regularize(torch.optim.SGD(model.parameters(), lr=0.5), model, dl.L2(0.5))
    assert opt.bindings[0].names == ["1.weight"]
    model[1].weight.grad = torch.zeros(2, 2)
    model[0].weight.grad = torch.zeros(2, 2)  # even with a gradient lying around
    opt.step()
    assert torch.equal(model[0].weight, frozen)


# -- bad input -----------------------------------------------------------------------

class SparseEmb(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 2, sparse=True)
        self.fc = nn.Linear(2, 2)


def _one_arg_predicate():
    return reg(dl.Rule(dl.L1(1e-3), params=lambda name: name.endswith("weight")))


FC = nn.Sequential(nn.Linear(4, 3))


CASES = [
    pytest.param(lambda: dl.Rule(dl.L1(1e-3), mode="proximal"), r"unknown mode 'proximal'.*'prox', 'decoupled', 'coupled'",
                 id="mode"),
    pytest.param(lambda: dl.Rule(dl.L1(1e-3), metric="fisher"), r"unknown metric 'fisher'.*'lr', 'adam'", id="metric"),
    pytest.param(lambda: dl.Rule(dl.L2(1e-3), mode="decoupled", metric="adam"),
                 r"metric='adam' applies to mode='prox' only, got mode='decoupled'", id="adam-metric-decoupled"),
    pytest.param(lambda: dl.Rule("L1"), r"Rule needs a Penalty or None, got 'L1'", id="rule-not-penalty"),
    pytest.param(lambda: reg(dl.Rule(dl.L1(1e-3), params="decoder.*")),
                 r"params='decoder\.\*'\) matches no parameter of ConvFc", id="matches-nothing"),
    pytest.param(lambda: reg([dl.Rule(dl.L1(1e-3), params="fc.*"), dl.Rule(dl.L2(1e-3), params="*.weight")]),
                 r"'fc\.weight' is selected by two rules.*fc\.\*.*\*\.weight", id="two-rules"),
    pytest.param(lambda: reg([dl.L1(1e-3), dl.Rule(dl.L2(1e-3))]), r"two rules use the default selection",
                 id="two-default-rules"),
    pytest.param(lambda: reg(dl.Rule(dl.L1(1e-3), params=42)), r"cannot select parameters with 42", id="bad-selector"),
    pytest.param(lambda: dl.Rule(dl.L1(1e-3), schedule=0.5),
                 r"schedule must be a function f\(step\) -> multiplier, got 0\.5", id="schedule-not-callable"),
    pytest.param(_one_arg_predicate, r"predicate '<lambda>' must take \(name, param, module\)", id="one-arg-predicate"),
    pytest.param(lambda: reg(dl.Rule(dl.L2(1e-3), params="emb.weight", mode="coupled"), model=SparseEmb()),
                 r"sparse gradient of 'emb\.weight'.*mode='decoupled'", id="coupled-sparse-embedding"),
    *[
        pytest.param(lambda make=make, mode=mode: reg(dl.Rule(make(FC), params="0.weight", mode=mode), model=FC),
                     rf"{name}\(alpha=0\.001.*acts through its prox only, got mode='{mode}'; use mode='prox'",
                     id=f"{name}-mode={mode}")
        for name, make in [("TargetSparsity", lambda m: dl.TargetSparsity(1e-3, 0.5)),
                           ("AdaptiveGroupLasso", lambda m: dl.AdaptiveGroupLasso(1e-3, m.state_dict())),
                           ("CoupledGroupLasso", lambda m: dl.CoupledGroupLasso(1e-3, m, "inputs"))]
        for mode in ("coupled", "decoupled")
    ],
]


@pytest.mark.parametrize("make, match", CASES)
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
