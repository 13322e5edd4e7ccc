"""The data a checkpoint's net was trained on, normalized as in training (the viz commands' inputs).

Training stores the preprocessing in the checkpoint (``preprocessing_of``: the data set's name and
classes, the input size and channels, the per-channel mean/std the loaders normalized by, or
ImageNet's mean image and the training files its pass could not read), so a Fashion-MNIST split is
read only when asked for and no statistic is recomputed over the training images. A checkpoint
written before that carries none: its data set is built as in training and the statistics
recomputed (``build_data``), ImageNet's mean image read from ``mean_image.pt`` beside the
checkpoint when the training run left it there. ImageNet's splits are ``ImageNetView``s, decoded
when indexed.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from omegaconf import OmegaConf

from zfviz.data import DataBundle, build_data, fashion_mnist_folder, fashion_mnist_loader, read_fashion_mnist
from zfviz.data.imagenet import build_imagenet
from zfviz.data.imagenet_view import viz_bundle
from zfviz.errors import UserError

VIZ_BATCH = 256  # the loaders' batch size; the viz commands index images, they do not iterate batches


def preprocessing_of(data: DataBundle, data_cfg, *, input_size: int, in_chans: int) -> dict:
    """What a checkpoint carries about its inputs: the data set's name and class names, the input size
    and channels, and the loaders' statistics (mean/std as fractions of 255), or for ImageNet its mean
    image (3 x 256 x 256, 0-255) and the training files the pass that made it could not read."""
    stored = {
        "data": str(data_cfg.name),
        "classes": list(data.classes),
        "input_size": int(input_size),
        "in_chans": int(in_chans),
        "normalization": dict(data.normalization) if data.normalization else None,
    }
    if data_cfg.name == "imagenet":
        stored.update(mean_image=data.train.images.mean, bad_files=sorted(data.train.bad_files))
    return stored


def load_data(ckpt: dict, path=None, *, root=None) -> DataBundle | TrainedSplits:
    """The data set ``ckpt`` (read from ``path``) was trained on, normalized as in training; ``root``
    reads it from another folder (the same data set, elsewhere)."""
    data_cfg = OmegaConf.create(ckpt["config"]["data"])
    if root:
        data_cfg.root = root
    stored = ckpt.get("preprocessing") or {}
    if stored.get("normalization") and data_cfg.name == "fashion_mnist":
        return TrainedSplits(data_cfg, stored)
    size, chans = ckpt["config"]["model"]["input_size"], ckpt["config"]["model"]["in_chans"]
    if stored.get("mean_image") is not None and data_cfg.name == "imagenet":
        mean = (stored["mean_image"], stored["bad_files"])
        data = build_imagenet(data_cfg, input_size=size, batch_size=VIZ_BATCH, stored_mean=mean)
    else:
        beside = Path(path).parent / "mean_image.pt" if path else None
        if data_cfg.name == "imagenet" and not data_cfg.get("mean_cache") and beside is not None and beside.is_file():
            data_cfg.mean_cache = str(beside)  # not recomputed over the training set, and the same mean
        data = build_data(data_cfg, input_size=size, batch_size=VIZ_BATCH, in_chans=chans)
    trained = ckpt["config"].get("num_classes", data.num_classes)
    if data.num_classes != trained:  # labels would index outputs that mean other classes, or none
        raise UserError(
            f"{data.source} has {data.num_classes} classes, the checkpoint's net {trained}; "
            "give data.root the data set it was trained on"
        )
    return viz_bundle(data) if data_cfg.name == "imagenet" else data


class TrainedSplits:
    """A ``DataBundle`` whose splits are read when first asked for, normalized by the statistics the
    checkpoint stored (``train`` is never read if only ``test`` is used)."""

    def __init__(self, data_cfg, stored: dict) -> None:
        self.data_cfg, self.stored = data_cfg, stored
        self.classes = tuple(stored["classes"])
        self.normalization = dict(stored["normalization"])
        self.source = str(fashion_mnist_folder(data_cfg))  # a missing data set is found now, not at first use

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def skipped_files(self) -> list[str]:
        return []  # files held in memory: none is unreadable

    @cached_property
    def train(self):
        return self._split("train")

    @cached_property
    def test(self):
        return self._split("test")

    def _split(self, split: str):
        size, chans = self.stored["input_size"], self.stored["in_chans"]
        images, labels = read_fashion_mnist(self.data_cfg, split, size)
        return fashion_mnist_loader(
            self.data_cfg, split, images, labels, batch_size=VIZ_BATCH, stats=self.normalization, channels=chans
        )
