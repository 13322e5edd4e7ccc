"""Receptive fields walked along the module graph, against brute force: the input support of one
unit's gradient on a copy of the net with positive weights, max pools made average pools (so every
pixel of a window gets a gradient) and batch/contrast normalization made the identity."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.viz.receptive_field import receptive_field


def support_boxes(model: nn.Module, size: int, layer: str) -> tuple[dict, tuple[int, int]]:
    """Bounding box (top, left, bottom, right) of the pixels reaching map 0 at corner, centre and far cells."""
    net = copy.deepcopy(model).eval()
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.MaxPool2d):
            net.set_submodule(name, nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode))
        elif isinstance(module, (nn.BatchNorm2d, nn.LocalResponseNorm)):
            net.set_submodule(name, nn.Identity())
        elif isinstance(module, nn.Conv2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.0)
                if module.bias is not None:
                    module.bias.zero_()
    image = (torch.rand(1, 3, size, size) + 0.5).requires_grad_(True)
    acts = {}
    handle = net.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.setdefault("out", o.clone()))
    try:
        net(image)
    finally:
        handle.remove()
    out = acts["out"]
    rows, cols = out.shape[-2:]
    boxes = {}
    for y, x in {(0, 0), (rows // 2, cols // 2), (rows - 1, cols - 1), (0, cols - 1), (rows // 2, 1 % cols)}:
        (grad,) = torch.autograd.grad(out[0, 0, y, x], image, retain_graph=True)
        r, c = torch.nonzero(grad[0].abs().sum(0) > 0, as_tuple=True)
        boxes[(y, x)] = (int(r.min()), int(c.min()), int(r.max()) + 1, int(c.max()) + 1)
    return boxes, (rows, cols)


def assert_fields_match(model: nn.Module, size: int, layers) -> None:
    for layer in layers:
        field = receptive_field(model, layer, (3, size, size))
        boxes, _ = support_boxes(model, size, layer)
        for (y, x), box in boxes.items():
            assert field.box(y, x) == box, (layer, y, x)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_resnet18_fields_follow_the_residual_blocks():
    model = torchvision.models.resnet18(weights=None)
    # layer2 (99 px) fits a 128 px image with its centre cell unclipped, so the size is checked too;
    # inside a block (layer1.0.conv2), a block with a downsampling shortcut (layer2.0), a stage.
    assert_fields_match(model, 128, ["maxpool", "layer1.0.conv2", "layer1", "layer2.0", "layer2"])
    assert receptive_field(model, "layer2", (3, 128, 128)).size == (99, 99)
    assert receptive_field(model, "layer2", (3, 128, 128)).jump == (8, 8)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_resnet18_third_stage_and_the_whole_image_after_the_pool():
    model = torchvision.models.resnet18(weights=None)
    assert_fields_match(model, 160, ["layer3.0.conv1", "layer3.0.relu"])
    field = receptive_field(model, "layer3.0.conv1", (3, 160, 160))
    assert (field.size, field.jump, field.offset) == ((115, 115), (16, 16), (-57, -57))
    assert receptive_field(model, "fc", (3, 64, 64)).box(0, 0) == (0, 0, 64, 64)
    assert receptive_field(model, "avgpool", (3, 64, 64)).window == (64, 64)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("alexnet", ["features.2", "features.6"]),
        # a full vgg11_bn build (its classifier initialized, then dropped): ~2 s
        pytest.param("vgg11_bn", ["features.7", "features.14"], marks=pytest.mark.slow),
    ],
)
def test_torchvision_chains(name, layers):
    model = getattr(torchvision.models, name)(weights=None)
    model.classifier = nn.Identity()  # 100M parameters the fields never reach: a cheaper deep copy
    assert_fields_match(model, 96, layers)


@pytest.mark.usefixtures("one_thread")
def test_our_zfnet_at_the_cpu_preset():
    model = build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=32, init="kaiming")
    assert_fields_match(model, 64, ["pool1", "conv2", "conv3"])


def test_a_functional_operation_it_cannot_follow_is_one_line():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 2, 3), nn.Conv2d(3, 2, 5, padding=1), nn.Conv2d(4, 1, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], dim=1))

    with pytest.raises(UserError, match="receptive field: c reads a tensor no module wrote"):
        receptive_field(Concat(), "c", (3, 16, 16))
    assert receptive_field(Concat(), "b", (3, 16, 16)).size == (5, 5)
    with pytest.raises(UserError, match="unknown layer"):
        receptive_field(Concat(), "d", (3, 16, 16))
