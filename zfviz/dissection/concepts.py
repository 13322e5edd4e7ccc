"""A small concept set in the Broden layout, built from Fashion-MNIST test images.

Network dissection (Bau et al. 2017) needs images whose concepts are labelled per pixel. Broden is
not here, so this module composes such images from the data we have, deterministically from a
seed, and writes them with ``write_broden`` so the same loader reads them. Each canvas (64x64 by
default, the cpu preset's input) holds one item (half the canvases) or a pair, left and right,
never overlapping. An item is a Fashion-MNIST test image scaled by nearest neighbour (a single
item to 45-75% of the canvas side, a pair's items to 30-47%); its silhouette is its pixels above
``THRESHOLD`` (32 of 255) on the 28x28 grid, scaled with it. Five categories, Broden's order
(no material):

- ``color`` (pixel): a third of the backgrounds are plain black, as in Fashion-MNIST (the nets'
  own training images), the others one of Broden's eleven colour names; each item is painted in
  another, shaded by its gray level; every pixel is labelled with the colour painted there.
- ``object`` (pixel): the item's class on its silhouette.
- ``part`` (pixel): rules on the 28x28 grid, where Fashion-MNIST items are aligned (shoes point
  left), intersected with the silhouette:
  T-shirt: ``sleeve`` = rows 0-11 in columns 0-6 or 21-27, ``torso`` the rest;
  pullover, coat, shirt: ``sleeve`` = rows 6-27 in columns 0-7 or 20-27, ``torso`` the rest;
  trouser: ``waist`` = rows 0-2, ``leg`` = rows 9-27;
  sandal, sneaker, ankle boot: ``sole`` = the lowest 3 silhouette pixels of each column; of the rest,
  for the boot ``shaft`` = rows 0-14, then ``toe`` = columns 0-9 and ``heel`` = columns 19-27;
  bag: ``handle`` = the rows above the first one at least 60% as wide as the widest (none when the
  body starts at the top); dress: no parts.
- ``scene`` (image-level): ``single-item``, ``matched-pair`` (two items of one class) or
  ``mixed-pair`` (two classes); a single canvas is as likely as a pair, and a pair as likely matched
  as mixed.
- ``texture`` (image-level, Broden's convention): half the backgrounds that are not plain black
  carry a pattern of lighter or darker pixels of their colour, ``striped`` (vertical), ``banded``
  (horizontal, wider), ``chequered`` or ``dotted``; plain ones have no texture label.

``python -m zfviz.dissection.concepts data/concepts`` builds it once: the folder appears whole (a
temporary folder renamed at the end), and a second call with the same settings does nothing.
``items.csv`` in the folder says where each image's items came from (test index, class, box, colour).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zfviz.data import fashion_mnist
from zfviz.dissection.broden import BrodenItem, Label, write_broden
from zfviz.errors import UserError

VERSION = 1  # bump when a change here changes a pixel or a label: a cached folder is then rebuilt
THRESHOLD = 32
PLAIN_BLACK = 1 / 3  # the share of canvases with Fashion-MNIST's own background
CATEGORIES = ("color", "object", "part", "scene", "texture")
COLORS = {
    "black": (0, 0, 0), "blue": (40, 80, 220), "brown": (130, 80, 30), "gray": (128, 128, 128),
    "green": (40, 170, 60), "orange": (245, 140, 20), "pink": (245, 150, 190), "purple": (130, 50, 170),
    "red": (215, 30, 30), "white": (255, 255, 255), "yellow": (245, 225, 40),
}  # fmt: skip
OBJECTS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
PARTS = ("sleeve", "torso", "waist", "leg", "toe", "heel", "shaft", "sole", "handle")
SCENES = ("single-item", "matched-pair", "mixed-pair")
TEXTURES = ("striped", "banded", "chequered", "dotted")
NAMES = {"color": tuple(COLORS), "object": OBJECTS, "part": PARTS, "scene": SCENES, "texture": TEXTURES}


def concept_labels() -> list[Label]:
    """Every label, numbered from 1 in category order (colours 1-11, objects 12-21, ...)."""
    names = [(category, name) for category in CATEGORIES for name in NAMES[category]]
    return [Label(number, name, category) for number, (category, name) in enumerate(names, start=1)]


LABELS = {(label.category, label.name): label.number for label in concept_labels()}


@dataclass(frozen=True)
class Placement:
    """One item on a canvas: which test image, where (top-left corner, side in pixels), what colour."""

    source: int
    cls: int
    top: int
    left: int
    side: int
    color: str


@dataclass(frozen=True)
class Plan:
    background: str
    texture: str | None
    scene: str
    items: tuple[Placement, ...]


def silhouette(pixels: np.ndarray) -> np.ndarray:
    """The item's pixels on its 28x28 grid: gray level above ``THRESHOLD``."""
    return pixels > THRESHOLD


def part_map(pixels: np.ndarray, cls: int) -> np.ndarray:
    """Part label numbers on the 28x28 grid (0: no part), by the rules of the module docstring."""
    sil = silhouette(pixels)
    rows, cols = np.indices(sil.shape)
    parts = np.zeros(sil.shape, dtype=np.int64)

    def put(name: str, where: np.ndarray) -> None:
        parts[where & sil & (parts == 0)] = LABELS["part", name]

    name = OBJECTS[cls]
    if name == "t-shirt":
        put("sleeve", (rows < 12) & ((cols < 7) | (cols >= 21)))
        put("torso", sil)
    elif name in ("pullover", "coat", "shirt"):
        put("sleeve", (rows >= 6) & ((cols < 8) | (cols >= 20)))
        put("torso", sil)
    elif name == "trouser":
        put("waist", rows < 3)
        put("leg", rows >= 9)
    elif name in ("sandal", "sneaker", "ankle-boot"):
        lowest = np.where(sil.any(0), sil.shape[0] - 1 - np.argmax(sil[::-1], axis=0), -1)
        put("sole", rows > lowest - 3)
        if name == "ankle-boot":
            put("shaft", rows < 15)
        put("toe", cols < 10)
        put("heel", cols >= 19)
    elif name == "bag":
        widths = sil.sum(1)
        body_top = int(np.argmax(widths >= 0.6 * widths.max())) if widths.any() else 0
        put("handle", rows < body_top)
    return parts


def _grid(n: int, side: int) -> np.ndarray:
    """Nearest-neighbour indices taking ``n`` samples to ``side``: pixel k reads (k * n) // side."""
    return (np.arange(side) * n) // side


def _pattern(texture: str | None, size: int) -> np.ndarray:
    """Where a texture shades the background (True), drawn at a unit of size / 32 pixels."""
    u = max(1, round(size / 32))
    y, x = np.indices((size, size)) // u
    if texture is None:
        return np.zeros((size, size), dtype=bool)
    return {
        "striped": x % 2 == 1,
        "banded": (y // 2) % 2 == 1,
        "chequered": (x // 2 + y // 2) % 2 == 1,
        "dotted": (x % 3 == 1) & (y % 3 == 1),
    }[texture]


def _shade(rgb: tuple[int, int, int]) -> np.ndarray:
    """A texture's second tone: darker on a light colour, lighter on a dark one (visible on gray too)."""
    c = np.array(rgb, dtype=np.float64)
    return np.round(c / 2 if c.mean() >= 96 else c + (255 - c) / 2)


def render(plan: Plan, sources: np.ndarray, size: int, mask_size: int) -> BrodenItem:
    """The canvas of ``plan`` with its masks; ``sources`` are the 28x28 uint8 test images."""
    background = np.array(COLORS[plan.background], dtype=np.float64)
    canvas = np.broadcast_to(background, (size, size, 3)).copy()
    canvas[_pattern(plan.texture, size)] = _shade(COLORS[plan.background])
    color = np.full((size, size), LABELS["color", plan.background], dtype=np.int64)
    objects = np.zeros((size, size), dtype=np.int64)
    parts = np.zeros((size, size), dtype=np.int64)
    for item in plan.items:
        pixels = sources[item.source]
        grid = _grid(28, item.side)
        gray = pixels[np.ix_(grid, grid)].astype(np.float64) / 255
        sil = silhouette(pixels)[np.ix_(grid, grid)]
        box = (slice(item.top, item.top + item.side), slice(item.left, item.left + item.side))
        tint = np.array(COLORS[item.color], dtype=np.float64) * (0.4 + 0.6 * gray[..., None])
        canvas[box][sil] = tint[sil]
        color[box][sil] = LABELS["color", item.color]
        objects[box][sil] = LABELS["object", OBJECTS[item.cls]]
        parts[box][sil] = part_map(pixels, item.cls)[np.ix_(grid, grid)][sil]
    pick = np.ix_(*(((np.arange(mask_size) + 0.5) * size / mask_size).astype(int),) * 2)  # nearest, centred
    masks = {"color": [color[pick]], "object": [objects[pick]]}
    if parts[pick].any():
        masks["part"] = [parts[pick]]
    labels = {"scene": [LABELS["scene", plan.scene]]}
    if plan.texture is not None:
        labels["texture"] = [LABELS["texture", plan.texture]]
    image = torch.from_numpy(np.round(canvas).astype(np.uint8).transpose(2, 0, 1).copy())
    return BrodenItem(image, {k: [torch.from_numpy(m) for m in v] for k, v in masks.items()}, labels)


def draw_plans(classes: np.ndarray, count: int, size: int, rng: np.random.Generator) -> list[Plan]:
    """``count`` canvases laid out as the module docstring says; items drawn from ``classes`` (the
    test labels), each class's images in a shuffled order, started again when used up."""
    present = np.unique(classes)
    queues = {int(c): list(rng.permutation(np.flatnonzero(classes == c))) for c in present}
    used = dict.fromkeys(queues, 0)

    def take(c: int) -> int:
        queue = queues[c]
        used[c] += 1
        return int(queue[(used[c] - 1) % len(queue)])

    colors = list(COLORS)
    plans = []
    for _ in range(count):
        if rng.random() < PLAIN_BLACK:  # what the nets trained on: items on plain black
            background, texture = "black", None
        else:
            background = colors[rng.integers(len(colors))]
            texture = TEXTURES[rng.integers(len(TEXTURES))] if rng.random() < 0.5 else None
        others = [c for c in colors if c != background]
        if rng.random() < 0.5:
            scene, chosen = "single-item", [int(rng.choice(present))]
            sides = [int(rng.integers(round(0.45 * size), round(0.75 * size) + 1))]
            lefts = [int(rng.integers(0, size - sides[0] + 1))]
        else:
            first = int(rng.choice(present))
            matched = rng.random() < 0.5 or len(present) == 1
            second = first if matched else int(rng.choice(present[present != first]))
            scene, chosen = ("matched-pair" if matched else "mixed-pair"), [first, second]
            sides = [int(rng.integers(round(0.3 * size), round(0.47 * size) + 1)) for _ in range(2)]
            half = size // 2  # the left item stays in the left half, the right one in the right half
            lefts = [int(rng.integers(0, half - sides[0] + 1)), int(rng.integers(half, size - sides[1] + 1))]
        items = tuple(
            Placement(take(c), c, int(rng.integers(0, size - side + 1)), left, side, others[rng.integers(len(others))])
            for c, side, left in zip(chosen, sides, lefts, strict=True)
        )
        plans.append(Plan(background, texture, scene, items))
    return plans


def build_concepts(
    root: str | os.PathLike,
    *,
    size: int = 64,
    mask_size: int | None = None,
    count: int = 1500,
    seed: int = 0,
    source: str | None = None,
) -> Path:
    """Build the concept set into ``root`` (Fashion-MNIST looked for in ``source``, then the usual
    places); returns ``root``. A folder already built with the same settings is kept as it is."""
    mask_size = mask_size or size
    for key, value, least in (("size", size, 16), ("mask_size", mask_size, 1), ("count", count, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(f"{key}={value!r} is not valid; give a whole number, {least} or more")
    if mask_size > size:
        raise UserError(f"mask_size={mask_size} is larger than size={size}; give at most {size}")
    root = Path(root).expanduser()
    settings = {"version": VERSION, "size": size, "mask_size": mask_size, "count": count, "seed": seed}
    if root.exists():
        if _built_with(root) == settings:
            return root
        raise UserError(f"{root} exists and is not a concept set built with {settings}; remove it or build elsewhere")
    images, classes = fashion_mnist.load_split(fashion_mnist.locate(source), "test")
    images = images.numpy()
    plans = draw_plans(classes.numpy(), count, size, np.random.default_rng(seed))
    rows = ["image,slot,source,class,top,left,side,color,background,texture,scene"]
    for i, plan in enumerate(plans):
        for slot, item in enumerate(plan.items):
            rows.append(
                f"{i:06d}.png,{slot},{item.source},{OBJECTS[item.cls]},{item.top},{item.left},{item.side},"
                f"{item.color},{plan.background},{plan.texture or ''},{plan.scene}"
            )
    about = {"settings": settings, "source": "Fashion-MNIST test", "plans": len(plans)}
    try:
        return write_broden(
            root,
            (render(plan, images, size, mask_size) for plan in plans),
            concept_labels(),
            CATEGORIES,
            files={"items.csv": "\n".join(rows) + "\n", "concepts.json": json.dumps(about, indent=1) + "\n"},
        )
    except UserError:
        if _built_with(root) == settings:  # a parallel build of the same set finished first
            return root
        raise


def _built_with(root: Path) -> dict | None:
    """The settings a concept set in ``root`` was built with (None: not one of ours)."""
    try:
        return json.loads((root / "concepts.json").read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zfviz.dissection.concepts",
        description="Build the Fashion-MNIST concept set in the Broden layout (once; a second call is a no-op).",
    )
    parser.add_argument("root", help="the folder to build, e.g. data/concepts")
    parser.add_argument("--size", type=int, default=64, help="canvas side in pixels (64: the cpu preset)")
    parser.add_argument("--mask-size", type=int, default=None, help="mask side (default: the canvas side)")
    parser.add_argument("--count", type=int, default=1500, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default=None, help="folder of the Fashion-MNIST IDX files")
    args = parser.parse_args(argv)
    try:
        root = build_concepts(
            args.root, size=args.size, mask_size=args.mask_size, count=args.count, seed=args.seed, source=args.source
        )
    except UserError as err:
        print(f"zfviz: error: {err}", file=sys.stderr)
        return 2
    print(f"concept set in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
