"""``atlas.json`` and the units' thumbnails: the atlas's data as files (issue 26).

``atlas.json`` holds, per layer and unit, what ``zfviz.atlas.collect`` found: the top ``k`` as
``[image, activation, [y0, x0, y1, x1]]`` (the image's index in the image set, the unit's value there,
the crop in the image's pixels, bottom/right exclusive), ``dead``, the histogram of the per-image
values (``range`` ``[low, high)`` in equal bins, ``counts``), the mean per class (null for a class with
no image), its class selectivity index, the next weighted layer's units it feeds most strongly as
``[unit, weight norm]``, and the files and labels made for it (``UNIT_FILES``: its thumbnail's and sprite's
paths relative to the file, its maximization images, its concept label; null where there are none). Values
are the activations' float32 values, written exactly (``f32``: the shortest decimal that reads back as the
same float32). A thumbnail is a unit's strongest crop as a small
JPEG; a dead unit has none (nothing to show but noise).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from zfviz.atlas.collect import LayerStats, NextUnits, f32
from zfviz.atlas.unit_images import save_jpeg
from zfviz.utils import atomic_write_text

FORMAT = 2  # atlas.json's layout version: readers check it (2: selectivity, sprite, maximization, concept)
UNIT_FILES = ("thumbnail", "sprite", "maximization", "concept")  # per unit: null unless made


@dataclass
class LayerAtlas:
    """One layer as the atlas shows it: its ``stats``, the crops of its top ``k`` and where it leads."""

    stats: LayerStats
    boxes: Tensor  # (units, k, 4) [y0, x0, y1, x1]
    next: NextUnits | None
    units: list[int]  # the units written (all, or those asked for)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def unit_entry(layer: LayerAtlas, unit: int, made: dict) -> dict:
    """One unit's record in ``atlas.json``; ``made``: its ``UNIT_FILES`` (those absent are null)."""
    stats = layer.stats
    top = [
        [int(image), f32(value), [int(b) for b in box]]
        for image, value, box in zip(stats.top.image[unit], stats.top.values[unit], layer.boxes[unit], strict=True)
    ]
    low, high = stats.histogram.ranges()[unit].tolist()
    entry = {
        "unit": unit,
        "top": top,
        "dead": bool(stats.dead[unit]),
        "histogram": {"range": [low, high], "counts": stats.histogram.counts[unit].tolist()},
        "class_means": [_finite(m) for m in stats.class_mean[:, unit].tolist()],
        "selectivity": _finite(float(stats.selectivity[unit])),
        **{key: made.get(key) for key in UNIT_FILES},
    }
    if layer.next is not None:
        pairs = zip(layer.next.units[unit].tolist(), layer.next.strength[unit].tolist(), strict=True)
        entry["next"] = [[int(u), f32(s)] for u, s in pairs]
    return entry


def layer_entry(layer: LayerAtlas, made: dict[int, dict]) -> dict:
    """One layer's record: its unit count, dead count, next layer, and the written units (``made``: per
    unit, its ``UNIT_FILES``)."""
    return {
        "units": layer.stats.top.maps,
        "dead": int(layer.stats.dead.sum()),
        "next_layer": layer.next.name if layer.next is not None else None,
        "unit": [unit_entry(layer, u, made.get(u, {})) for u in layer.units],
    }


def write_atlas(path: Path, layers: dict[str, LayerAtlas], made: dict[str, dict[int, dict]], **about) -> dict:
    """Write ``atlas.json`` at ``path`` (atomically) and return what it holds; ``made``: per layer and unit,
    its ``UNIT_FILES``; ``about`` (the net, the image count, the class names, ...) goes in at the top level
    beside ``format`` and ``layers``."""
    document = {
        "format": FORMAT,
        **about,
        "layers": {name: layer_entry(layer, made.get(name, {})) for name, layer in layers.items()},
    }
    atomic_write_text(path, json.dumps(document, allow_nan=False))
    return document


def thumbnail(image: Tensor, box: list[int], size: int) -> Image.Image:
    """The ``box`` of a stored uint8 ``(C, H, W)`` image, scaled so its longer side is ``size`` pixels
    (a conv1 field of a few pixels is enlarged without smoothing, a large crop shrunk smoothly)."""
    y0, x0, y1, x1 = box
    pixels = image[:, y0:y1, x0:x1].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    scale = size / max(picture.size)
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
    shape = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(shape, resample)


def write_thumbnails(folder: Path, name: str, layer: LayerAtlas, images, size: int) -> dict[int, str]:
    """``thumbs/<layer>/<unit>.jpg`` under ``folder`` for every written unit that is not dead: its strongest
    crop from ``images`` (the stored images the indices refer to); returns the paths relative to ``folder``."""
    written = {}
    for unit in layer.units:
        if layer.stats.dead[unit]:
            continue
        index = int(layer.stats.top.image[unit, 0])
        picture = thumbnail(images[torch.tensor([index])][0], layer.boxes[unit, 0].tolist(), size)
        relative = f"thumbs/{name}/{unit}.jpg"
        save_jpeg(picture, folder / relative)
        written[unit] = relative
    return written
