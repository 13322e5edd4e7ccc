"""LRP on the one mechanism (issue 13): every rule by hand on tiny nets, and against Captum and Zennit.

Hand-computed values on 1-2 layer nets with small integer weights; LRP-0 conservation; Captum's LRP
(epsilon) on nets without batch norm; Zennit (alpha-beta, z+, z^B, flat, its batch-norm merging and
ResNet canonizer) on VGG, VGG-BN and ResNet. Zennit is a dev-extra oracle, never imported by zfviz.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    SpecialFirstLayerMapComposite,
    layer_map_base,
)
from zennit.rules import Epsilon as ZEpsilon
from zennit.rules import Pass as ZPass
from zennit.rules import ZBox as ZZBox
from zennit.rules import ZPlus as ZZPlus
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.types import Convolution

from tests.test_attribution_core import random_biases, zfnet
from zfviz.ablation import VARIANTS
from zfviz.attribution import attribute
from zfviz.attribution.canonize import MergeBatchNorm, OutOfPlace, ResidualSum, Sum, canonized
from zfviz.attribution.rules import Proportional


def linear(weight, bias=None) -> nn.Linear:
    weight = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


def two_layers() -> nn.Sequential:
    """x = (1, 2) -> z = (1, 2) -> ReLU -> out = 1*1 + 2*2 + 1 = 6."""
    return nn.Sequential(linear([[2, -1], [1, 1]], [1, -1]), nn.ReLU(), linear([[1, 2]], [1]))


X = torch.tensor([[1.0, 2.0]])


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # out 6, R = 6. LRP-0: R_a = a * w2 = (1, 4); s = (1/1, 4/2); R_x = x * W1^T s = (1*4, 2*1).
        ({"rule": "epsilon", "epsilon": 0.0}, [4.0, 2.0]),
        # eps 1: s2 = 6/7, R_a = (6/7, 24/7); s1 = (3/7, 8/7); W1^T s1 = (2, 5/7); R_x = (2, 10/7).
        ({"rule": "epsilon", "epsilon": 1.0}, [2.0, 10 / 7]),
        # z+: z2+ = 6, R_a = (1, 4); z1+ = (2+1, 1+2) = (3, 3), W1+^T (1/3, 4/3) = (2, 4/3); R_x = (2, 8/3).
        ({"rule": "zplus"}, [2.0, 8 / 3]),
        # alpha2beta1: R_a = 2 * (1, 4) = (2, 8); z1+ = (3, 3), z1- = W1- x + b1- = (-2, -1);
        # R_x = 2 * x*(W1+^T (2/3, 8/3)) - x*(W1-^T (-1, -8)) = 2 * (4, 16/3) - (0, 2).
        ({"rule": "alpha_beta", "alpha": 2, "beta": 1}, [8.0, 26 / 3]),
        ({"rule": "alpha_beta", "alpha": 1, "beta": 0}, [2.0, 8 / 3]),  # alpha1beta0 is z+
    ],
)
def test_rules_give_hand_computed_relevance(options, expected):
    relevance = attribute(two_layers(), X, 0, "lrp", **options)
    # Stabilizers of 1e-6 move the exact values in the 6th digit.
    torch.testing.assert_close(relevance, torch.tensor([expected]), rtol=1e-5, atol=1e-5)


def test_negative_inputs_under_zplus_and_alpha_beta():
    """x = (1, -2), w = (1, -1): both contributions positive (1 and 2), z+ = 3 = out, z- = 0."""
    net, x = nn.Sequential(linear([[1, -1]])), torch.tensor([[1.0, -2.0]])
    torch.testing.assert_close(attribute(net, x, 0, "lrp", rule="zplus"), torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(attribute(net, x, 0, "lrp", rule="alpha_beta"), torch.tensor([[2.0, 4.0]]))


def test_first_layer_rules_zbox_and_flat():
    """x = (1, 1), w = (3, -1): out = 2. z^B on [0, 3]: z = 2 - 0 - 3*(-1) = 5, s = 2/5,
    R = x w s - low w+ s - high w- s = (6/5, -2/5 + 6/5). Flat: an equal share, (1, 1)."""
    net, x = nn.Sequential(linear([[3, -1]])), torch.tensor([[1.0, 1.0]])
    zbox = attribute(net, x, 0, "lrp", first_rule="zbox", low=0.0, high=3.0)
    torch.testing.assert_close(zbox, torch.tensor([[6 / 5, 4 / 5]]))
    torch.testing.assert_close(attribute(net, x, 0, "lrp", first_rule="flat"), torch.tensor([[1.0, 1.0]]))


def pooled(pool: nn.Module) -> nn.Sequential:
    return nn.Sequential(pool, nn.Flatten(), linear([[1]]))


def test_average_pool_splits_in_proportion_and_max_pool_gives_the_winner_all():
    x = torch.tensor([[[[1.0, 3.0]]]])
    # avg = 2 = R; s = 1, J^T s = (1/2, 1/2); R_in = x * that = (1/2, 3/2) (the gradient would give (1, 1)).
    torch.testing.assert_close(attribute(pooled(nn.AvgPool2d((1, 2))), x, 0, "lrp"), torch.tensor([[[[0.5, 1.5]]]]))
    torch.testing.assert_close(attribute(pooled(nn.MaxPool2d((1, 2))), x, 0, "lrp"), torch.tensor([[[[0.0, 3.0]]]]))


def test_residual_sum_splits_in_proportion_to_the_branches():
    stacked = torch.tensor([[1.0, 3.0]])  # shortcut 1, branch 3: a quarter and three quarters of R = 8
    out = Sum()(stacked)
    relevance = Proportional(0.0).backward(Sum(), stacked, out, torch.tensor([8.0]))
    torch.testing.assert_close(relevance, torch.tensor([[2.0, 6.0]]))


@pytest.mark.parametrize("variant", ["zfnet", "alexnet", "zfnet_no3467"])
def test_lrp0_without_biases_conserves_relevance(variant):
    model = zfnet(variant).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.zero_()
    x = torch.randn(3, 3, 64, 64)
    relevance = attribute(model, x, [1, 4, 7], "lrp", rule="epsilon", epsilon=0.0)
    scores = model(x)[torch.arange(3), torch.tensor([1, 4, 7])].detach()
    # Sums over 12k pixels of float32 shares: conserved to rounding.
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), scores, rtol=1e-4, atol=1e-6)


def zennit_on_our_nets(name: str):
    """Zennit's composite ``name`` for our ZFNet/AlexNet: their contrast normalization passes relevance
    through unchanged, as our LRP composites do (Zennit has no rule of its own for it: without this
    line its gradient would go through the normalization's Jacobian)."""
    lrn = [(nn.LocalResponseNorm, ZPass())]  # our normalization layer is a subclass: matched too
    if name == "epsilon":
        return LayerMapComposite(lrn + layer_map_base() + [(Convolution, ZEpsilon()), (nn.Linear, ZEpsilon())])
    return {"epsilon_plus": EpsilonPlus, "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat}[name](layer_map=lrn)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_table3_variant_equals_zennit_under_every_composite(variant):
    """Each Table 3 net (layers removed, fc6/fc7 resized, conv3-5 widened) with random biases: the
    relevance Zennit computes with the same rules, value for value (z+ on the convs, epsilon on the
    dense layers; alpha2-beta1 with a flat first layer)."""
    model = random_biases(zfnet(variant)).eval()
    x, cls = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    for composite in ("epsilon_plus", "epsilon_alpha2_beta1_flat"):
        relevance = attribute(model, x, cls, "lrp", composite=composite)
        expected = zennit_relevance(model, x.clone(), cls, zennit_on_our_nets(composite))
        assert expected.abs().sum() > 0, "a zero oracle proves nothing"
        # The same rules through other kernels and summation orders (as in test_composites_equal_zennit).
        torch.testing.assert_close(relevance, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.slow
@pytest.mark.parametrize("net", ["vgg11", "alexnet"])
def test_lrp_epsilon_equals_captum(net):
    from captum.attr import LRP

    model = random_biases(torchvision_net(net)).eval()
    size = 64 if net == "alexnet" else 32
    x, cls = torch.randn(2, 3, size, size), torch.tensor([2, 5])
    expected = LRP(model).attribute(x.clone(), target=cls)  # epsilon 1e-9 on every layer
    ours = attribute(model, x, cls, "lrp", rule="epsilon", epsilon=1e-9)
    # Captum also applies epsilon to max pools (x / (x + 1e-9)): agreement to ~1e-4 of the largest value.
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())


def random_batchnorm(model: nn.Module) -> nn.Module:
    """Statistics that make merging matter. ``eps = 0``: Zennit's merged norm keeps its eps, so it
    scales by 1/sqrt(1 + 1e-5) where ours is exactly the identity (2e-4 apart over resnet50)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 0.0
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def torchvision_net(name: str) -> nn.Module:
    """A torchvision net for 10 classes; VGG's 4096-unit head shrunk to 64 units (102M weights take
    seconds to initialize; the rules under test are all in the features and the head's layer types)."""
    if name == "bottleneck_resnet":  # resnet50's block type and stem, one block per stage: the same rules
        return torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    if name.startswith("vgg"):
        model.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 64), nn.ReLU(True), nn.Linear(64, 10)
        )
    return model


def zennit_relevance(model, x, cls, composite) -> torch.Tensor:
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x, lambda out: out * nn.functional.one_hot(cls, out.shape[1]))
    return relevance


def zennit_composite(name: str, canonizers):
    if name == "epsilon_plus":
        return EpsilonPlus(canonizers=canonizers)
    if name == "epsilon_alpha2_beta1":
        return EpsilonAlpha2Beta1(canonizers=canonizers)
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(canonizers=canonizers)
    layer_map = layer_map_base() + [(Convolution, ZZPlus()), (nn.Linear, ZEpsilon())]
    return SpecialFirstLayerMapComposite(
        layer_map=layer_map, first_map=[(Convolution, ZZBox(-3.0, 3.0))], canonizers=canonizers
    )


@pytest.mark.parametrize(
    ("net", "size"),
    [
        pytest.param("vgg11", 32, marks=pytest.mark.slow),  # no batch norm: hand tests and Captum cover it fast
        # batch norms merged: Zennit's SequentialMergeBatchNorm (VGGCanonizer); a full vgg11_bn build, ~7 s
        pytest.param("vgg11_bn", 32, marks=pytest.mark.slow),
        ("resnet18", 32),  # merged norms and the residual split: Zennit's ResNetCanonizer
        # Bottleneck blocks (resnet50's): three convs and a projected shortcut per residual split.
        pytest.param("bottleneck_resnet", 32, marks=pytest.mark.slow),
    ],
)
def test_composites_equal_zennit(net, size):
    model = random_batchnorm(random_biases(torchvision_net(net))).eval()
    canonizers = [ResNetCanonizer()] if "resnet" in net else [VGGCanonizer()] if "bn" in net else []
    x, cls = torch.randn(2, 3, size, size), torch.tensor([1, 4])
    for name, options in (
        ("epsilon_plus", {}),
        ("epsilon_alpha2_beta1", {}),
        ("epsilon_plus_flat", {}),
        ("epsilon_plus_box", {"low": -3.0, "high": 3.0}),
    ):
        expected = zennit_relevance(model, x.clone(), cls, zennit_composite(name, canonizers))
        ours = attribute(model, x, cls, "lrp", composite=name, **options)
        # Same rules; merged weights and summation order differ by float rounding.
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_merged_model_computes_what_the_model_computes():
    model = random_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        with canonized(model, (OutOfPlace(), MergeBatchNorm(), ResidualSum())):
            merged = model(x)
        after = model(x)
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)  # folded weights: rounding differs
    assert torch.equal(after, expected)  # undone exactly: the same objects are back
