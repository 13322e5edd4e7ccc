"""Data set builders: ``build_data(cfg.data, ...)`` returns the loaders an experiment trains on."""

from __future__ import annotations

from dataclasses import dataclass

from zfviz.data import fashion_mnist
from zfviz.data.tensor_loader import TensorLoader, resize_uint8
from zfviz.errors import UserError


@dataclass
class DataBundle:
    train: TensorLoader
    test: TensorLoader
    classes: tuple[str, ...]
    source: str  # where the files were read from, for provenance
    # The per-channel statistics the loaders normalize by (mean/std, fractions of 255), for the checkpoint
    # to carry (``zfviz.data.trained``); None where the set subtracts a mean image (ImageNet).
    normalization: dict | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def skipped_files(self) -> list[str]:
        """The unreadable files skipped so far (``data.skip_bad=true``, sets read from disk), sorted."""
        return sorted({p for loader in (self.train, self.test) for p in getattr(loader, "bad_files", ())})


def build_data(
    data_cfg,
    *,
    input_size: int,
    batch_size: int,
    in_chans: int = 3,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    cache_dir: str | None = None,
) -> DataBundle:
    """Build train/test loaders for ``data_cfg.name`` at ``input_size`` pixels.

    ``batch_size`` is the global batch; under DDP each of ``world_size`` processes gets its share.
    ``cache_dir`` holds derived data worth keeping beside a run (e.g. a mean image).
    """
    name = data_cfg.name
    if name == "imagenet":
        from zfviz.data.imagenet import build_imagenet  # here, not on top: it imports DataBundle from this module

        return build_imagenet(
            data_cfg, input_size=input_size, batch_size=batch_size, seed=seed,
            rank=rank, world_size=world_size, cache_dir=cache_dir,
        )  # fmt: skip
    if name != "fashion_mnist":
        raise UserError(f"data set {name!r} is not available yet; choose one of: fashion_mnist, imagenet")
    splits = {split: read_fashion_mnist(data_cfg, split, input_size) for split in ("train", "test")}
    # Per-channel statistics of the training images (after resizing), as fractions of 255.
    train_float = splits["train"][0].float() / 255
    stats = {
        "mean": float(data_cfg.get("mean") or train_float.mean()),
        "std": float(data_cfg.get("std") or train_float.std()),
    }
    common = dict(channels=in_chans, seed=seed, rank=rank, world_size=world_size)
    train, test = (
        fashion_mnist_loader(data_cfg, split, *splits[split], batch_size=batch_size, stats=stats, **common)
        for split in ("train", "test")
    )
    classes = fashion_mnist.class_names(fashion_mnist.check_classes(data_cfg.get("classes")))
    return DataBundle(train, test, classes, str(fashion_mnist_folder(data_cfg)), normalization=stats)


def fashion_mnist_folder(data_cfg):
    """Where ``data_cfg``'s Fashion-MNIST files are (downloaded there first if ``data.download``)."""
    return fashion_mnist.locate(data_cfg.get("root"), bool(data_cfg.get("download", False)))


def read_fashion_mnist(data_cfg, split: str, input_size: int):
    """uint8 images (N, 1, S, S) at ``input_size`` and labels of one split: its first ``data.limit`` of
    ``data.classes`` (a subset, relabelled 0..k-1)."""
    classes = fashion_mnist.check_classes(data_cfg.get("classes"))
    images, labels = fashion_mnist.load_split(fashion_mnist_folder(data_cfg), split, data_cfg.get("limit"), classes)
    return resize_uint8(images, input_size), labels


def fashion_mnist_loader(
    data_cfg, split: str, images, labels, *, batch_size: int, stats: dict, **common
) -> TensorLoader:
    """One split's loader: the training split shuffled and augmented as ``data_cfg`` says, normalized by
    ``stats`` (mean/std as fractions of 255); ``common``: channels, seed, rank, world_size."""
    if split == "train":
        crop_pad = round(data_cfg.get("crop_pad_frac", 0.0) * images.shape[-1])
        flip = bool(data_cfg.get("flip", False))
        return TensorLoader(images, labels, batch_size, shuffle=True, flip=flip, crop_pad=crop_pad, **stats, **common)
    return TensorLoader(images, labels, data_cfg.get("eval_batch_size", 500), **stats, **common)
