"""The deconvnet of Section 2.1: project one activation (or one feature map) back to pixel space.

To examine an activation, every other activation in its layer is zeroed and the result is passed
down through the layers below, each inverted as the paper describes:

- max pooling -> unpooling with the *switches* (argmax locations) recorded on the way up. With
  overlapping 3x3/2 pools two pooled cells can share one argmax; their contributions are added
  (autograd's max-pool backward does so), whereas ``nn.MaxUnpool2d`` keeps only one of them.
- ReLU -> ReLU of the signal coming down (the deconvnet's rectification, not the ReLU's gradient).
- convolution / linear -> the transposed filters, without bias.
- contrast normalization (``LocalResponseNorm``) -> passed through unchanged by default, as the
  paper does ("norm='pass'"); ``norm='backprop'`` multiplies by the layer's Jacobian instead.
- dropout, flatten, identity and views between modules -> reshaped, not changed.
- average pooling -> its transpose: each output spreads its value evenly over its window.

All of it is the ``deconvnet`` composite of ``zfviz.attribution`` (the one backward mechanism of
issue 13), started from the activation's value, so it runs on any model that mechanism handles
(residual nets, batch norm, in-place ReLUs). ``project`` of one map is ``attribute(...,
"deconvnet")``; many projections share one forward pass of their images and go down together in a
batched backward (``mechanism.batched_backward``): several maps of each image (``project_maps``),
or Fig. 2's top 9 of many maps, which hit far fewer images than maps x 9 (``project_batches``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zfviz.activations import Capture, resolve
from zfviz.attribution import attribute
from zfviz.attribution.composites import deconvnet_composite
from zfviz.attribution.mechanism import ROWS, batched_backward
from zfviz.attribution.registry import refusals_named
from zfviz.attribution.targets import Target, cells, parse_target, start_signal
from zfviz.errors import UserError


def _many(channel) -> bool:
    """Several maps per image: a list (tuple, range) of ``K``, or an ``(N, K)`` tensor."""
    return isinstance(channel, (list, tuple, range)) or (isinstance(channel, Tensor) and channel.dim() == 2)


def project(model: nn.Module, images: Tensor, layer: str, channel, position=None, *, norm: str = "pass") -> Tensor:
    """Project activations of ``layer``'s map ``channel`` down to pixels.

    ``layer`` is a module path (``conv5`` on our nets, ``features.10`` on torchvision's); the
    examined activation is that module's output. ``channel``:

    - an ``int``, or a tensor with one index per image: returns ``N x C x H x W``, like ``images``;
    - a list (tuple, range) of ``K`` indices, or an ``(N, K)`` tensor (each image's own ``K`` maps):
      every image's maps, all from one forward pass and one batched backward (``project_maps``);
      returns ``N x K x C x H x W``, ``[i, k]`` equal to ``project`` of that one map of image ``i``.

    ``position=None`` projects each image's strongest activation of the map, ``"all"`` the whole
    map, ``(y, x)`` or an ``(N, 2)`` tensor one chosen cell (with several maps also an
    ``(N, K, 2)`` tensor). ``norm``: ``"pass"`` (the paper) or ``"backprop"`` for
    contrast-normalization layers. The projection starts from the activation's value, as the
    paper's does (``attribute(..., "deconvnet")``'s default start).
    """
    if _many(channel):
        return project_maps(model, images, layer, channel, position, norm=norm)
    return attribute(model, images, (layer, channel, position), "deconvnet", norm=norm)


def project_with_values(
    model: nn.Module, images: Tensor, layer: str, channel, position=None, *, norm: str = "pass"
) -> tuple[Tensor, Tensor, Tensor]:
    """``project`` plus the projected activations' values and (y, x) positions, one per projection
    (``N``, or ``N x K`` for several maps; for ``position="all"``: the map's maximum and where it is;
    a fully connected layer's position is (0, 0))."""
    with Capture(model, {"act": resolve(model, layer, "output")}) as capture:  # records during project's pass
        projection = project(model, images, layer, channel, position, norm=norm)
    act = capture.outputs["act"]
    n = len(images)
    channels = _channels(channel, n, act.device) if _many(channel) else torch.as_tensor(channel).reshape(-1, 1)
    k = channels.shape[1]
    image = torch.arange(n, device=act.device).repeat_interleave(k)
    where = _positions(position, n, k)
    values, cell = _unit_values(act, image, channels.to(act.device).expand(n, k).reshape(-1), where, layer)
    if not _many(channel):
        return projection, values, cell
    return projection, values.reshape(n, k), cell.reshape(n, k, 2)


def _unit_values(act: Tensor, image: Tensor, channel: Tensor, position, layer: str) -> tuple[Tensor, Tensor]:
    """Row ``b``'s activation of map ``channel[b]`` in image ``image[b]`` at ``position`` and its (y, x)."""
    maps = act[image, channel]
    if maps.dim() == 1:  # a fully connected layer: one position
        return maps, torch.zeros(len(maps), 2, dtype=torch.long, device=act.device)
    where = cells(maps, None if isinstance(position, str) else position, layer)
    return maps[torch.arange(len(maps), device=act.device), where[:, 0], where[:, 1]], where


def _channels(channels, n: int, device) -> Tensor:
    """``K`` map indices for every image, or an ``(N, K)`` tensor, as an ``(N, K)`` long tensor."""
    channel = torch.as_tensor(channels if isinstance(channels, Tensor) else list(channels), device=device).long()
    if channel.dim() == 1:
        return channel.expand(n, -1)
    if len(channel) != n:
        raise UserError(f"give K maps for all images or an ({n}, K) tensor of maps, got {tuple(channel.shape)}")
    return channel


def _positions(position, n: int, k: int):
    """``position`` of ``project`` for ``N x K`` rows: ``None``, ``"all"``, (y, x), or an ``(N * K, 2)`` tensor."""
    if position is None or isinstance(position, str):
        return position
    given = torch.as_tensor(position).long()
    if given.shape == (n, k, 2):
        return given.reshape(-1, 2)
    where = given.reshape(-1, 2)
    if given.dim() > 2 or len(where) not in (1, n):
        raise UserError(f"position must be (y, x), an ({n}, 2) or an ({n}, {k}, 2) tensor, got {tuple(given.shape)}")
    return where[:, None].expand(n, k, 2).reshape(-1, 2)


def _projected(
    model: nn.Module,
    x: Tensor,
    target: Target,
    image: Tensor,
    slot: Tensor,
    *,
    norm: str,
    rows: int = ROWS,
    composite=None,
) -> Tensor:
    """Row ``b`` of ``target`` (one per unit) explained in ``x[image[b]]``, the units of an image in
    distinct ``slot``s: one forward pass of ``x``, the ``slots x N`` starts in batched backwards
    (``composite``: the deconvnet's rules unless another is given, guided backprop's for the atlas)."""
    composite = composite or deconvnet_composite(norm)
    slots = int(slot.max()) + 1 if len(slot) else 0

    def starts(act: Tensor) -> Tensor:
        signal, _ = start_signal(act[image], target, "value")  # the paper projects the activation's value
        out = act.new_zeros(slots, *act.shape)
        out[slot, image] = signal
        return out

    with refusals_named(composite.name):
        projected = batched_backward(model, x, target.layer, starts, composite=composite, rows=rows)
    return projected[slot, image]


def project_maps(
    model: nn.Module, images: Tensor, layer: str, channels, position=None, *, norm: str = "pass"
) -> Tensor:
    """Maps ``channels`` (``K`` indices, or an ``(N, K)`` tensor) of every image projected at once:
    ``N x K x C x H x W``. ``position``: ``None`` (each map's strongest cell in each image), ``"all"``,
    one ``(y, x)`` for all, an ``(N, 2)`` tensor (one cell per image, every map) or an ``(N, K, 2)`` tensor.
    """
    n = len(images)
    channel = _channels(channels, n, images.device)
    k = channel.shape[1]
    image = torch.arange(n, device=images.device).repeat_interleave(k)
    slot = torch.arange(k, device=images.device).repeat(n)
    target = parse_target(model, (layer, channel.reshape(-1), _positions(position, n, k)), n * k)
    return _projected(model, images, target, image, slot, norm=norm).reshape(n, k, *images.shape[1:])


@dataclass(frozen=True)
class Units:
    """Activations to project: the ``j``-th is map ``channel[j]`` in ``images[image[j]]`` at
    ``position[j]`` (``None``: each one's strongest cell)."""

    image: Tensor
    channel: Tensor
    position: Tensor | None = None

    def take(self, rows: Tensor) -> Units:
        image, channel = self.image[rows.to(self.image.device)], self.channel[rows.to(self.channel.device)]
        return Units(image, channel, None if self.position is None else self.position[rows.to(self.position.device)])


def project_batches(
    model: nn.Module,
    images: Tensor,
    layer: str,
    units: Units,
    *,
    batch_size: int = 64,
    norm: str = "pass",
    prepare: Callable[[Tensor], Tensor] | None = None,
    composite=None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Project many activations (``units``) of images among ``images``.

    Yields ``(rows, projections)``: which units a batch holds and their projections (shaped like the
    model input), equal to ``project``'s. A batch holds whole images, each with all its units, and
    each image goes up the net once: its units' starts are ``K x U`` for ``U`` images and ``K`` the
    most units any of them has, the missing ones zero (a wasted backward row each). Images are
    taken most units first, so the images of a batch have about as many units each and little is
    wasted; a batch holds about ``batch_size`` units. ``prepare`` turns stored images into model input.
    ``composite``: other rules for the same batched projections (the atlas's guided backprop).
    """
    image = torch.as_tensor(units.image, dtype=torch.long).cpu()
    for group in _groups(image, batch_size):
        selected, u, slot = _members(image, group)
        x = images[group] if prepare is None else prepare(images[group])
        chosen = units.take(selected)
        target = parse_target(model, (layer, chosen.channel.to(x.device), chosen.position), len(selected))
        where = u.to(x.device), slot.to(x.device)
        yield selected, _projected(model, x, target, *where, norm=norm, rows=batch_size, composite=composite)


def _groups(image: Tensor, batch_size: int) -> Iterator[Tensor]:
    """The distinct images in groups of about ``batch_size`` units, most units first."""
    distinct, counts = torch.unique(image, return_counts=True)
    by_count = distinct[torch.argsort(-counts, stable=True)]
    count_of = dict(zip(distinct.tolist(), counts.tolist(), strict=True))
    group: list[int] = []
    for u in by_count.tolist():
        if group and (len(group) + 1) * count_of[group[0]] > batch_size:
            yield torch.tensor(group, dtype=torch.long)
            group = []
        group.append(u)
    if group:
        yield torch.tensor(group, dtype=torch.long)


def _members(image: Tensor, group: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The units whose image is in ``group`` (grouped by image), each one's image within the group
    and its slot among that image's units."""
    rank = torch.full((int(image.max()) + 1,), -1, dtype=torch.long)
    rank[group] = torch.arange(len(group))
    selected = torch.nonzero(rank[image] >= 0).reshape(-1)
    selected = selected[torch.argsort(rank[image[selected]], stable=True)]
    u = rank[image[selected]]
    first = torch.searchsorted(u, u)  # each unit's rank within its image: units of an image are adjacent
    return selected, u, torch.arange(len(u)) - first
