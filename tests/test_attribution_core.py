"""The one backward mechanism (issue 13): saliency, input x gradient, deconvnet, guided backprop.

Oracles: ``torch.autograd.grad`` (saliency), Captum's Saliency/InputXGradient/GuidedBackprop/
Deconvolution/NeuronDeconvolution, and for the deconvnet's unit targets ``tests/deconv_oracle.py``
(autograd on the deconv-rule net, the chain inverter). Properties:
batch size does not change a map; the model is left exactly as it was, also after an exception;
an unsupported module ends in one line naming the methods that work on it.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from captum.attr import Deconvolution, GuidedBackprop, InputXGradient, NeuronDeconvolution, Saliency
from torch import nn

from tests.deconv_oracle import autograd_oracle, cell_start, chain_project, strongest_start, whole_map_start
from zfviz.ablation import VARIANTS, variant_model_kwargs
from zfviz.activations import Capture
from zfviz.attribution import attribute, backward, rules
from zfviz.attribution.composites import GUIDED_BACKPROP, Composite
from zfviz.attribution.mechanism import batched_backward, rules_applied
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.viz.deconv import project, project_with_values

CPU = {"input_size": 64, "width": 0.25, "fc_dims": 512, "init": "kaiming", "drop": []}
METHODS = ("saliency", "input_x_gradient", "deconvnet", "guided_backprop", "lrp")


def zfnet(name: str = "zfnet") -> nn.Module:
    model_name, kw = variant_model_kwargs(name, {"name": "zfnet", **CPU})
    return build_model(model_name, num_classes=10, **kw)


def random_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)
    return model


def snapshot(model: nn.Module) -> dict:
    """Everything a call might change: values, parameter objects, flags, hooks, attributes, children."""
    hook_dicts = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
    )
    return {
        "values": {k: v.clone() for k, v in model.state_dict().items()},
        "objects": [(n, id(p)) for n, p in model.named_parameters()] + [(n, id(b)) for n, b in model.named_buffers()],
        "modules": [
            (n, type(m), m.training, getattr(m, "inplace", None), sorted(m.__dict__), list(m._modules))
            + tuple(dict(getattr(m, d, {})) for d in hook_dicts)
            for n, m in model.named_modules()
        ],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["objects"] == before["objects"] and after["modules"] == before["modules"]
    for key, value in before["values"].items():
        assert torch.equal(after["values"][key], value), key


def test_saliency_equals_autograd():
    model = zfnet().eval()
    x = torch.randn(3, 3, 64, 64)
    ours = attribute(model, x, [1, 2, 3], "saliency")
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg)[torch.arange(3), torch.tensor([1, 2, 3])].sum(), xg)
    assert torch.equal(ours, grad)  # the same kernels on the same data


# vgg11: building its 133M parameters takes ~3.5 s (slow); alexnet covers in-place ReLUs and adaptive pools fast.
@pytest.mark.parametrize("net", ["zfnet", pytest.param("vgg11", marks=pytest.mark.slow), "alexnet"])
def test_gradient_family_equals_captum(net):
    if net == "zfnet":
        model, size = zfnet(), 64
    else:  # torchvision: in-place ReLUs, adaptive pools
        model, size = getattr(torchvision.models, net)(weights=None, num_classes=10), 64 if net == "alexnet" else 32
    model.eval()
    x, cls = torch.randn(2, 3, size, size), torch.tensor([3, 7])
    peers = {
        "saliency": (Saliency, {"abs": False}, {}),
        "input_x_gradient": (InputXGradient, {}, {}),
        "guided_backprop": (GuidedBackprop, {}, {}),
        # Captum's deconvolution starts from 1 and backpropagates through LRN.
        "deconvnet": (Deconvolution, {}, {"start": "one", "norm": "backprop"}),
    }
    for method, (peer, peer_kw, ours_kw) in peers.items():
        expected = peer(model).attribute(x.clone(), target=cls, **peer_kw)
        # The same backward kernels in a different order of hooks: equal to float rounding.
        torch.testing.assert_close(attribute(model, x, cls, method, **ours_kw), expected, rtol=1e-5, atol=1e-7)


def _assert_close_to(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # Other kernels (conv backward vs conv_transpose2d, a vmapped backward, Captum's hooks) sum the same
    # products, maybe in another order: 1e-5 of the projection's scale.
    assert expected.abs().sum() > 0, "a zero oracle proves nothing"
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Captum announces its ReLU hooks on every call
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_deconvnet_unit_targets_equal_independent_oracles_on_every_table3_variant(variant):
    """``attribute(..., "deconvnet")`` and ``project`` (one map, and several in one batched backward)
    against autograd on the deconv-rule net and the chain inverter (``tests/deconv_oracle.py``), and
    Captum's ``NeuronDeconvolution``, which backpropagates contrast normalization."""
    model = zfnet(variant).eval()
    x = torch.randn(2, 3, 64, 64)
    c = 2
    units = (
        ("conv5", None, strongest_start(c)),
        ("conv5", "all", whole_map_start(c)),
        ("conv2", (3, 4), cell_start(c, 3, 4)),
        ("fc8", None, strongest_start(c)),
    )
    for layer, position, start_fn in units:
        for norm in ("pass", "backprop"):
            expected = autograd_oracle(model, x, layer, start_fn, lrn=norm)
            _assert_close_to(chain_project(model, x, layer, start_fn, norm), expected)  # the oracles agree
            _assert_close_to(attribute(model, x, (layer, c, position), "deconvnet", norm=norm), expected)
            _assert_close_to(project(model, x, layer, [c, c + 1], position, norm=norm)[:, 0], expected)
    # Captum: a map whose strongest activation is positive in both images (the rectifications below are
    # not linear, so starting from 1 and scaling by the value agrees only for a positive value).
    with Capture(model, ["conv5"], stop=True) as capture, torch.no_grad():
        capture(x)
    active = int(capture.outputs["conv5"].amax(dim=(2, 3)).min(dim=0).values.argmax())
    ours, values, where = project_with_values(model, x, "conv5", active, norm="backprop")
    assert (values > 0).all()
    captum = NeuronDeconvolution(model, model.conv5)
    for i in range(len(x)):
        theirs = captum.attribute(x[i : i + 1], neuron_selector=(active, *where[i].tolist()))
        _assert_close_to(ours[i : i + 1], theirs * values[i])  # Captum starts from 1, the paper from the value


class _NoBatchingRule(torch.autograd.Function):
    """The identity whose backward reads a value (``float``): a vmapped backward cannot run it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * (1.0 + 0.0 * float(grad.sum()))


class _Opaque(nn.Module):
    def forward(self, x):
        return _NoBatchingRule.apply(x)


@pytest.mark.parametrize("opaque", [False, True])
def test_batched_backward_equals_one_backward_per_start(opaque):
    """Many starting signals from one forward pass equal one autograd call each, vmapped or (a module
    without a batching rule) one by one, in chunks of ``rows`` images' worth."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _Opaque() if opaque else nn.Identity(), nn.ReLU(), nn.Conv2d(4, 5, 3))
    x = torch.randn(3, 3, 9, 9)
    signals = torch.randn(5, 3, 5, 5, 5)
    got = batched_backward(model, x, "3", lambda act: signals, rows=6)  # chunks of 2 signals
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    expected = torch.stack([torch.autograd.grad(out, xg, s, retain_graph=True)[0] for s in signals])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # vmapped kernels may sum in another order


@pytest.mark.parametrize("method", METHODS)
def test_batch_size_does_not_change_a_map(method):
    model = random_biases(zfnet()).eval()
    x, cls = torch.randn(4, 3, 64, 64), [0, 5, 9, 2]
    batched = attribute(model, x, cls, method)
    single = torch.cat([attribute(model, x[i : i + 1], cls[i], method) for i in range(4)])
    # Batched convolutions may sum in another order: float tolerance, not equality.
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6 * single.abs().max().item())


def test_seeds_one_and_value_and_the_whole_map():
    model = zfnet().eval()
    x = torch.randn(2, 3, 64, 64)
    with Capture(model, ["conv5"]) as capture, torch.no_grad():
        capture(x)
    act = capture.outputs["conv5"][:, 3, 2, 2]
    one = attribute(model, x, ("conv5", 3, (2, 2)), "deconvnet", start="one")
    value = attribute(model, x, ("conv5", 3, (2, 2)), "deconvnet")
    torch.testing.assert_close(value, one * act.reshape(-1, 1, 1, 1))  # linear in the seed: rounding only
    xg = x.clone().requires_grad_(True)
    h = xg
    for name, module in model.named_children():
        h = module(h)
        if name == "conv5":
            break
    (grad,) = torch.autograd.grad(h[:, 3].sum(), xg)
    # "all" seeds 1 on the whole map: the gradient of its sum (same kernels, same data)
    torch.testing.assert_close(attribute(model, x, ("conv5", 3, "all"), "saliency"), grad, rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_model_unchanged_after_a_call_and_after_an_exception(method):
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.train()
    model.layer2.eval()  # mixed flags must come back as they were
    user_hook = model.layer1.register_forward_hook(lambda m, i, o: None)
    before = snapshot(model)
    attribute(model, torch.randn(2, 3, 32, 32), [1, 2], method)
    assert_unchanged(model, before)
    with pytest.raises(UserError):
        attribute(model, torch.randn(2, 3, 32, 32), [1, 99], method)  # fails after the forward pass
    assert_unchanged(model, before)

    def boom(*_):
        raise RuntimeError("user hook")

    handle = model.layer3.register_forward_hook(boom)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="user hook"):
        attribute(model, torch.randn(2, 3, 32, 32), [1, 2], method)  # fails inside the canonized forward
    assert_unchanged(model, before)
    handle.remove()
    user_hook.remove()


def test_unsupported_module_is_one_line_naming_the_methods_that_work():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LogSigmoid(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    before = snapshot(model)
    with pytest.raises(UserError) as err:
        attribute(model, torch.randn(2, 3, 8, 8), 1, "guided_backprop")
    message = str(err.value)
    assert "\n" not in message and "1 (LogSigmoid)" in message and "saliency" in message
    assert "deconvnet" not in message.partition("work on it")[2]
    assert_unchanged(model, before)
    attribute(model, torch.randn(2, 3, 8, 8), 1, "saliency")  # the gradient handles anything


@pytest.mark.parametrize(
    ("target", "options", "match"),
    [
        (1, {"method": "nope"}, "unknown attribution method"),
        (1, {"method": "saliency", "rule": "epsilon"}, "rule"),
        (1, {"method": "lrp", "rule": "gamma"}, "rule=gamma is not valid for lrp"),
        (1, {"method": "lrp", "rule": "alpha_beta", "alpha": 2, "beta": 2}, "alpha - beta = 1"),
        (1, {"method": "lrp", "first_rule": "zbox"}, "low= and high="),
        (1, {"method": "deconvnet", "norm": "skip"}, "norm=skip is not valid for deconvnet"),
        (("conv9", 0), {"method": "saliency"}, "unknown layer 'conv9'"),
        (("conv5", 999), {"method": "saliency"}, "channel of conv5"),
        (("conv5", 0, (40, 0)), {"method": "saliency"}, "inside the"),
        (2.5, {"method": "saliency"}, "class index"),
        ([1, 2, 3], {"method": "saliency"}, "one integer per image"),
    ],
)
def test_user_mistakes_are_one_line_errors(target, options, match):
    with pytest.raises(UserError, match=match) as err:
        attribute(zfnet(), torch.randn(2, 3, 64, 64), target, **options)
    assert "\n" not in str(err.value)


class OwnRelu(nn.ReLU):
    """A ReLU with its own forward: the mechanism cannot assume autograd's ReLU node, so rules run
    through their general ``backward`` (the path every other module takes)."""

    def forward(self, x):
        return torch.relu(x)


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_rules_on_autograds_relu_node_equal_their_general_backward(inplace):
    model = random_biases(zfnet()).eval()
    general = copy.deepcopy(model)
    for name, module in list(general.named_children()):
        if isinstance(module, nn.ReLU):
            setattr(general, name, OwnRelu())
    for module in model.children():
        if isinstance(module, nn.ReLU):
            module.inplace = inplace  # an in-place ReLU stays in place on the fast path
    x, cls = torch.randn(2, 3, 64, 64), [1, 2]
    for method in ("deconvnet", "guided_backprop", "lrp"):
        # the same elementwise kernels on the same values: equal, not close
        assert torch.equal(attribute(model, x, cls, method), attribute(general, x, cls, method)), method


def test_only_modules_a_rule_can_reach_are_hooked():
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with rules_applied(model, GUIDED_BACKPROP):  # its ReLUs' nodes are rewritten by the graph walk, unhooked
        hooked = {name for name, m in model.named_modules() if m._forward_hooks}
    assert hooked == set()
    first = Composite("first", GUIDED_BACKPROP.rules, first=rules.Flat())  # the first layer must be found
    with rules_applied(model, first):
        hooked = {name for name, m in model.named_modules() if m._forward_hooks}
    weighted = {name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert hooked == weighted
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.slow  # a full vgg11: ~2-6 s, most of it initializing the classifier
def test_in_place_relus_stay_in_place_and_a_layer_read_after_them_is_kept_before():
    model = torchvision.models.vgg11(weights=None, num_classes=10).eval()
    flags = []
    model.features[1].register_forward_hook(lambda m, i, o: flags.append(m.inplace))
    x = torch.randn(2, 3, 32, 32)
    got = backward(model, x, [3, 7], wrt="features.0")  # a conv whose output the next ReLU overwrites
    assert flags == [True]  # no copy of every ReLU output for the plain gradient
    oracle = copy.deepcopy(model)
    for m in oracle.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    xg = x.clone().requires_grad_(True)
    conv = oracle.features[0](xg)
    logits = oracle.classifier(torch.flatten(oracle.avgpool(oracle.features[1:](conv)), 1))
    grads = torch.autograd.grad(logits[[0, 1], [3, 7]].sum(), [xg, conv])
    assert (got.layer < 0).any()  # the conv's output, not the ReLU's
    assert torch.equal(got.layer, conv.detach())  # the same kernels on the same data
    torch.testing.assert_close(got.inputs, grads[0], rtol=1e-5, atol=1e-7)  # in place vs not: rounding only
    torch.testing.assert_close(got.layer_grad, grads[1], rtol=1e-5, atol=1e-7)
