"""Integrated gradients, SmoothGrad, Grad-CAM and guided Grad-CAM (issue 13): Captum as the oracle,
hand-computed values on tiny hand-weighted nets, completeness, and the properties every method keeps
(batch size never changes a map, the model is left as it was)."""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict

import pytest
import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from torch import nn
from torchvision import models as tv

from zfviz.attribution import attribute
from zfviz.errors import UserError
from zfviz.models import build_model

# Captum runs the same math through other kernels and another summation order: float32 noise only.
TOL = {"atol": 1e-6, "rtol": 1e-4}


def small_zfnet() -> nn.Sequential:
    return build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=64, init="kaiming").eval()


def upto(model: nn.Sequential, name: str) -> nn.Sequential:
    """The layers of ``model`` up to and including ``name``."""
    return model[: list(dict(model.named_children())).index(name) + 1]


@functools.cache
def _torchvision_net(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(tv, name)(weights=None, num_classes=10).eval()


def torchvision_net(name: str) -> nn.Module:
    """A copy of one net built once per session (vgg11_bn's 10^8 weights take seconds to draw)."""
    return copy.deepcopy(_torchvision_net(name))


def cam_net() -> nn.Sequential:
    """1x1 conv with filters +1 and -1, ReLU, global average pool, two classes weighted [2, 3], [-1, 1]."""
    conv = nn.Conv2d(1, 2, 1)
    fc = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.zero_()
        fc.weight.copy_(torch.tensor([[2.0, 3.0], [-1.0, 1.0]]))
    layers = [
        ("conv", conv),
        ("relu", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flat", nn.Flatten()),
        ("fc", fc),
    ]
    return nn.Sequential(OrderedDict(layers)).eval()


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "grads": [p.grad for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def assert_same(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after.keys() == before.keys()
    for key in ("training", "inplace", "hooks", "grads", "requires_grad"):
        assert after[key] == before[key], key
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k


# --- integrated gradients -------------------------------------------------------------------------


def test_integrated_gradients_on_a_linear_model_is_input_minus_baseline_times_weight():
    """F(x) = w . x has the constant gradient w, so any quadrature gives (x - x') * w exactly."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=True))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.0, 1.0, 1.0, 1.0]]))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    base = torch.full_like(x, 1.0)
    for integration in ("gausslegendre", "riemann_trapezoid"):
        got = attribute(model, x, 0, "integrated_gradients", steps=7, baseline=base, integration=integration)
        want = torch.tensor([[[[0.0, -2.0], [6.0, 1.5]]]])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # quadrature weights sum to 1 in float64


@pytest.mark.parametrize("baseline", [0.0, "tensor"])
def test_integrated_gradients_equal_captum(baseline):
    model, x, target = small_zfnet(), torch.randn(3, 3, 64, 64), [1, 2, 3]
    base = torch.rand(1, 3, 64, 64) if baseline == "tensor" else baseline
    got = attribute(model, x, target, "integrated_gradients", steps=20, baseline=base, internal_batch_size=16)
    want = IntegratedGradients(model).attribute(x, baselines=base, target=target, n_steps=20)
    torch.testing.assert_close(got, want, **TOL)


def test_integrated_gradients_equal_captum_on_resnet18():
    """In-place ReLUs, batch norms and residual additions: the plain gradient passes them all."""
    model, x, target = torchvision_net("resnet18"), torch.randn(2, 3, 32, 32), [4, 9]
    got = attribute(model, x, target, "integrated_gradients", steps=8, baseline="mean")
    base = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    want = IntegratedGradients(captum_copy(model)).attribute(x, baselines=base, target=target, n_steps=8)
    torch.testing.assert_close(got, want, **TOL)


def test_trapezoid_is_captums_with_the_right_step_width():
    """Captum's riemann_trapezoid weights its n evenly spaced points by 1/n (ends 1/2n); the
    trapezoid rule on linspace(0, 1, n) has width 1/(n-1). So ours is Captum's times n/(n-1)."""
    model, x, target, n = small_zfnet(), torch.randn(2, 3, 64, 64), [4, 5], 10
    got = attribute(model, x, target, "integrated_gradients", steps=n, integration="riemann_trapezoid")
    want = IntegratedGradients(model).attribute(x, target=target, n_steps=n, method="riemann_trapezoid")
    torch.testing.assert_close(got, want * n / (n - 1), **TOL)


def scores(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, torch.as_tensor(target).view(-1, 1)).view(-1)


def smooth_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.Conv2d(8, 8, 3, stride=2), nn.Softplus(), nn.Flatten())
    return nn.Sequential(*net, nn.Linear(8 * 4 * 4, 4)).eval()


@pytest.mark.parametrize("baseline", [0.0, "mean"])
def test_integrated_gradients_are_complete_on_a_smooth_net(baseline):
    """Sundararajan et al.'s completeness, sum of attributions = F(x) - F(x'), on a net whose
    gradient is smooth along the path: Gauss-Legendre is exact to float32 at 16 nodes, and the
    trapezoid rule's error falls 4x per doubling of steps (O(1/steps^2): the weights are right)."""
    model, x, target = smooth_net(), torch.randn(3, 3, 12, 12), [0, 1, 2]
    base = x.mean(dim=(2, 3), keepdim=True).expand_as(x) if baseline == "mean" else torch.zeros_like(x)
    gap = scores(model, x, target) - scores(model, base, target)

    def error(steps: int, integration: str) -> float:
        got = attribute(
            model, x, target, "integrated_gradients", steps=steps, baseline=baseline, integration=integration
        )
        return (got.sum(dim=(1, 2, 3)) - gap).abs().max().item()

    assert error(16, "gausslegendre") < 1e-6
    coarse, fine = error(32, "riemann_trapezoid"), error(64, "riemann_trapezoid")
    assert fine < 1e-5 and 3 < coarse / fine < 5


@pytest.mark.parametrize("integration", ["gausslegendre", "riemann_trapezoid"])
@pytest.mark.parametrize("baseline", [0.0, "mean"])
def test_integrated_gradients_are_complete_on_zfnet(integration, baseline):
    """Completeness on a ReLU net: its gradient jumps wherever the path crosses a ReLU's kink, each
    jump costing O(1/steps) of quadrature error: at 128 steps under 1e-2 of gaps up to ~3."""
    model, x, target = small_zfnet(), torch.randn(2, 3, 64, 64), [1, 2]
    for m in model.modules():  # biases: else F(a x) = a F(x) and a zero baseline's path is trivially linear
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.uniform_(m.bias, -0.1, 0.1)
    got = attribute(
        model,
        x,
        target,
        "integrated_gradients",
        steps=128,
        baseline=baseline,
        integration=integration,
        internal_batch_size=128,
    )
    base = x.mean(dim=(2, 3), keepdim=True).expand_as(x) if baseline == "mean" else torch.zeros_like(x)
    gap = scores(model, x, target) - scores(model, base, target)
    torch.testing.assert_close(got.sum(dim=(1, 2, 3)), gap, atol=1e-2, rtol=1e-2)


def test_integrated_gradients_of_a_unit_are_complete_at_its_strongest_cell():
    """position=None picks the unit's strongest cell on the input and keeps it along the whole path."""
    model, x = small_zfnet(), torch.randn(2, 3, 64, 64)
    got = attribute(model, x, ("conv5", 3), "integrated_gradients", steps=128)
    with torch.no_grad():
        conv5 = upto(model, "conv5")
        at_x, at_0 = conv5(x)[:, 3], conv5(torch.zeros_like(x))[:, 3]
    cell = at_x.flatten(1).argmax(dim=1)
    gap = at_x.flatten(1)[range(2), cell] - at_0.flatten(1)[range(2), cell]
    torch.testing.assert_close(got.sum(dim=(1, 2, 3)), gap, atol=1e-3, rtol=1e-2)


def test_integrated_gradients_do_not_depend_on_the_batching():
    model, x, target = small_zfnet(), torch.randn(4, 3, 64, 64), [0, 1, 2, 3]
    whole = attribute(model, x, target, "integrated_gradients", steps=9, internal_batch_size=36)
    chunked = attribute(model, x, target, "integrated_gradients", steps=9, internal_batch_size=5)
    alone = torch.cat([attribute(model, x[i : i + 1], target[i], "integrated_gradients", steps=9) for i in range(4)])
    torch.testing.assert_close(chunked, whole, atol=1e-7, rtol=1e-5)  # conv kernels may block by batch size
    torch.testing.assert_close(alone, whole, atol=1e-7, rtol=1e-5)


# --- SmoothGrad -----------------------------------------------------------------------------------

GRADIENT_METHODS = {
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"steps": 5},
    "guided_backprop": {},
    "deconvnet": {},
}


@pytest.mark.parametrize("method", list(GRADIENT_METHODS))
def test_smoothgrad_without_noise_is_the_plain_method(method):
    model, x, target = small_zfnet(), torch.randn(2, 3, 64, 64), [3, 7]
    options = GRADIENT_METHODS[method]
    plain = attribute(model, x, target, method, **options)
    smoothed = attribute(model, x, target, method, smooth_samples=3, smooth_sigma=0.0, **options)
    torch.testing.assert_close(smoothed, plain, atol=1e-7, rtol=1e-5)  # 3 equal maps, averaged


def noisy_copies(model: nn.Module, run) -> torch.Tensor:
    """Every input row ``model`` receives while ``run()`` runs (a forward pre-hook): the noisy copies
    SmoothGrad made, read from outside, whatever way it draws or batches them."""
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return torch.cat(seen)


def copies_per_image(rows: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """The noisy rows sorted to the image each is a copy of (the nearest; a clean row, a forward on the
    images themselves, is dropped). With noise of std 0.2 x range (~1.8) over 12,288 pixels the nearest is
    never in doubt: squared distances ~4e4 to its own image against ~6.5e4 to another."""
    rows = rows[~(rows[:, None] == x[None]).flatten(2).all(dim=2).any(dim=1)]
    nearest = torch.cdist(rows.flatten(1), x.flatten(1)).argmin(dim=1)
    return [rows[nearest == n] for n in range(len(x))]


SMOOTH = {"smooth_samples": 5, "smooth_sigma": 0.2, "smooth_seed": 7}
# Captum's peers: (attribution class, its options, ours); its Deconvolution seeds 1 and backpropagates LRN.
CAPTUM_PEERS = {
    "saliency": (Saliency, {"abs": False}, {}),
    "input_x_gradient": (InputXGradient, {}, {}),
    "guided_backprop": (GuidedBackprop, {}, {}),
    "deconvnet": (Deconvolution, {}, {"start": "one", "norm": "backprop"}),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Captum announces its ReLU hooks on every call
@pytest.mark.parametrize("method", list(CAPTUM_PEERS))
def test_smoothgrad_equals_captums_noise_tunnel_on_the_same_noise(method, monkeypatch):
    """Oracle: Captum's ``NoiseTunnel`` (smoothgrad) around Captum's method. Two generators never draw the
    same noise, and a statistical comparison would need thousands of samples to see a wrong average, so
    the noise is shared instead: the noisy copies ours fed the model are read from outside (a forward
    hook) and handed to Captum as its ``torch.normal`` draw. Captum then adds, averages and attributes
    with its own code; the noise itself is checked against its stated law (N(0, sigma^2) per pixel,
    sigma = 0.2 x each image's range) by its moments."""
    model, x, target = small_zfnet(), torch.randn(2, 3, 64, 64), torch.tensor([3, 7])
    peer, peer_kw, ours_kw = CAPTUM_PEERS[method]
    got = {}
    rows = noisy_copies(model, lambda: got.update(map=attribute(model, x, target, method, **SMOOTH, **ours_kw)))
    copies = copies_per_image(rows, x)
    sigma = 0.2 * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
    for n, mine in enumerate(copies):
        assert len(mine) == 5 and len(torch.unique(mine, dim=0)) == 5  # five distinct draws per image
        z = (mine - x[n]) / sigma[n]  # 61,440 standard normal values: standard errors about 0.004
        assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    expected = []
    for n, mine in enumerate(copies):

        def shared_noise(mean, std, *args, mine=mine, n=n, **kwargs):
            assert std.shape == mine.shape  # one draw for all five samples of this image
            return mine - x[n]

        with monkeypatch.context() as patch:
            patch.setattr(torch, "normal", shared_noise)
            tunnel = NoiseTunnel(peer(model))
            expected.append(tunnel.attribute(x[n : n + 1].clone(), nt_type="smoothgrad", nt_samples=5,
                                             stdevs=float(sigma[n]), target=int(target[n]), **peer_kw))  # fmt: skip
    torch.testing.assert_close(got["map"], torch.cat(expected), **TOL)


@pytest.mark.parametrize("method", ["saliency", "deconvnet"])
def test_smoothgrad_of_a_unit_keeps_the_clean_images_strongest_cell(method):
    """A unit target's cell is found once, on the clean images: every noisy copy explains that cell (the
    plain method on the copies ours made, read from outside; the plain methods have their own oracles)."""
    model, x, target = small_zfnet(), torch.randn(2, 3, 64, 64), ("conv5", [1, 2])
    got = {}
    rows = noisy_copies(model, lambda: got.update(map=attribute(model, x, target, method, **SMOOTH)))
    with torch.no_grad():
        conv5 = upto(model, "conv5")(x)[range(2), [1, 2]]
    cell = conv5.flatten(1).argmax(dim=1)
    position = torch.stack([cell // conv5.shape[-1], cell % conv5.shape[-1]], dim=1)
    expected = []
    for n, mine in enumerate(copies_per_image(rows, x)):
        assert len(mine) == 5
        unit = ("conv5", [1, 2][n], tuple(position[n].tolist()))
        expected.append(attribute(model, mine, unit, method).mean(dim=0, keepdim=True))
    torch.testing.assert_close(got["map"], torch.cat(expected), atol=1e-7, rtol=1e-5)


def test_smoothgrad_batching_and_seed():
    model, x, target = small_zfnet(), torch.randn(2, 3, 64, 64), [3, 7]
    one = attribute(model, x, target, "saliency", smooth_samples=6, smooth_sigma=0.15, smooth_batch=1)
    all_ = attribute(model, x, target, "saliency", smooth_samples=6, smooth_sigma=0.15, smooth_batch=6)
    other = attribute(model, x, target, "saliency", smooth_samples=6, smooth_sigma=0.15, smooth_seed=1)
    torch.testing.assert_close(one, all_, atol=1e-7, rtol=1e-5)
    assert not torch.allclose(one, other)


# --- Grad-CAM -------------------------------------------------------------------------------------


def test_gradcam_on_a_hand_weighted_net():
    """A = ReLU([x, -x]); y_c = sum_k w_ck mean(A_k): alpha_k = w_ck / 4, cam = ReLU(sum_k alpha_k A_k)."""
    model = cam_net()
    x = torch.tensor([[1.0, -2.0], [3.0, -4.0]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    cam = attribute(model, x, [0, 1], "gradcam", upsample=False)
    # class 0: 0.5 * [[1,0],[3,0]] + 0.75 * [[0,2],[0,4]]; class 1: ReLU(-0.25 * ... + 0.25 * ...)
    want = torch.tensor([[[[0.5, 1.5], [1.5, 3.0]]], [[[0.0, 0.5], [0.0, 1.0]]]])
    assert torch.equal(cam, want)
    raw = attribute(model, x[1:], 1, "gradcam", upsample=False, relu=False)
    assert torch.equal(raw, torch.tensor([[[[-0.25, 0.5], [-0.75, 1.0]]]]))


def test_gradcam_upsamples_bilinearly_to_the_input():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 2, stride=2), relu=nn.ReLU(), rest=cam_net()[2:])).eval()
    x = torch.randn(2, 1, 8, 8)
    grid = attribute(model, x, [0, 1], "gradcam", upsample=False)
    full = attribute(model, x, [0, 1], "gradcam")
    assert grid.shape == (2, 1, 4, 4) and full.shape == (2, 1, 8, 8)
    torch.testing.assert_close(full, nn.functional.interpolate(grid, size=(8, 8), mode="bilinear"), atol=0, rtol=0)


CAM_NETS = {  # net, input size, Captum's layer (what our default resolves to)
    "zfnet": (small_zfnet, 64, "relu5"),
    "alexnet": (lambda: torchvision_net("alexnet"), 64, "features.11"),
    "vgg11_bn": (lambda: torchvision_net("vgg11_bn"), 32, "features.27"),
    "resnet18": (lambda: torchvision_net("resnet18"), 64, "layer4"),
}


# vgg11_bn's 10^8 weights make each of its tests take seconds
NET_PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n == "vgg11_bn" else n for n in CAM_NETS]


def captum_copy(model: nn.Module) -> nn.Module:
    """Captum's ReLU backward hooks fail on torchvision's in-place ReLUs; the oracle gets a copy without."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_PARAMS)
def test_gradcam_equals_captum(net):
    build, size, layer = CAM_NETS[net]
    model, x, target = build(), torch.randn(2, 3, size, size), [3, 7]
    got = attribute(model, x, target, "gradcam")
    oracle = captum_copy(model)
    cam = LayerGradCam(oracle, oracle.get_submodule(layer)).attribute(x, target=target, relu_attributions=True)
    want = LayerAttribution.interpolate(cam, (size, size), interpolate_mode="bilinear")
    assert got.shape == (2, 1, size, size)
    torch.testing.assert_close(got, want, **TOL)
    grid = attribute(model, x, target, "gradcam", upsample=False)
    torch.testing.assert_close(grid, cam, **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_PARAMS)
def test_guided_gradcam_equals_captum(net):
    build, size, layer = CAM_NETS[net]
    model, x, target = build(), torch.randn(2, 3, size, size), [3, 7]
    got = attribute(model, x, target, "guided_gradcam")
    oracle = captum_copy(model)
    with pytest.warns(UserWarning):  # Captum announces its ReLU hooks
        want = GuidedGradCam(oracle, oracle.get_submodule(layer)).attribute(
            x, target=target, interpolate_mode="bilinear"
        )
    torch.testing.assert_close(got, want, **TOL)


class OwnRelu(nn.ReLU):
    """A ReLU with its own forward: its rule runs as a routed autograd Function, not on ReLU's node."""

    def forward(self, x):
        return torch.relu(x)


@pytest.mark.parametrize("own_relus", [(), ("relu6",), ("relu4", "relu5", "relu6", "relu7")])
def test_guided_gradcam_in_one_pass_is_guided_backprop_times_gradcam(own_relus):
    model = small_zfnet()
    for name in own_relus:  # routed modules above the layer must stand aside for Grad-CAM's gradient
        setattr(model, name, OwnRelu())
    x = torch.randn(2, 3, 64, 64)
    for layer, unit in (("conv4", [3, 7]), ("conv5", [3, 7]), ("conv4", ("conv5", 2))):
        got = attribute(model, x, unit, "guided_gradcam", layer=layer)
        two_calls = attribute(model, x, unit, "guided_backprop") * attribute(model, x, unit, "gradcam", layer=layer)
        torch.testing.assert_close(got, two_calls, rtol=1e-6, atol=0)  # the same kernels; a product's rounding
    with pytest.raises(UserError, match=r"does not run before the target"):
        attribute(model, x, ("conv4", 0), "guided_gradcam", layer="conv5")


def test_gradcam_of_a_named_layer_and_a_unit_target():
    model, x = small_zfnet(), torch.randn(2, 3, 64, 64)
    # conv4 reads after its ReLU ("rectified"), the unit is conv5's strongest cell of map 2
    got = attribute(model, x, ("conv5", 2), "gradcam", layer="conv4", upsample=False)
    cam = LayerGradCam(lambda z: upto(model, "conv5")(z).amax(dim=(2, 3)), model.relu4).attribute(
        x, target=2, relu_attributions=True
    )
    torch.testing.assert_close(got, cam, **TOL)  # the max's gradient is 1 at the strongest cell


def test_gradcam_does_not_depend_on_the_batch():
    model, x, target = torchvision_net("resnet18"), torch.randn(3, 3, 64, 64), [1, 2, 3]
    whole = attribute(model, x, target, "gradcam")
    alone = torch.cat([attribute(model, x[i : i + 1], target[i], "gradcam") for i in range(3)])
    torch.testing.assert_close(alone, whole, atol=1e-6, rtol=1e-5)  # batch-size dependent conv blocking


# --- the model is left as it was; mistakes ------------------------------------------------------


@pytest.mark.parametrize(
    "method, options",
    [
        ("gradcam", {}),
        ("guided_gradcam", {}),
        ("integrated_gradients", {"steps": 3}),
        ("saliency", {"smooth_samples": 2}),
    ],
)
def test_the_model_is_left_as_it_was_also_after_an_error(method, options):
    model = torchvision_net("resnet18").train()  # in-place ReLUs, batch norms in training mode
    model.layer1.register_forward_hook(lambda *a: None)
    before = snapshot(model)
    attribute(model, torch.randn(2, 3, 32, 32), [1, 2], method, **options)
    assert_same(model, before)
    with pytest.raises(UserError, match="class index"):
        attribute(model, torch.randn(2, 3, 32, 32), [1, 12], method, **options)
    assert_same(model, before)


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("integrated_gradients", {"baseline": "black"}, "baseline=black is not valid for integrated_gradients"),
        ("integrated_gradients", {"baseline": torch.zeros(5)}, "does not broadcast"),
        ("integrated_gradients", {"integration": "simpson"}, "integration=simpson is not valid"),
        ("integrated_gradients", {"steps": 0}, "steps=0 is not valid .*: give a whole number >= 1"),
        ("integrated_gradients", {"internal_batch_size": 0}, "internal_batch_size=0 is not valid"),
        ("saliency", {"smooth_sigma": -1.0}, "smooth_sigma=-1.0 is not valid .*: give a finite number >= 0"),
        ("saliency", {"smooth_samples": 0}, "smooth_samples=0 is not valid .*: give a whole number >= 1"),
        ("gradcam", {"layer": "fc6"}, "Grad-CAM needs a conv layer's map"),
        ("gradcam", {"layer": "conv9"}, "unknown layer 'conv9'"),
        ("gradcam", {"smooth_samples": 2}, "SmoothGrad .* applies to gradient methods"),
        ("gradcam", {"layer": "conv5", "target": ("conv4", 0)}, r"target \(the unit of conv4\) does not depend"),
    ],
)
def test_mistakes_are_one_line(method, options, message):
    target = options.pop("target", 0)
    with pytest.raises(UserError, match=message) as err:
        attribute(small_zfnet(), torch.randn(1, 3, 64, 64), target, method, **options)
    assert "\n" not in str(err.value)
