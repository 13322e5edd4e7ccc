"""atlas.json and the thumbnails (issue 26): the file holds what the pass computed, and reads back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_atlas import LAYERS, tiny_images, tiny_net
from zfviz.atlas.collect import collect, crop_boxes, next_units
from zfviz.atlas.export import FORMAT, LayerAtlas, thumbnail, write_atlas, write_thumbnails

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_atlas(units=None) -> dict[str, LayerAtlas]:
    net, (images, labels) = tiny_net(), tiny_images()
    stats = collect(net, images.split(5), LAYERS, labels, classes=4, k=3)
    return {
        layer: LayerAtlas(
            stats[layer],
            crop_boxes(net, layer, stats[layer].top, (1, 8, 8)),
            next_units(net, layer, stats[layer].top.maps, (1, 8, 8), count=2),
            list(range(stats[layer].top.maps)) if units is None else units,
        )
        for layer in LAYERS
    }


def test_atlas_json_round_trips_what_the_pass_computed(tmp_path):
    layers = tiny_atlas()
    made = {"conv1": {0: {"thumbnail": "thumbs/conv1/0.jpg", "sprite": "sprites/conv1/0.jpg"}}}
    document = write_atlas(tmp_path / "atlas.json", layers, made, images=12)
    read = json.loads((tmp_path / "atlas.json").read_text())
    assert read == document and read["format"] == FORMAT and read["images"] == 12
    for name, layer in layers.items():
        entry, stats = read["layers"][name], layer.stats
        assert entry["units"] == stats.top.maps == len(entry["unit"])
        assert entry["dead"] == int(stats.dead.sum())
        for unit in entry["unit"]:
            u = unit["unit"]
            assert [t[0] for t in unit["top"]] == stats.top.image[u].tolist()
            # float32 values, exactly
            assert torch.equal(torch.tensor([t[1] for t in unit["top"]]), stats.top.values[u])
            assert [t[2] for t in unit["top"]] == layer.boxes[u].tolist()
            assert unit["dead"] == bool(stats.dead[u])
            assert unit["histogram"]["counts"] == stats.histogram.counts[u].tolist()
            assert unit["histogram"]["range"] == stats.histogram.ranges()[u].tolist()
            selectivity = float(stats.selectivity[u])
            assert unit["selectivity"] == (None if selectivity != selectivity else selectivity)  # NaN: null
            means = stats.class_mean[:, u].tolist()
            assert unit["class_means"][:3] == means[:3] and unit["class_means"][3] is None  # class 3: no images
    assert read["layers"]["conv1"]["dead"] == 1 and read["layers"]["conv1"]["unit"][2]["dead"] is True
    assert read["layers"]["conv1"]["next_layer"] == "conv2" and read["layers"]["fc"]["next_layer"] is None
    written = read["layers"]["conv1"]["unit"][1]["next"]  # the strengths' float32 values, exactly
    assert [u for u, _ in written] == layers["conv1"].next.units[1].tolist()
    assert torch.equal(torch.tensor([s for _, s in written]), layers["conv1"].next.strength[1])
    assert "next" not in read["layers"]["fc"]["unit"][0]
    assert read["layers"]["conv1"]["unit"][0]["thumbnail"] == "thumbs/conv1/0.jpg"
    assert read["layers"]["conv1"]["unit"][1]["thumbnail"] is None
    assert read["layers"]["conv1"]["unit"][0]["sprite"] == "sprites/conv1/0.jpg"
    # What was not made for a unit is null, never absent: readers find every key.
    unmade = read["layers"]["conv2"]["unit"][0]
    assert [unmade[k] for k in ("thumbnail", "sprite", "maximization", "concept")] == [None] * 4
    assert read["layers"]["conv1"]["unit"][2]["selectivity"] is None  # the dead unit
    assert any(u["selectivity"] is not None for u in read["layers"]["conv2"]["unit"])


def test_only_the_units_asked_for_are_written(tmp_path):
    read = write_atlas(tmp_path / "atlas.json", tiny_atlas(units=[1, 2]), {})
    assert [u["unit"] for u in read["layers"]["conv2"]["unit"]] == [1, 2]
    assert read["layers"]["conv2"]["units"] == 4  # the layer's count, not the written one


def test_a_thumbnail_is_the_crop_scaled_without_smoothing_when_enlarged():
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)
    picture = thumbnail(image, [1, 2, 4, 7], 10)  # a 3 x 5 crop, enlarged twice
    expected = image[:, 1:4, 2:7].repeat_interleave(2, 1).repeat_interleave(2, 2).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(picture), expected)
    gray = thumbnail(image[:1], [0, 0, 8, 8], 8)
    assert gray.mode == "L" and np.array_equal(np.asarray(gray), image[0].numpy())


def test_thumbnails_are_small_jpegs_of_each_live_units_strongest_crop(tmp_path):
    layers = tiny_atlas()
    stored = (tiny_images()[0] * 80).to(torch.uint8)
    written = write_thumbnails(tmp_path, "conv1", layers["conv1"], stored, 32)
    assert sorted(written) == [0, 1]  # unit 2 is dead: no thumbnail
    for unit, relative in written.items():
        with Image.open(tmp_path / relative) as picture:
            assert picture.format == "JPEG" and max(picture.size) == 32
        y0, x0, y1, x1 = layers["conv1"].boxes[unit, 0].tolist()
        assert picture.size == (
            round((x1 - x0) * 32 / max(x1 - x0, y1 - y0)),
            round((y1 - y0) * 32 / max(x1 - x0, y1 - y0)),
        )
        assert (tmp_path / relative).stat().st_size < 5000
    assert not list(tmp_path.rglob("*.tmp"))
