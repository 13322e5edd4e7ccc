"""Receptive fields from layer geometry: the image patch beside each projection in Fig. 2.

Section 2.1 / Fig. 2 show every top activation next to "the corresponding image patches". The
patch is the activation's receptive field: walking the layers below it, a layer with kernel ``k``
(dilation ``d``), stride ``s`` and padding ``p`` turns ``(offset a, jump j, size r)`` into
``(a - p*j, j*s, r + d*(k-1)*j)``. Cell ``(y, x)`` of the layer then sees input rows
``a + y*j .. a + y*j + r - 1`` (likewise columns), before clipping to the image. A fully connected
layer, or an adaptive pool that changes the size, sees the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zfviz.viz.deconv import trace

_GEOMETRY = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class ReceptiveField:
    """Per axis (rows, cols): ``offset`` of cell 0's first pixel, ``jump`` between cells, ``size``."""

    offset: tuple[int, int]
    jump: tuple[int, int]
    size: tuple[int, int]
    image_size: tuple[int, int]
    whole_image: bool = False

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), bottom/right exclusive, clipped to the image."""
        if self.whole_image:
            return 0, 0, *self.image_size
        top, left = self.offset[0] + y * self.jump[0], self.offset[1] + x * self.jump[1]
        height, width = self.image_size
        return max(top, 0), max(left, 0), min(top + self.size[0], height), min(left + self.size[1], width)

    @property
    def window(self) -> tuple[int, int]:
        """The size of ``window_at``'s crop: the receptive field, at most the whole image."""
        if self.whole_image:
            return self.image_size
        return min(self.size[0], self.image_size[0]), min(self.size[1], self.image_size[1])

    def window_at(self, y: int, x: int) -> tuple[int, int]:
        """Top-left of a ``window``-sized crop inside the image that holds the field's visible part."""
        if self.whole_image:
            return 0, 0
        top, left = self.offset[0] + y * self.jump[0], self.offset[1] + x * self.jump[1]
        height, width = self.window
        top = min(max(top, 0), self.image_size[0] - height)
        left = min(max(left, 0), self.image_size[1] - width)
        return top, left


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def receptive_field(model: nn.Module, layer: str, image_shape: tuple[int, int, int]) -> ReceptiveField:
    """The receptive field of one cell of ``layer`` for inputs shaped ``(C, H, W)``.

    The layer chain is read from one forward pass on a blank image (so any chain ``project``
    accepts works), then the geometry of each conv and pool is folded in.
    """
    param = next(model.parameters(), None)
    blank = torch.zeros(1, *image_shape, device=param.device if param is not None else "cpu")
    steps = trace(model, blank, layer).steps
    offset, jump, size = [0, 0], [1, 1], [1, 1]
    whole = False
    for step in steps:
        module = step.module
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.AdaptiveAvgPool2d) and step.in_shape[-2:] != step.out_shape[-2:]
        ):
            whole = True
        if not isinstance(module, _GEOMETRY):
            continue
        kernel, stride = _pair(module.kernel_size), _pair(module.stride)
        dilation = _pair(getattr(module, "dilation", 1))
        padding = module.padding
        if padding == "valid":
            padding = 0
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=True))
        padding = _pair(padding)
        for axis in range(2):
            offset[axis] -= padding[axis] * jump[axis]
            size[axis] += dilation[axis] * (kernel[axis] - 1) * jump[axis]
            jump[axis] *= stride[axis]
    return ReceptiveField(tuple(offset), tuple(jump), tuple(size), tuple(image_shape[-2:]), whole)


def crop(images: Tensor, corners: Tensor, size: tuple[int, int]) -> Tensor:
    """Cut an ``size`` window at ``corners[i] = (top, left)`` out of each ``images[i]``."""
    height, width = size
    rows = corners[:, 0, None] + torch.arange(height, device=images.device)
    cols = corners[:, 1, None] + torch.arange(width, device=images.device)
    index = torch.arange(len(images), device=images.device)[:, None, None]
    # Advanced indexing over (image, row, col) picks every window in one gather.
    out = images.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def windows(field: ReceptiveField, positions: Tensor) -> Tensor:
    """``window_at`` for many (y, x) positions: an (N, 2) tensor of top-left corners."""
    return torch.tensor([field.window_at(int(y), int(x)) for y, x in positions.reshape(-1, 2)], dtype=torch.long)
