"""Caltech-101 and Caltech-256 from disk, for the transfer experiments of Section 5.2 (Tables 4, 5).

Layouts (as the archives unpack, and as torchvision's ``Caltech101``/``Caltech256`` keep them):

- Caltech-101: ``<root>/101_ObjectCategories/<class>/*.jpg``. ``BACKGROUND_Google`` is a clutter
  folder, not an object class; it is left out by default (101 classes), as most later work does.
- Caltech-256: ``<root>/256_ObjectCategories/NNN.<class>/*.jpg``. ``257.clutter`` is left out by
  default (256 classes).

``root`` may be that folder itself, its parent, or torchvision's ``<root>/caltech101`` /
``<root>/caltech256``. Images are decoded on demand (gray or RGB to match the pretrained net), their
shorter side resized to the input size (bilinear) and the central square kept: one view per image
(``zfviz.data.images``, the same reader as ImageNet's).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zfviz.data.images import file_reader, files_fingerprint, image_files, subfolders
from zfviz.data.imageset import ImageSet
from zfviz.errors import UserError

FOLDERS = {"caltech101": "101_ObjectCategories", "caltech256": "256_ObjectCategories"}
DEFAULT_EXCLUDE = {"caltech101": ("BACKGROUND_Google",), "caltech256": ("257.clutter",)}
LAYOUTS = {
    "caltech101": "expected root=/path holding 101_ObjectCategories/<class>/*.jpg (Caltech-101 as unpacked)",
    "caltech256": "expected root=/path holding 256_ObjectCategories/NNN.<class>/*.jpg (Caltech-256 as unpacked)",
}
_NUMBERED = re.compile(r"^(\d{3})\.(.+)$")


def find_folder(root: str | Path | None, dataset: str) -> Path:
    """The ``10x_ObjectCategories`` folder under ``root``, or a one-line UserError with the layout."""
    if not root:
        raise UserError(f"{dataset}: root is not set; {LAYOUTS[dataset]}")
    root = Path(root).expanduser()
    want = FOLDERS[dataset]
    for folder in (root, root / want, root / dataset / want):
        if folder.name == want and folder.is_dir():
            return folder
    raise UserError(f"{dataset}: no {want} folder in {root}; {LAYOUTS[dataset]}")


def load_caltech(
    dataset: str, root: str | Path | None, *, exclude: Sequence[str] | None = None, channels: int = 3
) -> ImageSet:
    """Caltech-101 or -256 (``dataset`` = caltech101 / caltech256) as an ImageSet, classes sorted.

    ``exclude`` lists class folders to leave out (None = the clutter/background folder). Class
    names are the folder names, without Caltech-256's ``NNN.`` prefix.
    """
    if dataset not in FOLDERS:
        raise UserError(f"unknown Caltech data set {dataset!r}; choose one of: {', '.join(FOLDERS)}")
    folder = find_folder(root, dataset)
    skip = set(DEFAULT_EXCLUDE[dataset] if exclude is None else exclude)
    classes, paths, labels = [], [], []
    for name in subfolders(folder):
        if name in skip:
            continue
        label = name
        if dataset == "caltech256":
            match = _NUMBERED.match(name)
            if not match:
                raise UserError(f"caltech256: folder {folder / name} is not named NNN.<class>; {LAYOUTS[dataset]}")
            label = match.group(2)
            if label in skip:
                continue
        files = [folder / name / f for f in image_files(folder / name)]
        if not files:
            raise UserError(f"{dataset}: class folder {folder / name} holds no images; {LAYOUTS[dataset]}")
        paths += files
        labels += [len(classes)] * len(files)
        classes.append(label)
    if not classes:
        raise UserError(f"{dataset}: no class folders in {folder}; {LAYOUTS[dataset]}")
    kept = len(classes)
    note = (
        f"{dataset} from {folder}: {kept} classes, {len(paths)} images, left out: {', '.join(sorted(skip)) or 'none'}"
    )
    return ImageSet(
        name=dataset, classes=tuple(classes), labels=np.asarray(labels, dtype=np.int64),
        read=file_reader(paths, channels), fingerprint=files_fingerprint(folder, paths, channels),
        source=str(folder), note=note, keys=[str(p.relative_to(folder)) for p in paths],
    )  # fmt: skip
