"""Rules for what a forward pass calls as functions, found on autograd's graph (issue 28, ``graph.py``).

A user's residual net adds its shortcut with ``+`` and pools with ``x.mean([2, 3])``: LRP splits both
in proportion, as it splits torchvision's blocks through ``Sum`` and an average-pool module. Oracles:
the same net written with those modules (ours), and with Zennit's ``Sum`` under Zennit's EpsilonPlus;
LRP-0 without biases conserves the logit. A squeeze-and-excitation written by hand equals
torchvision's module. Ops no rule covers (``F.softsign``, a GELU written by hand) are refused in one
line by the rule-based methods and run under saliency; the model is left as it was.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import zennit.layer
from torch import nn
from torchvision.ops.misc import SqueezeExcitation
from zennit.composites import EpsilonPlus

from tests.test_attribution_core import assert_unchanged, snapshot
from tests.test_lrp import zennit_relevance
from zfviz.attribution import attribute
from zfviz.attribution.canonize import Sum
from zfviz.errors import UserError


def _in_place(a, b):
    b += a  # the branch's conv output: autograd keeps no copy of it, so += is legal
    return b


ADDS = {"+": lambda a, b: a + b, "+=": _in_place, "torch.add": torch.add}
MEANS = {
    "Tensor.mean": lambda t: t.mean([2, 3]),
    "torch.mean": lambda t: torch.mean(t, dim=(2, 3)),
    "adaptive_avg_pool2d": lambda t: F.adaptive_avg_pool2d(t, 1).flatten(1),
}
LRP_OPTIONS = {
    "epsilon": {"rule": "epsilon"},
    "epsilon_plus": {"composite": "epsilon_plus"},
    "alpha2_beta1": {"composite": "epsilon_alpha2_beta1"},
}


class FunctionalResNet(nn.Module):
    """A stem conv, two residual blocks (conv, ReLU, conv, the shortcut added by ``add``, ReLU), a global
    mean, a linear head: a ResNet as users write it, every ReLU, sum and pool a function."""

    def __init__(self, add=ADDS["+"], mean=MEANS["Tensor.mean"]) -> None:
        super().__init__()
        self.add, self.mean = add, mean
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(4))
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for first, second in zip(self.convs[::2], self.convs[1::2], strict=True):
            x = F.relu(self.add(x, second(F.relu(first(x)))))
        return self.fc(self.mean(x))


class ModuleResNet(nn.Module):
    """``FunctionalResNet`` written as torchvision's blocks are for LRP: ReLU modules, the shortcut
    added through a ``sum_module`` (stacked on the last dimension), an ``nn.AdaptiveAvgPool2d``."""

    def __init__(self, sum_module=Sum) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(4))
        self.fc = nn.Linear(4, 5)
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(5))
        self.sums = nn.ModuleList(sum_module() for _ in range(2))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.relus[0](self.stem(x))
        for block in range(2):
            branch = self.convs[2 * block + 1](self.relus[2 * block + 1](self.convs[2 * block](x)))
            x = self.relus[2 * block + 2](self.sums[block](torch.stack([x, branch], dim=-1)))
        return self.fc(self.pool(x).flatten(1))


def resnets(add="+", mean="Tensor.mean", sum_module=Sum, zero: bool = False) -> tuple[nn.Module, nn.Module]:
    """(the functional net, its module twin) with the same weights; biases drawn so some units are off,
    or all zero (``zero``) for conservation."""
    torch.manual_seed(3)
    functional = FunctionalResNet(ADDS[add], MEANS[mean]).eval()
    with torch.no_grad():
        for module in functional.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.bias.zero_() if zero else module.bias.uniform_(-0.2, 0.2)
    twin = ModuleResNet(sum_module).eval()
    twin.load_state_dict(functional.state_dict())
    return functional, twin


X, CLS = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 3])


@pytest.mark.parametrize("options", LRP_OPTIONS)
@pytest.mark.parametrize("add", ADDS)
def test_residual_adds_split_as_the_sum_module_does(add, options):
    functional, twin = resnets(add)
    ours = attribute(functional, X, CLS, "lrp", **LRP_OPTIONS[options])
    torch.testing.assert_close(ours, attribute(twin, X, CLS, "lrp", **LRP_OPTIONS[options]), rtol=1e-5, atol=1e-7)
    assert ours.abs().sum() > 0


@pytest.mark.parametrize("mean", MEANS)
def test_a_global_mean_called_as_a_function_splits_as_the_pool_module_does(mean):
    functional, twin = resnets(mean=mean)
    ours = attribute(functional, X, CLS, "lrp")
    torch.testing.assert_close(ours, attribute(twin, X, CLS, "lrp"), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("add", [*ADDS, "-"])
def test_lrp0_without_biases_conserves_the_logit(add):
    """With autograd's gradient at the ``+`` both branches got the whole relevance, and the mean spread it
    evenly; split in proportion, the input's relevance sums to the logit."""
    functional, _ = resnets("+" if add == "-" else add, zero=True)
    if add == "-":
        functional.add = torch.sub  # a - b: the proportional split of a + (-b)
    relevance = attribute(functional, X, CLS, "lrp", epsilon=0.0)
    logits = functional(X)[[0, 1], CLS].detach()
    torch.testing.assert_close(relevance.sum((1, 2, 3)), logits, rtol=1e-4, atol=1e-6)


class Normalized(nn.Module):
    """``net`` after the input's normalization, written in the forward with buffers (as users do), as
    ``-((mean - x) / std)``: a subtraction from, a division by and a negation of constants."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).reshape(1, 3, 1, 1))

    def forward(self, x):
        return self.net(-((self.mean - x) / self.std))


@pytest.mark.parametrize("options", LRP_OPTIONS)
def test_relevance_crosses_an_affine_map_of_constants_whole(options):
    """LRP's proportional split of ``c x`` gives ``x`` all of it (autograd's gradient scaled it by ``1 / std``
    and flipped its sign twice): the relevance at the raw input is the one at the normalized input."""
    functional, _ = resnets()
    net = Normalized(functional).eval()
    ours = attribute(net, X, CLS, "lrp", **LRP_OPTIONS[options])
    expected = attribute(functional, (X - net.mean) / net.std, CLS, "lrp", **LRP_OPTIONS[options])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
    saliency = attribute(net, X, CLS, "saliency")  # the gradient methods keep autograd's gradient
    torch.testing.assert_close(saliency, attribute(functional, (X - net.mean) / net.std, CLS, "saliency") / net.std)


def test_zennit_on_the_module_twin_equals_ours_on_the_functional_net():
    """Zennit sees modules only: its ``Sum`` and an average pool get its ``Norm`` rule (the proportional
    split), the convs z+ and the head epsilon (EpsilonPlus)."""
    functional, twin = resnets(sum_module=zennit.layer.Sum)
    expected = zennit_relevance(twin, X.clone(), CLS, EpsilonPlus())
    ours = attribute(functional, X, CLS, "lrp", composite="epsilon_plus")
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_an_operand_changed_in_place_after_the_add_is_refused():
    """The walk reads operands the forward pass recorded; one changed in place since would be read wrong."""

    class Changed(FunctionalResNet):
        def forward(self, x):
            x = F.relu(self.stem(x))
            branch = self.convs[0](x)
            out = x + branch
            branch.mul_(2)  # legal for autograd: the sum's node keeps neither operand
            return self.fc(out.mean([2, 3]))

    net = Changed().eval()
    with pytest.raises(UserError) as err:
        attribute(net, X, CLS, "lrp")
    assert str(err.value).startswith(
        "lrp cannot handle an addition called as a function after convs.0 (AddBackward0): its rule needs the "
        "operands, and one was changed in place after it; methods that work on it: "
    )
    attribute(net, X, CLS, "guided_backprop")  # autograd's gradient at the sum: nothing to record


class ReluAfterTheSum(nn.Module):
    """A sum, then an ``nn.ReLU(inplace=True)`` on one of its operands: LRP runs it out of place for the
    call, so the operand the sum's split reads is still the one it added."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.stem, self.branch = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.relu, self.fc = nn.ReLU(inplace=inplace), nn.Linear(4, 5, bias=False)

    def forward(self, x):
        x = self.stem(x)
        out = x + self.branch(x)
        x = self.relu(x)
        return self.fc((out + x).mean([2, 3]))


def test_an_in_place_relu_after_the_sum_runs_out_of_place_under_lrp():
    in_place, out_of_place = ReluAfterTheSum(True).eval(), ReluAfterTheSum(False).eval()
    ours = attribute(in_place, X, CLS, "lrp", epsilon=0.0)
    torch.testing.assert_close(ours, attribute(out_of_place, X, CLS, "lrp", epsilon=0.0))
    torch.testing.assert_close(ours.sum((1, 2, 3)), in_place(X)[[0, 1], CLS].detach(), rtol=1e-4, atol=1e-6)
    assert in_place.relu.inplace  # put back


class HandSE(nn.Module):
    """torchvision's ``SqueezeExcitation`` written with functions: the gate multiplies the signal."""

    def __init__(self, fc1: nn.Module, fc2: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


def se_nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(4)
    se = SqueezeExcitation(4, 2)
    stem, head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 5)
    module_net = nn.Sequential(stem, nn.ReLU(), se, nn.Flatten(), head).eval()
    hand = nn.Sequential(stem, nn.ReLU(), HandSE(se.fc1, se.fc2), nn.Flatten(), head).eval()
    return module_net, hand


@pytest.mark.parametrize("method", ["deconvnet", "guided_backprop", "lrp"])
def test_a_squeeze_excitation_written_by_hand_equals_torchvisions(method):
    """LRP: the signal takes all, the gate none (torchvision's is rewritten through ``Product``); the
    deconvnet and guided backprop: the gradient through the product, the gate's rule at its sigmoid."""
    module_net, hand = se_nets()
    ours = attribute(hand, X, CLS, method)
    torch.testing.assert_close(ours, attribute(module_net, X, CLS, method), rtol=1e-5, atol=1e-7)
    assert ours.abs().sum() > 0


class Between(nn.Module):
    """``net``'s two linear layers with ``fn`` called as a function between them (a leaf module of one's
    own would be refused as a module)."""

    def __init__(self, net: nn.Sequential, fn) -> None:
        super().__init__()
        self.first, self.last, self.fn = net[0], net[2], fn

    def forward(self, x):
        return self.last(self.fn(self.first(x)))


def test_x_times_its_sigmoid_is_silu_under_lrp():
    """The signal takes all: LRP passes through ``x * torch.sigmoid(x)`` as through ``nn.SiLU``."""
    torch.manual_seed(2)
    module_net = nn.Sequential(nn.Linear(6, 5), nn.SiLU(), nn.Linear(5, 3)).eval()
    hand = Between(module_net, lambda t: t * torch.sigmoid(t)).eval()
    x, cls = torch.randn(2, 6), torch.tensor([0, 2])
    ours = attribute(hand, x, cls, "lrp")
    torch.testing.assert_close(ours, attribute(module_net, x, cls, "lrp"))
    assert ours.abs().sum() > 0


@pytest.mark.parametrize("method", ["deconvnet", "guided_backprop", "lrp"])
def test_a_clamp_is_the_hardtanh_of_its_bounds(method):
    """``x.clamp(0, 6)`` gets ``nn.ReLU6``'s rule (a Hardtanh), as ``F.relu6`` does."""
    torch.manual_seed(2)
    module_net = nn.Sequential(nn.Linear(6, 5), nn.ReLU6(), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        module_net[0].weight.mul_(8)  # some units above 6
    x, cls = torch.randn(2, 6), torch.tensor([0, 2])
    ours = attribute(Between(module_net, lambda t: t.clamp(0, 6)), x, cls, method)
    torch.testing.assert_close(ours, attribute(module_net, x, cls, method))
    assert ours.abs().sum() > 0


def hand_gelu(x):
    """GELU's tanh approximation as BERT's and GPT-2's code write it."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


class Cube(torch.autograd.Function):
    """An autograd function of one's own: its backward is its author's, not a rule's."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad


class Unruled(nn.Module):
    """A conv, a nonlinearity called as a function that no rule covers, a linear layer."""

    def __init__(self, fn) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.fn, self.conv, self.fc = fn, nn.Conv2d(3, 4, 3), nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        return self.fc(self.fn(self.conv(x)).flatten(1))


@pytest.mark.parametrize(
    ("fn", "where"),
    [
        (F.softsign, "div called as a function after conv (DivBackward0): a division by a tensor that depends on"),
        (hand_gelu, "mul called as a function after conv (MulBackward0): a product of two tensors that both"),
        (lambda t: F.local_response_norm(t, 3), "div called as a function after conv (DivBackward0)"),
        (Cube.apply, "cube called as a function after conv (CubeBackward): no rule covers it"),
    ],
    ids=["softsign", "gelu by hand", "local_response_norm", "autograd function"],
)
@pytest.mark.parametrize("method", ["deconvnet", "guided_backprop", "lrp"])
def test_a_nonlinearity_no_rule_covers_is_refused_in_one_line(method, fn, where):
    net = Unruled(fn).eval()
    before = snapshot(net)
    with pytest.raises(UserError) as err:
        attribute(net, X, CLS, method)
    line = str(err.value)
    assert line.startswith(f"{method} cannot handle {where}") and "\n" not in line
    able = line.split("; methods that work on it: ")[1].split(", ")
    assert {"saliency", "gradcam", "occlusion", "rise"} <= set(able) and method not in able
    assert "guided_backprop" not in able and "lrp" not in able
    assert_unchanged(net, before)
    assert attribute(net, X, CLS, "saliency").abs().sum() > 0


def test_a_module_keeping_the_gradient_keeps_its_own_ops():
    """nn.LocalResponseNorm backpropagates under guided backprop (its rule is the gradient): its division
    and powers are the module's, not ops called as functions."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.LocalResponseNorm(3), nn.Flatten(), nn.Linear(16, 5)).eval()
    guided = attribute(net, X, CLS, "guided_backprop")
    assert torch.isfinite(guided).all() and guided.abs().sum() > 0


def test_the_model_is_unchanged_and_sums_keep_the_gradient_under_saliency():
    functional, _ = resnets("+=")
    before = snapshot(functional)
    for method in ("deconvnet", "guided_backprop", "lrp"):
        attribute(functional, X, CLS, method)
    assert_unchanged(functional, before)
    xg = X.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(functional(xg)[[0, 1], CLS].sum(), xg)
    assert torch.equal(attribute(functional, X, CLS, "saliency"), grad)


class FunctionalLayers(nn.Module):
    """A conv and a linear layer called as functions on parameters of their own (``F.conv2d``, ``F.linear``)."""

    def __init__(self, conv: nn.Conv2d, fc: nn.Linear) -> None:
        super().__init__()
        self.conv, self.fc = conv, fc

    def forward(self, x):
        out = F.relu(F.conv2d(x, self.conv.weight, self.conv.bias)).flatten(1)
        return F.linear(out, self.fc.weight, self.fc.bias)


def test_layers_called_as_functions_keep_the_gradient_where_their_modules_do():
    """The deconvnet's and guided backprop's transposed filters are autograd's gradient: the same map as
    the modules'. LRP's rules need the module (its input and weights), so LRP refuses in one line."""
    torch.manual_seed(6)
    conv, fc = nn.Conv2d(3, 4, 3), nn.Linear(16, 5)
    modules, functional = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), fc).eval(), FunctionalLayers(conv, fc).eval()
    for method in ("deconvnet", "guided_backprop"):
        torch.testing.assert_close(attribute(functional, X, CLS, method), attribute(modules, X, CLS, method))
    with pytest.raises(UserError) as err:
        attribute(functional, X, CLS, "lrp")
    assert str(err.value).startswith(
        "lrp cannot handle Linear called as a function after fc (AddmmBackward0): its Linear rule (Epsilon) "
        "needs an nn.Linear module, not a function; methods that work on it: "
    )
