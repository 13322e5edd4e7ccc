"""Feature invariance (Zeiler & Fergus 2014, Section 4, Fig. 5).

Vertical translation, scaling and rotation of a few images; for each transformed image, the
Euclidean distance between its features and the untransformed image's at two layers (the paper's
1 and 7), and the probability of the true class. Features are the rectified outputs (``conv1``
means relu1's output).

The paper sweeps -60..+60 px at 224 px; we give translations as fractions of the image height
(60 / 224 = 0.268), so the same config means -17..+17 px at the cpu preset's 64 px. Pixels that
enter at the borders show ``background`` (normalized), e.g. black for Fashion-MNIST.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.activations import features
from zfviz.attribution.targets import check_classes, class_targets
from zfviz.errors import UserError

TRANSFORMS = ("translate", "scale", "rotate")
IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}


def transform(images: Tensor, kind: str, amount: float, background: float | Tensor = 0.0) -> Tensor:
    """``images`` (N, C, H, W) moved down by ``amount`` x height, zoomed by ``amount``, or turned ``amount`` degrees.

    Bilinear resampling about the image centre; the identity returns the images untouched, so
    distances at it are exactly 0.
    """
    if kind not in TRANSFORMS:
        raise UserError(f"unknown transform {kind!r}; choose one of: {', '.join(TRANSFORMS)}")
    amount = float(amount)
    if amount == IDENTITY[kind]:
        return images
    if kind == "scale" and amount <= 0:
        raise UserError(f"scale factors must be positive, got {amount}")
    theta = torch.zeros(2, 3)
    if kind == "translate":
        # affine_grid maps output to input coordinates in [-1, 1]: moving content down by d samples d higher.
        theta[0, 0] = theta[1, 1] = 1.0
        theta[1, 2] = -2.0 * amount
    elif kind == "scale":
        theta[0, 0] = theta[1, 1] = 1.0 / amount
    else:
        a = math.radians(amount)
        theta[:, :2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    theta = theta.to(images.device).expand(len(images), 2, 3)
    sample_grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    background = torch.as_tensor(background, dtype=images.dtype, device=images.device)
    if background.dim() != 3:  # one value or one per channel; (C, H, W) is per pixel (ImageNet's mean image)
        background = background.reshape(-1, 1, 1)
    # Resample (x - background) with zero padding: bilinear weights are linear, so borders get background.
    moved = F.grid_sample(images - background, sample_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved + background


def sweep_values(spec) -> list[float]:
    """``{min, max, steps}`` -> evenly spaced values (both ends included)."""
    lo, hi, steps = float(spec["min"]), float(spec["max"]), int(spec["steps"])
    if steps < 1:
        raise UserError(f"a sweep needs at least 1 step, got {steps}")
    # Rounded so that a sweep through the identity (e.g. -0.268..0.268) hits it exactly.
    return [lo] if steps == 1 else [round(lo + (hi - lo) * i / (steps - 1), 9) for i in range(steps)]


@torch.no_grad()
def invariance(
    model: nn.Module,
    images: Tensor,
    target: Tensor,
    sweeps: dict[str, list[float]],
    layers: tuple[str, ...] = ("conv1", "fc7"),
    background: float | Tensor = 0.0,
) -> list[dict]:
    """Rows ``image``, ``transform``, ``amount``, ``dist_<layer>`` per layer, ``p_true``.

    ``sweeps`` maps a transform name to its amounts (fractions of the height, factors, degrees).
    """
    target = class_targets(target, len(images), what="target")
    layers = list(layers)
    base = features(model, images, layers)
    rows = []
    for kind, amounts in sweeps.items():
        moved = torch.cat([transform(images, kind, a, background) for a in amounts])
        feats = features(model, moved, layers, with_output=True)
        probs = feats["output"].softmax(dim=1)
        check_classes(target, probs.shape[1], "target")
        for j, amount in enumerate(amounts):
            for i in range(len(images)):
                k = j * len(images) + i  # the copies are amount-major
                row = {"image": i, "transform": kind, "amount": amount}
                for layer in layers:
                    row[f"dist_{layer}"] = float((feats[layer][k] - base[layer][i]).norm())
                row["p_true"] = float(probs[k, target[i]])
                rows.append(row)
    return rows
