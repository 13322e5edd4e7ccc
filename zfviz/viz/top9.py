"""Fig. 2's top 9 and Fig. 4's strongest activation: one streaming pass, then deconvnet projections.

Section 2.1 / Fig. 2: "for a given feature map, we show the top 9 activations, each projected
separately down to pixel space", next to the image patch that caused each. Each image counts once
per map (its strongest cell), as in the paper's grids of nine different images.

The pass over the data set keeps, per map of each chosen layer, only the running top ``k``
(value, image index, position): memory proportional to maps x k, whatever the data set size.
Each batch's per-image maxima are merged into the running top with a stable sort, so ties go to
the earlier image and the result does not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from zfviz.activations import resolve, stream
from zfviz.attribution import attribute
from zfviz.errors import UserError
from zfviz.viz.deconv import Units, project_batches
from zfviz.viz.receptive_field import crop, receptive_field, windows


@dataclass
class TopK:
    """Per map, the ``k`` strongest activations, strongest first (fewer if the data set is smaller)."""

    values: Tensor  # (maps, k) float
    image: Tensor  # (maps, k) index of the image in the order the batches came
    position: Tensor  # (maps, k, 2) (y, x) in the layer's map; (0, 0) for a fully connected layer

    @property
    def maps(self) -> int:
        return self.values.shape[0]


def merge_top(running: TopK | None, values: Tensor, flat: Tensor, first: int, width: int, k: int) -> TopK:
    """Merge one batch's per-image maxima ``values``/``flat`` (N, maps) into the running top ``k``."""
    n = values.shape[0]
    images = torch.arange(first, first + n).expand(values.shape[1], n)
    cand_v, cand_i = values.T.float().cpu(), images
    cand_p = torch.stack([flat.T // width, flat.T % width], dim=-1).cpu()
    if running is not None:
        # Running entries come first: they hold earlier images, so a stable sort breaks ties by index.
        cand_v = torch.cat([running.values, cand_v], dim=1)
        cand_i = torch.cat([running.image, cand_i], dim=1)
        cand_p = torch.cat([running.position, cand_p], dim=1)
    order = torch.sort(cand_v, dim=1, descending=True, stable=True).indices[:, :k]
    return TopK(
        cand_v.gather(1, order),
        cand_i.gather(1, order),
        cand_p.gather(1, order[..., None].expand(-1, -1, 2)),
    )


def top_activations(model: nn.Module, batches: Iterable[Tensor], layers: Sequence[str], k: int = 9) -> dict[str, TopK]:
    """Stream ``batches`` (float images, data set order) through ``model``; per layer, the top ``k`` per map.

    ``layers`` are module paths (paper names on our nets), each examined at its own output, as the
    deconvnet projects it. The forward pass stops once every chosen layer has produced its output;
    hooks are removed and the train/eval mode restored when this returns or raises.
    """
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    paths = {name: resolve(model, name, "output") for name in layers}
    running: dict[str, TopK | None] = dict.fromkeys(layers)

    def per_image_max(out: Tensor) -> tuple[Tensor, Tensor, int]:
        # Reduced in the hook: the maxima are all the search keeps of a batch.
        values, index = out.reshape(out.shape[0], out.shape[1], -1).max(dim=2)
        return values, index, out.shape[-1] if out.dim() == 4 else 1

    first = 0
    with stream(model, batches, paths, keep=per_image_max) as passes:
        for seen, _ in passes:
            for name, (values, index, width) in seen.items():
                running[name] = merge_top(running[name], values, index, first, width, k)
            first += len(values)
    if first == 0:
        raise UserError("no images to search: the data set is empty")
    return running


def ordered_batches(images: Tensor, prepare: Callable[[Tensor], Tensor], batch_size: int) -> Iterator[Tensor]:
    """``prepare(images[i:i+batch_size])`` in data set order (uint8 stored -> float model input)."""
    for start in range(0, len(images), batch_size):
        yield prepare(images[start : start + batch_size])


@dataclass
class Projections:
    """The projections of a ``TopK`` (maps, k) and the image patches under their receptive fields."""

    maps: Tensor  # (M,) map indices
    values: Tensor  # (M, k)
    image: Tensor  # (M, k)
    position: Tensor  # (M, k, 2)
    corner: Tensor  # (M, k, 2) top-left of the crop in the image
    projection: Tensor  # (M, k, C, h, w) deconvnet output, cropped to the receptive field
    patch: Tensor  # (M, k, C_img, h, w) the stored image, same crop


@dataclass(frozen=True)
class Explainer:
    """How ``project_top`` explains each kept activation: the paper's deconvnet (contrast normalization
    ``norm``: ``"pass"`` or ``"backprop"``), or any ``method`` of ``zfviz.attribution`` with its
    ``options`` (Fig. 2 under another rule of the family); ``batch_size`` activations at a time."""

    method: str = "deconvnet"
    options: Mapping[str, Any] = field(default_factory=dict)
    norm: str = "pass"
    batch_size: int = 64


def project_top(
    model: nn.Module,
    layer: str,
    top: TopK,
    images: Tensor,
    prepare: Callable[[Tensor], Tensor],
    maps: Sequence[int] | None = None,
    *,
    how: Explainer = Explainer(),
) -> Projections:
    """Project every kept activation of ``maps`` (default: all) and crop it and its image to the field.

    ``images`` are the stored images the indices in ``top`` refer to, ``prepare`` turns a batch
    of them into model input. Projections run in batches of ``how.batch_size`` (map, rank) pairs,
    each with its own map and position; an image among several maps' top ``k`` goes up the net
    once per batch (``project_batches``), on any model the attribution mechanism handles (ResNets,
    VGG-BN); the patches come from the receptive field walked along the module graph. ``how``:
    the paper's deconvnet by default, or another method of the family (``Explainer``).
    """
    maps_t = torch.arange(top.maps) if maps is None else torch.as_tensor(list(maps), dtype=torch.long)
    if len(maps_t) and (maps_t.min() < 0 or maps_t.max() >= top.maps):
        raise UserError(f"maps must lie in 0..{top.maps - 1} for layer {layer}")
    k = top.values.shape[1]
    image_idx = top.image[maps_t].reshape(-1)
    position = top.position[maps_t].reshape(-1, 2)
    channel = maps_t[:, None].expand(-1, k).reshape(-1)
    sample = prepare(images[:1])
    field = receptive_field(model, layer, tuple(sample.shape[1:]))
    corner = windows(field, position)
    device = sample.device
    projections = patches = None
    if how.method == "deconvnet" and not how.options:
        units = Units(image_idx, channel.to(device), position.to(device))
        batches = project_batches(
            model, images, layer, units, batch_size=how.batch_size, norm=how.norm, prepare=prepare
        )  # fmt: skip
    else:
        batches = attributed_batches(model, images, layer, Units(image_idx, channel, position), prepare, how)
    for rows, proj in batches:
        proj = crop(proj.cpu(), corner[rows], field.window)
        patch = crop(images[image_idx[rows]], corner[rows], field.window)
        if projections is None:
            projections = proj.new_empty(len(image_idx), *proj.shape[1:])
            patches = patch.new_empty(len(image_idx), *patch.shape[1:])
        projections[rows], patches[rows] = proj, patch
    shape = (len(maps_t), k)
    return Projections(
        maps=maps_t,
        values=top.values[maps_t],
        image=top.image[maps_t],
        position=top.position[maps_t],
        corner=corner.reshape(*shape, 2),
        projection=projections.reshape(*shape, *projections.shape[1:]),
        patch=patches.reshape(*shape, *patches.shape[1:]),
    )


def attributed_batches(
    model: nn.Module,
    images: Tensor,
    layer: str,
    units: Units,
    prepare: Callable[[Tensor], Tensor],
    how: Explainer,
) -> Iterator[tuple[Tensor, Tensor]]:
    """``project_batches``' ``(rows, maps)`` by ``how.method`` of ``zfviz.attribution``: row ``j`` explains
    the activation of map ``units.channel[j]`` at ``units.position[j]`` of ``layer`` in ``images[units.image[j]]``."""
    for start in range(0, len(units.image), how.batch_size):
        rows = torch.arange(start, min(start + how.batch_size, len(units.image)))
        x = prepare(images[units.image[rows]])
        target = (layer, units.channel[rows].to(x.device), units.position[rows].to(x.device))
        yield rows, attribute(model, x, target, how.method, **how.options)
