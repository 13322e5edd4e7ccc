"""What an attribution explains, and where its backward pass starts.

A target is a class score of the model's output, or a unit of a layer (as the deconvnet of Zeiler &
Fergus 2014, Section 2.1, examines one activation of ``conv5``):

- ``int`` / list / 1-D tensor: a class index, one for all images or one per image (a class's name,
  as the net's class names spell it in any case, becomes its index: ``class_named``);
- ``(layer, channel)`` or ``(layer, channel, position)``: map ``channel`` (one or one per image) of
  the layer's output (``zfviz.activations.resolve(model, layer, "output")``), at ``position``:
  ``None`` the strongest cell of the map in each image (as ``viz.deconv.project``), ``"all"`` the
  whole map, ``(y, x)`` one cell, or an ``(N, 2)`` tensor of cells.

The backward pass starts from a signal shaped like the targeted tensor, zero outside the target
(``start``: ``seed`` is only ever a random seed). ``"one"`` puts 1 at the target, so the result is
the gradient of the target (its sum, for a whole map) -- the gradient methods; ``"value"`` puts the
target's own value there -- LRP (the relevance to distribute is the score, Bach et al. 2015) and the
deconvnet (the paper projects the activation).
The perturbation methods (occlusion, RISE) read the output's probabilities and take class targets
only (``class_targets``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zfviz.activations import resolve
from zfviz.errors import UserError

STARTS = ("one", "value")
LISTED = 20  # class names a refusal lists in full; a longer list is named by its closest matches


@dataclass(frozen=True)
class Target:
    """A parsed target: ``layer`` None means the model's output (classes); ``channel`` has one entry per image."""

    layer: str | None
    channel: Tensor
    position: Tensor | str | None = None


def parse_target(model: nn.Module, target, n: int) -> Target:
    """``target`` in any accepted form (module docstring) as a ``Target`` for ``n`` images."""
    if isinstance(target, tuple) and target and isinstance(target[0], str):
        if len(target) not in (2, 3):
            raise UserError(f"a unit target is (layer, channel) or (layer, channel, position), got {target!r}")
        layer = resolve(model, target[0], "output")
        position = target[2] if len(target) == 3 else None
        if isinstance(position, str) and position != "all":
            raise UserError(f"a unit's position is None, 'all', (y, x) or an (N, 2) tensor, got {position!r}")
        if position is not None and not isinstance(position, str):
            position = torch.as_tensor(position).long().reshape(-1, 2)
            if len(position) not in (1, n):
                raise UserError(f"give one (y, x) position or one per image ({n}), got {len(position)}")
            position = position.expand(n, 2)
        return Target(layer, _per_image(target[1], n, "channel"), position)
    if isinstance(target, str):
        raise UserError(f"a target is a class index or a (layer, channel[, position]) tuple, got {target!r}")
    return Target(None, _per_image(target, n, "class index"))


def _per_image(value, n: int, what: str) -> Tensor:
    try:
        index = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"{what} must be an integer or one integer per image, got {value!r}") from None
    wrong_type = index.is_floating_point() or index.is_complex()
    if wrong_type or index.dim() > 1 or (index.dim() == 1 and len(index) not in (1, n)):
        raise UserError(f"{what} must be an integer or one integer per image ({n}), got {value!r}")
    return index.long().reshape(-1).expand(n).clone()


def class_targets(target, n: int, classes: int | None = None, *, what: str = "class index") -> Tensor:
    """A class target (an index, or one per image) as an (n,) long tensor, checked against ``classes``
    when it is known (else later, on the logits: ``check_classes``). The one reading of class targets:
    the perturbation maps and scores, which read the output's probabilities, take no unit target."""
    if isinstance(target, str) or isinstance(target, tuple) and target and isinstance(target[0], str):
        raise UserError(f"{what} must be a class of the model's output, not {target!r}; give class indices")
    index = _per_image(target, n, what)
    if classes is not None:
        check_classes(index, classes, what)
    return index


def check_classes(index: Tensor, classes: int, what: str = "class index") -> None:
    """Every entry of ``index`` is a class of a net with ``classes`` outputs, else one line naming the others."""
    low, high = torch.aminmax(index)  # one pass for both bounds
    if int(low) < 0 or int(high) >= classes:
        bad = ", ".join(str(i) for i in sorted({int(i) for i in index.tolist() if not 0 <= i < classes}))
        raise UserError(f"{what} {bad} is not a class of this net: it has classes 0..{classes - 1}")


def class_named(name: str, classes: Sequence[str] | None, key: str = "target") -> int:
    """The index of the class ``name`` names among the net's ``classes``, in any case (``sandal``, ``Sandal``);
    an unknown name is one line listing the names (a long list: the closest ones and how many there are)."""
    classes = list(classes or ())
    folded = [str(c).casefold() for c in classes]
    if str(name).casefold() in folded:
        return folded.index(str(name).casefold())
    if not classes:
        raise UserError(f"{key}={name}: this net has no class names; give a class index")
    if len(classes) <= LISTED:
        raise UserError(f"{key}={name} is not a class of this net; its classes: {', '.join(map(str, classes))}")
    close = difflib.get_close_matches(str(name), [str(c) for c in classes], n=5, cutoff=0.5)
    hint = f"the closest: {', '.join(close)}" if close else "give a class index"
    raise UserError(f"{key}={name} is not one of this net's {len(classes)} class names; {hint}")


def strongest(maps: Tensor) -> Tensor:
    """Per image, the (y, x) of the largest value of its map (``maps``: N x H x W); first one on ties."""
    width = maps.shape[-1]
    index = maps.reshape(len(maps), -1).argmax(dim=1)
    return torch.stack([index // width, index % width], dim=1)


def cells(maps: Tensor, position: Tensor | None, layer: str | None) -> Tensor:
    """Per image, the (y, x) a unit target names in its map (``maps``: N x H x W): ``position``
    (an (N, 2) tensor) checked against the map's size, or for ``None`` the strongest cell."""
    if position is None:
        return strongest(maps)
    where = position.to(maps.device)
    height, width = maps.shape[-2:]
    if where.min() < 0 or where[:, 0].max() >= height or where[:, 1].max() >= width:
        raise UserError(f"position must lie inside the {height}x{width} map of {layer}")
    return where


def target_mask(point: Tensor, target: Target) -> Tensor:
    """A 0/1 tensor shaped like ``point`` (the model output or the layer's output), 1 at the target."""
    n, size = point.shape[0], point.shape[1]
    channel = target.channel.to(point.device)
    low, high = torch.aminmax(channel)  # one pass for both bounds: this runs on every call
    if int(low) < 0 or int(high) >= size:
        what = "class index" if target.layer is None else f"channel of {target.layer}"
        raise UserError(f"{what} must lie in 0..{size - 1}, got {channel.unique().tolist()}")
    if point.dim() == 2:
        return torch.zeros_like(point).scatter_(1, channel.reshape(n, 1), 1.0)
    rows = torch.arange(n, device=point.device)
    mask = torch.zeros_like(point)
    if target.layer is None:
        mask[rows, channel] = 1
        return mask
    if point.dim() != 4:
        raise UserError(f"unit targets need a 2-D or 4-D layer output, {target.layer} gives {point.dim()}-D")
    if isinstance(target.position, str):
        mask[rows, channel] = 1
        return mask
    where = cells(point.detach()[rows, channel], target.position, target.layer)
    mask[rows, channel, where[:, 0], where[:, 1]] = 1
    return mask


def start_signal(point: Tensor, target: Target, start: str = "one") -> tuple[Tensor, Tensor]:
    """Where the backward pass starts at ``point``, and each image's target score (a whole map: its sum).

    ``start="one"``: 1 at the target (the gradient of the target); ``"value"``: the target's value.
    """
    if start not in STARTS:
        raise UserError(f"unknown start {start!r}; choose one of: {', '.join(STARTS)}")
    mask = target_mask(point, target)
    chosen = mask * point.detach()
    scores = chosen.reshape(len(point), -1).sum(dim=1)
    return (mask if start == "one" else chosen), scores
