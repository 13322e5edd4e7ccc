"""Layer outputs read on the input's grid: what Grad-CAM (``methods/gradcam.py``) and the attention maps
(``methods/attention.py``) share to lay a map out as ``N x C x h x w`` over the image.

A conv map is read as it is; a channels-last map (Swin's ``N x h x w x C``) permuted; a token sequence (ViT's
``N x (1 + hw) x C``) without its leading class (or other extra) tokens, the patch tokens laid out ``h x w``.
An ``N x a x b x c`` tensor is channels-first when ``b x c`` can be the input's grid at some stride
(``on_grid``), else channels-last when ``a x b`` can; ``N x T x C`` tokens take the fewest leading extra tokens
that leave a grid of the input's aspect (``token_grid``).
"""

from __future__ import annotations

import math

from torch import Tensor

_EXTRA_TOKENS = 8  # leading tokens a ViT may put before its patches: class, distillation, registers


def on_grid(h: int, w: int, size: tuple[int, int]) -> bool:
    """Whether an ``h x w`` map can be the grid of an input of ``size`` at some stride ``s``: each side
    within the input, and ``h / w`` the input's aspect up to a cell of rounding on each side."""
    height, width = size
    return 1 <= h <= height and 1 <= w <= width and abs(h * width - w * height) <= height + width


def token_grid(count: int, size: tuple[int, int]) -> tuple[int, int, int] | None:
    """``(extra, h, w)``: ``count`` tokens read as ``extra`` leading tokens (a class token) and an ``h x w``
    patch grid (at least 2 patches) of an input of ``size``, the fewest extras that fit; else ``None``."""
    height, width = size
    for extra in range(min(count - 1, _EXTRA_TOKENS + 1)):
        cells = count - extra
        h = max(1, round(math.sqrt(cells * height / width)))
        if cells % h == 0 and on_grid(h, cells // h, size):
            return extra, h, cells // h
    return None


def as_grid(t: Tensor, size: tuple[int, int]) -> Tensor | None:
    """A layer's output ``t`` as ``N x C x h x w`` on the grid of an input of ``size`` (module docstring):
    a conv map as it is, a channels-last map permuted, a token sequence's patch tokens reshaped (its
    leading extra tokens left out); ``None`` for anything else."""
    if t.dim() == 4:
        if not on_grid(t.shape[2], t.shape[3], size) and on_grid(t.shape[1], t.shape[2], size):
            return t.permute(0, 3, 1, 2)
        return t
    if t.dim() == 3 and (found := token_grid(t.shape[1], size)) is not None:
        extra, h, w = found
        return t[:, extra:].unflatten(1, (h, w)).permute(0, 3, 1, 2)
    return None
