"""Does a map point at the object? The pointing game and the energy inside the object mask (issue 16).

Where an image's object is known as a mask (the dissection canvases' object masks, the
correspondence boxes), a map that explains a correct decision should concentrate on it:

- ``pointing_game`` (Zhang et al. 2016, "Top-down neural attention by excitation backprop"): a hit
  when the map's maximum lies on the object, or within ``tolerance`` pixels of it (Zhang et al.
  allow 15 px at ImageNet's 224; the default here is 0, a 64 px image has little room). Where several
  pixels share the maximum, every one of them must lie on the object, so a flat map cannot score by
  luck.
- ``energy_inside`` (Wang et al. 2020, "Score-CAM", their energy-based pointing game): the
  share of the map's positive mass that falls on the object, ``sum(max(m, 0) * mask) / sum(max(m, 0))``;
  0 for a map with no positive value (it puts nothing anywhere, so nothing on the object).

Maps are N x H x W, or N x C x H x W summed over channels; masks are N x H x W (bool, or 0/1). An
empty mask leaves both scores undefined: that is a ``UserError`` naming the image, rather than a
silent miss that would pull a mean down.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zfviz.errors import UserError
from zfviz.evaluate.perturbation import as_maps


def _inputs(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(masks, Tensor) or masks.dim() != 3:
        raise UserError(f"masks must be an N x H x W tensor, got {getattr(masks, 'shape', type(masks))}")
    if not masks.dtype == torch.bool and not ((masks == 0) | (masks == 1)).all():
        raise UserError("masks must be boolean (or 0/1): True where the object is")
    maps = as_maps(maps, tuple(masks.shape))
    masks = masks.to(maps.device).bool()
    empty = (~masks.flatten(1).any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise UserError(
            f"the object mask of image(s) {', '.join(map(str, empty[:10]))} is empty; pass images that show it"
        )
    return maps, masks


def _dilate(masks: Tensor, radius: int) -> Tensor:
    """Every pixel within Euclidean distance ``radius`` of the mask."""
    offsets = torch.arange(-radius, radius + 1, device=masks.device)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()
    near = F.conv2d(masks[:, None].float(), disk[None, None], padding=radius)[:, 0]
    return near > 0


def pointing_game(maps: Tensor, masks: Tensor, *, tolerance: int = 0) -> Tensor:
    """Per image (N, bool): every pixel where the map is largest lies within ``tolerance`` px of the object."""
    maps, masks = _inputs(maps, masks)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise UserError(f"tolerance must be a whole number of pixels, 0 or more, got {tolerance!r}")
    if tolerance:
        masks = _dilate(masks, tolerance)
    peaks = maps == maps.amax(dim=(1, 2), keepdim=True)
    return ~(peaks & ~masks).flatten(1).any(dim=1)


def energy_inside(maps: Tensor, masks: Tensor) -> Tensor:
    """Per image (N): the share of the map's positive values that lies on the object, in [0, 1]."""
    maps, masks = _inputs(maps, masks)
    positive = maps.clamp(min=0).flatten(1)
    total = positive.sum(dim=1)
    inside = (positive * masks.flatten(1)).sum(dim=1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1), torch.zeros_like(total))
