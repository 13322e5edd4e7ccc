"""LRP-epsilon as a modified gradient (issue 28, ``rules.OutputShare``): the fast path against the explicit rules.

The explicit rules (``mechanism.GRADIENT_FORM = False``) are the oracle: the same relevance on a hand-weighted net
(exact values), on torchvision's nets with random weights (float64, so that the two orders of the same sums agree
to rounding: in float32 a deep random net's cancellations leave ~1e-4 of the map's maximum between them), relevance
conserved on a bias-free net, the model left as it was, and the fast path not taken where it is not exactly
LRP-epsilon (alpha-beta, z+, a first-layer rule, a batch norm with nothing to merge into, attention, a GELU called as
a function), where the explicit rules still run.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import SqueezeExcitation

from zfviz.attribution import attribute, mechanism
from zfviz.attribution.composites import GUIDED_BACKPROP, LRP, gradient_form, lrp_from_options


@pytest.fixture
def taken(monkeypatch):
    """How many forward passes ran in gradient form since the test began."""
    calls = []
    check = mechanism.gradient_form_holds

    def spy(point, state):
        calls.append(1)
        return check(point, state)

    monkeypatch.setattr(mechanism, "gradient_form_holds", spy)
    return calls


def explicit(model, x, target, **options):
    """The oracle: the explicit rules."""
    old = mechanism.GRADIENT_FORM
    mechanism.GRADIENT_FORM = False
    try:
        return attribute(model, x, target, "lrp", **options)
    finally:
        mechanism.GRADIENT_FORM = old


def test_hand_weighted_net_exact(taken):
    # LRP-0: z1 = W1 x = (3, 0), relu (3, 0), out 3; the first unit's share of x is x_i W1[0, i] = (1, 2), the
    # second unit (z = 0) passes nothing
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
    x = torch.tensor([[1.0, 1.0]])
    got = attribute(net, x, 0, "lrp", rule="epsilon", epsilon=0.0)
    assert taken
    assert torch.equal(got, torch.tensor([[1.0, 2.0]]))
    assert torch.equal(got, explicit(net, x, 0, rule="epsilon", epsilon=0.0))


def _random(name: str) -> nn.Module:
    """torchvision's ``name`` with random weights, its batch norms' statistics and affine drawn anew (else each
    is the identity and merging them tests nothing), in float64."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval().double()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return model


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "fast"),
    [
        ("vgg16", True),
        ("resnet18", True),
        ("efficientnet_b0", True),
        ("convnext_tiny", True),
        ("mobilenet_v3_small", True),
        ("regnet_y_400mf", True),
        ("densenet121", False),  # a batch norm before its conv: nothing to merge it into
    ],
)
def test_equals_explicit_rules(name, fast, taken):
    model = _random(name)
    x, target = torch.randn(2, 3, 64, 64, dtype=torch.float64), torch.tensor([1, 7])
    got = attribute(model, x, target, "lrp", rule="epsilon")
    assert bool(taken) is fast
    want = explicit(model, x, target, rule="epsilon")
    scale = float(want.abs().max())
    assert scale > 0
    assert float((got - want).abs().max()) <= 1e-9 * scale


def _bias_free() -> nn.Module:
    """Every rule kind of the fast path without a bias: a conv, a SiLU, a squeeze-and-excitation gate (its
    branch's biases get no relevance), a GELU, a hardswish, an average pool, a linear layer."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.SiLU(),
        SqueezeExcitation(8, 4),
        nn.Conv2d(8, 8, 1, bias=False),
        nn.GELU(),
        nn.Conv2d(8, 8, 1, bias=False),
        nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3, bias=False),
    ).double()
    for module in net.modules():  # unit weights: activations far above the pools' epsilon (1e-6), which absorbs
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is None:
            nn.init.normal_(module.weight)
    return net


@pytest.mark.slow
def test_conserved_without_biases(taken):
    net, x = _bias_free(), torch.randn(2, 3, 12, 12, dtype=torch.float64)
    got = attribute(net, x, torch.tensor([0, 2]), "lrp", rule="epsilon", epsilon=1e-12)
    assert taken
    scores = net(x).gather(1, torch.tensor([[0], [2]]))[:, 0]
    torch.testing.assert_close(got.sum((1, 2, 3)), scores, rtol=1e-5, atol=0)
    torch.testing.assert_close(got, explicit(net, x, torch.tensor([0, 2]), rule="epsilon", epsilon=1e-12))


def _snapshot(model: nn.Module) -> tuple:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m.__dict__.get("inplace"), "forward" in m.__dict__, len(m._forward_hooks)) for m in model.modules()]
    return state, flags, [name for name, _ in model.named_modules()]


def _same(model: nn.Module, before: tuple) -> None:
    state, flags, names = _snapshot(model)
    assert names == before[2] and flags == before[1]
    assert all(torch.equal(state[k], v) for k, v in before[0].items())


@pytest.mark.slow
def test_model_unchanged_also_after_an_exception(taken):
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    before, x = _snapshot(model), torch.randn(1, 3, 32, 32)
    attribute(model, x, 3, "lrp", rule="epsilon")
    assert taken
    _same(model, before)

    def fail(module, inputs, output):
        raise RuntimeError("a user's hook fails")

    handle = model.features[4].register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="user's hook"):
        attribute(model, x, 3, "lrp", rule="epsilon")
    handle.remove()
    _same(model, before)


def _small_cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


@pytest.mark.parametrize(
    "options",
    [
        {"rule": "alpha_beta"},
        {"rule": "zplus"},
        {"rule": "epsilon", "first_rule": "flat"},
        {"composite": "epsilon_plus"},
    ],
)
def test_not_taken_for_other_rules(options, taken):
    net, x = _small_cnn(), torch.randn(2, 3, 8, 8)
    assert gradient_form(lrp_from_options(composite=None, rule=None, first_rule=None, epsilon=1e-6, alpha=None,
                                          beta=None, low=None, high=None), net) is not None  # fmt: skip
    got = attribute(net, x, torch.tensor([0, 1]), "lrp", **options)
    assert not taken
    assert got.shape == x.shape and torch.isfinite(got).all() and got.abs().sum() > 0


def test_not_taken_for_a_norm_with_nothing_to_merge_into_or_attention():
    before = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1), nn.Flatten(), nn.Linear(2 * 4 * 4, 2)).eval()
    assert gradient_form(LRP, before) is None
    vit = torchvision.models.VisionTransformer(32, 16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16)
    assert gradient_form(LRP, vit) is None
    sigmoid = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Sigmoid(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    assert gradient_form(LRP, sigmoid) is None  # h(0) != 0, and no squeeze-and-excitation's gate


class _FunctionalGelu(nn.Module):
    """A GELU called as a function: seen only after the forward pass, so the explicit rules run instead."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.gelu(self.conv(x)), 1))


def test_function_call_falls_back_to_explicit_rules(taken):
    torch.manual_seed(3)
    net, x = _FunctionalGelu().double(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    got = attribute(net, x, torch.tensor([0, 1]), "lrp", rule="epsilon")
    assert len(taken) == 1  # tried, and refused by the walk
    assert torch.equal(got, explicit(net, x, torch.tensor([0, 1]), rule="epsilon"))


def test_guided_backprop_keeps_in_place_gates_in_place():
    """Guided backprop's and the deconvnet's rules on an in-place SiLU or hardswish rewrite the gradient of
    autograd's own node, so the gates stay in place (no copy): the same maps as on an out-of-place copy."""
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.SiLU(inplace=True), nn.Conv2d(4, 4, 1), nn.Hardswish(inplace=True),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
    ).eval()  # fmt: skip
    copy = nn.Sequential(*[nn.SiLU() if isinstance(m, nn.SiLU) else m for m in net])
    copy[4] = nn.Hardswish()
    assert mechanism._in_place_is_safe(list(net.named_modules()), GUIDED_BACKPROP)
    assert not mechanism._in_place_is_safe(list(net.named_modules()), LRP)  # its rules read the inputs
    x, target = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    for method in ("guided_backprop", "deconvnet", "guided_gradcam"):
        assert torch.equal(attribute(net, x, target, method), attribute(copy, x, target, method))
    assert net[2].inplace and net[4].inplace


def test_relevance_that_overflowed_is_refused_in_one_line(monkeypatch):
    """A map of NaNs or infinities (float32 overflow of the epsilon rule on a deep random net: DenseNet-161 in the
    support matrix) is refused in one line that says what to change, never returned."""
    from types import SimpleNamespace

    from zfviz.attribution.methods import backprop
    from zfviz.errors import UserError

    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    x = torch.ones(1, 3)
    monkeypatch.setattr(
        backprop, "backward", lambda *a, **k: SimpleNamespace(inputs=torch.tensor([[1.0, float("inf"), 0.0]]))
    )
    with pytest.raises(UserError) as err:
        attribute(net, x, 0, "lrp")
    assert "\n" not in str(err.value) and str(err.value).startswith("lrp's relevance overflowed float32 on Sequential")
    assert "give a larger epsilon=" in str(err.value)
