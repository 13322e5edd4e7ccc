"""The atlas's one pass (issue 26) against brute force: top k, crops, dead units, histograms, class means."""

from __future__ import annotations

import functools
from collections import OrderedDict

import pytest
import torch
from torch import nn

from zfviz.atlas.collect import collect, crop_boxes, next_units, weighted_layers
from zfviz.atlas.histogram import BINS

# Tiny nets: two threads only contend (tens of ms per pass instead of one).
pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ["conv1", "conv2", "fc"]


def tiny_net() -> nn.Sequential:
    """Integer weights on integer images: every activation is exact in float32 whatever the kernel, so
    brute force and the streamed pass agree bit for bit and ties are plentiful. conv1's unit 2 is dead
    (weights 0, bias -1); 8 px images give 4 x 4 maps at conv1 and 2 x 2 at conv2."""
    gen = torch.Generator().manual_seed(3)
    net = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 3, 3, stride=2, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(3, 4, 3),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc=nn.Linear(16, 5),
        )
    )
    with torch.no_grad():
        for module in (net.conv1, net.conv2, net.fc):
            module.weight.copy_(torch.randint(-1, 2, module.weight.shape, generator=gen))
            module.bias.copy_(torch.randint(-1, 2, module.bias.shape, generator=gen))
        net.conv1.weight[2] = 0
        net.conv1.bias[2] = -1
    return net.eval()


def tiny_images() -> tuple[torch.Tensor, torch.Tensor]:
    """12 images of 0..3 (image 3 repeated as 7 and 10: exact ties across images) and labels of 4 classes,
    class 3 without images and one image unlabelled (-1)."""
    images = torch.randint(0, 4, (12, 1, 8, 8), generator=torch.Generator().manual_seed(5)).float()
    images[7] = images[10] = images[3]
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, -1, 1])
    return images, labels


def one_image_output(model: nn.Module, layer: str, image: torch.Tensor) -> torch.Tensor:
    """``layer``'s output for one image, alone in its batch."""
    seen = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.update(out=o[0]))
    try:
        with torch.no_grad():
            model(image[None])
    finally:
        handle.remove()
    return seen["out"]


def per_image_values(net: nn.Module, images: torch.Tensor, layer: str):
    """Plain loops, one image at a time: each unit's strongest cell (the first in reading order on a tie)."""
    rows = []
    for image in images:
        out = one_image_output(net, layer, image)
        out = (out if out.dim() == 3 else out[:, None, None]).tolist()
        units = []
        for unit in out:
            best, where = None, None
            for y, row in enumerate(unit):
                for x, value in enumerate(row):
                    if best is None or value > best:
                        best, where = value, (y, x)
            units.append((best, where))
        rows.append(units)
    return rows  # rows[image][unit] = (value, (y, x))


@functools.cache
def tiny_rows(layer: str):
    """``per_image_values`` of the tiny net on its images, computed once per layer for all the tests."""
    return per_image_values(tiny_net(), tiny_images()[0], layer)


def brute_force_top(rows, k: int):
    """Per unit: every image's strongest cell, sorted by value, ties to the earlier image."""
    units = len(rows[0])
    tops = []
    for unit in range(units):
        entries = sorted((-rows[i][unit][0], i, rows[i][unit][1]) for i in range(len(rows)))
        tops.append([(-v, i, pos) for v, i, pos in entries[:k]])
    return tops


@pytest.mark.parametrize("batch_size", [1, 5, 12])
def test_the_top_k_of_every_unit_equals_brute_force(batch_size):
    net, (images, labels) = tiny_net(), tiny_images()
    stats = collect(net, images.split(batch_size), LAYERS, labels, classes=4, k=4)
    for layer in LAYERS:
        expected = brute_force_top(tiny_rows(layer), 4)
        top = stats[layer].top
        assert top.values.tolist() == [[v for v, _, _ in unit] for unit in expected], layer
        assert top.image.tolist() == [[i for _, i, _ in unit] for unit in expected], layer
        assert top.position.tolist() == [[list(p) for _, _, p in unit] for unit in expected], layer
    # Images 3, 7 and 10 are one image: wherever it ranks, the copies follow in index order.
    ranked = [unit for layer in LAYERS for unit in stats[layer].top.image.tolist()]
    copies = [[i for i in unit if i in (3, 7, 10)] for unit in ranked]
    assert all(found == sorted(found) for found in copies)
    assert any(len(found) > 1 for found in copies)  # the ties are there to break


def test_batch_size_changes_nothing():
    net, (images, labels) = tiny_net(), tiny_images()
    runs = [collect(net, images.split(size), LAYERS, labels, classes=4, k=3) for size in (1, 4, 12)]
    for layer in LAYERS:
        first = runs[0][layer]
        for other in (run[layer] for run in runs[1:]):
            for key in ("values", "image", "position"):
                assert torch.equal(getattr(first.top, key), getattr(other.top, key))
            assert torch.equal(first.histogram.counts, other.histogram.counts)
            assert torch.equal(first.histogram.ranges(), other.histogram.ranges())
            assert torch.equal(first.class_sum, other.class_sum)  # integer sums: exact in any order


def test_histograms_count_every_images_value_at_the_final_range():
    net, (images, labels) = tiny_net(), tiny_images()
    stats = collect(net, images.split(5), LAYERS, labels, classes=4)
    for layer in LAYERS:
        rows = tiny_rows(layer)
        histogram = stats[layer].histogram
        for unit, (low, high) in enumerate(histogram.ranges().tolist()):
            values = torch.tensor([rows[i][unit][0] for i in range(len(rows))], dtype=torch.float64)
            assert low <= values.min() and values.max() < high
            direct = torch.histogram(values, bins=torch.linspace(low, high, BINS + 1, dtype=torch.float64))
            assert histogram.counts[unit].tolist() == direct.hist.long().tolist(), (layer, unit)


def test_dead_units_are_the_ones_no_image_drives_above_zero():
    net, (images, labels) = tiny_net(), tiny_images()
    stats = collect(net, images.split(4), LAYERS, labels, classes=4)
    for layer in LAYERS:
        rows = tiny_rows(layer)
        expected = [all(rows[i][u][0] <= 0 for i in range(len(rows))) for u in range(len(rows[0]))]
        assert stats[layer].dead.tolist() == expected
    assert stats["conv1"].dead.tolist() == [False, False, True]  # the unit made dead, and only it


def test_class_means_equal_a_direct_computation():
    net, (images, labels) = tiny_net(), tiny_images()
    stats = collect(net, images.split(5), LAYERS, labels, classes=4)
    for layer in LAYERS:
        rows = tiny_rows(layer)
        mean = stats[layer].class_mean
        for c in range(3):
            members = [i for i in range(len(images)) if labels[i] == c]
            for unit in range(len(rows[0])):
                assert mean[c, unit] == sum(rows[i][unit][0] for i in members) / len(members)
        assert torch.isnan(mean[3]).all()  # no image of class 3; the unlabelled image counts in none
    assert stats["fc"].class_count.tolist() == [4, 4, 3, 0]
    unlabelled = collect(net, [images], ["fc"])["fc"]
    assert unlabelled.class_mean.shape == (0, 5)


def field_by_hand(layer: str, y: int, x: int) -> list[int]:
    """conv1 (kernel 3, stride 2, padding 1): cell i reads rows 2i-1..2i+1; conv2 (kernel 3) reads conv1's
    cells y..y+2, so rows 2y-1..2y+5; clipped to the 8 px image; fc reads it all."""
    if layer == "fc":
        return [0, 0, 8, 8]
    first = {"conv1": (2 * y - 1, 2 * x - 1), "conv2": (2 * y - 1, 2 * x - 1)}[layer]
    size = {"conv1": 3, "conv2": 7}[layer]
    return [max(first[0], 0), max(first[1], 0), min(first[0] + size, 8), min(first[1] + size, 8)]


def test_crops_are_the_receptive_field_clipped_to_the_image():
    net, (images, labels) = tiny_net(), tiny_images()
    stats = collect(net, images.split(5), LAYERS, labels, classes=4, k=4)
    for layer in LAYERS:
        top = stats[layer].top
        boxes = crop_boxes(net, layer, top, (1, 8, 8))
        assert boxes.shape == (*top.values.shape, 4)
        for unit in range(top.maps):
            for rank in range(4):
                y, x = top.position[unit, rank].tolist()
                assert boxes[unit, rank].tolist() == field_by_hand(layer, y, x), (layer, unit, rank)


def test_crops_match_the_autograd_support_of_the_unit():
    """An independent field: the input pixels a cell's gradient reaches, with positive weights and no
    rectification in the way (nothing cancels)."""
    net = tiny_net()
    with torch.no_grad():
        for module in (net.conv1, net.conv2, net.fc):
            module.weight.fill_(1.0)
    for y, x in [(0, 0), (1, 0), (1, 1)]:
        image = torch.ones(1, 1, 8, 8, requires_grad=True)
        out = nn.Sequential(net.conv1, net.conv2)(image)
        out[0, 0, y, x].backward()
        rows, cols = image.grad[0, 0].nonzero(as_tuple=True)
        support = [int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1]
        assert field_by_hand("conv2", y, x) == support


def test_next_units_are_the_largest_weight_norms_of_the_next_layer():
    net = tiny_net()
    nxt = next_units(net, "conv1", 3, (1, 8, 8), count=2)
    norms = torch.tensor([[float(net.conv2.weight[v, u].detach().norm()) for v in range(4)] for u in range(3)])
    assert nxt.name == "conv2"
    for u in range(3):
        expected = sorted(range(4), key=lambda v: (-norms[u, v], v))[:2]
        assert nxt.units[u].tolist() == expected
        assert nxt.strength[u].tolist() == [float(norms[u, v]) for v in expected]
    assert nxt.strength[2].tolist() == [float(net.conv2.weight[v, 2].detach().norm()) for v in nxt.units[2].tolist()]
    # conv2 feeds fc through flatten: unit u owns fc's inputs 4u..4u+3.
    fc = next_units(net, "conv2", 4, (1, 8, 8), count=5)
    assert fc.name == "fc"
    for u in range(4):
        norms = net.fc.weight.detach()[:, 4 * u : 4 * u + 4].norm(dim=1)
        assert fc.strength[u].tolist() == sorted(norms.tolist(), reverse=True)
    assert next_units(net, "fc", 5, (1, 8, 8)) is None
    assert weighted_layers(net) == LAYERS


def test_hooks_are_gone_and_the_mode_restored():
    net, (images, labels) = tiny_net(), tiny_images()
    net.train()
    collect(net, [images], LAYERS, labels, classes=4)
    next_units(net, "conv1", 3, (1, 8, 8))
    assert net.training and all(not m._forward_hooks for m in net.modules())


def brute_force_resnet(model: nn.Module, images: torch.Tensor, layer: str, k: int):
    """One image at a time, every position: the per-unit top ``k`` (value, image), ties to the earlier image."""
    values = []
    for image in images:
        out = one_image_output(model, layer, image)
        values.append(out.reshape(out.shape[0], -1).amax(dim=1))
    values = torch.stack(values)  # (images, units)
    order = [
        sorted(range(len(images)), key=lambda i, u=u: (-float(values[i, u]), i))[:k] for u in range(values.shape[1])
    ]
    index = torch.tensor(order)
    return values.T.gather(1, index), index


@pytest.mark.slow  # resnet18 at 64 px, a few images one at a time and batched: about a second
def test_the_top_k_on_resnet18_equals_brute_force():
    import torchvision

    model = torchvision.models.get_model("resnet18", weights=None).eval()
    images = torch.randn(5, 3, 64, 64)
    layers = ["conv1", "layer1.0.conv2", "layer3", "fc"]
    stats = collect(model, images.split(2), layers, k=3)
    for layer in layers:
        values, index = brute_force_resnet(model, images, layer, 3)
        assert torch.equal(stats[layer].top.image, index), layer
        # One image at a time against batches of two: the conv kernels may round the last bit differently.
        torch.testing.assert_close(stats[layer].top.values, values, rtol=1e-5, atol=1e-5)
    boxes = crop_boxes(model, "fc", stats["fc"].top, (3, 64, 64))
    assert (boxes == torch.tensor([0, 0, 64, 64])).all()
    assert next_units(model, "layer1.0.conv1", 64, (3, 64, 64)).name == "layer1.0.conv2"
