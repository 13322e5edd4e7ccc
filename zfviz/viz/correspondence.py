"""Correspondence analysis (Zeiler & Fergus 2014, Section 4.3, Table 1, Fig. 8).

Does the net find the same object part in different images? Take K aligned images of one class,
occlude the same part in each, and compare how the features change:
``eps_i = features(image_i) - features(occluded image_i)`` at a layer; the score is the mean over
ordered pairs i != j of the Hamming distance between ``sign(eps_i)`` and ``sign(eps_j)`` divided by
the feature length. Identical effects score 0, independent random signs 0.5; a part scoring lower
than randomly placed boxes of the same size is one the net locates consistently.
Features are the rectified outputs (``conv5`` means relu5's output, ``fc7`` relu7's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zfviz.activations import features
from zfviz.attribution.occlusion import occlude_boxes
from zfviz.errors import UserError

RANDOM = "random"


def sign_change(eps: Tensor) -> float:
    """Mean normalized Hamming distance between the signs of the K rows of ``eps`` (K, D), over pairs i != j."""
    if eps.dim() != 2 or len(eps) < 2:
        raise UserError(f"need at least 2 feature differences (K, D), got shape {tuple(eps.shape)}")
    signs = torch.sign(eps)
    k = len(signs)
    # (K, K) matrix of disagreeing fractions; the diagonal is 0, so the sum counts pairs i != j.
    differ = torch.stack([(signs[i] != signs).float().mean(dim=1) for i in range(k)])
    return float(differ.sum() / (k * (k - 1)))


def check_box(box, size: tuple[int, int], name: str = "box") -> tuple[int, int, int, int]:
    """``[top, left, height, width]`` in pixels, wholly inside an image of ``size`` (H, W)."""
    if len(box) != 4:
        raise UserError(f"{name} must be [top, left, height, width], got {list(box)}")
    top, left, height, width = (int(v) for v in box)
    if height < 1 or width < 1 or top < 0 or left < 0 or top + height > size[0] or left + width > size[1]:
        raise UserError(f"{name} {[top, left, height, width]} is not inside the {size[0]}x{size[1]} image")
    return top, left, height, width


def random_boxes(count: int, size: tuple[int, int], box: tuple[int, int], generator: torch.Generator) -> Tensor:
    """``count`` boxes of ``box`` (height, width) at uniformly random places inside the image."""
    top = torch.randint(0, size[0] - box[0] + 1, (count,), generator=generator)
    left = torch.randint(0, size[1] - box[1] + 1, (count,), generator=generator)
    return torch.stack([top, left, torch.full_like(top, box[0]), torch.full_like(top, box[1])], dim=1)


def scores(model: nn.Module, images: Tensor, boxes: dict[str, Tensor], fill: Tensor, layers: list[str]) -> dict:
    """``{part: {layer: sign_change}}`` for one set of K images; ``boxes[part]`` is (K, 4) or one (4,) box."""
    k = len(images)
    parts = list(boxes)
    batch = [images]
    for part in parts:
        box = torch.as_tensor(boxes[part]).long().expand(k, 4).to(images.device)
        batch.append(occlude_boxes(images, box, fill))
    feats = features(model, torch.cat(batch), layers)
    out: dict[str, dict[str, float]] = {p: {} for p in parts}
    for layer in layers:
        f = feats[layer].reshape(len(batch), k, -1)
        for j, part in enumerate(parts):
            out[part][layer] = sign_change(f[0] - f[j + 1])
    return out


def aligned_pool(images: Tensor, labels: Tensor, cls: int, size: int | None) -> Tensor:
    """Indices of the ``size`` images of class ``cls`` closest to the class's mean image (the best aligned)."""
    index = torch.nonzero(labels == cls).flatten()
    if len(index) < 2:
        raise UserError(f"class {cls} has {len(index)} images; correspondence needs at least 2")
    members = images[index].float().flatten(1)
    distance = (members - members.mean(dim=0)).norm(dim=1)
    order = distance.argsort()
    return index[order[: size or len(index)]]


@dataclass(frozen=True)
class Draws:
    """The random sets scored: ``count`` draws of ``k`` images each, and random boxes (one per image,
    each in its own place) of ``random_size`` (None: the first part's size), all from ``seed``."""

    k: int = 5
    count: int = 10
    random_size: tuple[int, int] | None = None
    seed: int = 0


def correspondence(
    model: nn.Module,
    images: Tensor,
    parts: dict[str, list[int]],
    fill: Tensor,
    draws: Draws | None = None,
    layers: tuple[str, ...] = ("conv5", "fc7"),
) -> list[dict]:
    """Scores of every part and of random boxes, for ``draws``' random sets of ``images``.

    ``images`` (normalized, aligned: one class) are the pool to draw from; ``parts`` maps a name to
    its box ``[top, left, height, width]``. Rows: ``draw``, ``part``, ``layer``, ``score``.
    """
    draws = draws or Draws()
    k, random_size = draws.k, draws.random_size
    size = tuple(images.shape[-2:])
    if not parts:
        raise UserError("name at least one part box: parts: {name: [top, left, height, width]}")
    if RANDOM in parts:
        raise UserError(f"{RANDOM!r} is the name of the random-box row; give the part another name")
    if not 2 <= k <= len(images):
        raise UserError(f"k={k} images per draw must be between 2 and the pool's {len(images)}")
    boxes = {name: torch.tensor(check_box(box, size, f"part {name!r}")) for name, box in parts.items()}
    random_size = tuple(random_size or boxes[next(iter(boxes))][2:].tolist())
    check_box([0, 0, *random_size], size, "random_size")
    generator = torch.Generator().manual_seed(draws.seed)
    rows = []
    for draw in range(draws.count):
        chosen = torch.randperm(len(images), generator=generator)[:k]
        draw_boxes = dict(boxes)
        draw_boxes[RANDOM] = random_boxes(k, size, random_size, generator)
        result = scores(model, images[chosen], draw_boxes, fill, list(layers))
        for part, by_layer in result.items():
            for layer, score in by_layer.items():
                rows.append({"draw": draw, "part": part, "layer": layer, "score": score})
    return rows
