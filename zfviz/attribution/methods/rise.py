"""Randomized occlusion: RISE (Petsiuk, Das & Saenko 2018, Section 3).

Zeiler & Fergus (2014, Section 4.2, Fig. 7) occlude one grey square at a time and read the drop in
the true class's probability. RISE occludes at random instead: N binary grids of ``cells x cells``
cells, each cell kept with probability ``p``, upsampled bilinearly to ``(cells + 1) x`` the cell
size and cropped at a random shift of up to one cell (so mask edges are soft and fall anywhere);
the saliency of a pixel is the expected score of the masked image given the pixel is kept,

    S(x)[u] = 1 / (N p) * sum_k f(x * M_k) M_k[u],

with ``f`` the target class's softmax probability (the paper's Eq. 6, Monte Carlo). Masking takes a
pixel to 0 of the model's normalized input, i.e. the data set's mean pixel: the same grey as the
paper's occluder (``zfviz.attribution.occlusion``, ``fill="mean"``), so the two methods differ only in
where they occlude.

The masks are drawn once per call from ``seed`` (a ``torch.Generator``: nothing global is
touched) and shared by all images, as in the paper; the batch size only groups masked copies
into forward passes, so it cannot change a map beyond float summation order. As the attribution
method ``rise`` (``attribute(model, x, target, "rise")``), the map is N x 1 x H x W.

Thousands of masked forward passes take minutes on a CPU, so the masks done show in a tqdm bar on
stderr, as training's steps do; only on a terminal (``make figures`` logs and tests stay clean).
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from zfviz.activations import evaluating
from zfviz.attribution.options import Option, number, whole
from zfviz.attribution.registry import register_method
from zfviz.attribution.targets import class_targets
from zfviz.errors import UserError

# The defaults, for ``rise`` called directly and for the method's declaration below.
MASKS, CELLS, P, DEFAULT_BATCH, SEED = 4000, 7, 0.5, 256, 0  # DEFAULT_BATCH: masked copies per forward pass


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"rise: {name}={value!r} is not valid: give a whole number, 1 or more")
    return value


class MaskSet:
    """``count`` RISE masks for ``size`` (H, W): the random grids and shifts drawn at once from
    ``seed``, each mask made on demand (``masks(start, stop)``), so a chunk of 4000 masks at 224 px
    never needs to be held whole, and the masks do not depend on how they are chunked."""

    def __init__(self, count: int, cells: int, p: float, size: tuple[int, int], seed: int = 0) -> None:
        _positive_int("masks", count)
        _positive_int("cells", cells)
        if not 0.0 < float(p) <= 1.0:
            raise UserError(f"rise: p={p!r} is not valid: give the probability of keeping a cell, in (0, 1]")
        self.count, self.cells, self.p, self.size = count, cells, float(p), (int(size[0]), int(size[1]))
        generator = torch.Generator().manual_seed(int(seed))
        self.grids = (torch.rand(count, 1, cells, cells, generator=generator) < self.p).float()
        # a cell is ceil(H / cells) pixels; the upsampled grid has one cell to spare for the shift
        self.cell = tuple(math.ceil(side / cells) for side in self.size)
        self.shifts = torch.stack(
            [torch.randint(0, c, (count,), generator=generator) for c in self.cell], dim=1
        )  # (count, 2): dy, dx

    def masks(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Masks ``start:stop`` as a (K, H, W) float tensor in [0, 1]."""
        stop = self.count if stop is None else stop
        grids, shifts = self.grids[start:stop], self.shifts[start:stop]
        big = tuple((self.cells + 1) * c for c in self.cell)
        up = F.interpolate(grids, size=big, mode="bilinear", align_corners=False)[:, 0]
        h, w = self.size
        rows = shifts[:, 0, None] + torch.arange(h)  # (K, H)
        cols = shifts[:, 1, None] + torch.arange(w)  # (K, W)
        k = torch.arange(len(grids))[:, None, None]
        return up[k, rows[:, :, None], cols[:, None, :]]


@torch.no_grad()
def rise(
    model: nn.Module,
    images: Tensor,
    target,
    *,
    masks: int = MASKS,
    cells: int = CELLS,
    p: float = P,
    batch_size: int = DEFAULT_BATCH,
    seed: int = SEED,
) -> Tensor:
    """RISE saliency (N x H x W) of class ``target`` (an index, or one per image) for normalized
    ``images`` (N x C x H x W): the mean of ``masks`` random masks, each weighted by the target's
    probability on the image masked by it, over ``p``. ``batch_size`` masked copies per forward
    pass. Eval mode for the call; the model is left as it was.
    """
    if images.dim() != 4:
        raise UserError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    _positive_int("batch_size", batch_size)
    n, _, h, w = images.shape
    mask_set = MaskSet(masks, cells, p, (h, w), seed)
    per_pass = min(masks, batch_size)  # masks per forward pass; a small mask count packs several images
    images_per_pass = max(1, batch_size // per_pass)
    saliency = torch.zeros(n, h * w, dtype=torch.float64, device=images.device)
    classes = None
    bar = tqdm(total=masks, desc="rise", unit="mask", disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True)
    with evaluating(model), bar:
        for start in range(0, masks, per_pass):
            chunk = mask_set.masks(start, start + per_pass).to(images.device, images.dtype)  # (K, H, W)
            for first in range(0, n, images_per_pass):
                group = images[first : first + images_per_pass]  # (G, C, H, W)
                masked = (group[:, None] * chunk[None, :, None]).flatten(0, 1)  # (G*K, C, H, W)
                probs = model(masked).float().softmax(dim=1)
                if classes is None:
                    classes = probs.shape[1]
                    target = class_targets(target, n, classes).to(images.device)
                scores = probs[:, None].reshape(len(group), len(chunk), classes)  # (G, K, classes)
                score = scores.gather(2, target[first : first + len(group), None, None].expand(-1, len(chunk), 1))
                saliency[first : first + len(group)] += score[:, :, 0].double() @ chunk.flatten(1).double()
            bar.update(len(chunk))
    return (saliency / (masks * mask_set.p)).reshape(n, h, w).to(images.dtype)


@register_method(
    "rise",
    options=(
        Option("masks", whole(1), MASKS, "random masks averaged"),
        Option("cells", whole(1), CELLS, "grid cells per side of a mask"),
        Option("p", number(above=0, at_most=1), P, "the probability that a cell is kept"),
        Option("batch_size", whole(1), DEFAULT_BATCH, "masked copies per forward pass"),
        Option("seed", whole(0), SEED, "the masks' seed"),
    ),
)
def rise_map(
    model: nn.Module, inputs: Tensor, target, *, masks: int, cells: int, p: float, batch_size: int, seed: int
) -> Tensor:
    """RISE (Petsiuk et al. 2018): randomized occlusion, N x 1 x H x W for a class target."""
    return rise(model, inputs, target, masks=masks, cells=cells, p=p, batch_size=batch_size, seed=seed)[:, None]
