"""Occlusion sensitivity (Fig. 7): a brute-force loop, Captum and a hand-weighted net as oracles.

The brute-force loop builds its own occluded copies from the occluder's pixels as this file writes them
(``fill_pixels``: the documented fills, or any image given as ``fill``), never from the module's code.

The fast path computes each occluded copy's convolutions on a rectangle and batches copies; on CPU
float32 a batched or cropped convolution may differ from a single whole-image forward in the last
bits, so maps are compared with ``assert_close`` at tight tolerances (atol 1e-6 on probabilities)
and predicted classes exactly.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import Occlusion
from torch import nn
from torch.testing import assert_close

from zfviz.attribution.occlusion import MAPS, Occluder, grid, occlusion, resolve_layer
from zfviz.attribution.occlusion_chain import lrn as _lrn
from zfviz.errors import UserError
from zfviz.models import build_model

PROB_TOL = dict(atol=1e-6, rtol=1e-5)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str = "zfnet", size: int = 64) -> nn.Sequential:
    if name == "other":
        return other_net()
    return build_model(name, num_classes=10, input_size=size, width=0.25, fc_dims=64, init="kaiming").eval()


def other_net() -> nn.Sequential:
    """Batch norm, a padded strided pool, an even kernel, and an adaptive pool the fast path must paste before."""
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(3, 4, 4, stride=1, padding=2))
    net.add_module("bn1", nn.BatchNorm2d(4))
    net.add_module("relu1", nn.ReLU())
    net.add_module("pool1", nn.MaxPool2d(3, 2, padding=1, ceil_mode=True))
    net.add_module("conv5", nn.Conv2d(4, 6, 3, stride=2))
    net.add_module("relu5", nn.ReLU())
    net.add_module("avg", nn.AdaptiveAvgPool2d(2))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc8", nn.Linear(24, 10))
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
    return net.eval()


def fill_pixels(fill, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """The occluder's pixels (C, H, W) in the normalized input space, as ``occlusion`` documents them, written
    here from that description: ``"mean"`` is 0 (the data set's mean pixel after mean subtraction),
    ``"noise"`` a standard normal per pixel drawn from ``torch.Generator().manual_seed(seed)`` (the seeded
    recipe the maps depend on: a change to it is a change to every noise-filled figure), a number that
    value, an image itself."""
    if isinstance(fill, torch.Tensor):
        return fill.expand(shape).clone()
    if fill == "mean":
        return torch.zeros(shape)
    if fill == "noise":
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return torch.full(shape, float(fill))


def brute_force(model, images, target, window, stride, fill, feature_layer):
    """One forward per occluder position; the chosen map from a hook. Independent of the module's code."""
    n, _, h, w = images.shape
    seen = []
    handle = model.get_submodule(feature_layer).register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            model(images)
            channel = seen[-1].flatten(2).amax(dim=2).argmax(dim=1)
            ys, xs = range(0, h - window + 1, stride), range(0, w - window + 1, stride)
            out = {key: torch.zeros(n, len(ys), len(xs)) for key in MAPS}
            out["top_class"] = out["top_class"].long()
            for i in range(n):
                for r, y in enumerate(ys):
                    for c, x in enumerate(xs):
                        copy = images[i : i + 1].clone()
                        copy[..., y : y + window, x : x + window] = fill[..., y : y + window, x : x + window]
                        probs = model(copy).softmax(dim=1)[0]
                        out["p_true"][i, r, c] = probs[target[i]]
                        out["top_prob"][i, r, c], out["top_class"][i, r, c] = probs.max(dim=0)
                        out["feature_activation"][i, r, c] = seen[-1][0, channel[i]].sum()
    finally:
        handle.remove()
    return out, channel


def assert_maps_equal(got: dict, expected: dict) -> None:
    assert_close(got["p_true"], expected["p_true"], **PROB_TOL)
    assert_close(got["top_prob"], expected["top_prob"], **PROB_TOL)
    assert_close(got["feature_activation"], expected["feature_activation"], atol=1e-5, rtol=1e-5)
    assert torch.equal(got["top_class"], expected["top_class"])


@pytest.mark.parametrize(
    "name,size,window,stride,fill",
    [
        ("zfnet", 64, 16, 12, "mean"),  # ceil-mode pools, norm after pool
        ("alexnet", 67, 13, 11, "noise"),  # 11x11/4 conv1, norm before pool, a remainder at the border
        ("other", 23, 5, 4, "noise"),
        ("other", 23, 5, 4, "image"),  # any picture as the occluder: no recipe shared with the module
    ],
)
def test_maps_equal_a_brute_force_loop(name, size, window, stride, fill):
    model = tiny(name, size)
    images = torch.randn(2, 3, size, size)
    target = torch.tensor([3, 7])
    if fill == "image":
        fill = torch.rand(3, size, size, generator=torch.Generator().manual_seed(9)) * 4 - 2
    fill_img = fill_pixels(fill, (3, size, size), seed=5)
    expected, channel = brute_force(model, images, target, window, stride, fill_img, "relu5")
    for fast in (True, False):
        got = occlusion(model, images, target, Occluder(window, stride, fill, seed=5), "conv5", fast=fast)
        assert torch.equal(got["channel"], channel)
        assert_maps_equal(got, expected)


@pytest.mark.parametrize("size", [5, 4])
def test_the_sweeps_contrast_normalization_equals_pytorchs(size):
    lrn = nn.LocalResponseNorm(size, alpha=5e-4, beta=0.75, k=2.0)
    x = torch.randn(7, 24, 5, 5).relu() * 30
    # Tolerance, not bit equality: shifted slices and PyTorch's avg_pool3d sum the window in different orders.
    assert_close(_lrn(lrn, x), lrn(x), rtol=1e-6, atol=1e-6)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert_close(_lrn(lrn, cl), lrn(cl), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(lrn(x), x, rtol=1e-2)  # the normalization does something at this scale


def test_chunk_size_does_not_change_the_maps():
    model = tiny()
    images = torch.randn(2, 3, 64, 64)
    target = torch.tensor([4, 9])
    reference = occlusion(model, images, target, Occluder(16, 8), chunk_size=None)
    assert reference["p_true"].shape == (2, 7, 7)
    for chunk in (9, 49, 60):
        assert_maps_equal(occlusion(model, images, target, Occluder(16, 8), chunk_size=chunk), reference)


def test_p_true_drop_equals_captum_occlusion_with_window_equal_to_stride():
    model = tiny()
    images = torch.randn(2, 3, 64, 64)
    target = torch.tensor([2, 5])
    window = 16
    maps = occlusion(model, images, target, Occluder(window, window, "mean"))
    attribution = Occlusion(lambda x: model(x).softmax(dim=1)).attribute(
        images, sliding_window_shapes=(3, window, window), strides=(3, window, window), baselines=0.0, target=target
    )
    sampled = attribution[:, 0, ::window, ::window]  # one value per window (they do not overlap)
    assert_close(maps["p_true_clean"][:, None, None] - maps["p_true"], sampled, **PROB_TOL)


def test_hand_weighted_net_gives_the_closed_form():
    """conv 1x1 (weight 2) -> ReLU -> logits (12, sum of the map): p(class 1) = sigmoid(map sum - 12)."""
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(1, 1, 1))
    net.add_module("relu1", nn.ReLU())
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc8", nn.Linear(16, 2))
    with torch.no_grad():
        net.conv1.weight.fill_(2.0)
        net.conv1.bias.zero_()
        net.fc8.weight.copy_(torch.stack([torch.zeros(16), torch.ones(16)]))
        net.fc8.bias.copy_(torch.tensor([12.0, 0.0]))
    image = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4) / 16  # sums to 7.5
    blocks = image[0, 0].reshape(2, 2, 2, 2).sum(dim=(1, 3))  # the 2x2 block under each occluder position
    mean, std = torch.tensor(2.0), torch.tensor(4.0)  # black pixel = (0 - 2) / 4 = -0.5 after normalization
    for fill, value in (("mean", 0.0), ("zero", -0.5), (0.25, 0.25)):
        maps = occlusion(net, image, 1, Occluder(2, 2, fill, mean=mean, std=std), "conv1")
        # The ReLU zeroes a negative fill: the map's sum is 2 * (7.5 - block) + 4 * relu(2 * fill).
        map_sum = 2 * (image.sum() - blocks) + 4 * max(2 * value, 0.0)
        assert_close(maps["feature_activation"][0], map_sum)
        assert_close(maps["p_true"][0], torch.sigmoid(map_sum - 12))
        assert torch.equal(maps["top_class"][0], (map_sum > 12).long())
    assert maps["top_class"][0].tolist() == [[1, 1], [0, 0]]  # the fill of 0.25 adds 2: 15.75 13.75 / 11.75 10.75


def test_a_wrapped_net_gives_the_same_maps_as_the_net():
    class Wrapped(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

    model = tiny()
    images = torch.randn(1, 3, 64, 64)
    assert resolve_layer(Wrapped(model), "net.conv5") == "net.relu5"
    direct = occlusion(model, images, 1, Occluder(16, 16), "conv5")
    wrapped = occlusion(Wrapped(model), images, 1, Occluder(16, 16), "net.conv5")
    assert_maps_equal(wrapped, direct)


def test_model_state_and_hooks_are_restored():
    model = tiny().train()
    occlusion(model, torch.randn(1, 3, 64, 64), 0, Occluder(32, 32), fast=False)
    occlusion(model, torch.randn(1, 3, 64, 64), 0, Occluder(32, 32), fast=True)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_grid_keeps_the_occluder_inside():
    assert grid(64, 16, 4).tolist() == list(range(0, 49, 4))
    assert grid(10, 4, 4).tolist() == [0, 4]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(layer="conv9"), "unknown layer 'conv9'; choose one of: conv1, relu1, pool1"),
        (dict(layer="fc7"), r"needs a spatial \(conv\) layer"),
        (dict(window=65), "occlusion window 65 must be between 1 and the image size 64"),
        (dict(stride=0), "stride must be at least 1"),
        (dict(fill="grey"), "unknown occlusion fill 'grey'; choose one of: mean, zero, noise"),
        (dict(fill="zero"), "fill='zero' needs the input normalization"),
    ],
)
def test_user_mistakes_name_the_valid_choices(kwargs, message):
    args = dict(window=16, stride=16) | kwargs
    layer = args.pop("layer", None)
    with pytest.raises(UserError, match=message):
        occlusion(tiny(), torch.randn(1, 3, 64, 64), 0, Occluder(**args), layer)


@pytest.mark.slow
def test_command_writes_fig7_with_deconv_projections(viz_config, tmp_path):
    import numpy as np

    from zfviz.commands.viz_occlusion import run

    cfg = viz_config("occlusion", "viz.images=[0,5]", "viz.stride=8", "viz.fill=zero", "viz.object_frac=null")
    run(cfg)
    saved = np.load(tmp_path / "fig7_occlusion.npz")
    assert saved["p_true"].shape == (2, 7, 7) and saved["top_class"].shape == (2, 7, 7)
    assert saved["origins"].tolist() == [0, 8, 16, 24, 32, 40, 48] and int(saved["window"]) == 16
    assert np.isnan(saved["object_frac"])
    assert (tmp_path / "fig7_occlusion.png").is_file()


@pytest.mark.slow
def test_command_sizes_the_square_to_the_objects(viz_config, tmp_path):
    import numpy as np

    from zfviz.commands.viz_occlusion import run

    run(viz_config("occlusion", "viz.images=[0,5]", "viz.stride=8", "viz.projections=0", "viz.object_frac=0.25"))
    saved = np.load(tmp_path / "fig7_occlusion.npz")
    boxes = saved["object_boxes"]
    side = np.median(np.sqrt(boxes[:, 2] * boxes[:, 3].astype(float)))  # two images: the mean of their sides
    assert int(saved["window"]) == round(0.25 * side) and float(saved["object_frac"]) == 0.25
    assert saved["origins"].tolist() == list(range(0, 64 - int(saved["window"]) + 1, 8))


def test_object_boxes_find_the_object_on_its_background():
    from zfviz.attribution.occlusion import object_boxes, object_window

    images = torch.full((3, 1, 10, 12), 7.0)  # background 7, whatever its level
    images[0, :, 2:5, 3:9] = 200.0  # a bright 3 x 6 object
    images[1, :, 6:10, 0:2] = 0.0  # a dark 4 x 2 object at the corner
    images[1, :, 7, 1] = 3.0  # a pixel within 10% of the largest difference of the background: still object (inside)
    images[1, :, 0, 11] = 7.5  # a pixel within 10% of the largest difference: background
    # image 2: flat, no object: the whole frame
    assert object_boxes(images).tolist() == [[2, 3, 3, 6], [6, 0, 4, 2], [0, 0, 10, 12]]
    boxes = torch.tensor([[0, 0, 4, 9], [0, 0, 8, 8], [0, 0, 10, 12]])  # sides 6, 8, ~10.95: the median is 8
    assert object_window(boxes, 0.5, 64) == 4 and object_window(boxes, 1.0, 6) == 6  # within the image
    with pytest.raises(UserError, match="object_frac"):
        object_window(boxes, 0.0, 64)
