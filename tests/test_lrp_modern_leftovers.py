"""Issue 28's leftovers: layers whose forward is not their base class's, and a batch norm called as a function.

- timm's ``StdConv2d`` / ``ScaledStdConv2d`` standardize their weight inside ``forward``; LRP's rules read
  ``module.weight``, so they read the raw weight and the relevance was silently wrong. Oracle: the same net
  with the standardized weight computed by hand and baked into a plain ``nn.Conv2d``. timm is not a
  dependency: the two classes are written here as timm has them (``timm/layers/std_conv.py``, their
  ``__module__`` too, which is how the canonizer knows them).
- Any other conv/linear subclass with a forward of its own is refused by LRP in one line naming the module
  and the methods that work; the gradient methods keep its true gradient.
- ``F.batch_norm`` in eval mode gets ``nn.BatchNorm2d``'s rule under LRP (folded into the conv before it, or
  passed), never the plain gradient. Oracle: the same net written with ``nn.BatchNorm2d`` modules.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.test_attribution_core import assert_unchanged, snapshot
from zfviz.attribution import attribute
from zfviz.attribution.composites import LRP
from zfviz.attribution.mechanism import prepared
from zfviz.attribution.rules import stabilize
from zfviz.errors import UserError

LRP_OPTIONS = {
    "epsilon": {"rule": "epsilon"},
    "epsilon_plus": {"composite": "epsilon_plus"},
    "alpha2_beta1": {"composite": "epsilon_alpha2_beta1"},
    "epsilon_plus_flat": {"composite": "epsilon_plus_flat"},
}
# float32: the oracle standardizes the weight by its own formula, not timm's kernel, so the two weights differ by
# rounding (~1e-7 relative); through three layers and the epsilon rule's divisions that stays below 1e-4 relative
RTOL, ATOL = 1e-4, 1e-6


class StdConv2d(nn.Conv2d):
    """timm's ``StdConv2d`` (timm/layers/std_conv.py): Conv2d with Weight Standardization (Qiao et al. 2019)."""

    def __init__(self, in_channel, out_channels, kernel_size, stride=1, padding=None, bias=False, eps=1e-6):
        padding = ((stride - 1) + (kernel_size - 1)) // 2 if padding is None else padding  # timm's get_padding
        super().__init__(in_channel, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.eps = eps

    def forward(self, x):
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=self.eps
        ).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledStdConv2d(nn.Conv2d):
    """timm's ``ScaledStdConv2d`` (Brock et al. 2021): the standardized weight times ``gain * gamma / sqrt(fan_in)``."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=None, bias=True, gamma=1.0, eps=1e-6):
        padding = (kernel_size - 1) // 2 if padding is None else padding
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.scale = gamma * self.weight[0].numel() ** -0.5
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x):
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1),
            None,
            None,
            weight=(self.gain * self.scale).view(-1),
            training=True,
            momentum=0.0,
            eps=self.eps,
        ).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


StdConv2d.__module__ = ScaledStdConv2d.__module__ = "timm.layers.std_conv"


def by_hand(conv: nn.Conv2d) -> torch.Tensor:
    """The weight a standardized conv computes with, by the papers' formula: per filter, centred, divided by
    ``sqrt(biased variance + eps)``, times the gain where there is one."""
    w = conv.weight.detach().double()
    flat = w.reshape(len(w), -1)
    std = (flat - flat.mean(1, keepdim=True)) / (flat.var(1, unbiased=False, keepdim=True) + conv.eps).sqrt()
    if isinstance(conv, ScaledStdConv2d):
        std = std * (conv.gain.detach().double() * conv.scale).reshape(-1, 1)
    return std.reshape_as(w).float()


def std_net(norm: bool = False) -> nn.Sequential:
    """Stem ``StdConv2d`` (no bias, as BiT's), ReLU, a ``ScaledStdConv2d`` (optionally a batch norm after it),
    ReLU, global pool, linear head; weights drawn so the standardization changes them (mean, scale)."""
    torch.manual_seed(0)
    layers = [StdConv2d(3, 6, 3), nn.ReLU(), ScaledStdConv2d(6, 5, 3)]
    layers += [nn.BatchNorm2d(5)] if norm else []
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for conv in (net[0], net[2]):
            conv.weight.mul_(3).add_(0.2)
        net[2].gain.uniform_(0.5, 2)
        if norm:
            net[3].running_mean.uniform_(-0.5, 0.5)
            net[3].running_var.uniform_(0.5, 2)
            net[3].weight.uniform_(0.5, 1.5)
            net[3].bias.uniform_(-0.2, 0.2)
    return net.eval()


def baked(net: nn.Sequential, weights=by_hand) -> nn.Sequential:
    """``net`` with each standardized conv replaced by a plain ``nn.Conv2d`` holding ``weights(conv)``."""
    twin = nn.Sequential(*net.children())
    for index, conv in enumerate(net):
        if isinstance(conv, (StdConv2d, ScaledStdConv2d)):
            plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
            plain.weight, plain.bias = nn.Parameter(weights(conv)), conv.bias
            twin[index] = plain
    return twin.eval()


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "batch-norm-after"])
@pytest.mark.parametrize("options", LRP_OPTIONS)
def test_lrp_on_standardized_convs_equals_the_standardized_weight_baked_in(options, norm):
    net = std_net(norm)
    x = torch.randn(2, 3, 10, 10)
    before = snapshot(net)
    ours = attribute(net, x, [1, 3], "lrp", **LRP_OPTIONS[options])
    oracle = attribute(baked(net), x, [1, 3], "lrp", **LRP_OPTIONS[options])
    torch.testing.assert_close(ours, oracle, rtol=RTOL, atol=ATOL * oracle.abs().max().item())
    raw = attribute(baked(net, lambda conv: conv.weight.detach()), x, [1, 3], "lrp", **LRP_OPTIONS[options])
    assert (raw - oracle).abs().max() > 0.1 * oracle.abs().max()  # the raw weight's answer, the one given before
    assert_unchanged(net, before)
    assert all("forward" not in m.__dict__ for m in net.modules())  # their own forward again


def test_inside_the_call_the_standardized_conv_computes_what_it_did():
    net, x = std_net(), torch.randn(1, 3, 8, 8)
    expected = net(x)
    with prepared(net, LRP):
        torch.testing.assert_close(net[0].weight, by_hand(net[0]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-6)


class MaskedConv(nn.Conv2d):
    """A user's conv whose forward masks its weight: LRP's rules cannot know the weight it computes with."""

    def forward(self, x):
        return self._conv_forward(x, self.weight * (self.weight.abs() > 0.1), self.bias)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, 2 * self.weight, self.bias)


def own_forward_net(conv=MaskedConv, linear=nn.Linear) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(conv(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear(4, 3))


@pytest.mark.parametrize(
    ("net", "where"),
    [
        (own_forward_net(), "0 (MaskedConv): its forward is not nn.Conv2d's"),
        (own_forward_net(nn.Conv2d, ScaledLinear), "4 (ScaledLinear): its forward is not nn.Linear's"),
    ],
    ids=["conv", "linear"],
)
def test_a_layer_with_a_forward_of_its_own_is_refused_by_lrp_in_one_line(net, where):
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(net)
    with pytest.raises(UserError) as err:
        attribute(net, x, 0, "lrp")
    line = str(err.value)
    assert line.startswith(f"lrp cannot handle {where}") and "\n" not in line
    assert "methods that work on it: saliency" in line and "guided_backprop" in line
    assert_unchanged(net, before)
    # the gradient methods keep the true gradient of its own forward
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(xg)[:, 0].sum(), xg)
    torch.testing.assert_close(attribute(net, x, 0, "saliency"), grad)


class FunctionalNorms(nn.Module):
    """Conv, ``F.batch_norm`` (eval), ReLU, then a pre-activation block (``F.batch_norm`` after the ReLU, before
    the next conv), ReLU, pool, linear. The norms' statistics and affine parameters are the net's own buffers and
    parameters, in no ``nn.BatchNorm2d`` (one defined after ``conv1`` would be merged as a module is)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 4, 3, padding=1), nn.Linear(4, 3)
        for norm in ("norm1", "norm2"):
            self.register_buffer(f"{norm}_mean", torch.empty(5).uniform_(-0.3, 0.3))
            self.register_buffer(f"{norm}_var", torch.empty(5).uniform_(0.5, 2))
            # a negative gamma too: z+ on the folded weight sees its sign
            setattr(self, f"{norm}_weight", nn.Parameter(torch.empty(5).uniform_(-1.5, 1.5)))
            setattr(self, f"{norm}_bias", nn.Parameter(torch.empty(5).uniform_(-0.2, 0.2)))

    def forward(self, x):
        x = F.relu(self._norm("norm1", self.conv1(x)))
        x = F.relu(self.conv2(self._norm("norm2", x)))
        return self.fc(x.mean([2, 3]))

    def _norm(self, norm: str, x):
        mean, var = getattr(self, f"{norm}_mean"), getattr(self, f"{norm}_var")
        return F.batch_norm(x, mean, var, getattr(self, f"{norm}_weight"), getattr(self, f"{norm}_bias"), False)


class ModuleNorms(nn.Module):
    """``FunctionalNorms`` written with modules: ``bn1`` defined right after ``conv1`` (merged into it), ``bn2``
    after a ReLU (passes), ReLU modules and an average pool; the same numbers."""

    def __init__(self, functional: FunctionalNorms) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = functional.conv1, nn.BatchNorm2d(5), nn.ReLU()
        self.bn2, self.conv2, self.relu2 = nn.BatchNorm2d(5), functional.conv2, nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), functional.fc
        for bn, norm in ((self.bn1, "norm1"), (self.bn2, "norm2")):
            for name in ("mean", "var", "weight", "bias"):
                key = name if name in ("weight", "bias") else f"running_{name}"
                getattr(bn, key).data.copy_(getattr(functional, f"{norm}_{name}"))
        self.eval()

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.conv2(self.bn2(x)))
        return self.fc(self.pool(x).flatten(1))


@pytest.mark.parametrize("method", ["lrp", "lrp-plus", "lrp-alpha-beta", "guided_backprop", "deconvnet"])
def test_a_batch_norm_called_as_a_function_gets_the_modules_rule(method):
    options = {
        "lrp-plus": {"composite": "epsilon_plus"},
        "lrp-alpha-beta": {"composite": "epsilon_alpha2_beta1"},
    }.get(method, {})
    name = method.split("-")[0]
    x = torch.randn(2, 3, 8, 8)
    functional = FunctionalNorms().eval()
    modules = ModuleNorms(functional)
    before = snapshot(functional)
    ours = attribute(functional, x, [0, 2], name, **options)
    oracle = attribute(modules, x, [0, 2], name, **options)
    # float32: the fold computes the norm's output as z * scale + shift, the twin as the merged conv's output; the
    # epsilon rule's 1 / z' amplifies that rounding where z' is near 0, at a few positions, far below the map's scale
    torch.testing.assert_close(ours, oracle, rtol=1e-4, atol=1e-4 * oracle.abs().max().item())
    assert_unchanged(functional, before)


def test_a_batch_norm_in_training_mode_called_as_a_function_is_refused_by_lrp():
    class BatchStatistics(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            x = F.relu(F.batch_norm(self.conv(x), None, None, training=True))
            return self.fc(x.mean([2, 3]))

    with pytest.raises(UserError, match=r"^lrp cannot handle a batch norm called as a function after conv "):
        attribute(BatchStatistics(), torch.randn(2, 3, 8, 8), 0, "lrp")


def standardized_resnet18() -> nn.Module:
    """torchvision's resnet18 (random weights, batch-norm statistics and head drawn anew) with every conv a
    ``StdConv2d`` holding the same raw weight, as BiT builds its ResNets from them."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    for parent in list(net.modules()):
        for name, conv in list(parent.named_children()):
            if type(conv) is nn.Conv2d:
                std = StdConv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding)
                std.weight = conv.weight
                setattr(parent, name, std)
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
        nn.init.normal_(net.fc.weight, std=0.1)
    return net.eval()


@pytest.mark.slow
@pytest.mark.parametrize("options", ["epsilon", "epsilon_plus"])
def test_lrp_on_a_resnet_of_standardized_convs_equals_the_weights_baked_in(options):
    """Its batch norms merge into the standardized weights and its residual sums split, as on a plain resnet18."""
    net = standardized_resnet18()
    twin = standardized_resnet18()
    for name, module in list(net.named_modules()):  # the twin is the same net (the same seed), its convs replaced
        if isinstance(module, StdConv2d):
            replacement = nn.Conv2d(
                module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding, bias=False
            )
            replacement.weight = nn.Parameter(by_hand(module))
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent), child, replacement)
    x = torch.randn(1, 3, 64, 64)
    before = snapshot(net)
    ours = attribute(net, x, 3, "lrp", **LRP_OPTIONS[options])
    oracle = attribute(twin, x, 3, "lrp", **LRP_OPTIONS[options])
    # float32 over 20 layers: the hand-standardized weights' rounding grows with depth, still far below the map
    torch.testing.assert_close(ours, oracle, rtol=1e-3, atol=1e-4 * oracle.abs().max().item())
    assert_unchanged(net, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.25])
def test_the_stabilizer_is_z_plus_epsilon_times_its_sign_zero_made_one(epsilon, dtype):
    """``z + epsilon * sign(z)`` with sign(0) = sign(-0) = 1; a zero left (epsilon 0) becomes 1: exactly, on the
    one-``where`` path (epsilon > 0) as on the general one."""
    z = torch.tensor([-2.0, -1e-7, -0.0, 0.0, 3e-7, 5.0], dtype=dtype)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0], dtype=dtype)
    expected = z + epsilon * sign
    expected[expected == 0] = 1.0
    assert torch.equal(stabilize(z, epsilon), expected)
    assert stabilize(z, epsilon).dtype == dtype
