"""Occlusion sensitivity (Zeiler & Fergus 2014, Section 4.2, Fig. 7): the sweep behind ``zfviz viz
occlusion`` and the ``occlusion`` attribution method (``methods/occlusion_map.py``).

A square occluder is swept over each image; for every position we record (d) the probability of
the true class, (e) the most probable class and its probability, and (b) the total activation of
the layer-5 map that is strongest on the unoccluded image.

Inputs are the model's normalized inputs, ``(pixel - mean) / std`` with the data set's mean, so
the paper's grey square (``fill="mean"``, the data set's mean pixel) is 0 there; ``"zero"`` is a
black square, ``(0 - mean) / std``; ``"noise"`` is i.i.d. N(0, 1) after normalization, i.e. pixels
with the data set's mean and std (randomized occlusion), drawn once per call from ``seed``.

Fast path (``zfviz.attribution.occlusion_fast``): an occluder changes only the activations inside its
receptive field in the early layers, so each occluded copy carries just a rectangle of every map
through the chain of convs, max-pools, pointwise layers and ResNet blocks the model starts with;
the model's own forward finishes from where the rectangle covers the whole map. ``fast=False``
(and any model with no such chain) forwards whole occluded copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zfviz.activations import Capture, evaluating, resolve
from zfviz.attribution.occlusion_fast import Squares, Sweep
from zfviz.attribution.targets import check_classes, class_targets
from zfviz.errors import UserError

FILLS = ("mean", "zero", "noise")
MAPS = ("p_true", "top_class", "top_prob", "feature_activation")
# Default chunk: big chunks amortize per-op overhead, which dominates small inputs on busy cores.
CHUNK_BYTES = 256 * 2**20


def resolve_layer(model: nn.Module, layer: str | None = None) -> str:
    """The module whose output is "layer n" here: a conv/fc name means its rectified output (the next ReLU).

    ``None`` is the last conv block's rectified output (``relu5`` on our nets, ``features.11`` on
    torchvision's AlexNet, ``layer4`` on a ResNet: see ``zfviz.activations``).
    """
    return resolve(model, layer, "rectified")


def grid(size: int, window: int, stride: int) -> Tensor:
    """Top-left coordinates of the occluder along one axis: it always lies wholly inside the image."""
    if not 1 <= window <= size:
        raise UserError(f"occlusion window {window} must be between 1 and the image size {size}")
    if stride < 1:
        raise UserError(f"occlusion stride must be at least 1, got {stride}")
    return torch.arange(0, size - window + 1, stride)


def object_boxes(pixels: Tensor, threshold: float = 0.1) -> Tensor:
    """(N, 4) top, left, height, width of the object in each of ``pixels`` (N, C, H, W): the box around the
    pixels that differ from the image's background (the median of its border) by more than ``threshold``
    of the largest such difference. An image with no such pixel is all object (its whole frame).

    Fig. 7's square covers a part of the object (the dog's face): sizing it needs the object's extent.
    """
    gray = torch.as_tensor(pixels).float().mean(dim=1)
    n, h, w = gray.shape
    border = torch.cat([gray[:, 0], gray[:, -1], gray[:, :, 0], gray[:, :, -1]], dim=1).median(dim=1).values
    diff = (gray - border[:, None, None]).abs()
    mask = diff > threshold * diff.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    boxes = torch.tensor([[0, 0, h, w]] * n)
    for i in range(n):
        rows, cols = mask[i].any(dim=1).nonzero()[:, 0], mask[i].any(dim=0).nonzero()[:, 0]
        if len(rows):
            boxes[i] = torch.stack([rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1])
    return boxes


def object_window(boxes: Tensor, fraction: float, size: int) -> int:
    """The occluder's side: ``fraction`` of the objects' typical side (the median over ``boxes`` of each box's
    geometric-mean side), within 1..``size``. One side for all images: their maps share one grid."""
    if not 0 < fraction <= 1:
        raise UserError(f"viz.object_frac={fraction} must be in (0, 1]: the share of the object's side it covers")
    side = (boxes[:, 2].double() * boxes[:, 3].double()).sqrt().quantile(0.5)  # an even count: the middle two's mean
    return int(min(size, max(1, round(fraction * float(side)))))


def fill_image(fill, shape: tuple[int, int, int], mean=None, std=None, seed: int = 0, gray: bool = False) -> Tensor:
    """The (C, H, W) image whose pixels the occluder shows, in the model's normalized input space.

    ``gray``: noise takes one value per pixel for all channels (gray data repeated to 3 channels).
    """
    if isinstance(fill, Tensor):
        return fill.float().expand(shape).contiguous()
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return torch.full(shape, float(fill))
    if fill == "mean":
        return torch.zeros(shape)  # the data set's mean pixel, after mean subtraction
    if fill == "zero":
        if mean is None or std is None:
            raise UserError("fill='zero' needs the input normalization (mean and std) to know what black is")
        black = (0 - torch.as_tensor(mean, dtype=torch.float32)) / torch.as_tensor(std, dtype=torch.float32)
        # per channel (C,) or (C, 1, 1); or per pixel (C, H, W) where the mean is an image (ImageNet)
        return (black if black.dim() == 3 else black.reshape(-1, 1, 1)).expand(shape).contiguous()
    if fill == "noise":
        noise_shape = (1, *shape[1:]) if gray else shape
        return torch.randn(noise_shape, generator=torch.Generator().manual_seed(seed)).expand(shape).contiguous()
    raise UserError(f"unknown occlusion fill {fill!r}; choose one of: {', '.join(FILLS)}, or a number")


def occlude_boxes(images: Tensor, boxes: Tensor, fill: Tensor) -> Tensor:
    """Copies of ``images`` (K, C, H, W) with box k (top, left, height, width) showing ``fill``'s pixels."""
    h, w = images.shape[-2:]
    top, left, height, width = (boxes[:, j, None] for j in range(4))
    dy = torch.arange(h, device=images.device)[None] - top
    dx = torch.arange(w, device=images.device)[None] - left
    inside = ((dy >= 0) & (dy < height))[:, :, None] & ((dx >= 0) & (dx < width))[:, None, :]
    return torch.where(inside[:, None], fill, images)


def occluded_copies(images: Tensor, fill: Tensor, n_idx: Tensor, ys: Tensor, xs: Tensor, window: int) -> Tensor:
    """Copies ``images[n_idx]`` with the square at (ys, xs) replaced by the fill image's pixels."""
    side = torch.full_like(ys, window)
    return occlude_boxes(images[n_idx], torch.stack([ys, xs, side, side], dim=1), fill)


def _copies_forward(model, feat_name: str, images: Tensor, squares: Squares, n_idx, p_idx, channel):
    """The plain path: whole occluded copies, batched; the chosen map's total taken in the layer's hook."""
    ys, xs = squares.ys[p_idx // len(squares.xs)], squares.xs[p_idx % len(squares.xs)]
    rows = torch.arange(len(n_idx), device=images.device)
    with Capture(model, [feat_name], keep=lambda out: out[rows, channel[n_idx]].sum(dim=(1, 2))) as capture:
        logits = capture(occluded_copies(images, squares.fill, n_idx, ys, xs, squares.window))
    return logits, capture.outputs[feat_name]


def _unoccluded(model: nn.Module, images: Tensor, feat_name: str) -> tuple[Tensor, Tensor]:
    """The logits and the chosen layer's output on the unoccluded images."""
    with Capture(model, [feat_name]) as capture:
        logits = capture(images)
    return logits, capture.outputs[feat_name]


@dataclass(frozen=True)
class Occluder:
    """The square swept over the images: its side ``window`` and ``stride`` in pixels, and what it
    shows (``fill``: a name of ``FILLS``, a number, or a (C, H, W) image; ``fill_image``), with the
    normalization ``mean``/``std`` that ``"zero"`` needs and the ``seed`` of ``"noise"``."""

    window: int
    stride: int
    fill: str | float | Tensor = "mean"
    mean: Tensor | list[float] | float | None = None
    std: Tensor | list[float] | float | None = None
    seed: int = 0

    def squares(self, shape: tuple[int, int, int], device) -> Squares:
        """Every position of the square on (C, H, W) images: its fill image and its origins along each axis."""
        c, h, w = shape
        ys, xs = grid(h, self.window, self.stride).to(device), grid(w, self.window, self.stride).to(device)
        fill = fill_image(self.fill, (c, h, w), self.mean, self.std, self.seed).to(device)
        return Squares(fill, self.window, ys, xs)


@torch.no_grad()
def occlusion(
    model: nn.Module,
    images: Tensor,
    target: Tensor | int,
    occluder: Occluder,
    layer: str | None = None,
    *,
    chunk_size: int | None = None,
    fast: bool = True,
) -> dict[str, Tensor]:
    """Occlusion maps for normalized ``images`` (N, C, H, W) and their true classes ``target``.

    Returns ``p_true``, ``top_class``, ``top_prob`` and ``feature_activation``, each (N, rows, cols)
    over the ``occluder``'s positions (top-left corners ``grid(H, window, stride)``), plus ``channel``
    (N,): the map of ``layer`` (rectified) with the largest single activation on the unoccluded image,
    ``p_true_clean`` (N,) and ``layer``, the module path whose maps those are (``None``: the last
    conv block's rectified output, on our nets ``relu5``, the paper's layer 5; on any other net see
    ``resolve_layer``). ``chunk_size`` copies run per forward (None: as many as keep the largest map
    under ``CHUNK_BYTES``); the maps do not depend on it. ``fast=False`` forwards whole occluded copies.
    """
    if images.dim() != 4:
        raise UserError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, dev = len(images), images.device
    images = images.float()
    target = class_targets(target, n, what="occlusion target").to(dev)
    squares = occluder.squares(tuple(images.shape[1:]), dev)
    feat_name = resolve_layer(model, layer)
    with evaluating(model):
        if fast:
            logits, act, sweep = Sweep.build(model, images, feat_name, squares)
        else:
            (logits, act), sweep = _unoccluded(model, images, feat_name), None
        if act.dim() != 4:
            raise UserError(f"layer {feat_name!r} gives {act.dim()}-d output; occlusion needs a spatial (conv) layer")
        check_classes(target, logits.shape[1], "occlusion target")
        channel = act.flatten(2).amax(dim=2).argmax(dim=1)
        if chunk_size is None:
            largest = sweep.copy_numel() if sweep else 8 * images[0].numel()
            chunk_size = max(1, CHUNK_BYTES // (4 * largest))
        # All (image, position) pairs, image-major, positions in the sweep's order (class by class, so a chunk
        # holds few batches of equal rectangles); chunks are slices of this list.
        per_image = len(squares.ys) * len(squares.xs)
        pos = (sweep.order if sweep else torch.arange(per_image, device=dev)).repeat(n)
        n_all = torch.arange(n, device=dev).repeat_interleave(per_image)
        logits_all, totals = [], []
        for start in range(0, len(n_all), chunk_size):
            n_idx, p_idx = n_all[start : start + chunk_size], pos[start : start + chunk_size]
            if sweep is not None:
                lg, total = sweep.forward(n_idx, p_idx, channel)
            else:
                lg, total = _copies_forward(model, feat_name, images, squares, n_idx, p_idx, channel)
            logits_all.append(lg)
            totals.append(total)
    # Back to (image, row, column) order.
    slot = torch.empty_like(pos).index_put_((n_all * per_image + pos,), torch.arange(len(pos), device=dev))
    probs = torch.cat(logits_all)[slot].softmax(dim=1)
    n_all = n_all[slot]
    top_prob, top_class = probs.max(dim=1)
    shape = (n, len(squares.ys), len(squares.xs))
    return {
        "p_true": probs[torch.arange(len(n_all), device=dev), target[n_all]].reshape(shape),
        "top_class": top_class.reshape(shape),
        "top_prob": top_prob.reshape(shape),
        "feature_activation": torch.cat(totals)[slot].reshape(shape),
        "channel": channel,
        "p_true_clean": logits.softmax(dim=1)[torch.arange(n, device=dev), target],
        "layer": feat_name,
    }
