"""The paper's occlusion as an attribution method (Zeiler & Fergus 2014, Section 4.2, Fig. 7).

It reads the model's output on altered copies of the input, no backward pass, so it sits beside the
gradient methods only through ``attribute(model, x, target, "occlusion")``, where it returns one map
per image (N x 1 x H x W, like Grad-CAM) for a class target: a grey square swept over the image
(``zfviz.attribution.occlusion``); a pixel's value is the drop in the target's probability, averaged
over the square positions that cover it (pixels no position covers get 0). ``window=None`` is a
quarter of the image side (16 px at the cpu preset's 64, ``configs/viz/occlusion.yaml``),
``stride=None`` a quarter of the window.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zfviz.attribution.occlusion import FILLS, Occluder, grid, occlusion
from zfviz.attribution.options import TENSOR, Option, choice, either, number, optional, whole
from zfviz.attribution.registry import register_method
from zfviz.attribution.targets import class_targets


def coverage(size: int, window: int, stride: int) -> Tensor:
    """(positions, size) 0/1: position i's square covers pixel y along one axis."""
    starts = grid(size, window, stride)
    pixel = torch.arange(size)
    return ((pixel >= starts[:, None]) & (pixel < starts[:, None] + window)).float()


@register_method(
    "occlusion",
    options=(
        Option("window", optional(whole(1)), None, "the square's side in pixels (null: a quarter of the image side)"),
        Option("stride", optional(whole(1)), None, "pixels between square positions (null: a quarter of the window)"),
        Option("fill", either(choice(*FILLS), number(), TENSOR), "mean", "what the square shows (mean: the grey)"),
        Option("chunk_size", optional(whole(1)), None, "occluded copies per forward (null: ~256 MB of maps)"),
    ),
)
def occlusion_map(
    model: nn.Module,
    inputs: Tensor,
    target,
    *,
    window: int | None,
    stride: int | None,
    fill: str | float | Tensor,
    chunk_size: int | None,
) -> Tensor:
    """The paper's occlusion as a pixel map, N x 1 x H x W: per pixel, the mean drop in the target's
    probability (unoccluded minus occluded) over the square positions covering it."""
    n, _, h, w = inputs.shape
    window = max(1, min(h, w) // 4) if window is None else window
    stride = max(1, window // 4) if stride is None else stride
    index = class_targets(target, n).to(inputs.device)  # occlusion() checks the range
    maps = occlusion(model, inputs, index, Occluder(window, stride, fill), chunk_size=chunk_size)
    drop = maps["p_true_clean"][:, None, None] - maps["p_true"]  # (N, rows, cols)
    along_y = coverage(h, window, stride).to(drop)
    along_x = coverage(w, window, stride).to(drop)
    total = torch.einsum("iy,nij,jx->nyx", along_y, drop, along_x)
    count = along_y.sum(0)[:, None] * along_x.sum(0)[None, :]
    return (total / count.clamp(min=1))[:, None].to(inputs.dtype)
