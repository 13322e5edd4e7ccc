"""The streaming top-9 pass (Fig. 2) against brute force, and receptive fields against autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.viz.deconv import project_with_values
from zfviz.viz.receptive_field import crop, receptive_field
from zfviz.viz.top9 import Explainer, ordered_batches, project_top, top_activations


def small_zfnet() -> nn.Sequential:
    return build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=32, init="kaiming").eval()


def brute_force_top(model: nn.Module, images: torch.Tensor, layer: str, k: int):
    """All activations at once; per map, each image's strongest cell; sort by value, then image index."""
    acts = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.setdefault("out", o.clone()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    act = acts["out"]
    width = act.shape[-1] if act.dim() == 4 else 1
    best, where = act.reshape(act.shape[0], act.shape[1], -1).max(dim=2)  # (images, maps), all in memory
    rows = []
    for c in range(act.shape[1]):
        entries = [
            (-float(best[i, c]), i, int(where[i, c]) // width, int(where[i, c]) % width) for i in range(len(images))
        ]
        rows.append(sorted(entries)[:k])
    values = torch.tensor([[-e[0] for e in row] for row in rows])
    index = torch.tensor([[e[1] for e in row] for row in rows])
    position = torch.tensor([[[e[2], e[3]] for e in row] for row in rows])
    return values, index, position


@pytest.mark.parametrize("batch_size", [5, 24])
def test_streaming_top9_equals_brute_force_at_any_batch_size(batch_size):
    model = small_zfnet()
    images = torch.randn(24, 3, 64, 64)
    layers = ["conv2", "relu3", "fc6"]
    tops = top_activations(model, images.split(batch_size), layers, k=9)
    for layer in layers:
        values, index, position = brute_force_top(model, images, layer, 9)
        assert torch.equal(tops[layer].image, index), layer
        assert torch.equal(tops[layer].position, position), layer
        # Convolutions over batches of 1 and 40 may round differently in the last bit.
        torch.testing.assert_close(tops[layer].values, values, rtol=1e-5, atol=1e-6)


def test_ties_go_to_the_earlier_image_whatever_the_batches():
    model = small_zfnet()
    one = torch.randn(1, 3, 64, 64)
    images = torch.cat([torch.randn(3, 3, 64, 64), one, torch.randn(2, 3, 64, 64), one, one])
    expected = brute_force_top(model, images, "conv3", 9)[1]
    for batch_size in (1, 4, 9):
        top = top_activations(model, images.split(batch_size), ["conv3"], k=9)["conv3"]
        assert torch.equal(top.image, expected)
        assert top.values.shape == (96, 8)


def test_fewer_images_than_k_and_hooks_are_gone():
    model = small_zfnet().train()
    top = top_activations(model, [torch.randn(4, 3, 64, 64)], ["conv1"], k=9)["conv1"]
    assert top.values.shape == (24, 4) and sorted(top.image[0].tolist()) == [0, 1, 2, 3]
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(UserError, match="unknown layer 'conv7'"):
        top_activations(model, [torch.randn(1, 3, 64, 64)], ["conv7"])
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.slow
def test_in_place_relu_after_the_layer_does_not_change_what_is_ranked():
    from torchvision.models import alexnet

    net = alexnet(weights=None).eval()
    images = torch.randn(5, 3, 224, 224)
    top = top_activations(net, images.split(2), ["features.10"], k=3)["features.10"]
    values, index, _ = brute_force_top(net.features[:11], images, "10", 3)  # no ReLU after conv5 here
    assert (values < 0).any(), "pre-ReLU values: a rectified copy would show zeros"
    assert torch.equal(top.image, index)
    torch.testing.assert_close(top.values, values, rtol=1e-6, atol=1e-6)


# --- projections of the top activations --------------------------------------------------------------


def test_projections_of_the_top_match_single_projections_and_patches_match_the_images():
    model = small_zfnet()
    stored = torch.randint(0, 256, (20, 1, 64, 64), dtype=torch.uint8)

    def prepare(batch):
        return (batch.float().expand(-1, 3, -1, -1) - 70.0) / 80.0

    top = top_activations(model, ordered_batches(stored, prepare, 8), ["conv2"], k=9)["conv2"]
    out = project_top(model, "conv2", top, stored, prepare, maps=[3, 11], how=Explainer(batch_size=5))
    assert out.projection.shape == (2, 9, 3, 27, 27) and out.patch.shape == (2, 9, 1, 27, 27)
    field = receptive_field(model, "conv2", (3, 64, 64))
    for m, channel in enumerate((3, 11)):
        for r in (0, 8):
            i = int(top.image[channel, r])
            full, value, where = project_with_values(model, prepare(stored[i : i + 1]), "conv2", channel)
            assert torch.equal(where[0], top.position[channel, r])
            torch.testing.assert_close(value[0], top.values[channel, r])
            top_left = torch.tensor([field.window_at(*where[0].tolist())])
            torch.testing.assert_close(
                out.projection[m, r], crop(full, top_left, field.window)[0], rtol=1e-5, atol=1e-6
            )
            y, x = top_left[0].tolist()
            assert torch.equal(out.patch[m, r], stored[i, :, y : y + 27, x : x + 27])


# --- receptive fields -------------------------------------------------------------------------------


def test_zfnet_receptive_fields_at_224_follow_fig3():
    model = build_model("zfnet", num_classes=10, width=0.05, fc_dims=8)  # same geometry, less compute
    sizes = {"conv1": 7, "pool1": 11, "conv2": 27, "pool2": 43, "conv3": 75, "conv4": 107, "conv5": 139, "pool5": 171}
    jumps = {"conv1": 2, "pool1": 4, "conv2": 8, "pool2": 16, "conv3": 16, "conv5": 16, "pool5": 32}
    for layer, size in sizes.items():
        field = receptive_field(model, layer, (3, 224, 224))
        assert field.size == (size, size), layer
        if layer in jumps:
            assert field.jump == (jumps[layer],) * 2, layer
    assert receptive_field(model, "fc6", (3, 224, 224)).box(0, 0) == (0, 0, 224, 224)


def _support(model: nn.Module, size: int, layer: str, y: int, x: int) -> tuple[int, int, int, int]:
    """Bounding box of the pixels that reach cell (y, x): autograd on a positive, average-pooled copy."""
    net = copy.deepcopy(model).eval()
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.MaxPool2d):  # same windows, but every pixel in them gets a gradient
            net.set_submodule(name, nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode))
        elif isinstance(module, nn.Conv2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.0)
                module.bias.zero_()
        elif isinstance(module, nn.LocalResponseNorm):
            net.set_submodule(name, nn.Identity())
    image = torch.rand(1, 3, size, size) + 0.5
    image.requires_grad_(True)
    acts = {}
    handle = net.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.setdefault("out", o))
    try:
        net(image)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(acts["out"][0, 0, y, x], image)
    rows, cols = torch.nonzero(grad[0].abs().sum(0) > 0, as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


@pytest.mark.parametrize("name", ["zfnet", "alexnet"])
def test_receptive_field_boxes_equal_the_autograd_support(name):
    size = 96
    model = build_model(name, num_classes=10, input_size=size, width=0.1, fc_dims=16, init="kaiming")
    for layer in ("conv1", "pool1", "conv2", "conv3"):
        field = receptive_field(model, layer, (3, size, size))
        with torch.no_grad():
            rows, cols = model[: list(dict(model.named_children())).index(layer) + 1](
                torch.zeros(1, 3, size, size)
            ).shape[-2:]
        for y, x in ((0, 0), (rows // 2, cols - 1)):
            assert field.box(y, x) == _support(model, size, layer, y, x), (name, layer, y, x)
