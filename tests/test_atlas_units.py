"""A unit's data in the atlas (issue 26): its projections, selectivity, maximization images and concept label."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from tests.test_atlas import tiny_images
from tests.test_dissect import CATEGORIES, LABELS, RED_UNIT, probe, squares
from zfviz.atlas.collect import collect, crop_boxes, selectivity_index
from zfviz.atlas.concepts import dissected_labels, read_labels
from zfviz.atlas.export import LayerAtlas, write_atlas
from zfviz.atlas.unit_images import (
    ROWS,
    Maximizing,
    Projecting,
    fitted,
    maximized,
    patch_picture,
    projection_picture,
    sprite,
    unit_projections,
)
from zfviz.attribution.composites import GUIDED_BACKPROP
from zfviz.attribution.mechanism import backward
from zfviz.dissection import write_broden
from zfviz.errors import UserError
from zfviz.reconstruction.maximize import Canvas, Priors
from zfviz.viz.deconv import project

pytestmark = pytest.mark.usefixtures("one_thread")


def pooled_net() -> nn.Sequential:
    """A ZFNet in miniature (conv, ReLU, overlapping max pool, contrast normalization, conv, linear), random
    weights: the projections cross every kind of module the deconvnet inverts on our nets."""
    torch.manual_seed(2)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 4, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(3, stride=2, ceil_mode=True),
            norm1=nn.LocalResponseNorm(3),
            conv2=nn.Conv2d(4, 3, 3),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc=nn.Linear(12, 5),
        )
    ).eval()


@pytest.mark.slow  # a batched projection per layer and method, and one single projection per kept activation
@pytest.mark.parametrize("layer", ["conv1", "conv2", "fc"])
def test_each_sprite_projection_equals_the_single_units_projection(layer):
    net, (images, labels) = pooled_net(), tiny_images()
    stats = collect(net, images.split(5), [layer], labels, classes=4, k=3)[layer]
    units = list(range(stats.top.maps))
    how = Projecting(net, images, lambda x: x, batch_size=16, chunk=2)
    deconv = unit_projections(how, layer, stats, units, "deconvnet")
    guided = unit_projections(how, layer, stats, units, "guided_backprop")
    assert deconv.shape == (len(units), 3, 1, 8, 8)
    for unit in units:
        for rank in range(3):
            image = images[int(stats.top.image[unit, rank])][None]
            cell = tuple(stats.top.position[unit, rank].tolist())
            alone = project(net, image, layer, unit, position=cell if layer != "fc" else None)[0]
            # Vmapped backwards of many starts against one backward: the same products, summed by other
            # kernels in float32, so agreement to rounding (relative 1e-5 of values of order 1).
            torch.testing.assert_close(deconv[unit, rank], alone, rtol=1e-5, atol=1e-6)
            target = (layer, unit, cell if layer != "fc" else None)
            # guided backprop's one backward (attribute's, started from the value as the deconvnet's)
            single = backward(net, image, target, composite=GUIDED_BACKPROP, start="value").inputs[0]
            torch.testing.assert_close(guided[unit, rank], single, rtol=1e-5, atol=1e-6)
    # Below conv1 no ReLU: both are the value times the filter; above it the two rules differ.
    assert deconv.abs().sum() > 0 and torch.equal(deconv, guided) == (layer == "conv1")


def test_a_projection_tile_is_zero_at_gray_stretched_on_its_own_and_cropped():
    projection = torch.zeros(1, 4, 4)
    projection[0, 1, 1], projection[0, 1, 2], projection[0, 3, 3] = 2.0, -2.0, 100.0  # the last outside the box
    picture = np.asarray(projection_picture(projection, [1, 1, 3, 3], channels=1))
    # Nonzero magnitudes in the box: both 2, so 2 is full white and -2 full black; zero is mid-gray.
    assert picture.shape == (2, 2, 3) and (picture[..., 0] == picture[..., 2]).all()
    assert picture[..., 0].tolist() == [[255, 0], [128, 128]]
    colour = projection_picture(torch.zeros(3, 4, 4), [0, 0, 4, 4], channels=3)
    assert (np.asarray(colour) == 128).all()  # all zero: flat gray, not a division by zero


def test_a_sprite_holds_the_patch_and_projections_in_rows_of_square_tiles():
    net, (images, labels) = pooled_net(), tiny_images()
    stored = (images * 60).to(torch.uint8)
    stats = collect(net, [stored.float()], ["conv1"], labels, classes=4, k=2)["conv1"]
    boxes = crop_boxes(net, "conv1", stats.top, (1, 8, 8))
    k, tile = 2, 12
    projections = {m: torch.randn(k, 1, 8, 8) for m in ROWS[1:]}
    picture = sprite(stored, stats, boxes, 0, projections, tile)
    assert picture.size == (tile * k, tile * len(ROWS))
    for rank in range(k):
        box = boxes[0, rank].tolist()
        expected = [patch_picture(stored[int(stats.top.image[0, rank])], box)]
        expected += [projection_picture(projections[m][rank], box, 1) for m in ROWS[1:]]
        for row, shown in enumerate(expected):
            cut = picture.crop((rank * tile, row * tile, (rank + 1) * tile, (row + 1) * tile))
            assert np.array_equal(np.asarray(cut), np.asarray(fitted(shown, tile))), (rank, row)


def test_fitted_centres_a_crop_in_its_square():
    crop = Image.fromarray(np.full((2, 4), 7, dtype=np.uint8))  # 4 wide, 2 high: twice enlarged, 4 rows margin
    square = np.asarray(fitted(crop, 8))
    assert square.shape == (8, 8, 3) and (square[2:6] == 7).all()
    assert (square[:2] == 255).all() and (square[6:] == 255).all()


def linear_values(values: list[list[float]]):
    """A net whose layer ``fc`` returns its input: each row of ``values`` is one image's per-unit values."""
    net = nn.Sequential(OrderedDict(fc=nn.Linear(len(values[0]), len(values[0]))))
    with torch.no_grad():
        net.fc.weight.copy_(torch.eye(len(values[0])))
        net.fc.bias.zero_()
    return net.eval(), torch.tensor(values, dtype=torch.float32)


def test_selectivity_is_the_index_of_the_rectified_class_means(tmp_path):
    # Units: 0 prefers class 0; 1 is dead; 2 is driven alike by every class; 3 only by class 2.
    net, x = linear_values([[4, -1, 1, 0], [2, -3, 1, 0], [-2, -1, 1, 0], [0, -2, 1, 0], [1, -1, 1, 5]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    stats = collect(net, x.split(2), ["fc"], labels, classes=4)["fc"]  # class 3: no images, in no mean
    # Unit 0: rectified class means 3, 0, 1: (3 - 0.5) / (3 + 0.5). Unit 3: 0, 0, 5: (5 - 0) / (5 + 0).
    expected = [2.5 / 3.5, math.nan, 0.0, 1.0]
    torch.testing.assert_close(stats.selectivity, torch.tensor(expected, dtype=torch.float64), equal_nan=True)
    unlabelled = collect(net, [x], ["fc"])["fc"]
    assert unlabelled.selectivity.isnan().all()  # no labels: no index
    layer = LayerAtlas(stats, torch.zeros(*stats.top.values.shape, 4, dtype=torch.long), None, [0, 1])
    document = write_atlas(tmp_path / "atlas.json", {"fc": layer}, {})
    assert [u["selectivity"] for u in document["layers"]["fc"]["unit"]] == [2.5 / 3.5, None]


def test_the_selectivity_index_by_hand():
    means = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0], [2.0, 0.0, 2.0]], dtype=torch.float64)
    # Column 0: max 3, rest (1 + 2) / 2 = 1.5: 1.5 / 4.5. Column 1: 0 / 0, undefined. Column 2: 0.
    torch.testing.assert_close(
        selectivity_index(means), torch.tensor([1 / 3, math.nan, 0.0], dtype=torch.float64), equal_nan=True
    )
    assert selectivity_index(means[:1]).isnan().all()  # one class: nothing to compare with


@pytest.mark.slow  # two maximizations per parameterization on a tiny net, batched and one unit at a time
@pytest.mark.parametrize("param", ["pixels", "fourier"])
def test_maximization_of_k_units_in_one_call_equals_each_alone(param):
    net = pooled_net().double()
    canvas = Canvas(param=param, size=8, channels=1, bounds=(-1.0, 2.0), color=torch.ones(1, 1, dtype=torch.float64))
    how = Maximizing({param: canvas}, steps=8, lr=0.05, to_pixels=lambda x: x.numpy(), priors={param: Priors(jitter=1)})
    units = [0, 2, 1]
    batch, values = maximized(net, "conv2", units, how, param)
    one_by_one = Maximizing(**{**how.__dict__, "batch": 1})
    for k, unit in enumerate(units):
        alone, value = maximized(net, "conv2", [unit], one_by_one, param)
        # float64; the batched and the single convolutions may sum in another order: rounding only
        np.testing.assert_allclose(batch[k], alone[0], atol=1e-9)
        assert value[0] == pytest.approx(values[k], abs=1e-9)
    assert not np.allclose(batch[0], batch[1])  # each unit its own image


def dissection_table(tmp_path, rows, columns=("net", "layer", "unit", "concept", "category", "iou", "threshold",
                                              "detector")):  # fmt: skip
    path = tmp_path / "dissection.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def test_labels_are_the_detector_rows_of_the_net_highest_iou_first(tmp_path):
    path = dissection_table(tmp_path, [
        ("zfnet", "conv1", 0, "red", "color", 0.05, 1.0, True),
        ("zfnet", "conv1", 1, "dress", "object", 0.02, 1.0, False),  # not a detector: no label
        ("zfnet", "conv5", 3, "stripes", "texture", 0.06, 1.0, True),
        ("zfnet", "conv5", 3, "shoe", "object", 0.09, 1.0, True),  # the same unit's better detector row
        ("t3:zfnet", "conv1", 1, "blue", "color", 0.5, 1.0, True),  # another net's row
        ("alexnet", "conv1", 0, "green", "color", 0.7, 1.0, True),
    ])  # fmt: skip
    assert read_labels(path, "zfnet") == {
        ("conv1", 0): {"label": "red", "category": "color", "iou": 0.05},
        ("conv5", 3): {"label": "shoe", "category": "object", "iou": 0.09},
    }
    assert read_labels(path, "t3:zfnet") == {("conv1", 1): {"label": "blue", "category": "color", "iou": 0.5}}


def test_a_bad_labels_table_is_one_line(tmp_path):
    with pytest.raises(UserError, match="cannot read it"):
        read_labels(tmp_path / "missing.csv", "zfnet")
    short = dissection_table(tmp_path, [("zfnet", "conv1", 0)], columns=("net", "layer", "unit"))
    with pytest.raises(UserError, match="no column concept, category, iou, detector"):
        read_labels(short, "zfnet")
    other = dissection_table(tmp_path, [("alexnet", "conv1", 0, "red", "color", 0.05, 1.0, True)])
    with pytest.raises(UserError, match="no rows of net 'zfnet'.*alexnet"):
        read_labels(other, "zfnet")


@pytest.mark.slow  # a dissection of a tiny concept set: about 0.4 s
def test_concepts_dissects_the_layers_and_labels_only_detectors(tmp_path):
    folder = write_broden(tmp_path / "squares", squares(6), LABELS, CATEGORIES)
    # Units 0 and 1 are 1 on red and on blue pixels: detectors of red and blue (IoU 1); unit 2 is never on.
    labels = dissected_labels(probe(RED_UNIT, bias=[0.0, 0.0, -1.0]), folder, ["conv1"], lambda x: x.float() / 255)
    assert labels == {
        ("conv1", 0): {"label": "red", "category": "color", "iou": 1.0},
        ("conv1", 1): {"label": "blue", "category": "color", "iou": 1.0},
    }
    with pytest.raises(UserError, match="concepts=.*no such folder"):
        dissected_labels(probe(RED_UNIT), tmp_path / "none", ["conv1"], lambda x: x.float() / 255)
