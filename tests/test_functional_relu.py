"""Rectifications written as functions get the rules of ``nn.ReLU`` modules (issue 28).

A net calling ``F.relu`` (torchvision's GoogLeNet, Inception-v3, DenseNet, many users' nets) has no
ReLU module for a forward hook to find; the rules act on autograd's ReLU nodes instead
(``graph.rectify_functions``). Oracle: the same net, same weights, written with ``nn.ReLU``
modules. Properties: guided backprop and the deconvnet are not the gradient; the model is left as it
was, also after a refusal.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tests.test_attribution_core import assert_unchanged, snapshot
from zfviz.attribution import attribute, backward, registry, rules
from zfviz.attribution.composites import GUIDED_BACKPROP, Composite, gradient_composite
from zfviz.attribution.graph import rectify_functions
from zfviz.attribution.mechanism import rules_applied
from zfviz.errors import UserError
from zfviz.viz.deconv import project

# Each form a rectification takes in a forward written with functions.
FORMS = {
    "F.relu": F.relu,
    "torch.relu": torch.relu,
    "Tensor.relu": lambda t: t.relu(),
    "in place": lambda t: F.relu(t, inplace=True),
    "relu_": torch.relu_,
    "threshold": lambda t: F.threshold(t, 0.0, 0.0),
    "clamp": lambda t: t.clamp(min=0),
}
METHODS = {
    "guided_backprop": {},
    "deconvnet": {},
    "lrp epsilon": {"rule": "epsilon"},
    "lrp epsilon_plus": {"composite": "epsilon_plus"},
    "lrp alpha2_beta1_flat": {"composite": "epsilon_alpha2_beta1_flat"},
}


class ModuleNet(nn.Module):
    """conv, ReLU, max pool, conv, ReLU, linear, ReLU, linear: every ReLU a module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1, self.pool = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        self.fc1, self.relu3, self.fc2 = nn.Linear(6 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5)

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(x)))
        return self.fc2(self.relu3(self.fc1(self.relu2(self.conv2(x)).flatten(1))))


class FunctionalNet(nn.Module):
    """``ModuleNet`` with its ReLUs called as functions, in the form ``rectify``."""

    def __init__(self, rectify=F.relu) -> None:
        super().__init__()
        self.rectify = rectify
        self.conv1, self.pool = nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(6 * 4 * 4, 16), nn.Linear(16, 5)

    def forward(self, x):
        x = self.pool(self.rectify(self.conv1(x)))
        return self.fc2(self.rectify(self.fc1(self.rectify(self.conv2(x)).flatten(1))))


def twins(rectify=F.relu) -> tuple[nn.Module, nn.Module]:
    """The two nets with the same weights, biases drawn so some units are off (the ReLUs matter)."""
    module_net = ModuleNet().eval()
    with torch.no_grad():
        for m in module_net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.uniform_(-0.2, 0.2)
    functional = FunctionalNet(rectify).eval()
    functional.load_state_dict(module_net.state_dict())
    return module_net, functional


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    # The same kernels on the same values in the same order, so equal in practice; the tolerance only
    # allows a kernel to sum in another order. clamp's mask keeps x == 0 where ReLU's drops it: a
    # conv output exactly 0 has probability 0 with these random weights and inputs.
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("method", METHODS)
def test_functional_relu_net_equals_module_relu_net(method, form):
    module_net, functional = twins(FORMS[form])
    x = torch.randn(2, 3, 8, 8)
    name, options = method.split()[0], METHODS[method]
    ours = attribute(functional, x, [1, 3], name, **options)
    same(ours, attribute(module_net, x, [1, 3], name, **options))
    assert ours.abs().sum() > 0


@pytest.mark.parametrize("form", ["F.relu", "in place"])
def test_guided_backprop_and_deconvnet_are_not_the_gradient(form):
    """The defect: both were the plain gradient (deconvnet: times the logit) on a net calling F.relu."""
    _, functional = twins(FORMS[form])
    x = torch.randn(2, 3, 8, 8)
    saliency = attribute(functional, x, [1, 3], "saliency")
    guided = attribute(functional, x, [1, 3], "guided_backprop")
    assert not torch.allclose(guided, saliency, rtol=1e-3, atol=1e-6)
    assert (guided - saliency).abs().max() > 1e-3 * saliency.abs().max()
    logit = functional(x)[[0, 1], [1, 3]].reshape(2, 1, 1, 1)
    deconv = attribute(functional, x, [1, 3], "deconvnet")
    assert not torch.allclose(deconv, saliency * logit, rtol=1e-3, atol=1e-6)


def test_saliency_stays_autograd_on_a_functional_net():
    _, functional = twins()
    x = torch.randn(2, 3, 8, 8)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(functional(xg)[[0, 1], [1, 3]].sum(), xg)
    assert torch.equal(attribute(functional, x, [1, 3], "saliency"), grad)


def test_deconv_project_of_functional_net_equals_module_net():
    """``project`` runs the batched (vmapped) backward: the node hooks act there too."""
    module_net, functional = twins()
    x = torch.randn(2, 3, 8, 8)
    for channel in (2, [0, 2, 5]):
        same(project(functional, x, "conv2", channel), project(module_net, x, "conv2", channel))
    gradient = backward(functional, x, ("conv2", 2, None)).inputs
    assert not torch.allclose(project(functional, x, "conv2", 2), gradient, rtol=1e-3, atol=1e-6)


def test_graph_hooks_are_removed_when_the_call_ends():
    """A graph kept past the call gives autograd's gradient again: the node hooks end with the call."""
    _, functional = twins()
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with rules_applied(functional, GUIDED_BACKPROP) as state:
        out = functional(x)
        rectify_functions(out, state)
        (guided,) = torch.autograd.grad(out[0, 1], x, retain_graph=True)
    (after,) = torch.autograd.grad(out[0, 1], x)
    (plain,) = torch.autograd.grad(functional(x)[0, 1], x)
    assert torch.equal(after, plain) and not torch.allclose(guided, plain, rtol=1e-3, atol=1e-6)


def test_a_module_relu_is_rewritten_once():
    """A module ReLU's node is claimed by its module hook; the graph walk leaves it alone (two
    deconvnet hooks would still agree, so count the calls of the rule)."""
    calls = []

    class Counting(rules.ReluGuided):
        def through_node(self, masked, grad):
            calls.append(1)
            return super().through_node(masked, grad)

    composite = gradient_composite("counting", Counting())
    module_net, functional = twins()
    x = torch.randn(1, 3, 8, 8)
    for net in (module_net, functional):
        calls.clear()
        backward(net, x, [1], composite=composite)
        assert len(calls) == 3  # three ReLUs, each rewritten once


def test_model_unchanged_and_no_hooks_left():
    _, functional = twins(FORMS["in place"])
    before = snapshot(functional)
    x = torch.randn(2, 3, 8, 8)
    for method, options in METHODS.items():
        attribute(functional, x, [1, 3], method.split()[0], **options)
        project(functional, x, "conv2", [0, 1])
    assert_unchanged(functional, before)


class NeedsModule:
    """A ReLU rule that needs the module's input: it has no ``through_node`` form."""

    def backward(self, module, x, out, grad):
        return grad * (x > 0)


@pytest.mark.parametrize(
    "relu_rule, why",
    [(NeedsModule(), ": its ReLU rule (NeedsModule) needs an nn.ReLU module, not a function"), (None, "")],
    ids=["rule needs the module", "ReLU not in the composite"],
)
def test_refusal_names_the_rectification_and_leaves_the_model(relu_rule, why):
    weighted = ((nn.Conv2d, nn.Linear, nn.MaxPool2d), None)
    relu = [((nn.ReLU,), relu_rule)] if relu_rule is not None else []
    composite = Composite("needs-module", [*relu, weighted])
    _, functional = twins()
    before = snapshot(functional)
    with pytest.raises(UserError) as err:
        backward(functional, torch.randn(1, 3, 8, 8), [1], composite=composite)
    # the first found from the output: the ReLU after fc1, named by the layer whose output it rectifies
    assert str(err.value) == f"a rectification called as a function after fc1 (ReluBackward0){why}"
    assert_unchanged(functional, before)


def test_refusal_through_attribute_names_the_methods_that_work(monkeypatch):
    """Through ``attribute``: one line naming the rectification and the methods that handle a ReLU."""
    from zfviz.attribution.methods import backprop

    refusing = Composite("guided_backprop", [((nn.ReLU,), NeedsModule()), ((nn.Conv2d, nn.Linear, nn.MaxPool2d), None)])
    monkeypatch.setattr(backprop, "GUIDED_BACKPROP", refusing)
    _, functional = twins()
    with pytest.raises(UserError) as err:
        attribute(functional, torch.randn(1, 3, 8, 8), 1, "guided_backprop")
    assert str(err.value).startswith(
        "guided_backprop cannot handle a rectification called as a function after fc1 (ReluBackward0): its ReLU rule"
    )
    able = [name for name in methods_for(nn.ReLU()) if name != "guided_backprop"]  # never the refusing method
    assert str(err.value).endswith("; methods that work on it: " + ", ".join(able))


class OwnLayerNorm(nn.LayerNorm):
    """A LayerNorm with a forward of its own: LRP lists layer norms but cannot read what this one normalizes."""

    def forward(self, x):
        return super().forward(x.transpose(1, -1)).transpose(1, -1)


def test_a_refusal_never_lists_the_refusing_method():
    """LRP lists layer norms but refuses one with a forward of its own."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), OwnLayerNorm(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    with pytest.raises(UserError) as err:
        attribute(net, torch.randn(1, 3, 8, 8), 1, "lrp")
    assert str(err.value).startswith("lrp cannot handle 1 (OwnLayerNorm): its rule needs nn.LayerNorm's own forward")
    named = str(err.value).split("; methods that work on it: ")[1].split(", ")
    assert "lrp" not in named and "guided_backprop" in named


def methods_for(module: nn.Module) -> list[str]:
    """The registered methods that handle ``module`` (the refusal lists these)."""
    return [name for name, method in registry.METHODS.items() if method.supports(module)]


class GatedNet(nn.Module):
    """A conv, a gate called as a function (``F.logsigmoid``, ``torch.sigmoid``), a linear layer."""

    def __init__(self, gate) -> None:
        super().__init__()
        self.gate, self.conv, self.fc = gate, nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.gate(self.conv(x)).flatten(1))


@pytest.mark.parametrize("gate, module, node", [(F.logsigmoid, nn.LogSigmoid, "LogSigmoidBackward0")])
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "lrp"])
def test_a_gate_called_as_a_function_is_refused_as_its_module_is(method, gate, module, node):
    """Its module is refused (no rule for it); the function was the plain gradient under the method's name.
    (F.silu and torch.sigmoid get their modules' rules: tests/test_modern_rules.py.)"""
    net = GatedNet(gate).eval()
    before = snapshot(net)
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(UserError) as err:
        attribute(net, x, 1, method)
    able = methods_for(module())
    assert str(err.value) == (
        f"{method} cannot handle {module.__name__} called as a function after conv ({node}); "
        f"methods that work on it: {', '.join(able)}"
    )
    assert "saliency" in able and method not in able
    assert_unchanged(net, before)
    attribute(net, x, 1, "saliency")  # the gradient methods still run


def test_a_gate_whose_module_keeps_the_gradient_keeps_it_as_a_function():
    """A composite giving nn.Sigmoid autograd's gradient gives torch.sigmoid the same: no refusal."""
    composite = Composite("sigmoid-ok", [((nn.Sigmoid,), None), ((nn.Conv2d, nn.Linear), None)])
    net = GatedNet(torch.sigmoid).eval()
    x = torch.randn(2, 3, 8, 8)
    same(backward(net, x, [1, 2], composite=composite).inputs, backward(net, x, [1, 2]).inputs)


def googlenet() -> nn.Module:
    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    with torch.no_grad():  # BatchNorm statistics drawn anew: the default ones make every unit alike
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.slow
def test_googlenet_guided_backprop_and_deconvnet_are_not_saliency():
    """torchvision's GoogLeNet calls F.relu in every BasicConv2d: guided backprop was saliency bit for bit."""
    model = googlenet()
    before = snapshot(model)
    x = torch.randn(1, 3, 32, 32)  # 32 px: every pool still has a cell (16 px runs too)
    saliency = attribute(model, x, 0, "saliency")
    guided = attribute(model, x, 0, "guided_backprop")
    assert (guided - saliency).abs().max() > 0.1 * saliency.abs().max()  # std-0.01 weights: tiny maps, so relative
    deconv = attribute(model, x, 0, "deconvnet")
    corr = torch.corrcoef(torch.stack([deconv.flatten(), saliency.flatten()]))[0, 1]
    assert corr < 0.99
    assert_unchanged(model, before)
