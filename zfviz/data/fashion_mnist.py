"""Fashion-MNIST, the embedded default data set of the ``cpu`` preset.

Looked for, in order: ``data.root`` when given; the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``); ``data/FashionMNIST/raw`` (torchvision's layout); and, only
when ``data.download`` is true, torchvision's own downloader into ``data/``. Files are the raw IDX
format, gzipped or not.

``data.classes`` keeps a subset of the ten classes, relabelled 0..k-1 in the order given: the
within-domain transfer experiment (Section 5.2, Fig. 9) pretrains on one half of the classes and
transfers to the other half (``transfer_set``), new classes of the same kind of images.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

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


def check_classes(classes, key: str = "data.classes") -> tuple[int, ...] | None:
    """``classes`` as a tuple of distinct class indices (0..9, at least two), None for all ten;
    anything else is a UserError naming ``key`` and what a right value is."""
    if classes is None:
        return None
    if OmegaConf.is_config(classes):
        classes = OmegaConf.to_container(classes)
    want = f"give null (all ten) or a list of 2-10 distinct class indices 0..9, e.g. {key}=[0,2,3,5,8]"
    if not isinstance(classes, (list, tuple)):
        raise UserError(f"{key}={classes} is not valid: {want}")
    indices = all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(CLASSES) for c in classes)
    if not indices or len(set(classes)) != len(classes) or len(classes) < 2:
        raise UserError(f"{key}={list(classes)} is not valid: {want}")
    return tuple(classes)


def class_names(classes: tuple[int, ...] | None) -> tuple[str, ...]:
    """The names of the kept classes, in their new label order."""
    return CLASSES if classes is None else tuple(CLASSES[c] for c in classes)


def keep_classes(images, labels, classes: tuple[int, ...] | None):
    """The images whose label is in ``classes``, in file order, relabelled to their position there."""
    if classes is None:
        return images, labels
    relabel = np.full(len(CLASSES), -1, dtype=np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    new = relabel[np.asarray(labels)]
    keep = np.flatnonzero(new >= 0)
    return images[keep], new[keep]


def load_split(
    folder: Path, split: str, limit: int | None = None, classes: tuple[int, ...] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 28, 28) and labels as int64 (N,); the first ``limit`` of the split.

    With ``classes`` (see ``check_classes``), only those classes, relabelled; ``limit`` counts kept images.
    """
    img_stem, lbl_stem = FILES[split]
    images = read_idx(_find(folder, img_stem))
    labels = read_idx(_find(folder, lbl_stem))
    if len(images) != len(labels):
        raise UserError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels")
    images, labels = keep_classes(images, labels, check_classes(classes))
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UserError(
                f"data.limit={limit} is not valid; give null (every image) or a number of images, 1 or more"
            )
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def seen_classes(data_cfg: dict) -> tuple[int, ...]:
    """The Fashion-MNIST classes a net was trained on, from its checkpoint's ``data`` config."""
    if data_cfg.get("name") != "fashion_mnist":
        return ()
    return check_classes(data_cfg.get("classes")) or tuple(range(len(CLASSES)))


def transfer_classes(requested, seen: tuple[int, ...], checkpoint: str = "the checkpoint") -> tuple[int, ...]:
    """The classes to transfer to: ``requested`` (checked), or every class the pretrained net did
    not see (``seen``, from ``seen_classes``). Overlap with ``seen`` is a UserError: Fig. 9's claim
    is about new classes, and a class the net was trained on is not new."""
    requested = check_classes(requested, key="classes")
    trained = "all ten classes" if len(seen) == len(CLASSES) else f"classes {list(seen)}"
    how = (
        "transfer needs a net pretrained on other classes: train one with "
        "'zfviz train model=zfnet experiment=within_pretrain' and give checkpoint=<its folder>/checkpoint.pt"
    )
    if requested is None:
        requested = tuple(c for c in range(len(CLASSES)) if c not in seen)
        if len(requested) < 2:
            raise UserError(f"{checkpoint} was trained on {trained}, leaving fewer than two new classes; {how}")
    overlap = sorted(set(seen) & set(requested))
    if overlap:
        raise UserError(f"{checkpoint} was trained on {trained}, so classes {overlap} are not new to it; {how}")
    return requested


def transfer_set(root: str | None, classes: tuple[int, ...], split: str = "test"):
    """The images of ``classes`` in ``split`` as an ImageSet for ``zfviz transfer`` (labels 0..k-1).

    The test split by default: 1,000 images per class that no net here was trained on, enough for
    60 training images per class and a test set from the rest.
    """
    from zfviz.data.imageset import ImageSet  # here: imageset is only needed by transfer

    images, labels = load_split(locate(root), split, classes=classes)
    names = class_names(classes)
    note = f"Fashion-MNIST {split} images of the classes {', '.join(names)} (indices {list(classes)})"
    return ImageSet.in_memory(
        images.numpy(), labels.numpy(), name=f"fashion_mnist_{split}_c{''.join(map(str, classes))}",
        classes=names, source="fashion_mnist", note=note,
    )  # fmt: skip
