"""The Broden data set's on-disk layout: reading it, and writing a concept set in it.

Network dissection (Bau et al. 2017, Section 2.1) scores units against Broden, a union of data sets
with pixel-labelled concepts in six categories (color, object, part, material, scene, texture).
Its folder, which NetDissect's tools read and write, is:

- ``index.csv``: one row per image: ``image`` (a path under ``images/``), ``split``, ``ih``, ``iw``
  (image size), ``sh``, ``sw`` (mask size), then one column per category holding ``;``-separated
  entries: a mask file (under ``images/``) for pixel-labelled categories, a label number for
  image-level ones (scene, texture: the label covers the whole image); an empty field means none;
- ``label.csv``: ``number,name,category,frequency,coverage,syns``; ``category`` reads
  ``object(3)`` or ``material(36);object(3)`` (images per category) and the label belongs to the
  largest; numbers start at 1, 0 means "no label" in masks;
- ``category.csv``: ``name,first,last,count,frequency``, the categories in order;
- ``c_<category>.csv``: ``code,number,name,frequency,coverage``, each category's labels;
- masks: RGB PNGs whose pixel label is R + 256 * G (so more than 255 labels fit).

The loader checks the layout when opened (files, columns, categories, label numbers, every image
and mask file present) so a dissection never stops half-way on a bad folder; a mask's size is
checked when it is decoded. ``write_broden`` writes the same layout (images as PNG under
``images/``, masks under ``images/masks/``) into a temporary folder renamed at the end, so a
folder in place is always whole.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from zfviz.data.images import DECODE_ERRORS, load_image
from zfviz.errors import UserError
from zfviz.utils import OutputError, write_failure

META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
LAYOUT = "a Broden folder holds index.csv, label.csv, category.csv, c_<category>.csv and images/"
_CATEGORY_COUNT = re.compile(r"^([^()]+?)(?:\((\d+)\))?$")  # "object(3)" or a bare "object"


@dataclass(frozen=True)
class Label:
    """One row of ``label.csv``."""

    number: int  # 1-based; 0 means "no label" in masks
    name: str
    category: str  # its main category: the one listing the most images


@dataclass
class BrodenItem:
    """One image with its labels: what ``Broden[i]`` returns and ``write_broden`` takes."""

    image: Tensor  # uint8, 3 x H x W (RGB)
    masks: dict[str, list[Tensor]] = field(default_factory=dict)  # pixel category -> int64 sh x sw maps
    image_labels: dict[str, list[int]] = field(default_factory=dict)  # image-level category -> numbers
    split: str = "train"


@dataclass(frozen=True)
class _Row:
    image: str
    split: str
    sh: int
    sw: int
    entries: dict[str, tuple[str | int, ...]]  # category -> mask files and/or label numbers
    line: int  # index.csv line, for messages


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file that must exist and have ``columns``; one UserError line otherwise."""
    if not path.is_file():
        raise UserError(f"{path} is missing; {LAYOUT}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{path} has no column {', '.join(missing)}; it needs {', '.join(columns)}")
    return rows


def _number(text: str, where: str) -> int:
    if not text.strip().isdigit():
        raise UserError(f"{where}: {text!r} is not a whole number")
    return int(text)


def main_category(field_text: str) -> str:
    """The category of a ``label.csv`` row: the one listing the most images (the first on a tie)."""
    best, best_count = "", -1
    for part in filter(None, (p.strip() for p in field_text.split(";"))):
        match = _CATEGORY_COUNT.match(part)
        name, count = (match.group(1), int(match.group(2) or 0)) if match else (part, 0)
        if count > best_count:
            best, best_count = name, count
    return best


class Broden:
    """A Broden-layout folder: ``len``, ``[i]`` (a ``BrodenItem``), its labels and categories."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"Broden folder {self.root} does not exist; {LAYOUT}")
        if not (self.root / "index.csv").is_file():
            raise UserError(f"{self.root} has no index.csv; {LAYOUT}")
        self.categories: list[str] = [
            r["name"] for r in _read_csv(self.root / "category.csv", ["name"]) if r["name"].strip()
        ]
        self.labels: dict[int, Label] = {}
        for n, r in enumerate(_read_csv(self.root / "label.csv", ["number", "name", "category"]), start=2):
            number = _number(r["number"], f"{self.root / 'label.csv'} line {n}")
            self.labels[number] = Label(number, r["name"], main_category(r["category"] or ""))
        self.category_labels: dict[str, list[int]] = {c: self._category_labels(c) for c in self.categories}
        self._rows = self._read_index()
        pixel = {c for r in self._rows for c, e in r.entries.items() if any(isinstance(v, str) for v in e)}
        self.pixel_categories: list[str] = [c for c in self.categories if c in pixel]
        self.image_categories: list[str] = [c for c in self.categories if c not in pixel]
        self._check_files()

    def _category_labels(self, category: str) -> list[int]:
        path = self.root / f"c_{category}.csv"
        if not path.is_file():
            raise UserError(f"category {category!r} has no labels: {path} is missing; {LAYOUT}")
        numbers = []
        for n, r in enumerate(_read_csv(path, ["code", "number"]), start=2):
            number = _number(r["number"], f"{path} line {n}")
            if number not in self.labels:
                raise UserError(f"{path} line {n}: label {number} is not in label.csv")
            numbers.append(number)
        if not numbers:
            raise UserError(f"category {category!r} has no labels: {path} lists none")
        return numbers

    def _read_index(self) -> list[_Row]:
        path = self.root / "index.csv"
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            missing = [c for c in META_COLUMNS if c not in columns]
            if missing:
                raise UserError(f"{path} has no column {', '.join(missing)}; it needs {', '.join(META_COLUMNS)}")
            unknown = [c for c in columns if c not in META_COLUMNS and c not in self.categories]
            records = list(enumerate(reader, start=2))
        # The released index.csv has a column for every category of the union while category.csv lists
        # only those with labels in the release: such a column, empty in every row, is read as NetDissect
        # reads it (not at all). One that holds labels would lose them silently, so it is refused.
        for column in unknown:
            line = next((n for n, r in records if (r.get(column) or "").strip()), None)
            if line is not None:
                raise UserError(
                    f"{path} line {line}: column {column!r} holds labels but is not a category of category.csv "
                    f"({', '.join(self.categories)})"
                )
        rows = [self._row(r, line) for line, r in records]
        if not rows:
            raise UserError(f"{path} lists no images")
        return rows

    def _row(self, r: dict[str, str], line: int) -> _Row:
        where = f"{self.root / 'index.csv'} line {line}"
        entries = {}
        for category in self.categories:
            values: list[str | int] = []
            for value in filter(None, (v.strip() for v in (r.get(category) or "").split(";"))):
                if value.isdigit():
                    if int(value) not in self.labels:
                        raise UserError(f"{where}: label {value} in {category!r} is not in label.csv")
                    values.append(int(value))
                else:
                    values.append(value)
            if values:
                entries[category] = tuple(values)
        sh, sw = (_number(r[k] or "", f"{where}, column {k}") for k in ("sh", "sw"))
        return _Row(r["image"], r["split"] or "", sh, sw, entries, line)

    def _check_files(self) -> None:
        """Every image and mask file present, checked once now rather than hours into a dissection."""
        images = self.root / "images"
        for row in self._rows:
            if not (images / row.image).is_file():
                raise UserError(f"image file {images / row.image} is missing (index.csv line {row.line})")
            for category, values in row.entries.items():
                for value in values:
                    if isinstance(value, str) and not (images / value).is_file():
                        raise UserError(
                            f"mask file {images / value} is missing (index.csv line {row.line}, {category!r})"
                        )

    def __len__(self) -> int:
        return len(self._rows)

    def image_path(self, i: int) -> Path:
        return self.root / "images" / self._rows[i].image

    def mask_size(self) -> tuple[int, int]:
        """(sh, sw) of item 0, as ``index.csv`` gives it: the resolution IoU is scored at."""
        return self._rows[0].sh, self._rows[0].sw

    def __getitem__(self, i: int) -> BrodenItem:
        row = self._rows[i]
        path = self.image_path(i)
        try:
            image = load_image(path, 3)
        except DECODE_ERRORS as err:
            raise UserError(f"cannot read image {path}: {err}") from None
        masks: dict[str, list[Tensor]] = {}
        image_labels: dict[str, list[int]] = {}
        for category, values in row.entries.items():
            if category in self.image_categories:
                image_labels[category] = list(values)  # type: ignore[arg-type]
            else:  # a number in a pixel category labels every pixel, as NetDissect reads it
                masks[category] = [
                    torch.full((row.sh, row.sw), v, dtype=torch.int64) if isinstance(v, int) else self._mask(v, row)
                    for v in values
                ]
        return BrodenItem(image, masks, image_labels, row.split)

    def _mask(self, name: str, row: _Row) -> Tensor:
        path = self.root / "images" / name
        try:
            rgb = load_image(path, 3).to(torch.int64)
        except DECODE_ERRORS as err:
            raise UserError(f"cannot read mask {path}: {err}") from None
        if rgb.shape[1:] != (row.sh, row.sw):
            raise UserError(
                f"mask {path} is {rgb.shape[1]}x{rgb.shape[2]} but index.csv line {row.line} gives "
                f"sh x sw = {row.sh}x{row.sw}"
            )
        return rgb[0] + 256 * rgb[1]


def _encode_mask(labels: np.ndarray) -> Image.Image:
    if labels.min() < 0 or labels.max() > 65535:
        raise ValueError(f"mask labels must lie in 0..65535, found {labels.min()}..{labels.max()}")
    rgb = np.stack([labels % 256, labels // 256, np.zeros_like(labels)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


def write_broden(
    root: str | os.PathLike,
    items: Iterable[BrodenItem],
    labels: Sequence[Label],
    categories: Sequence[str],
    *,
    files: dict[str, str] | None = None,
) -> Path:
    """Write ``items`` as a Broden folder ``root`` (which must not exist yet); returns ``root``.

    Each item's masks give its ``sh x sw`` (an item without masks takes the first size seen).
    ``files`` (name -> text) go into the folder too (a concept set's description). Everything is
    written into a temporary folder beside ``root`` and renamed at the end: ``root`` appears whole
    or not at all.
    """
    root = Path(root).expanduser()
    if root.exists():
        raise UserError(f"{root} exists already; remove it or write the Broden folder elsewhere")
    by_number = _labels_by_number(labels, categories)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        _write_tree(tmp, items, by_number, list(categories))
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        _publish(tmp, root)
    except OSError as err:
        reason = write_failure(err, root.parent)
        if reason is None:
            raise
        raise OutputError(f"cannot write {root}: {reason}; nothing was written") from err
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return root


def _labels_by_number(labels: Sequence[Label], categories: Sequence[str]) -> dict[int, Label]:
    """``labels`` by number, each checked: numbers unique and 1 or more, categories known and all used."""
    by_number = {label.number: label for label in labels}
    if len(by_number) != len(labels) or min(by_number, default=1) < 1:
        raise ValueError("label numbers must be unique and 1 or more")
    for label in labels:
        if label.category not in categories:
            raise ValueError(f"label {label.name!r} has category {label.category!r}, not one of {list(categories)}")
    empty = [c for c in categories if not any(label.category == c for label in labels)]
    if empty:
        raise ValueError(f"categories without labels: {empty}")
    return by_number


def _publish(tmp: Path, root: Path) -> None:
    """The finished folder ``tmp`` renamed to ``root``, readable like any other data set."""
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes a private folder; a data set reads like any other
    try:
        os.rename(tmp, root)
    except OSError:
        if root.exists():  # written meanwhile by someone else (a parallel build): theirs stays
            raise UserError(f"{root} exists already; remove it or write the Broden folder elsewhere") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class _Tally:
    """What the label and category tables count, over the items written so far."""

    frequency: dict[int, int]  # images showing the label
    coverage: dict[int, float]  # its pixels, in whole images
    touched: dict[str, int]  # images with any label of the category

    def add(self, present: dict[int, float], cells: dict[str, str]) -> None:
        for number, share in present.items():
            self.frequency[number] += 1
            self.coverage[number] += share
        for category, cell in cells.items():
            self.touched[category] += bool(cell)


def _write_masks(tmp: Path, i: int, item: BrodenItem, labels: dict[int, Label], cells: dict[str, str]) -> dict:
    """Item ``i``'s masks as images/masks/ files named in ``cells``; returns each label's share of the pixels."""
    present: dict[int, float] = {}
    for category, masks in item.masks.items():
        files = []
        for j, mask in enumerate(masks):
            files.append(f"masks/{i:06d}_{category}{'' if j == 0 else f'_{j}'}.png")
            values = mask.to(torch.int64).numpy()
            _encode_mask(values).save(tmp / "images" / files[-1], compress_level=1)
            counts = np.bincount(values.ravel())
            for number in np.flatnonzero(counts[1:]) + 1:
                if int(number) not in labels:
                    raise ValueError(f"item {i}: mask label {number} is not in labels")
                present[int(number)] = present.get(int(number), 0.0) + counts[number] / values.size
        cells[category] = ";".join(files)
    return present


def _image_labels(i: int, item: BrodenItem, labels: dict[int, Label], cells: dict[str, str], present: dict) -> None:
    for category, numbers in item.image_labels.items():
        for number in numbers:
            if number not in labels:
                raise ValueError(f"item {i}: label {number} is not in labels")
            present[number] = present.get(number, 0.0) + 1.0
        cells[category] = ";".join(map(str, numbers))


def _mask_size(i: int, item: BrodenItem) -> tuple[int, int] | None:
    sizes = {tuple(m.shape) for ms in item.masks.values() for m in ms}
    if len(sizes) > 1:
        raise ValueError(f"item {i}: masks of different sizes {sorted(sizes)}")
    return next(iter(sizes), None)


def _write_tree(tmp: Path, items: Iterable[BrodenItem], labels: dict[int, Label], categories: list[str]) -> None:
    (tmp / "images" / "masks").mkdir(parents=True)
    tally = _Tally(dict.fromkeys(labels, 0), dict.fromkeys(labels, 0.0), dict.fromkeys(categories, 0))
    rows, mask_size = [], None
    for i, item in enumerate(items):
        unknown = [c for c in (*item.masks, *item.image_labels) if c not in categories]
        if unknown:
            raise ValueError(f"item {i}: category {unknown[0]!r} is not one of {categories}")
        name = f"{i:06d}.png"
        image = item.image.permute(1, 2, 0).numpy().astype(np.uint8)
        Image.fromarray(image, "RGB").save(tmp / "images" / name, compress_level=1)
        size = _mask_size(i, item)
        mask_size = mask_size or size
        sh, sw = size or mask_size or tuple(item.image.shape[1:])
        cells = dict.fromkeys(categories, "")
        present = _write_masks(tmp, i, item, labels, cells)
        _image_labels(i, item, labels, cells, present)
        tally.add(present, cells)
        ih, iw = item.image.shape[1:]
        rows.append([name, item.split, ih, iw, sh, sw, *cells.values()])
    _write_tables(tmp, labels, categories, rows, tally)


def _write_tables(tmp: Path, labels: dict[int, Label], categories: list[str], rows: list, tally: _Tally) -> None:
    """index.csv, label.csv, one c_<category>.csv per category and category.csv, as NetDissect writes them."""
    frequency, coverage, touched = tally.frequency, tally.coverage, tally.touched
    _write_csv(tmp / "index.csv", [*META_COLUMNS, *categories], rows)
    ordered = sorted(labels.values(), key=lambda label: label.number)
    _write_csv(
        tmp / "label.csv",
        ["number", "name", "category", "frequency", "coverage", "syns"],
        ([n.number, n.name, f"{n.category}({frequency[n.number]})", frequency[n.number], f"{coverage[n.number]:.6f}", ""]
         for n in ordered),
    )  # fmt: skip
    category_rows = []
    for category in categories:
        members = [n for n in ordered if n.category == category]
        category_rows.append([category, members[0].number, members[-1].number, len(members), touched[category]])
        _write_csv(
            tmp / f"c_{category}.csv",
            ["code", "number", "name", "frequency", "coverage"],
            ([code, n.number, n.name, frequency[n.number], f"{coverage[n.number]:.6f}"]
             for code, n in enumerate(members, start=1)),
        )  # fmt: skip
    _write_csv(tmp / "category.csv", ["name", "first", "last", "count", "frequency"], category_rows)
