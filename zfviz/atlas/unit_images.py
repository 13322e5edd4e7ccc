"""The images of a unit's page (issue 26): its sprite of projections and its maximization images.

A sprite is one JPEG per live unit, ``ROWS`` rows of ``top_k`` square tiles: the unit's strongest image
patches (the receptive-field crops, as the thumbnail), then each patch's deconvnet projection (Zeiler &
Fergus 2014, Section 2.1: the unit's strongest cell in that image, every other activation of the layer
zeroed, projected down by the ``deconvnet`` composite) and its guided backprop projection (Springenberg et
al. 2015), both started from the cell's value, cropped to the patch's box and shown as ``zfviz viz
deconv`` shows a projection (zero at mid-gray, stretched per tile: ``plotting.deconv.show_projection``).
A fully connected unit's box is the whole image. The projections of a layer go down together
(``viz.deconv.project_batches``: one forward pass per batch of images, vmapped backwards of all the
units' starts), never one backward call per unit.

The maximization images are ``zfviz.reconstruction.maximize``'s, one per unit and parameterization, many
units per call (its K targets in one batch are K single runs), each unit's whole-map mean (a conv unit)
or its value (a linear one), saved at the model's input size; the activation written beside each is the
unit's value on it as the search measures it (``unit_values``), so it compares with the top ``k``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from zfviz.activations import evaluating, resolve
from zfviz.atlas.collect import LayerStats, f32
from zfviz.attribution.composites import GUIDED_BACKPROP, deconvnet_composite
from zfviz.plotting.deconv import as_image_channels, show_projection
from zfviz.reconstruction.invert import layer_features
from zfviz.reconstruction.maximize import Canvas, Priors, Target, maximize
from zfviz.utils import atomic_path
from zfviz.viz.deconv import Units, project_batches

ROWS = ("patch", "deconvnet", "guided_backprop")  # a sprite's rows, top to bottom
COMPOSITES = {"deconvnet": deconvnet_composite("pass"), "guided_backprop": GUIDED_BACKPROP}
QUALITY = 75  # JPEG quality: a few KB per image
BACKGROUND = (255, 255, 255)  # around a crop that is not square (clipped at the image's border)


def save_jpeg(picture: Image.Image, path: Path) -> None:
    """``picture`` as a JPEG at ``path``: one channel where it is gray (gray data's sprites: no colour to
    store), Huffman tables fitted to it (lossless, a few percent smaller)."""
    pixels = np.asarray(picture)
    if picture.mode == "RGB" and (pixels == pixels[..., :1]).all():
        picture = Image.fromarray(pixels[..., 0])
    with atomic_path(path) as tmp:
        picture.save(tmp, format="JPEG", quality=QUALITY, optimize=True)


def fitted(picture: Image.Image, tile: int) -> Image.Image:
    """``picture`` scaled so its longer side is ``tile`` (enlarged without smoothing, as a thumbnail), centred
    in a ``tile`` x ``tile`` RGB square."""
    picture = picture.convert("RGB")
    scale = tile / max(picture.size)
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
    shape = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    square = Image.new("RGB", (tile, tile), BACKGROUND)
    square.paste(picture.resize(shape, resample), ((tile - shape[0]) // 2, (tile - shape[1]) // 2))
    return square


def projection_picture(projection: Tensor, box: list[int], channels: int) -> Image.Image:
    """A projection (C, H, W) cropped to ``box`` and shown as ``viz deconv`` shows it, contrast-stretched on
    its own; ``channels``: the stored images' (gray data sum the colour channels, as there)."""
    y0, x0, y1, x1 = box
    crop = as_image_channels(projection[:, y0:y1, x0:x1].detach().cpu().numpy(), channels)
    return Image.fromarray(np.round(show_projection(crop) * 255).astype(np.uint8))


def patch_picture(image: Tensor, box: list[int]) -> Image.Image:
    """The ``box`` of a stored uint8 (C, H, W) image."""
    y0, x0, y1, x1 = box
    pixels = image[:, y0:y1, x0:x1].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


@dataclass(frozen=True)
class Projecting:
    """How a layer's projections run: the model, the stored images and ``prepare`` (stored -> model input),
    ``batch_size`` starting signals per batched backward, ``chunk`` units held at once (bounds memory)."""

    model: nn.Module
    stored: Tensor
    prepare: Callable[[Tensor], Tensor]
    batch_size: int = 256
    chunk: int = 64


def unit_projections(how: Projecting, layer: str, stats: LayerStats, units: list[int], method: str) -> Tensor:
    """(units, k, C, H, W): each unit's top ``k`` activations projected to pixels by ``method``
    (``COMPOSITES``), every activation at the cell the search found, started from its value."""
    k = stats.top.values.shape[1]
    unit = torch.tensor(units, dtype=torch.long).repeat_interleave(k)
    rank = torch.arange(k).repeat(len(units))
    wanted = Units(stats.top.image[unit, rank], unit, stats.top.position[unit, rank])
    batches = project_batches(
        how.model, how.stored, layer, wanted, batch_size=how.batch_size, prepare=how.prepare,
        composite=COMPOSITES[method],
    )  # fmt: skip
    out = None
    for rows, projected in batches:
        out = projected.new_zeros(len(unit), *projected.shape[1:]) if out is None else out  # the model input's shape
        out[rows] = projected.detach()
    return out.cpu().reshape(len(units), k, *out.shape[1:])


def sprite(stored: Tensor, stats: LayerStats, boxes: Tensor, unit: int, projections: dict[str, Tensor], tile: int):
    """One unit's sprite: row 0 its patches, then one row per method of ``projections`` ((k, C, H, W) each)."""
    k = stats.top.values.shape[1]
    picture = Image.new("RGB", (tile * k, tile * len(ROWS)), BACKGROUND)
    for rank in range(k):
        box = boxes[unit, rank].tolist()
        image = stored[int(stats.top.image[unit, rank])]
        tiles = [patch_picture(image, box)]
        tiles += [projection_picture(projections[m][rank], box, stored.shape[1]) for m in ROWS[1:]]
        for row, shown in enumerate(tiles):
            picture.paste(fitted(shown, tile), (rank * tile, row * tile))
    return picture


def write_sprites(folder: Path, name: str, how: Projecting, atlas_layer, tile: int) -> dict[int, str]:
    """``sprites/<layer>/<unit>.jpg`` under ``folder`` for every written live unit of ``atlas_layer`` (a
    ``LayerAtlas``), ``how.chunk`` units' projections at a time; returns the paths relative to ``folder``."""
    stats = atlas_layer.stats
    live = [u for u in atlas_layer.units if not stats.dead[u]]
    written = {}
    for first in range(0, len(live), how.chunk):
        chunk = live[first : first + how.chunk]
        projected = {m: unit_projections(how, name, stats, chunk, m) for m in ROWS[1:]}
        for i, unit in enumerate(chunk):
            relative = f"sprites/{name}/{unit}.jpg"
            mine = {m: p[i] for m, p in projected.items()}
            save_jpeg(sprite(how.stored, stats, atlas_layer.boxes, unit, mine, tile), folder / relative)
            written[unit] = relative
    return written


@dataclass(frozen=True)
class Maximizing:
    """The maximization of the atlas: a ``Canvas`` per parameterization, ``steps`` of Adam at ``lr`` under
    ``priors`` (per parameterization, else ``Priors()``), every draw from ``seed``; ``batch`` units per call;
    ``to_pixels`` maps model inputs (K, C, H, W) to uint8 pixels (K, H, W, C)."""

    canvases: dict[str, Canvas]
    steps: int
    lr: float
    to_pixels: Callable[[Tensor], np.ndarray]
    priors: dict[str, Priors] = field(default_factory=dict)
    seed: int = 0
    batch: int = 512


def maximized(model: nn.Module, layer: str, units: list[int], how: Maximizing, param: str):
    """``maximize``'s result for ``layer``'s ``units`` under ``param``, ``how.batch`` units per call: (images
    as uint8 (K, H, W, C), activations (K,))."""
    images, values = [], []
    for first in range(0, len(units), how.batch):
        targets = [Target(layer, u) for u in units[first : first + how.batch]]
        result = maximize(
            model, targets, steps=how.steps, lr=how.lr, priors=how.priors.get(param), seed=how.seed,
            canvas=how.canvases[param],
        )  # fmt: skip
        images.append(how.to_pixels(result.images))
        values += unit_values(model, layer, result.images, [t.channel for t in targets]).tolist()
    return (np.concatenate(images) if images else np.zeros((0, 1, 1, 3), np.uint8)), values


def unit_values(model: nn.Module, layer: str, images: Tensor, units: list[int]) -> Tensor:
    """Unit ``units[k]``'s per-image value on ``images[k]``, as the search measures it (its strongest cell on a
    conv map, its value on a linear layer): what the page sets beside its top activations. The objective the
    images climbed is the whole-map mean, which on a conv map is lower than any cell that fires."""
    with torch.no_grad(), evaluating(model):
        out = layer_features(model, images, resolve(model, layer, "output"))
    picked = out[torch.arange(len(units)), torch.tensor(units)]
    return picked.flatten(1).amax(1) if picked.dim() > 1 else picked


def write_maximization(folder: Path, model: nn.Module, name: str, units: list[int], how: Maximizing) -> dict[int, dict]:
    """``maxim/<layer>/<unit>_<param>.jpg`` under ``folder`` for ``units`` and every parameterization of
    ``how``; returns per unit ``{param: {"image": path relative to folder, "activation": value}}``."""
    found: dict[int, dict] = {u: {} for u in units}
    for param in how.canvases:
        images, values = maximized(model, name, units, how, param)
        for unit, pixels, value in zip(units, images, values, strict=True):
            relative = f"maxim/{name}/{unit}_{param}.jpg"
            save_jpeg(Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels), folder / relative)
            found[unit][param] = {"image": relative, "activation": f32(value)}
    return found


def pixels_of(mean: Tensor, std: Tensor, gray: bool) -> Callable[[Tensor], np.ndarray]:
    """Model inputs back to uint8 pixels (K, H, W, C) by the data's normalization (``mean``/``std`` in 0..255,
    broadcast over (K, C, H, W)); ``gray``: the channels are one gray channel repeated, keep the first."""

    def convert(x: Tensor) -> np.ndarray:
        pixels = (x.detach().cpu() * std + mean).clamp(0, 255).round().to(torch.uint8)
        return (pixels[:, :1] if gray else pixels).permute(0, 2, 3, 1).numpy()

    return convert
