"""Fashion-MNIST, the embedded default data set of the ``cpu`` preset.

Looked for, in order: ``data.root`` when given; the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``); ``data/FashionMNIST/raw`` (torchvision's layout); and, only
when ``data.download`` is true, torchvision's own downloader into ``data/``. Files are the raw IDX
format, gzipped or not.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from zfviz.errors import UserError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW_TO_GET = (
    "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
    "or put the four IDX files in data/FashionMNIST/raw, or set data.download=true on a machine with internet"
)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path) -> bool:
    return all(_find(folder, stem) for pair in FILES.values() for stem in pair)


def locate(root: str | None, download: bool = False) -> Path:
    """The folder holding the four IDX files, or a UserError saying how to get them."""
    if root:
        root_path = Path(root).expanduser()
        for folder in (root_path, root_path / "FashionMNIST" / "raw"):
            if _complete(folder):
                return folder
        if not download:
            raise UserError(f"no Fashion-MNIST IDX files in {root_path}; {HOW_TO_GET}")
    candidates = [SYSTEM_DIR, Path("data") / "FashionMNIST" / "raw"]
    for folder in candidates:
        if _complete(folder):
            return folder
    if download:
        from torchvision.datasets import FashionMNIST

        target = Path(root or "data")
        try:
            FashionMNIST(str(target), train=True, download=True)
            FashionMNIST(str(target), train=False, download=True)
        except Exception as err:  # network errors come in many types
            raise UserError(f"could not download Fashion-MNIST ({err}); {HOW_TO_GET}") from None
        return target / "FashionMNIST" / "raw"
    raise UserError(f"Fashion-MNIST not found in {', '.join(map(str, candidates))}; {HOW_TO_GET}")


def load_split(folder: Path, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 28, 28) and labels as int64 (N,); the first ``limit`` of the split."""
    img_stem, lbl_stem = FILES[split]
    images = read_idx(_find(folder, img_stem))
    labels = read_idx(_find(folder, lbl_stem))
    if len(images) != len(labels):
        raise UserError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UserError(
                f"data.limit={limit} is not valid; give null (every image) or a number of images, 1 or more"
            )
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
