"""Grad-CAM's default layer, found from the graph (issue 28), and maps read on the input's grid.

The default is the last spatial map before global pooling that the target depends on: not the
patch-embedding conv of a ViT or Swin, not GoogLeNet's aux branch (never called in eval mode), not a
conv inside RegNet's residual branch. Token sequences and channels-last maps are laid out N x C x h x w
for the user, also for a named ``layer=``; the oracles lay them out by hand.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from zfviz.attribution import attribute
from zfviz.attribution.methods.gradcam import _fits, _last_map, as_grid, token_grid
from zfviz.errors import UserError


def redrawn(model: nn.Module) -> nn.Module:
    """Random weights as a sweep draws them: torchvision zero-initializes the ViT head (every map would
    be zero) and leaves batch norms at mean 0, variance 1."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.05)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def tiny_vit(layers: int = 2) -> nn.Module:
    """torchvision's ViT, small: 32 px in 8 px patches, a 4 x 4 grid and a class token (17 tokens)."""
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=16, mlp_dim=32)
    return redrawn(vit)


def hand_cam(model: nn.Module, x: torch.Tensor, target: int, path: str, lay_out) -> torch.Tensor:
    """Grad-CAM by hand: the module's output and its gradient through autograd, laid out by ``lay_out``."""
    kept = {}

    def hook(_module, _inputs, output):
        kept.setdefault("a", output)

    handle = model.get_submodule(path).register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(out[:, target].sum(), kept["a"])
    acts, grads = lay_out(kept["a"].detach()), lay_out(grad)
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)


# --- laying maps out on the input's grid ----------------------------------------------------------


def test_token_counts_read_as_class_token_and_patch_grid():
    assert token_grid(197, (224, 224)) == (1, 14, 14)  # ViT-B/16: a class token, 14 x 14 patches
    assert token_grid(196, (224, 224)) == (0, 14, 14)  # no class token
    assert token_grid(198, (224, 224)) == (2, 14, 14)  # DeiT: class and distillation tokens
    assert token_grid(1 + 14 * 20, (224, 320)) == (1, 14, 20)  # the input's aspect decides h x w
    assert token_grid(1, (224, 224)) is None  # a class token alone is no grid
    assert token_grid(3072, (224, 224)) is None  # nor a feature dimension


def test_maps_are_laid_out_channels_first():
    x = torch.arange(2 * 7 * 7 * 96.0).view(2, 7, 7, 96)  # Swin: N x h x w x C
    assert torch.equal(as_grid(x, (224, 224)), x.permute(0, 3, 1, 2))
    conv = torch.randn(2, 96, 7, 7)
    assert as_grid(conv, (224, 224)) is conv
    tokens = torch.randn(2, 1 + 6 * 4, 8)  # a class token and a 6 x 4 grid of a 96 x 64 input
    want = tokens[:, 1:].reshape(2, 6, 4, 8).permute(0, 3, 1, 2)
    assert torch.equal(as_grid(tokens, (96, 64)), want)
    assert as_grid(torch.randn(2, 10), (224, 224)) is None


def test_the_default_takes_only_maps_on_the_grid():
    size = (224, 224)
    assert _fits(torch.zeros(1, 96, 56, 56), size) and _fits(torch.zeros(1, 56, 56, 96), size)
    assert _fits(torch.zeros(1, 197, 768), size) and _fits(torch.zeros(1, 512, 1, 1), size)  # a 1 x 1 map too
    assert not _fits(torch.zeros(1, 64, 49, 96), size)  # MaxViT's 64 windows of 7 x 7 cells, partitioned
    assert not _fits(torch.zeros(1, 197, 3, 768), size) and not _fits(torch.zeros(1, 10), size)


# --- the default layer on hand-built nets ---------------------------------------------------------


class Residual(nn.Module):
    """RegNet's block in miniature: ``relu(x + f(x))``, the sum in ``forward``, the branch a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(x + self.f(x))


class WithAux(nn.Module):
    """GoogLeNet in miniature: an aux head defined after the trunk, called only in training."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Residual())
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)
        self.aux = nn.Sequential(nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        x = self.trunk(x)
        out = self.fc(self.pool(x).flatten(1))
        return (out, self.aux(x)) if self.training else out


def test_the_default_is_the_map_after_the_residual_sum_and_no_aux_branch():
    torch.manual_seed(0)
    model, x = WithAux().eval(), torch.randn(2, 3, 8, 8)
    path, acts, _ = _last_map(model, x, [0, 2])
    assert path == "trunk"  # the block's output after its sum; trunk.2.f.2 (last conv) and aux.0 are not it
    assert torch.equal(acts, model.trunk(x))
    named = attribute(model, x, [0, 2], "gradcam", layer="trunk", meaning="output")
    assert torch.equal(attribute(model, x, [0, 2], "gradcam"), named)


def test_the_default_below_a_unit_target_is_the_last_map_it_depends_on():
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 4, 3), relu1=nn.ReLU(), conv2=nn.Conv2d(4, 4, 3), relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 3),
        )
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 10, 10)
    assert _last_map(model, x, ("conv2", 1))[0] == "relu1"
    got = attribute(model, x, ("conv2", 1), "gradcam")
    assert torch.equal(got, attribute(model, x, ("conv2", 1), "gradcam", layer="relu1"))
    assert _last_map(model, x, 1)[0] == "relu2"  # a class: the last conv's rectified map, not the pool's


class InPlaceAfter(nn.Module):
    """DenseNet in miniature: its forward rectifies the trunk's output in place (``F.relu``) before the pool."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@pytest.mark.parametrize("build", [WithAux, InPlaceAfter])
def test_guided_gradcam_at_the_default_is_one_pass_of_guided_backprop_times_gradcam(build):
    torch.manual_seed(0)
    model, x = build().eval(), torch.randn(2, 3, 8, 8)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    got = attribute(model, x, [0, 2], "guided_gradcam")
    assert len(calls) == 1  # the default layer searched in guided backprop's own pass
    two_calls = attribute(model, x, [0, 2], "guided_backprop") * attribute(model, x, [0, 2], "gradcam")
    torch.testing.assert_close(got, two_calls, rtol=1e-6, atol=0)  # the same kernels; a product's rounding
    assert got.abs().sum() > 0
    assert all(not m._forward_hooks for m in model.modules())


def test_a_vit_defaults_to_the_last_blocks_first_norm_on_its_patch_grid():
    model, x = tiny_vit(), torch.randn(2, 3, 32, 32)
    path, acts, grads = _last_map(model, x, [1, 4])
    # after the last block's attention the patch tokens never reach the class token: zero gradient
    assert path == "encoder.layers.encoder_layer_1.ln_1"
    assert acts.shape == (2, 17, 16) and grads[:, 1:].abs().sum() > 0
    cam = attribute(model, x, [1, 4], "gradcam")
    assert cam.shape == (2, 1, 32, 32) and torch.isfinite(cam).all() and cam.abs().sum() > 0
    grid = as_grid  # the class token left out, the 16 patch tokens as 4 x 4
    want = torch.cat([hand_cam(model, x[i : i + 1], t, path, lambda a: grid(a, (32, 32))) for i, t in ((0, 1), (1, 4))])
    torch.testing.assert_close(cam, want, atol=1e-6, rtol=1e-5)


def test_a_named_token_layer_is_laid_out_as_by_hand():
    model, x = tiny_vit(), torch.randn(1, 3, 32, 32)
    path = "encoder.layers.encoder_layer_0"
    got = attribute(model, x, 3, "gradcam", layer=path)
    by_hand = hand_cam(model, x, 3, path, lambda a: a[:, 1:].reshape(1, 4, 4, 16).permute(0, 3, 1, 2))
    torch.testing.assert_close(got, by_hand, atol=1e-6, rtol=1e-5)


def test_a_zero_head_gives_zeros_not_an_error():
    """torchvision's ViT head starts at zero: no map has a non-zero gradient; the last connected one is used."""
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    cam = attribute(model.eval(), torch.randn(1, 3, 32, 32), 0, "gradcam")
    assert cam.shape == (1, 1, 32, 32) and not cam.any()


def test_no_map_on_the_grid_is_one_line():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    with pytest.raises(UserError, match="name a layer") as err:
        attribute(model, torch.randn(1, 3, 2, 2), 0, "gradcam")
    assert "\n" not in str(err.value)


# --- torchvision's nets, random weights -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, size, expected",
    [
        ("vit_b_16", 32, "encoder.layers.encoder_layer_11.ln_1"),  # not conv_proj, the patch embedding
        ("swin_t", 64, "permute"),  # the normed last stage, channels first; not features.0.0
        ("googlenet", 64, "inception5b"),  # not aux2, never called in eval mode
        ("regnet_y_400mf", 64, "trunk_output"),  # the last stage's output, after its residual sum
        ("resnet18", 64, "layer4"),
        ("densenet121", 64, "features"),  # read after the F.relu its forward applies in place
    ],
)
def test_the_default_layer_of_torchvisions_nets(name, size, expected):
    kwargs = {"vit_b_16": {"image_size": size}, "googlenet": {"init_weights": False}}.get(name, {})
    model = redrawn(torchvision.models.get_model(name, weights=None, **kwargs))
    x = torch.randn(1, 3, size, size)
    path, acts, grads = _last_map(model, x, 5)
    assert path == expected
    cam = attribute(model, x, 5, "gradcam", relu=False)  # a 2 x 2 map may well be negative all over
    assert cam.shape == (1, 1, size, size) and torch.isfinite(cam).all() and cam.abs().sum() > 0
    if name == "regnet_y_400mf":  # the same tensor as the last stage's and its last block's, the sum inside
        named = attribute(model, x, 5, "gradcam", layer="trunk_output.block4", meaning="output", relu=False)
        assert torch.equal(cam, named)


@pytest.mark.slow
def test_swin_stage_output_is_read_channels_last():
    """``layer=features.7`` is N x h x w x C: read as channels it gave stripes; laid out by hand it agrees."""
    model, x = redrawn(torchvision.models.swin_t(weights=None)), torch.randn(1, 3, 64, 64)
    got = attribute(model, x, 5, "gradcam", layer="features.7")
    by_hand = hand_cam(model, x, 5, "features.7", lambda a: a.permute(0, 3, 1, 2))
    torch.testing.assert_close(got, by_hand, atol=1e-6, rtol=1e-5)
    assert got.abs().sum() > 0
