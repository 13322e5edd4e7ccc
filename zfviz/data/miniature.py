"""Miniature data sets in the real on-disk layouts, for rehearsing the paper preset (issue 25).

``make rehearsal`` runs every stage of ``make figures PRESET=paper`` on these folders, so the path a
researcher with GPUs takes (ImageNet, Caltech-101/256, PASCAL VOC 2012, Broden from disk) runs end to
end here, in minutes. Each folder is laid out as the real archive unpacks, odd files included:

- ``imagenet/``: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (ImageFolder, as torchvision's
  ``ImageNet`` keeps it), JPEGs of the usual odd sizes in both orientations, plus the files a real
  download holds: a CMYK JPEG, a greyscale JPEG and a PNG named ``.JPEG``;
- ``caltech101/101_ObjectCategories/<class>/image_NNNN.jpg`` with ``BACKGROUND_Google``, and
  ``caltech256/256_ObjectCategories/NNN.<class>/NNN_NNNN.jpg`` with ``257.clutter``; a greyscale file in each;
- ``VOCdevkit/VOC2012/{JPEGImages,Annotations,ImageSets/Main}``: XML annotations with several objects,
  ``difficult`` and ``truncated`` flags, ``train.txt``/``val.txt`` and the per-class lists, every class in
  both splits;
- ``broden/``: ``index.csv``, ``label.csv``, ``category.csv``, ``c_<category>.csv``, images and label
  PNGs (R + 256 G), 224 px images with 112 px masks as in ``broden1_224``; ``index.csv`` carries a
  ``material`` column that ``category.csv`` does not list, empty for every image, as in the released set.

The pictures are smooth colour fields whose hue and frequency depend on the class (so the nets can
learn a little) with a seeded noise: the same bytes on every run. ``build`` writes into a temporary
folder renamed at the end, so a folder in place is whole; a complete one is kept.

    python -m zfviz.data.miniature runs/rehearsal/data
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zfviz.data.voc import CLASSES as VOC_CLASSES
from zfviz.dissection.broden import BrodenItem, Label, write_broden
from zfviz.errors import UserError

VERSION = 1  # bump when the contents change: a folder of another version is rebuilt
MARKER = "miniature.json"
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475",
         "n01496331", "n01498041", "n01514668", "n01514859", "n01518878")  # fmt: skip
IMAGENET_TRAIN = 6  # JPEGs per class, besides the odd files
IMAGENET_VAL = 3
SIZES = ((500, 375), (375, 500), (333, 500), (500, 334), (400, 300), (281, 500), (500, 457), (300, 300))
CALTECH101 = ("accordion", "airplanes", "anchor", "ant", "barrel")
CALTECH256 = ("001.ak47", "002.american-flag", "003.backpack", "004.baseball-bat", "005.baseball-glove")
CALTECH_IMAGES = 8  # per class: enough for the mini scale's 1-2 training images and a test set
VOC_PER_SPLIT = 20  # images per split; image i's main object is class i (every class in both splits)
BRODEN_IMAGES = 24


def picture(w: int, h: int, label: int, seed: int) -> Image.Image:
    """A smooth RGB field whose colour and stripe frequency follow ``label``, with seeded noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    freq = 2 + (label % 5) * 2.0
    angle = label * 0.6 + rng.uniform(-0.2, 0.2)
    wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) * np.pi + rng.uniform(0, 6))
    hue = np.array([np.cos(label * 1.3), np.cos(label * 1.3 + 2.1), np.cos(label * 1.3 + 4.2)])
    rgb = 128 + 60 * hue[None, None, :] + 50 * wave[..., None] * np.sign(hue + 0.1)[None, None, :]
    rgb += rng.normal(0, 6, rgb.shape)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def _jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=88)


def build_imagenet(root: Path) -> None:
    seed = 0
    for label, wnid in enumerate(WNIDS):
        for i in range(IMAGENET_TRAIN):
            w, h = SIZES[(label + i) % len(SIZES)]
            _jpeg(picture(w, h, label, seed := seed + 1), root / "train" / wnid / f"{wnid}_{i + 1}.JPEG")
        for i in range(IMAGENET_VAL):
            w, h = SIZES[(label + i + 3) % len(SIZES)]
            name = f"ILSVRC2012_val_{label * IMAGENET_VAL + i + 1:08d}.JPEG"
            _jpeg(picture(w, h, label, 10_000 + seed + i), root / "val" / wnid / name)
    # The odd files of a real download: a CMYK JPEG, a greyscale JPEG, a PNG named .JPEG.
    _jpeg(picture(500, 400, 0, 900).convert("CMYK"), root / "train" / WNIDS[0] / f"{WNIDS[0]}_cmyk.JPEG")
    _jpeg(picture(375, 500, 1, 901).convert("L"), root / "train" / WNIDS[1] / f"{WNIDS[1]}_gray.JPEG")
    picture(480, 360, 2, 902).save(root / "train" / WNIDS[2] / f"{WNIDS[2]}_png.JPEG", "PNG")


def build_caltech(root: Path) -> None:
    folder = root / "caltech101" / "101_ObjectCategories"
    for label, name in enumerate(("BACKGROUND_Google", *CALTECH101)):
        for i in range(CALTECH_IMAGES):
            w, h = SIZES[(label + i) % len(SIZES)]
            _jpeg(picture(w // 2, h // 2, label, 20_000 + 100 * label + i), folder / name / f"image_{i + 1:04d}.jpg")
    _jpeg(picture(200, 150, 1, 20_999).convert("L"), folder / CALTECH101[0] / f"image_{CALTECH_IMAGES + 1:04d}.jpg")
    folder = root / "caltech256" / "256_ObjectCategories"
    for label, name in enumerate((*CALTECH256, "257.clutter")):
        number = name.split(".")[0]
        for i in range(CALTECH_IMAGES):
            w, h = SIZES[(label + i + 1) % len(SIZES)]
            image = picture(w // 2, h // 2, label + 5, 30_000 + 100 * label + i)
            _jpeg(image, folder / name / f"{number}_{i + 1:04d}.jpg")
    _jpeg(picture(150, 200, 6, 30_999).convert("L"), folder / CALTECH256[1] / f"002_{CALTECH_IMAGES + 1:04d}.jpg")


def _voc_xml(image_id: str, w: int, h: int, objects: list[tuple[str, bool, bool, tuple[int, int, int, int]]]) -> str:
    parts = [
        f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>",
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>",
    ]
    for name, difficult, truncated, (x0, y0, x1, y1) in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>{int(truncated)}</truncated>"
            f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    return "\n".join([*parts, "</annotation>\n"])


def build_voc(root: Path) -> None:
    """Image i of a split: its main object class i; every third a second, smaller object (difficult on
    every other one) of the next class; every fourth main object truncated."""
    voc = root / "VOCdevkit" / "VOC2012"
    ids: dict[str, list[str]] = {"train": [], "val": []}
    members: dict[tuple[str, str], list[str]] = {}
    for s, split in enumerate(ids):
        for i in range(VOC_PER_SPLIT):
            image_id = f"2008_{s * 1000 + i + 1:06d}"
            w, h = (500, 375) if i % 2 else (375, 500)
            objects = [(VOC_CLASSES[i], False, i % 4 == 0, (20, 30, w - 40, h - 50))]
            if i % 3 == 0:
                objects.append((VOC_CLASSES[(i + 1) % 20], i % 6 == 0, False, (10, 10, 90, 120)))
            _jpeg(picture(w, h, i, 40_000 + 100 * s + i), voc / "JPEGImages" / f"{image_id}.jpg")
            (voc / "Annotations").mkdir(parents=True, exist_ok=True)
            (voc / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, w, h, objects))
            ids[split].append(image_id)
            for name, difficult, *_ in objects:
                members.setdefault((name, split), []).append(f"{image_id} {'0' if difficult else '1'}")
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    for split, names in ids.items():
        (main / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        for name in VOC_CLASSES:
            present = {line.split()[0]: line.split()[1] for line in members.get((name, split), [])}
            (main / f"{name}_{split}.txt").write_text("".join(f"{n} {present.get(n, '-1'):>2}\n" for n in names))
    (main / "trainval.txt").write_text("".join(f"{n}\n" for n in ids["train"] + ids["val"]))


BRODEN_LABELS = (
    Label(1, "red", "color"), Label(2, "green", "color"), Label(3, "blue", "color"),
    Label(4, "car", "object"), Label(5, "dog", "object"), Label(6, "wheel", "part"), Label(7, "head", "part"),
    Label(8, "street", "scene"), Label(9, "kitchen", "scene"), Label(10, "striped", "texture"),
    Label(11, "dotted", "texture"),
)  # fmt: skip
BRODEN_CATEGORIES = ("color", "object", "part", "scene", "texture")


def broden_items() -> list[BrodenItem]:
    """224 px pictures, 112 px masks: a colour everywhere, an object box with a part inside it."""
    items = []
    for i in range(BRODEN_IMAGES):
        image = torch.from_numpy(np.asarray(picture(224, 224, i % 7, 50_000 + i)).transpose(2, 0, 1).copy())
        color = torch.full((112, 112), 1 + i % 3, dtype=torch.int64)
        obj = torch.zeros(112, 112, dtype=torch.int64)
        part = torch.zeros(112, 112, dtype=torch.int64)
        y, x = 8 + (i * 7) % 40, 8 + (i * 11) % 40
        obj[y : y + 56, x : x + 56] = 4 + i % 2
        part[y : y + 20, x : x + 20] = 6 + i % 2
        items.append(BrodenItem(image, {"color": [color], "object": [obj], "part": [part]},
                                {"scene": [8 + i % 2], "texture": [10 + i % 2]}, split="train" if i % 4 else "val"))  # fmt: skip
    return items


def build_broden(root: Path) -> None:
    write_broden(root, broden_items(), BRODEN_LABELS, BRODEN_CATEGORIES)
    # The released index.csv has a column for every category of the union, category.csv only those
    # with labels in this release: an extra column, empty in every row.
    index = root / "index.csv"
    with open(index, newline="") as f:
        rows = list(csv.reader(f))
    rows[0].append("material")
    for row in rows[1:]:
        row.append("")
    with open(index, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def build(root: str | Path) -> dict[str, Path]:
    """Write the five miniature data sets under ``root`` (kept when already whole); their folders."""
    root = Path(root)
    folders = {
        "IMAGENET": root / "imagenet",
        "CALTECH101": root / "caltech101",
        "CALTECH256": root / "caltech256",
        "VOC2012": root / "VOCdevkit",
        "BRODEN": root / "broden",
    }
    marker = root / MARKER
    if marker.is_file() and marker.read_text().strip() == str(VERSION):
        return folders
    if marker.is_file():  # an older version of ours: rebuilt
        shutil.rmtree(root)
    elif root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not a miniature data folder; give an empty or new folder")
    if root.exists():
        root.rmdir()  # empty
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        build_imagenet(tmp / "imagenet")
        build_caltech(tmp)
        build_voc(tmp)
        build_broden(tmp / "broden")
        (tmp / MARKER).write_text(f"{VERSION}\n")
        tmp.rename(root)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zfviz.data.miniature", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the folder to write (kept when already whole)")
    parser.add_argument("--make-vars", action="store_true", help="print IMAGENET=... CALTECH101=... for make")
    args = parser.parse_args(argv)
    try:
        folders = build(args.root)
    except UserError as err:
        print(f"miniature: error: {err}", file=sys.stderr)
        return 2
    if args.make_vars:
        print(" ".join(f"{var}={path}" for var, path in folders.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
