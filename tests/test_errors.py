"""Bad input raises ValueError naming the thing, the value and the fix."""
from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import decaylab as dl


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)  # weight (2, 1, 3, 3)
        self.fc = nn.Linear(4, 3)       # weight (3, 4), bias (3,)


def _reg(rules, opt=None, model=None):
    model = model or Net()
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    return dl.regularize(opt, model, rules)


def _regularize_twice():
    model = Net()
    opt = _reg(dl.L1(1e-3), model=model)
    dl.regularize(opt, model, dl.L2(1e-3))


def _optimizer_missing_a_param():
    model = Net()
    _reg(dl.L1(1e-3), opt=torch.optim.SGD(model.conv.parameters(), lr=0.1), model=model)


def _negative_schedule_at_step():
    model = Net()
    opt = _reg(dl.Rule(dl.L1(1e-3), schedule=lambda s: 1.0 - s), model=model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # multiplier 1.0: fine
    opt.step()  # multiplier 0.0: fine
    opt.step()  # multiplier -1.0: raises


class Holder(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w, requires_grad=w.is_floating_point() or w.is_complex())


class SparseEmb(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 2, sparse=True)
        self.fc = nn.Linear(2, 2)


def _adam_metric_with(make_opt, penalty=None, params=None):
    model = Net()
    rule = dl.Rule(penalty or dl.L1(1e-3), params=params, metric="adam")
    return _reg(rule, opt=make_opt(model.parameters()), model=model)


def _one_arg_predicate():
    return _reg(dl.Rule(dl.L1(1e-3), params=lambda name: name.endswith("weight")))


FC = nn.Sequential(nn.Linear(4, 3))
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
    *[
        pytest.param(lambda r=r: dl.ElasticNet(1e-3, l1_ratio=r), rf"ElasticNet\(l1_ratio\) must be in \[0, 1\], got {s}",
                     id=f"l1_ratio={s}")
        for r, s in [(-0.1, "-0.1"), (1.5, "1.5"), (float("nan"), "nan"), ("half", "'half'")]
    ],
    pytest.param(lambda: dl.Rule(dl.L1(1e-3), mode="proximal"), r"unknown mode 'proximal'.*'prox', 'decoupled', 'coupled'",
                 id="mode"),
    pytest.param(lambda: dl.Rule(dl.L1(1e-3), metric="fisher"), r"unknown metric 'fisher'.*'lr', 'adam'", id="metric"),
    pytest.param(lambda: dl.Rule(dl.L2(1e-3), mode="decoupled", metric="adam"),
                 r"metric='adam' applies to mode='prox' only, got mode='decoupled'", id="adam-metric-decoupled"),
    pytest.param(lambda: dl.Rule("L1"), r"Rule needs a Penalty or None, got 'L1'", id="rule-not-penalty"),
    pytest.param(lambda: dl.GroupLasso(1e-3, groups="neuronz"), r"unknown grouping 'neuronz'.*'channels'", id="grouping"),
    pytest.param(lambda: _reg(dl.Rule(dl.GroupLasso(1e-3, groups="channels"), params="fc.weight")),
                 r"groups='channels'.*'fc\.weight' has shape \(3, 4\).*groups='rows'", id="channels-on-Linear"),
    pytest.param(lambda: _reg(dl.Rule(dl.GroupLasso(1e-3, groups="rows"), params="fc.bias")),
                 r"groups='rows'.*'fc\.bias' has shape \(3,\)", id="rows-on-1-D"),
    pytest.param(lambda: _reg(dl.Rule(dl.L1(1e-3), params="decoder.*")),
                 r"params='decoder\.\*'\) matches no parameter of Net", id="matches-nothing"),
    pytest.param(lambda: _reg([dl.Rule(dl.L1(1e-3), params="fc.*"), dl.Rule(dl.L2(1e-3), params="*.weight")]),
                 r"'fc\.weight' is selected by two rules.*fc\.\*.*\*\.weight", id="two-rules"),
    pytest.param(lambda: _reg([dl.L1(1e-3), dl.Rule(dl.L2(1e-3))]), r"two rules use the default selection",
                 id="two-default-rules"),
    pytest.param(lambda: _reg(dl.Rule(dl.L1(1e-3), params=42)), r"cannot select parameters with 42", id="bad-selector"),
    pytest.param(lambda: _reg([]), r"at least one Penalty or Rule", id="no-rules"),
    pytest.param(lambda: dl.regularize("sgd", Net(), dl.L1(1e-3)), r"needs a torch\.optim\.Optimizer, got str",
                 id="not-an-optimizer"),
    pytest.param(_optimizer_missing_a_param, r"selects 'fc\.weight', but the optimizer does not hold", id="param-not-in-opt"),
    pytest.param(lambda: _reg(dl.Rule(dl.L2SP(1e-3, {"fc.weight": torch.zeros(4, 3)}), params="fc.weight")),
                 r"L2SP reference for 'fc\.weight' has shape \(4, 3\) but the parameter has shape \(3, 4\)",
                 id="L2SP-shape"),
    pytest.param(lambda: _reg(dl.Rule(dl.L2SP(1e-3, {"fc.bias": torch.zeros(3)}), params="fc.*")),
                 r"L2SP reference has no entry for 'fc\.weight'", id="L2SP-missing"),
    pytest.param(lambda: _reg(dl.Rule(dl.L1(torch.tensor([0.1, 0.2])), params="fc.weight")),
                 r"2 strengths.*'fc\.weight' has shape \(3, 4\)", id="batched-K"),
    pytest.param(_regularize_twice, r"already regularized", id="regularize-twice"),
    pytest.param(_negative_schedule_at_step, r"schedule of L1\(alpha=0\.001\) returned -1\.0 at step 2", id="schedule"),
    # raised at regularize(), not at the first step() or never
    pytest.param(lambda: _reg(dl.Rule(dl.L1(1e-3), schedule=lambda s: -1)),
                 r"schedule of L1\(alpha=0\.001\) returned -1\.0 at step 0; it must be >= 0", id="schedule-at-bind"),
    pytest.param(lambda: _reg(dl.Rule(dl.L1(1e-3), schedule=lambda: 1.0)),
                 r"schedule of L1\(alpha=0\.001\) must be a function f\(step\) -> multiplier", id="schedule-no-arg"),
    pytest.param(lambda: dl.Rule(dl.L1(1e-3), schedule=0.5),
                 r"schedule must be a function f\(step\) -> multiplier, got 0\.5", id="schedule-not-callable"),
    pytest.param(lambda: _reg(dl.Rule(dl.GroupLasso(1e-3, groups=lambda shape: None), params="fc.weight")),
                 r"groups=<function>\) on 'fc\.weight': a grouping function must return an integer tensor.*got None",
                 id="group-fn-returns-None"),
    pytest.param(lambda: _reg(None), r"regularize\(\) needs a Penalty, a Rule or a list of them, got None",
                 id="rules=None"),
    pytest.param(lambda: dl.regularize(torch.optim.SGD(Net().parameters(), lr=0.1), Net().parameters(), dl.L1(1e-3)),
                 r"regularize\(\) needs the model \(an nn\.Module\).*got generator.*not model\.parameters\(\)",
                 id="parameters-not-model"),
    pytest.param(_one_arg_predicate, r"predicate '<lambda>' must take \(name, param, module\)", id="one-arg-predicate"),
    pytest.param(lambda: _reg(dl.Rule(dl.L1(1e-3), params="w"), model=Holder(torch.zeros(2, 2, dtype=torch.complex64))),
                 r"L1 needs real floating-point weights; 'w' is torch\.complex64", id="L1-complex"),
    pytest.param(lambda: _reg(dl.Rule(dl.L1(1e-3), params="w"), model=Holder(torch.ones(2, 2, dtype=torch.int64))),
                 r"L1 needs real floating-point weights; 'w' is torch\.int64", id="L1-integer"),
    pytest.param(lambda: _reg(dl.Rule(dl.L2(1e-3), params="emb.weight", mode="coupled"), model=SparseEmb()),
                 r"sparse gradient of 'emb\.weight'.*mode='decoupled'", id="coupled-sparse-embedding"),
    *[
        pytest.param(lambda make=make: _adam_metric_with(make),
                     rf"metric='adam' needs an optimizer that takes Adam's step.*{name} is not", id=f"adam-metric-{name}")
        for name, make in [("SGD", lambda p: torch.optim.SGD(p, lr=0.1)),
                           ("Adagrad", lambda p: torch.optim.Adagrad(p, lr=0.1)),
                           ("Adamax", lambda p: torch.optim.Adamax(p, lr=0.1))]
    ],
    pytest.param(lambda: _adam_metric_with(lambda p: torch.optim.Adam(p), dl.GroupLasso(
                     1e-3, groups=lambda s: torch.zeros(s, dtype=torch.long)), "fc.weight"),
                 r"GroupLasso with groups=<function> supports metric='lr' only", id="adam-metric-group-fn"),
    *[
        pytest.param(lambda make=make, mode=mode: _reg(dl.Rule(make(FC), params="0.weight", mode=mode), model=FC),
                     rf"{name}\(alpha=0\.001.*acts through its prox only, got mode='{mode}'; use mode='prox'",
                     id=f"{name}-mode={mode}")
        for name, make in [("TargetSparsity", lambda m: dl.TargetSparsity(1e-3, 0.5)),
                           ("AdaptiveGroupLasso", lambda m: dl.AdaptiveGroupLasso(1e-3, m.state_dict())),
                           ("CoupledGroupLasso", lambda m: dl.CoupledGroupLasso(1e-3, m, "inputs"))]
        for mode in ("coupled", "decoupled")
    ],
    pytest.param(lambda: dl.L1(True), r"L1\(alpha\) must be a number, got True", id="alpha=True"),
    pytest.param(lambda: dl.L1(torch.tensor([True, False])), r"L1\(alpha\) must be a number.*got a tensor of torch\.bool",
                 id="alpha=bool-tensor"),
    pytest.param(lambda: dl.ElasticNet(1e-3, l1_ratio="0.5"), r"ElasticNet\(l1_ratio\) must be in \[0, 1\], got '0\.5'",
                 id="l1_ratio=str"),
    pytest.param(lambda: dl.ElasticNet(1e-3, l1_ratio=True), r"ElasticNet\(l1_ratio\) must be in \[0, 1\], got True",
                 id="l1_ratio=True"),
]


@pytest.mark.parametrize("make, match", CASES)
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_warns_when_the_inner_optimizer_also_decays_penalized_params():
    model = Net()
    with pytest.warns(UserWarning, match=r"SGD param group 0 has weight_decay=0\.0001 .*L1\(alpha=0\.001\)"):
        _reg(dl.L1(1e-3), opt=torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4), model=model)


def test_no_warning_when_only_unpenalized_params_decay():
    model = Net()
    opt = torch.optim.SGD([
        {"params": [model.conv.weight, model.fc.weight]},
        {"params": [model.conv.bias, model.fc.bias], "weight_decay": 0.1},
    ], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _reg(dl.L1(1e-3), opt=opt, model=model)
