"""Reading image files the one way every on-disk data set does (Sections 3 and 5.2).

ImageNet (the training recipe), Caltech-101/256 and PASCAL VOC (transfer) all decode a file, take
its shorter side to a size and keep the central square. One copy of that, so the data sets cannot
drift apart again. Where the copies had drifted, the kept behaviour is:

- suffixes: the widest list (``.tif``, ``.tiff``, ``.webp`` and ``.gif`` too, a GIF's first frame), so no
  readable image is skipped; ``images=<folder>`` says how many other files it left out;
- EXIF orientation applied (a phone's portrait photo is stored sideways with a tag that says so), as
  ``PIL.ImageOps.exif_transpose``;
- resize and crop: torchvision's ``Resize(size)`` + ``CenterCrop(size)`` exactly (the longer side is
  truncated, the crop offset rounded half to even), what ImageNet always did and what the
  published preprocessing of most pretrained nets means;
- palette images with transparency go through RGBA, as PIL asks (a direct conversion warns);
- 16-bit grayscale keeps its top 8 bits instead of PIL's clipping at 255: PIL opens it as ``I;16``
  (PNG, TIFF) or as 32-bit ``I`` holding 0..65535 (16-bit PGM, which PIL scales to 16 bits whatever
  its maxval, and 16-bit PNGs under older PIL); 16-bit RGB(A) PIL itself reduces to 8 bits.

``DECODER_VERSION`` names this behaviour in the feature cache's key of file-backed sets: bump it
whenever a change here can change a pixel, so no features of the old pixels are served.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from zfviz.errors import UserError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
# What PIL raises on a file it cannot decode (truncated, corrupt, not an image, absurdly large).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
DECODER_VERSION = 4  # 1: Caltech/VOC's own copy (rounded long side, floor offsets, no RGBA step);
# 2: 32-bit "I" images (16-bit PGM) clipped at 255 (white); 3: EXIF orientation ignored, GIFs left out
ORIENTATION = 0x0112  # the EXIF tag; 1 = stored upright


def subfolders(folder: str | os.PathLike) -> list[str]:
    """Names of the folders in ``folder`` (class folders), hidden ones left out, sorted."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def image_files(folder: str | os.PathLike) -> list[str]:
    """Names of the image files in ``folder`` (not recursive, no hidden files), sorted."""
    names = (e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    return sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES))


def skipped_line(paths: Sequence[str], what: str = "") -> str:
    """The screen's one line on the unreadable images ``data.skip_bad=true`` skipped: how many, the first few."""
    shown = ", ".join(str(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"zfviz: warning: data.skip_bad=true skipped {len(paths)} unreadable {what}images: {shown}"


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``size``; the longer one truncated, as torchvision's Resize."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def centre_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """PIL's (left, top, right, bottom) of the central ``size`` square, offsets as torchvision's CenterCrop."""
    left, top = round((width - size) / 2), round((height - size) / 2)
    return left, top, left + size, top + size


def _decoded(img: Image.Image, channels: int) -> Image.Image:
    if img.getexif().get(ORIENTATION, 1) != 1:  # read from the header: upright files pay no copy
        img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode == "I":  # PIL's own conversion clips at 255
        sixteen = np.asarray(img).astype(np.int64).clip(0, 65535)
        img = Image.fromarray((sixteen >> 8).astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # a palette with transparency converts cleanly only via RGBA
    return img.convert("L" if channels == 1 else "RGB")  # CMYK, gray, palette: the channels asked for


def resampling(interpolation: str) -> Image.Resampling:
    """PIL's filter of a name (``bilinear``, ``bicubic``, ...: torchvision's and timm's spelling)."""
    try:
        return Image.Resampling[str(interpolation).upper()]
    except KeyError:
        names = ", ".join(r.name.lower() for r in Image.Resampling)
        raise UserError(f"interpolation {interpolation!r} is not one PIL knows; choose one of: {names}") from None


def load_square(
    path: str | os.PathLike, size: int, channels: int = 3, interpolation: str = "bilinear", crop: int | None = None
) -> torch.Tensor:
    """uint8 (channels, crop, crop): decoded, shorter side resized to ``size`` (``interpolation``), the
    centre ``crop`` square (default ``size``) kept.

    Raises one of ``DECODE_ERRORS`` on an unreadable file; the caller decides (skip it or stop).
    """
    with Image.open(path) as img:
        img = _decoded(img, channels)
    new = resized_size(*img.size, size)
    img = img.resize(new, resampling(interpolation)).crop(centre_box(*new, crop or size))
    array = np.asarray(img, dtype=np.uint8)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def load_image(path: str | os.PathLike, channels: int = 3) -> torch.Tensor:
    """uint8 (channels, height, width) as stored: decoded as ``load_square`` does, neither resized nor
    cropped (label maps such as Broden's masks, whose pixels are numbers, not colours to resample).

    Raises one of ``DECODE_ERRORS`` on an unreadable file.
    """
    with Image.open(path) as img:
        array = np.asarray(_decoded(img, channels), dtype=np.uint8)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def file_reader(
    paths: Sequence[Path], channels: int, interpolation: str = "bilinear", crop: int | None = None
) -> Callable[[np.ndarray, int], torch.Tensor]:
    """``read(indices, size)`` over image files, for an ImageSet: each resized to ``size``, its centre
    ``crop`` (default ``size``) kept; a bad file is a UserError naming it."""
    resampling(interpolation)  # a bad name is one line before any file is read

    def read(index: np.ndarray, size: int) -> torch.Tensor:
        squares = []
        for i in index:
            try:
                squares.append(load_square(paths[int(i)], size, channels, interpolation, crop))
            except DECODE_ERRORS as err:
                raise UserError(f"cannot read image {paths[int(i)]}: {err}") from None
        return torch.stack(squares)

    return read


def files_fingerprint(root: Path, paths: Sequence[Path], channels: int) -> str:
    """Which files (relative path and size), read how: the feature cache's name for a file-backed set.

    Moving the tree keeps the cache; another decoder (``DECODER_VERSION``) or channel count does not.
    """
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}\n".encode())
    return f"{digest.hexdigest()[:16]}-c{channels}-decoder{DECODER_VERSION}"


def folder_images(folder: Path) -> list[Path]:
    """The image files of ``folder``, and one line naming how many other files it left out (never silently)."""
    names = image_files(folder)
    kept = set(names)
    others = sorted(
        e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".") and e.name not in kept
    )
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        print(
            f"zfviz: images={folder}: left out {len(others)} files that are not images ({' '.join(IMAGE_SUFFIXES)}): {shown}"
        )
    return [folder / name for name in names]


def image_paths(images) -> list[Path]:
    """``images=``: a folder (its image files, sorted) or a list of files and folders; ``~`` expanded."""
    entries = [images] if isinstance(images, (str, Path)) else list(images)
    paths = []
    for entry in entries:
        path = Path(str(entry)).expanduser()
        if path.is_dir():
            paths += folder_images(path)
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"images: no such file or folder: {path}")
    if not paths:
        shown = ", ".join(str(Path(str(e)).expanduser()) for e in entries)
        raise UserError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) in images={shown}")
    return paths


def read_images(
    paths, size: int, channels: int = 3, resize: int | None = None, interpolation: str = "bilinear"
) -> torch.Tensor:
    """uint8 (N, channels, size, size): each file's shorter side resized to ``resize`` (default ``size``)
    with the ``interpolation`` filter, then the centre ``size`` square cut from the whole resized image in
    one step, as torchvision's Resize + CenterCrop (two centred crops can land a pixel off: rounding).
    A file that cannot be decoded is a UserError naming it."""
    resize = resize or size
    if resize < size:
        raise UserError(f"cannot crop {size} px from images resized to {resize} px")
    return file_reader([Path(p) for p in paths], channels, interpolation, size)(np.arange(len(paths)), resize)
