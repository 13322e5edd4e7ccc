"""The rule-based family on the modules modern CNNs are made of (issue 28).

Activations other than the ReLU (hand-computed: the convention of ``rules``; their functional forms
follow their modules), LRP's pass-through for them and for a batch norm with no layer before it
(Zennit's ``Pass``), the squeeze-and-excitation gate as a constant (Arras et al. 2017), LayerNorm /
LayerNorm2d / GroupNorm with sigma constant (Ali et al. 2022: LRP-0 on such a net is the gradient x
input of the net with sigma detached), ConvNeXt's layer scale folded, grouped convolutions (Zennit),
and torchvision's modern nets end to end: deconvnet, guided backprop and LRP give finite, non-zero maps
unlike saliency, leave the model as it was, and LRP-0 conserves relevance when the biases are zero.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlock, LayerNorm2d
from torchvision.ops.misc import SqueezeExcitation
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus

from tests.test_attribution_core import assert_unchanged, snapshot
from tests.test_lrp import zennit_relevance
from zfviz.attribution import attribute, rules
from zfviz.attribution.composites import DECONVNET, GUIDED_BACKPROP, lrp_composite
from zfviz.attribution.mechanism import backward
from zfviz.errors import UserError

# (module, its functional form): every activation the rules give the non-ReLU convention
GATES = [
    (nn.ReLU6(), F.relu6),
    (nn.SiLU(), F.silu),
    (nn.GELU(), F.gelu),
    (nn.Hardswish(), F.hardswish),
    (nn.Hardsigmoid(), F.hardsigmoid),
    (nn.ELU(), F.elu),
    (nn.LeakyReLU(0.1), lambda x: F.leaky_relu(x, 0.1)),
    (nn.Sigmoid(), torch.sigmoid),
    (nn.Tanh(), torch.tanh),
    (nn.Mish(), F.mish),
    (nn.CELU(), F.celu),
]
IN_PLACE = [  # in-place functional forms, some of which autograd records under another node
    (nn.SiLU(), lambda x: F.silu(x, inplace=True)),
    (nn.ELU(), lambda x: F.elu(x, inplace=True)),
    (nn.CELU(), lambda x: F.celu(x, inplace=True)),
    (nn.LeakyReLU(0.1), lambda x: F.leaky_relu(x, 0.1, inplace=True)),
    (nn.ReLU6(), lambda x: F.relu6(x, inplace=True)),
]
IDS = [type(module).__name__ for module, _ in GATES] + [f"{type(module).__name__} in place" for module, _ in IN_PLACE]
LRP_0 = lrp_composite("lrp-0", rules.Epsilon(0.0), rules.Epsilon(0.0))


class Functional(nn.Module):
    """``net``'s two linear layers with the activation called as a function between them: no module hook sees it."""

    def __init__(self, net: nn.Sequential, fn) -> None:
        super().__init__()
        self.first, self.last, self.fn = net[0], net[2], fn

    def forward(self, x):
        return self.last(self.fn(self.first(x)))


def gated(gate: nn.Module) -> nn.Sequential:
    """The gate between two fixed linear layers: the signal reaching it has both signs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), gate, nn.Linear(5, 3)).eval()


def local_gradient(gate: nn.Module, z: torch.Tensor) -> torch.Tensor:
    z = z.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(gate(z).sum(), z)
    return grad


@pytest.mark.parametrize(("gate", "fn"), GATES + IN_PLACE, ids=IDS)
def test_gates_follow_the_stated_convention_as_modules_and_as_functions(gate, fn):
    """deconvnet: relu(signal); guided backprop: f'(x) * relu(signal); LRP: the relevance passes."""
    net = gated(gate)
    x = torch.randn(2, 6)
    z = net[0](x)
    signal = net[2].weight[[1, 2]].detach()  # what reaches the gate from target classes 1 and 2
    first = net[0].weight.detach()
    expected = [
        (DECONVNET, signal.clamp(min=0) @ first),
        (GUIDED_BACKPROP, (local_gradient(gate, z) * signal.clamp(min=0)) @ first),
    ]
    functional = Functional(net, fn)
    for composite, want in expected:
        for model in (net, functional):
            got = backward(model, x, [1, 2], composite=composite).inputs
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # LRP-0: the relevance at the gate's output, R_j = a_j w_kj (no bias), reaches the first layer unchanged
    with torch.no_grad():
        net[2].bias.zero_()
        net[0].bias.zero_()
        z = net[0](x)
        relevance = gate(z) * signal
    want = x * ((relevance / z) @ first)
    for model in (net, functional):
        got = backward(model, x, [1, 2], composite=LRP_0, start="value").inputs
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_guided_backprop_keeps_a_negative_local_gradient():
    """SiLU's slope is negative below about -1.28: guided backprop does not rectify it again."""
    net = nn.Sequential(nn.SiLU(), nn.Linear(3, 1, bias=False)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 1.0, -1.0]]))
    got = backward(net, torch.tensor([[-3.0, -1.0, 2.0]]), [0], composite=GUIDED_BACKPROP).inputs
    slope = local_gradient(nn.SiLU(), torch.tensor([-3.0, -1.0]))
    assert slope[0] < 0 < slope[1]
    torch.testing.assert_close(got, torch.tensor([[slope[0], slope[1], 0.0]]))  # a negative signal: nothing


def zennit_net() -> nn.Sequential:
    """Every activation Zennit passes (its ``Activation`` type), a grouped and a depthwise conv, a batch
    norm merged into the conv before it, and one with no layer before it (DenseNet's BN-ReLU-conv)."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.SiLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.Hardswish(),
        nn.Conv2d(8, 8, 3, groups=2),
        nn.GELU(),
        nn.Conv2d(8, 8, 1),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 1),
        nn.ELU(),
        nn.Conv2d(8, 8, 1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(8, 8, 1),
        nn.Hardsigmoid(),
        nn.Conv2d(8, 8, 1),
        nn.Tanh(),
        nn.Conv2d(8, 8, 1),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 4),
    )
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = 0.0  # Zennit's merged norm keeps its eps; ours is exactly the identity
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.slow  # Zennit's first call in a process takes ~0.6 s
def test_activations_grouped_convs_and_batch_norms_equal_zennit():
    """Zennit's EpsilonPlus: activations and an unmerged batch norm pass, a merged one folds."""
    net = zennit_net()
    before = snapshot(net)
    x, cls = torch.randn(2, 3, 8, 8), torch.tensor([1, 3])
    expected = zennit_relevance(net, x.clone(), cls, EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]))
    ours = attribute(net, x, cls, "lrp", composite="epsilon_plus")
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    assert_unchanged(net, before)


def zero_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None and isinstance(module.bias, torch.Tensor):
                module.bias.zero_()
    return model


def test_squeeze_excitation_gate_is_a_constant_and_conserves():
    """The SE block's input gets the relevance of its output, element by element (the gate's branch none)."""
    torch.manual_seed(2)
    se = SqueezeExcitation(4, 2)
    net = zero_biases(nn.Sequential(nn.Conv2d(3, 4, 3), se, nn.Flatten(), nn.Linear(4 * 6 * 6, 3))).eval()
    before = snapshot(net)
    x = torch.randn(1, 3, 8, 8)
    seen = {}
    handle = se.register_forward_hook(lambda _m, inputs, out: seen.update(input=inputs[0], out=out))
    ours = attribute(net, x, 2, "lrp", epsilon=0.0)
    handle.remove()
    relevance_out = seen["out"].detach().flatten(1) * net[3].weight[2].detach()  # LRP-0 at the linear layer
    conv = net[0]
    z = conv(x).detach()
    want = x * torch.nn.grad.conv2d_input(x.shape, conv.weight.detach(), relevance_out.reshape(z.shape) / z)
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.sum(), net(x)[0, 2].detach(), rtol=1e-4, atol=1e-6)
    assert_unchanged(net, before)


class SigmaDetached(nn.Module):
    """Ali et al.'s LN-rule as they implement it: the norm with sigma detached, then gradient x input."""

    def __init__(self, norm: nn.Module, dims, groups: int | None = None) -> None:
        super().__init__()
        self.norm, self.dims, self.groups = norm, dims, groups

    def forward(self, x):
        shape = x.shape
        g = x if self.groups is None else x.reshape(shape[0], self.groups, -1)
        centered = g - g.mean(self.dims, keepdim=True)
        sigma = centered.square().mean(self.dims, keepdim=True).add(self.norm.eps).sqrt().detach()
        y = (centered / sigma).reshape(shape)
        weight = self.norm.weight if self.dims != (1,) and self.groups is None else self.norm.weight[:, None, None]
        return y * weight


NORM_CASES = {
    "LayerNorm": (lambda: nn.LayerNorm([4, 6, 6]), dict(dims=(1, 2, 3))),
    "LayerNorm2d": (lambda: LayerNorm2d(4), dict(dims=(1,))),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), dict(dims=(2,), groups=2)),
}


@pytest.mark.parametrize("kind", NORM_CASES)
def test_layer_norms_with_sigma_constant_equal_gradient_times_input_and_conserve(kind):
    """LRP-0 on a ReLU net without biases is gradient x input; with the normalizer held constant the norm
    is linear too, so ours equals gradient x input of the net with sigma detached (Ali et al. 2022)."""
    make, how = NORM_CASES[kind]
    torch.manual_seed(3)
    norm = make()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    net = zero_biases(nn.Sequential(nn.Conv2d(3, 4, 3), norm, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))).eval()
    before = snapshot(net)
    x = torch.randn(2, 3, 8, 8)
    ours = attribute(net, x, [0, 2], "lrp", epsilon=0.0)
    detached = nn.Sequential(net[0], SigmaDetached(norm, **how), *net[2:])
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(detached(xg)[[0, 1], [0, 2]].sum(), xg)
    torch.testing.assert_close(ours, x * grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.sum((1, 2, 3)), net(x)[[0, 1], [0, 2]].detach(), rtol=1e-4, atol=1e-6)
    assert_unchanged(net, before)


def cnblock() -> CNBlock:
    torch.manual_seed(4)
    block = CNBlock(8, layer_scale=1.0, stochastic_depth_prob=0.0)
    with torch.no_grad():
        block.layer_scale.uniform_(0.2, 2.0)
    return block.eval()


def test_layer_scale_is_folded_into_the_last_linear_layer():
    """ConvNeXt's block under LRP equals the same block with its layer scale folded by hand."""
    block = cnblock()
    folded = cnblock()
    with torch.no_grad():
        scale = folded.layer_scale.reshape(-1)
        folded.block[5].weight.mul_(scale[:, None])
        folded.block[5].bias.mul_(scale)
        folded.layer_scale.fill_(1.0)
    head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 5 * 5, 3))
    net, twin = nn.Sequential(block, head).eval(), nn.Sequential(folded, head).eval()
    before = snapshot(net)
    x = torch.randn(1, 8, 5, 5)
    ours = attribute(net, x, 1, "lrp")
    torch.testing.assert_close(ours, attribute(twin, x, 1, "lrp"), rtol=1e-4, atol=1e-6)
    assert_unchanged(net, before)


def test_convnext_block_conserves_without_biases():
    block = zero_biases(cnblock())
    net = zero_biases(nn.Sequential(block, nn.Flatten(), nn.Linear(8 * 5 * 5, 3))).eval()
    x = torch.randn(1, 8, 5, 5)
    ours = attribute(net, x, 1, "lrp", epsilon=0.0)
    torch.testing.assert_close(ours.sum(), net(x)[0, 1].detach(), rtol=1e-4, atol=1e-6)


class Pooled(nn.Module):
    """A conv, then a pool: a module, or the same pool called as a function (Inception-v3's ``F.avg_pool2d``)."""

    def __init__(self, pool: nn.Module | None, fn=None) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv, self.pool, self.fn = nn.Conv2d(3, 4, 3), pool, fn
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        out = F.relu(self.conv(x))
        return self.fc((self.pool(out) if self.fn is None else self.fn(out)).flatten(1))


@pytest.mark.parametrize(
    ("pool", "fn"),
    [
        (nn.AvgPool2d(3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1)),
        (nn.AvgPool2d(3, 2, 1, count_include_pad=False), lambda t: F.avg_pool2d(t, 3, 2, 1, count_include_pad=False)),
        (nn.AdaptiveAvgPool2d(2), lambda t: F.adaptive_avg_pool2d(t, 2)),
    ],
    ids=["avg_pool2d", "avg_pool2d without pad", "adaptive_avg_pool2d"],
)
def test_a_pool_called_as_a_function_splits_as_its_module_does(pool, fn):
    """LRP's proportional split at a pool called as a function (its node keeps the input): not the even one."""
    module_net, functional = Pooled(pool).eval(), Pooled(None, fn).eval()
    functional.load_state_dict(module_net.state_dict())
    x = torch.randn(2, 3, 5, 5)
    ours = attribute(functional, x, [0, 2], "lrp")
    torch.testing.assert_close(ours, attribute(module_net, x, [0, 2], "lrp"), rtol=1e-5, atol=1e-7)
    plain = backward(functional, x, [0, 2], composite=None).inputs
    assert not torch.allclose(ours, plain * x, rtol=1e-3)


def small_densenet() -> nn.Module:
    """torchvision's DenseNet at its smallest: BN-ReLU-conv layers, concatenations, F.relu, a functional pool."""
    torch.manual_seed(6)
    net = torchvision.models.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=3)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.slow
def test_densenet_pools_in_proportion_as_its_module_twin_does():
    """DenseNet's functional global pool is made a module for the call: LRP equals that of the same
    layers written with an nn.ReLU and an nn.AdaptiveAvgPool2d (the even split of the mean would not)."""
    net = small_densenet()
    before = snapshot(net)
    twin = nn.Sequential(net.features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.classifier).eval()
    x = torch.randn(2, 3, 16, 16)
    ours = attribute(net, x, [0, 2], "lrp")
    torch.testing.assert_close(ours, attribute(twin, x, [0, 2], "lrp"), rtol=1e-5, atol=1e-7)
    assert_unchanged(net, before)


@pytest.mark.slow
def test_densenet_conserves_without_biases():
    """Concatenation gives each input its own slice's relevance; a batch norm with no layer before it passes."""
    net = zero_biases(small_densenet())
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
    x = torch.randn(2, 3, 16, 16)
    ours = attribute(net, x, [0, 2], "lrp", epsilon=0.0)
    torch.testing.assert_close(ours.sum((1, 2, 3)), net(x)[[0, 1], [0, 2]].detach(), rtol=1e-4, atol=1e-6)


# --- torchvision's modern nets, random weights --------------------------------------------------

MODERN = ["densenet121", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny"]


def modern_net(name: str, zero: bool = False) -> nn.Module:
    """Random weights with realistic scales: batch norm statistics measured on random images (the
    defaults shrink the signal layer by layer), the head and ConvNeXt's layer scale (1e-6: the blocks
    would vanish) drawn anew. ``zero``: every bias and batch-norm shift zero, for conservation."""
    torch.manual_seed(5)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "layer_scale"):
                module.layer_scale.uniform_(0.2, 1.0)
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # a plain average of the batches below
                module.reset_running_stats()
                module.bias.uniform_(-0.1, 0.1)
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.normal_(head.weight, std=0.1)
        model.train()
        model(torch.randn(4, 3, 64, 64))
        model.eval()
        if zero:
            zero_biases(model)
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.zero_()
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", MODERN)
def test_modern_nets_give_their_own_maps_and_stay_unchanged(name):
    model = modern_net(name)
    before = snapshot(model)
    x = torch.randn(1, 3, 64, 64)
    saliency = attribute(model, x, 3, "saliency")
    for method in ("deconvnet", "guided_backprop", "lrp"):
        got = attribute(model, x, 3, method)
        assert torch.isfinite(got).all() and got.abs().sum() > 0, method
        corr = torch.corrcoef(torch.stack([got.flatten(), saliency.flatten()]))[0, 1]
        assert corr < 0.99, (method, corr)
    assert_unchanged(model, before)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*MODERN, "mnasnet0_5"])
def test_modern_nets_conserve_relevance_without_biases(name):
    """LRP-0 with every bias zero: the input's relevance sums to the logit. Within 1%: LRP-0's near-zero
    denominators (depthwise convs of few inputs) cost float precision, never the rules' sums."""
    model = modern_net(name, zero=True)
    x = torch.randn(1, 3, 64, 64)
    relevance = attribute(model, x, 3, "lrp", epsilon=0.0)
    logit = model(x)[0, 3].detach()
    torch.testing.assert_close(relevance.sum(), logit, rtol=1e-2, atol=1e-6)


class SoftmaxAttention(nn.Module):
    """A token mixer as Swin's and MaxViT's: the attention's softmax called as a function."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.fc = nn.Linear(4, 12), nn.Linear(4 * 9, 3)

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)  # N x 9 x 4
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        return self.fc((torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v).flatten(1))


def tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(32, 16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16)


_ATTENTIONS = {
    "softmax": (SoftmaxAttention, (1, 4, 3, 3), "Softmax called as a function after qkv (SoftmaxBackward0)"),
    "vit": (
        tiny_vit,
        (1, 3, 32, 32),
        "Softmax called as a function after encoder.layers.encoder_layer_0.self_attention",
    ),
}


@pytest.mark.parametrize(
    ("make", "shape", "where", "method"),
    [
        pytest.param(*_ATTENTIONS[net], method, id=f"{method}-{net}")
        for net in _ATTENTIONS
        for method in ("deconvnet", "guided_backprop", "lrp")
        if (net, method) != ("vit", "lrp")  # AttnLRP's rules for ViT's blocks: tests/test_attention_lrp.py
    ],
)
def test_attention_is_refused_in_one_line_until_a_rule_exists(make, shape, where, method):
    """Its layer norms and GELUs have rules now; its softmax (plain or fused) has none: never the gradient
    under the method's name."""
    net = make().eval()
    before = snapshot(net)
    with pytest.raises(UserError) as err:
        attribute(net, torch.randn(shape), 1, method)
    assert str(err.value).startswith(f"{method} cannot handle {where}") and "saliency" in str(err.value)
    able = set(str(err.value).split("methods that work on it: ")[1].split(", "))
    # Inside torchvision's attention module (ViT's), the methods that read that module whole handle its softmax;
    # a softmax of one's own (in no attention module) has no method that reads it so.
    whole = {"lrp", "attention_rollout", "generic_attention"} - {method}
    assert whole <= able if make is tiny_vit else not whole & able, able
    assert_unchanged(net, before)
