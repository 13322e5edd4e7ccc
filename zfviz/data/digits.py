"""The cpu preset's stand-ins for the transfer data sets of Section 5.2 (Tables 4-6, Fig. 9).

No Caltech or PASCAL images can be had here, so both are replaced by scikit-learn's bundled
``load_digits`` (1,797 real handwritten digits, 8x8, ten classes), run through the same protocol:

- Caltech-101/256 stand-in: every digit one image of its class. Pixel values 0..16 are scaled to
  0..255 (ink bright on a dark ground, as in Fashion-MNIST), one gray channel; the features
  resize them bilinearly to the checkpoint's input size and repeat gray to 3 channels.
- PASCAL stand-in: multi-label canvases, 32x32 (a 2x2 grid of 16x16 cells), each holding 1-3
  digits in distinct cells, every digit scaled to 8, 12 or 16 px at a random offset inside its cell.
  The label is multi-hot over the ten digits; the single label for the paper's 20-way softmax
  follows the same rule as VOC (the largest object, the first of equals). Training and test
  canvases are drawn from two disjoint halves of the digits, so no test digit was seen in training.
  Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same canvases.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from zfviz.data.imageset import ImageSet
from zfviz.data.tensor_loader import resize_uint8

CLASSES = tuple(str(d) for d in range(10))
CANVAS = 32
CELL = 16
DIGIT_SIZES = (8, 12, 16)


@lru_cache(maxsize=1)
def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (1797, 8, 8) on 0..255 and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def _in_memory(name: str, images: np.ndarray, labels: np.ndarray, note: str, **extra) -> ImageSet:
    """An ImageSet over uint8 (N, H, W) digit arrays."""
    return ImageSet.in_memory(
        images, labels, name=name, classes=CLASSES, source="sklearn.datasets.load_digits", note=note, **extra
    )


def digits_caltech(name: str = "digits") -> ImageSet:
    """The Caltech stand-in: all 1,797 digits, one label each."""
    images, labels = digits_uint8()
    note = "stand-in: scikit-learn load_digits (1,797 8x8 handwritten digits, 10 classes)"
    return _in_memory(name, images, labels, note)


def _place(rng: np.random.Generator, pool: np.ndarray, images: np.ndarray, labels: np.ndarray):
    """One canvas: (pixels, multi-hot target, single label, the indices of the digits placed)."""
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    target = np.zeros(len(CLASSES), dtype=np.float32)
    count = int(rng.integers(1, 4))
    cells = rng.choice(4, size=count, replace=False)
    best_label, best_area = -1, -1
    used = []
    for cell in cells:
        digit = int(rng.choice(pool))
        used.append(digit)
        size = int(rng.choice(DIGIT_SIZES))
        scaled = resize_uint8(torch.from_numpy(images[digit][None]), size)[0, 0].numpy()
        top = (cell // 2) * CELL + int(rng.integers(0, CELL - size + 1))
        left = (cell % 2) * CELL + int(rng.integers(0, CELL - size + 1))
        region = canvas[top : top + size, left : left + size]
        np.maximum(region, scaled, out=region)
        target[labels[digit]] = 1
        if size * size > best_area:  # strictly larger: the first of equal objects keeps the label
            best_label, best_area = int(labels[digit]), size * size
    return canvas.astype(np.uint8), target, best_label, used


def digit_canvases(n_train: int = 1500, n_test: int = 1500, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """The PASCAL stand-in: (train, test) canvases of 1-3 digits, multi-label."""
    images, labels = digits_uint8()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    halves = {"train": np.sort(order[::2]), "test": np.sort(order[1::2])}
    note = (
        f"stand-in: {CANVAS}x{CANVAS} canvases of 1-3 load_digits digits ({n_train} train, {n_test} test, "
        "built from disjoint halves of the digits), scored like VOC"
    )
    sets = []
    for split, count in (("train", n_train), ("test", n_test)):
        made = [_place(rng, halves[split], images, labels) for _ in range(count)]
        pixels = np.stack([m[0] for m in made])
        targets = np.stack([m[1] for m in made])
        single = np.array([m[2] for m in made], dtype=np.int64)
        keys = ["+".join(map(str, m[3])) for m in made]  # the digits on each canvas
        ignore = np.zeros_like(targets, dtype=bool)
        name = f"digit_canvases_{split}_s{seed}"
        sets.append(_in_memory(name, pixels, single, note, targets=targets, ignore=ignore, keys=keys))
    return sets[0], sets[1]
