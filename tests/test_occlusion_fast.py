"""The occlusion fast path on torchvision nets (issue 17): brute force as the oracle, and proof that it fired.

The fast path follows the occluder's rectangle through ``features`` (AlexNet, VGG) or a ResNet's stem
and residual blocks, then hands whole maps to the model's own forward. Its maps must equal one
forward per occluded copy; since the equality would also hold if it silently fell back to whole
copies, each test also checks from outside that the first conv never saw an occluded copy.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tests.test_occlusion import assert_maps_equal, brute_force, fill_pixels
from zfviz.activations import evaluating
from zfviz.attribution.occlusion import Occluder, fill_image, grid, occlusion, resolve_layer
from zfviz.attribution.occlusion_fast import Squares, Sweep

pytestmark = pytest.mark.usefixtures("one_thread")


def tv_net(name: str) -> nn.Module:
    """A torchvision net with random weights (He init, so the logits spread), a narrow classifier (the fast
    path never reaches it; torchvision's 4096-wide one takes seconds to initialize) and, for ResNets, batch
    norm statistics that are not the identity. Built on the meta device, then given values."""
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None, num_classes=10)
        if isinstance(getattr(model, "classifier", None), nn.Sequential):
            linears = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
            for i in linears:
                width_in = model.classifier[i].in_features if i == linears[0] else 32
                model.classifier[i] = nn.Linear(width_in, 10 if i == linears[-1] else 32)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


def batch_sizes_seen(model: nn.Module, path: str, run) -> list[int]:
    """Batch sizes module ``path`` receives while ``run()`` runs."""
    seen: list[int] = []
    handle = model.get_submodule(path).register_forward_hook(lambda _m, inputs, _o: seen.append(len(inputs[0])))
    try:
        run()
    finally:
        handle.remove()
    return seen


def planned_steps(model, images, layer, window, stride) -> list[str]:
    size = images.shape[-1]
    ys = grid(size, window, stride)
    with evaluating(model), torch.no_grad():
        fill = fill_image("mean", (3, size, size))
        _, _, sweep = Sweep.build(model, images, resolve_layer(model, layer), Squares(fill, window, ys, ys))
    return [] if sweep is None else [step.path for step in sweep.steps]


# Sizes keep each brute-force loop to a few seconds; stride < window everywhere, and the windows'
# positions (the last one flush with the border) do not line up with the conv strides.
CASES = [
    # 11x11/4 conv1 and 3x3/2 pools; the rectangle reaches conv2 (features.3) before covering its map.
    ("alexnet", 2, 79, 13, 11, None, "features.0", "features.3"),
    # 3x3 convs and 2x2 pools: through two pools; the default layer (features.19) is captured after the swap.
    ("vgg11", 1, 40, 10, 6, None, "features.0", "features.5"),
    # The stem, layer1's identity blocks and layer2.0's strided block with its 1x1 downsample shortcut;
    # the feature layer (layer1) is totalled from the rectangles.
    ("resnet18", 1, 96, 16, 13, "layer1", "conv1", "layer2.0"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,n,size,window,stride,layer,first_conv,reached", CASES)
def test_fast_path_equals_brute_force_on_torchvision_nets(name, n, size, window, stride, layer, first_conv, reached):
    model = tv_net(name)
    images = torch.randn(n, 3, size, size)
    target = torch.tensor([3, 7][:n])
    feature = resolve_layer(model, layer)
    steps = planned_steps(model, images, layer, window, stride)
    assert reached in steps  # how far the rectangle is followed before whole maps go back into the model
    expected, channel = brute_force(model, images, target, window, stride, fill_pixels("noise", (3, size, size), seed=5), feature)  # fmt: skip
    got: dict = {}
    sizes = batch_sizes_seen(
        model,
        first_conv,
        lambda: got.update(occlusion(model, images, target, Occluder(window, stride, "noise", seed=5), layer)),
    )
    assert max(sizes) == len(images)  # only the unoccluded images: no occluded copy went through conv1
    assert torch.equal(got["channel"], channel)
    assert_maps_equal(got, expected)


def test_the_plain_path_does_send_copies_through_conv1():
    """The check above can fail: without the fast path, conv1 sees the batches of occluded copies."""
    model = tv_net("alexnet")
    images = torch.randn(1, 3, 79, 79)
    sizes = batch_sizes_seen(model, "features.0", lambda: occlusion(model, images, 0, Occluder(13, 11), fast=False))
    assert max(sizes) == len(grid(79, 13, 11)) ** 2


@pytest.mark.slow
def test_bottleneck_blocks_and_the_default_layer_after_the_swap():
    model = tv_net("resnet50")
    images = torch.randn(1, 3, 80, 80)
    assert "layer2.0" in planned_steps(model, images, None, 16, 16)
    fast = occlusion(model, images, 2, Occluder(16, 16))
    plain = occlusion(model, images, 2, Occluder(16, 16), fast=False)  # equals brute force: test_occlusion.py
    assert fast["layer"] == "layer4"
    assert_maps_equal(fast, plain)


def test_a_skip_connection_to_an_early_map_falls_back_to_whole_copies():
    """The model's forward reads conv1's output again at the end: the swap cannot feed that, so no fast path."""

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.relu1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 5)

        def forward(self, x):
            early = self.conv1(x)
            late = self.conv2(self.relu1(early))
            return self.fc(self.pool(late + early).flatten(1))

    model = Skip().eval()
    images = torch.randn(1, 3, 24, 24)
    assert planned_steps(model, images, "conv2", 4, 4) == []
    target = torch.tensor([1])
    expected, _ = brute_force(model, images, target, 4, 4, fill_pixels("mean", (3, 24, 24)), "conv2")
    assert_maps_equal(occlusion(model, images, target, Occluder(4, 4), "conv2"), expected)


def test_torchvision_model_is_unchanged():
    model = tv_net("resnet18").train()
    model.layer1[0].relu.inplace = True
    state = {key: value.clone() for key, value in model.state_dict().items()}
    occlusion(model, torch.randn(1, 3, 64, 64), 0, Occluder(16, 16))
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


def test_a_shortcut_wider_than_the_main_path_is_pasted_into_the_union():
    """A BasicBlock whose main path is two 1x1 convs and whose shortcut is a 3x3 conv: the block's changed
    region is the shortcut's, so the main path's rectangle is pasted into its unoccluded map first."""
    from torchvision.models.resnet import BasicBlock

    block = BasicBlock(4, 4, downsample=nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)))
    block.conv1, block.conv2 = nn.Conv2d(4, 4, 1, bias=False), nn.Conv2d(4, 4, 1, bias=False)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), block, nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)).eval()
    images = torch.randn(2, 3, 26, 26)
    steps = planned_steps(model, images, "1", 5, 3)
    assert steps == ["0", "1"]
    target = torch.tensor([0, 4])
    expected, _ = brute_force(model, images, target, 5, 3, fill_pixels("noise", (3, 26, 26), seed=5), "1")
    assert_maps_equal(occlusion(model, images, target, Occluder(5, 3, "noise", seed=5), "1"), expected)


def test_each_origin_computes_exactly_the_region_its_occluder_reaches(monkeypatch):
    """With no merging of origins (``GROUP_COST = 0``) every conv/pool computes, for every occluder origin, the
    bounding box of the outputs its square can reach: the oracle pushes the occluder's 0/1 indicator through
    the layers' geometry (max-pooling with the layer's kernel, stride, padding and ceil mode). With the default
    merging a class computes at least that box."""
    from zfviz.attribution import occlusion_fast
    from zfviz.attribution.occlusion_chain import Window

    model = nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip
    size, window, stride = 41, 7, 3
    ys = grid(size, window, stride)

    for cost, exact in ((0.0, True), (occlusion_fast.GROUP_COST, False)):
        monkeypatch.setattr(occlusion_fast, "GROUP_COST", cost)
        with torch.no_grad():
            images, fill = torch.randn(1, 3, size, size), torch.zeros(3, size, size)
            _, _, sweep = Sweep.build(model, images, "4", Squares(fill, window, ys, ys))
        ops = [op for step in sweep.steps for op in step.main if isinstance(op, Window)]
        assert len(ops) == 4  # conv, pool, conv, conv
        for iy, y in enumerate(ys.tolist()):
            for ix, x in enumerate(ys.tolist()):
                indicator = torch.zeros(1, 1, size, size)
                indicator[..., y : y + window, x : x + window] = 1
                for op in ops:
                    ceil = getattr(op.module, "ceil_mode", False)
                    indicator = F.max_pool2d(indicator, op.kernel, op.stride, op.padding, ceil_mode=ceil)
                    rows, cols = (indicator[0, 0].amax(dim).nonzero().flatten() for dim in (1, 0))
                    ky, kx = int(sweep.classes[0][iy]), int(sweep.classes[1][ix])
                    start = (int(op.rect.start[0][iy]), int(op.rect.start[1][ix]))
                    end = (start[0] + op.rect.lengths[0][ky], start[1] + op.rect.lengths[1][kx])
                    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
                    if exact:
                        assert (*start, *end) == box
                    else:
                        assert start[0] <= box[0] and start[1] <= box[1] and end[0] >= box[2] and end[1] >= box[3]
