"""PASCAL VOC 2012 classification from disk, for Table 6 (Section 5.2).

Layout: ``VOCdevkit/VOC2012/{JPEGImages,Annotations,ImageSets/Main}`` (``root`` may be any of
those three levels). Image ids come from ``ImageSets/Main/<split>.txt``; labels from each image's
XML annotation:

- ``targets`` (N, 20): 1 where the image holds at least one object of the class.
- ``ignore`` (N, 20): true where every object of that class is marked ``difficult``; VOC's
  classification ground truth gives these a 0 ("difficult") and its AP leaves them out; so do we
  (and the multi-label head does not train on them). ``truncated`` objects count like any other.
- ``labels`` (N,): the paper's softmax needs one exclusive label per image. We take the class of
  the largest non-difficult object (bounding-box area; the first in the file among equals; all
  objects when every one is difficult).

The paper trained on train+val and reported the test server's numbers. VOC 2012 test labels are
not public, so when ``ImageSets/Main/test.txt`` has no annotated images we train on train and
evaluate on val (the note says so); with a labelled test split we train on trainval and test on it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from zfviz.data.images import file_reader, files_fingerprint
from zfviz.data.imageset import ImageSet
from zfviz.errors import UserError

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
LAYOUT = (
    "expected root=/path/to/VOCdevkit/VOC2012 holding JPEGImages/<id>.jpg, Annotations/<id>.xml "
    "and ImageSets/Main/{train,val}.txt"
)


def find_root(root: str | Path | None) -> Path:
    if not root:
        raise UserError(f"pascal2012: root is not set; {LAYOUT}")
    root = Path(root).expanduser()
    for folder in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if all((folder / sub).is_dir() for sub in ("JPEGImages", "Annotations", "ImageSets/Main")):
            return folder
    raise UserError(f"pascal2012: no VOC2012 folder in {root}; {LAYOUT}")


def read_ids(folder: Path, split: str) -> list[str] | None:
    path = folder / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        return None
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def parse_annotation(path: Path) -> list[dict]:
    """The objects of one VOC XML file: name, difficult, truncated, box (xmin, ymin, xmax, ymax)."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as err:
        raise UserError(f"pascal2012: cannot parse {path}: {err}") from None
    objects = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASSES:
            raise UserError(f"pascal2012: {path} names class {name!r}; VOC classes are: {', '.join(CLASSES)}")
        box = obj.find("bndbox")
        try:
            coords = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise UserError(f"pascal2012: {path} has a {name} without a valid bndbox") from None
        objects.append(
            {
                "name": name,
                "difficult": (obj.findtext("difficult") or "0").strip() == "1",
                "truncated": (obj.findtext("truncated") or "0").strip() == "1",
                "box": coords,
            }
        )
    return objects


def image_labels(objects: list[dict]) -> tuple[np.ndarray, np.ndarray, int]:
    """(targets, ignore, single label) of one image's objects (see the module docstring)."""
    targets = np.zeros(len(CLASSES), dtype=np.float32)
    easy = np.zeros(len(CLASSES), dtype=bool)
    for obj in objects:
        k = CLASSES.index(obj["name"])
        targets[k] = 1
        easy[k] |= not obj["difficult"]
    ignore = (targets == 1) & ~easy
    candidates = [o for o in objects if not o["difficult"]] or objects
    best, best_area = -1, -1.0
    for obj in candidates:
        x0, y0, x1, y1 = obj["box"]
        area = (x1 - x0 + 1) * (y1 - y0 + 1)  # VOC boxes are inclusive pixel coordinates
        if area > best_area:
            best, best_area = CLASSES.index(obj["name"]), area
    return targets, ignore, best


def _split_set(folder: Path, name: str, ids: list[str], channels: int) -> ImageSet:
    paths, targets, ignore, labels = [], [], [], []
    for image_id in ids:
        jpeg = folder / "JPEGImages" / f"{image_id}.jpg"
        if not jpeg.is_file():
            raise UserError(f"pascal2012: image {jpeg} is listed in ImageSets/Main but missing; {LAYOUT}")
        objects = parse_annotation(folder / "Annotations" / f"{image_id}.xml")
        if not objects:
            raise UserError(f"pascal2012: {folder / 'Annotations' / image_id}.xml has no objects")
        t, ig, single = image_labels(objects)
        paths.append(jpeg)
        targets.append(t)
        ignore.append(ig)
        labels.append(single)
    return ImageSet(
        name=f"pascal2012_{name}", classes=CLASSES, labels=np.asarray(labels, dtype=np.int64),
        read=file_reader(paths, channels), fingerprint=files_fingerprint(folder, paths, channels),
        source=str(folder), targets=np.stack(targets), ignore=np.stack(ignore), keys=list(ids),
    )  # fmt: skip


def _labelled(folder: Path, ids: list[str] | None) -> bool:
    """True when every id has an annotation with at least one object (public test sets have none)."""
    if not ids:
        return False
    for image_id in ids:
        path = folder / "Annotations" / f"{image_id}.xml"
        if not path.is_file() or not parse_annotation(path):
            return False
    return True


def load_voc(root: str | Path | None, *, channels: int = 3) -> tuple[ImageSet, ImageSet, str]:
    """(train set, evaluation set, a sentence saying which splits they are)."""
    folder = find_root(root)
    train, val, trainval, test = (read_ids(folder, s) for s in ("train", "val", "trainval", "test"))
    if _labelled(folder, test):
        fit_ids = trainval or sorted(set(train or []) | set(val or []))
        fit_name, eval_name = "trainval", "test"
        eval_ids = test
        why = "as the paper did"
    else:
        if train is None or val is None:
            raise UserError(f"pascal2012: ImageSets/Main needs train.txt and val.txt in {folder}; {LAYOUT}")
        fit_ids, eval_ids, fit_name, eval_name = train, val, "train", "val"
        why = "VOC 2012 test labels are not public, so val is held out (the paper trained on train+val and used the test server)"
    fit = _split_set(folder, fit_name, fit_ids, channels)
    held = _split_set(folder, eval_name, eval_ids, channels)
    note = f"trained on {fit_name} ({len(fit)} images), evaluated on {eval_name} ({len(held)} images): {why}"
    fit.note = held.note = note
    return fit, held, note
