"""Deletion, insertion and pixel flipping: is a map faithful to the model it explains? (issue 16)

A faithful map puts the pixels the model needs first. Remove them first and the target's probability
should fall fast; add them first to an image that lacks them and it should rise fast.

- ``deletion`` and ``insertion`` (Petsiuk et al. 2018, "RISE: randomized input sampling for explanation
  of black-box models"): pixels are removed from the image (replaced by the ``baseline``'s) or inserted
  into the baseline in the map's order, most relevant first; the score is the area under the curve of
  the target's softmax probability over the fraction of pixels changed, x in [0, 1]. Lower is better for
  deletion, higher for insertion. RISE deletes to zeros and inserts into a blurred copy; both take any
  baseline here (``zfviz.attribution.baselines``: a tensor, a number, ``zero``, ``mean`` or ``blur``),
  blur by default.
- ``pixel_flipping`` (Samek et al. 2017, "Evaluating the visualization of what a deep neural network
  has learned"): removal most-relevant-first (MoRF: the curve should fall fast) or
  least-relevant-first (LeRF: it should stay up); ``flipping_gap`` is AUC(LeRF) - AUC(MoRF), larger
  for a better map. Samek et al. flip 9 x 9 regions to random values and report the mean drop of the
  score (AOPC); here single pixels go to the per-image channel mean and the area is taken under the
  probability, so the numbers are on the same scale as deletion's.

Shared conventions. ``images`` are N x C x H x W in the model's input space; ``target`` is a class, or
one per image; ``maps`` are N x H x W, or shaped like ``images`` (summed over channels, so a pixel's
relevance is that of all its channels). The ``steps`` points of a curve change equal fractions of the
pixels: at step k the first ``floor(k * H * W / steps)`` pixels of the order are changed, so a curve
has ``steps + 1`` points from the untouched image (k = 0) to the baseline or the image itself
(k = steps). Ties in a map are broken by position: of equal values, the pixel earlier in row-major
order comes first, in either order (a stable sort), so a result does not depend on the sort routine.
Every perturbed copy of every image runs in batched forwards of ``batch_size`` rows, in eval mode and
without gradients; the batch size changes a curve only by float rounding. The copies reach the model
in channels-last memory layout: the same values, and the cpu preset's ZFNet ran twice as fast on it
(PyTorch's CPU convolutions). The AUC is the trapezoid rule over the ``steps + 1`` evenly spaced points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zfviz.activations import evaluating
from zfviz.attribution.baselines import make_baseline
from zfviz.attribution.targets import check_classes, class_targets
from zfviz.errors import UserError

MODES = ("deletion", "insertion")
ORDERS = ("morf", "lerf")


def as_maps(maps: Tensor, shape: tuple[int, ...], what: str = "maps") -> Tensor:
    """``maps`` as float N x H x W for images of ``shape`` (N x C x H x W), or masks of ``shape`` (N x H x W).

    A map shaped like the images (or with one channel; with any number, against masks) is summed over
    its channels. A map of another
    shape, or with a NaN or an infinity (which has no place in an order), is a ``UserError``.
    """
    if not isinstance(maps, Tensor):
        raise UserError(f"{what} must be a tensor, got {type(maps).__name__}")
    n, (h, w) = shape[0], shape[-2:]
    channels_ok = len(shape) == 3 or maps.dim() == 4 and maps.shape[1] in (1, shape[1])  # any, without images
    if maps.dim() == 4 and maps.shape[0] == n and channels_ok and maps.shape[2:] == (h, w):
        maps = maps.sum(dim=1)
    if tuple(maps.shape) != (n, h, w):
        like = f" or {n} x {shape[1]} x {h} x {w}" if len(shape) == 4 else ""
        raise UserError(f"{what} must be N x H x W = {n} x {h} x {w}{like}, got shape {tuple(maps.shape)}")
    maps = maps.detach().float()
    if not torch.isfinite(maps).all():
        raise UserError(f"{what} contain NaN or infinite values; pass finite maps")
    return maps


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be an integer of at least 1, got {value!r}")
    return value


def ranks(maps: Tensor, order: str = "morf") -> Tensor:
    """Each pixel's place (0 first) in the order of removal: N x (H * W), ties in row-major order."""
    flat = maps.flatten(1)
    perm = torch.sort(flat, dim=1, descending=order == "morf", stable=True).indices
    places = torch.arange(flat.shape[1], device=flat.device).expand_as(perm)
    return torch.empty_like(perm).scatter_(1, perm, places)


def counts(pixels: int, steps: int) -> Tensor:
    """Pixels changed at each of the ``steps + 1`` points: ``floor(k * pixels / steps)``, 0 .. pixels."""
    return torch.arange(steps + 1) * pixels // steps


def _check(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise UserError(f"images must be an N x C x H x W tensor, got {shape}")
    return images.detach().float()


@dataclass(frozen=True)
class _Walk:
    """How a curve changes the pixels: ``mode`` (deletion: they show the baseline; insertion: the
    baseline shows them), in ``order`` (morf: most relevant first), at ``steps`` points, with
    ``batch_size`` copies per forward; checked when made."""

    mode: str
    order: str
    steps: int
    baseline: str | float | Tensor
    batch_size: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        if self.order not in ORDERS:
            raise UserError(f"unknown order {self.order!r}; choose one of: {', '.join(ORDERS)}")
        _positive_int("steps", self.steps)
        _positive_int("batch_size", self.batch_size)


@torch.no_grad()
def _curves(model, images, target, maps, walk: _Walk) -> Tensor:
    mode, steps, baseline, batch_size = walk.mode, walk.steps, walk.baseline, walk.batch_size
    images = _check(images)
    n, c, h, w = images.shape
    dev = images.device
    maps = as_maps(maps, images.shape).to(dev)
    target = class_targets(target, n, what="target").to(dev)
    fill = make_baseline(images, baseline)
    place = ranks(maps, walk.order)
    # Deletion: a changed pixel shows the baseline's value; insertion: it shows the image's. Both as
    # N x H x W x C, so the copies are built straight into channels-last memory.
    shown, other = (
        t.permute(0, 2, 3, 1).contiguous() for t in ((fill, images) if mode == "deletion" else (images, fill))
    )
    changed = counts(h * w, steps).to(dev)
    rows = n * (steps + 1)  # every (image, step) pair, image-major; a chunk of rows is one forward
    buffer = images.new_empty(min(batch_size, rows), h, w, c)
    probs = []
    with evaluating(model):
        for start in range(0, rows, batch_size):
            stop = min(start + batch_size, rows)
            x = buffer[: stop - start]
            for i in range(start // (steps + 1), (stop - 1) // (steps + 1) + 1):  # the images in this chunk
                first, last = max(start, i * (steps + 1)), min(stop, (i + 1) * (steps + 1))
                k = torch.arange(first - i * (steps + 1), last - i * (steps + 1), device=dev)
                done = (place[i] < changed[k, None]).view(-1, h, w, 1)
                torch.where(done, shown[i], other[i], out=x[first - start : last - start])
            logits = model(x.permute(0, 3, 1, 2))  # N x C x H x W, channels-last in memory
            if start == 0:
                _check_classes(target, logits)
            row_target = target[torch.arange(start, stop, device=dev) // (steps + 1)]
            probs.append(logits.float().softmax(dim=1).gather(1, row_target[:, None]).squeeze(1))
    return torch.cat(probs).view(n, steps + 1)


def _check_classes(target: Tensor, logits: Tensor) -> None:
    if logits.dim() != 2:
        raise UserError(f"the model must return N x classes scores, got shape {tuple(logits.shape)}")
    check_classes(target, logits.shape[1], "target")


def auc(curves: Tensor) -> Tensor:
    """Area under each row of ``curves`` (N x (steps + 1)) over evenly spaced x in [0, 1], trapezoid rule."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


def curves(
    model: nn.Module,
    images: Tensor,
    target,
    maps: Tensor,
    *,
    mode: str = "deletion",
    steps: int = 32,
    baseline: str | Tensor = "blur",
    batch_size: int = 256,
) -> Tensor:
    """The target's softmax probability as pixels are deleted or inserted, most relevant first:
    N x (steps + 1), the y values whose area ``deletion``/``insertion`` return (module docstring)."""
    return _curves(model, images, target, maps, _Walk(mode, "morf", steps, baseline, batch_size))


def deletion(
    model: nn.Module, images: Tensor, target, maps: Tensor, *, steps: int = 32, baseline="blur", batch_size: int = 256
) -> Tensor:
    """Petsiuk et al. 2018's deletion score per image (N): area under the probability as the most
    relevant pixels are replaced by the baseline first. Lower means a more faithful map."""
    return auc(_curves(model, images, target, maps, _Walk("deletion", "morf", steps, baseline, batch_size)))


def insertion(
    model: nn.Module, images: Tensor, target, maps: Tensor, *, steps: int = 32, baseline="blur", batch_size: int = 256
) -> Tensor:
    """Petsiuk et al. 2018's insertion score per image (N): area under the probability as the most
    relevant pixels are put into the baseline first. Higher means a more faithful map."""
    return auc(_curves(model, images, target, maps, _Walk("insertion", "morf", steps, baseline, batch_size)))


def pixel_flipping(
    model: nn.Module,
    images: Tensor,
    target,
    maps: Tensor,
    *,
    steps: int = 32,
    baseline="mean",
    order: str = "morf",
    batch_size: int = 256,
) -> Tensor:
    """Samek et al. 2017's pixel flipping per image (N): area under the probability as pixels are
    replaced by the baseline, most relevant first (``"morf"``) or least relevant first (``"lerf"``)."""
    return auc(_curves(model, images, target, maps, _Walk("deletion", order, steps, baseline, batch_size)))


def flipping_gap(
    model: nn.Module, images: Tensor, target, maps: Tensor, *, steps: int = 32, baseline="mean", batch_size: int = 256
) -> Tensor:
    """AUC(LeRF) - AUC(MoRF) per image (N): how much sooner the map's top pixels destroy the target
    than its bottom ones. Positive for a map better than chance; at most 1 (both curves lie in [0, 1])."""
    kw = {"steps": steps, "baseline": baseline, "batch_size": batch_size}
    lerf = pixel_flipping(model, images, target, maps, order="lerf", **kw)
    return lerf - pixel_flipping(model, images, target, maps, order="morf", **kw)
