"""The perturbation methods in the attribution family's table: the paper's occlusion and RISE.

Both read the model's output on altered copies of the input, no backward pass, so they sit beside
the gradient methods only through ``attribute(model, x, method, target=...)``, where they return
one map per image (N x 1 x H x W, like Grad-CAM) for a class target:

- ``occlusion`` (Zeiler & Fergus 2014, Section 4.2, Fig. 7): a grey square swept over the image
  (``zfviz.viz.occlusion``); a pixel's value is the drop in the target's probability, averaged over
  the square positions that cover it (pixels no position covers get 0). ``window=None`` is a quarter
  of the image side (16 px at the cpu preset's 64, ``configs/viz/occlusion.yaml``), ``stride=None``
  a quarter of the window.
- ``rise`` (Petsiuk et al. 2018): randomized occlusion, ``zfviz.viz.rise``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zfviz.attribution.core import register_method
from zfviz.viz.occlusion import grid, occlusion
from zfviz.viz.rise import DEFAULT_BATCH, class_targets, rise


@register_method("rise")
def rise_map(
    model: nn.Module,
    inputs: Tensor,
    target,
    *,
    masks: int = 4000,
    cells: int = 7,
    p: float = 0.5,
    batch_size: int = DEFAULT_BATCH,
    seed: int = 0,
) -> Tensor:
    """RISE saliency of the target class, N x 1 x H x W (``zfviz.viz.rise.rise``)."""
    return rise(model, inputs, target, masks=masks, cells=cells, p=p, batch_size=batch_size, seed=seed)[:, None]


def coverage(size: int, window: int, stride: int) -> Tensor:
    """(positions, size) 0/1: position i's square covers pixel y along one axis."""
    starts = grid(size, window, stride)
    pixel = torch.arange(size)
    return ((pixel >= starts[:, None]) & (pixel < starts[:, None] + window)).float()


@register_method("occlusion")
def occlusion_map(
    model: nn.Module,
    inputs: Tensor,
    target,
    *,
    window: int | None = None,
    stride: int | None = None,
    fill: str | float = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """The paper's occlusion as a pixel map, N x 1 x H x W: per pixel, the mean drop in the target's
    probability (unoccluded minus occluded) over the square positions covering it."""
    n, _, h, w = inputs.shape
    window = window or max(1, min(h, w) // 4)
    stride = stride or max(1, window // 4)
    index = class_targets(target, n).to(inputs.device)  # occlusion() checks the range
    maps = occlusion(model, inputs, index, window, stride, fill, chunk_size=chunk_size)
    drop = maps["p_true_clean"][:, None, None] - maps["p_true"]  # (N, rows, cols)
    along_y = coverage(h, window, stride).to(drop)
    along_x = coverage(w, window, stride).to(drop)
    total = torch.einsum("iy,nij,jx->nyx", along_y, drop, along_x)
    count = along_y.sum(0)[:, None] * along_x.sum(0)[None, :]
    return (total / count.clamp(min=1))[:, None].to(inputs.dtype)
