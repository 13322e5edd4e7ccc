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
    classes = fashion_mnist.check_classes(data_cfg.get("classes"))  # a subset, relabelled 0..k-1
    folder = fashion_mnist.locate(data_cfg.get("root"), bool(data_cfg.get("download", False)))
    limit = data_cfg.get("limit")
    splits = {}
    for split in ("train", "test"):
        images, labels = fashion_mnist.load_split(folder, split, limit, classes)
        splits[split] = (resize_uint8(images, input_size), labels)
    # Per-channel statistics of the training images (after resizing), as fractions of 255.
    train_float = splits["train"][0].float() / 255
    mean = float(data_cfg.get("mean") or train_float.mean())
    std = float(data_cfg.get("std") or train_float.std())
    common = dict(mean=mean, std=std, channels=in_chans, seed=seed, rank=rank, world_size=world_size)
    crop_pad = round(data_cfg.get("crop_pad_frac", 0.0) * input_size)
    train = TensorLoader(
        *splits["train"], batch_size, shuffle=True, flip=bool(data_cfg.get("flip", False)), crop_pad=crop_pad, **common
    )
    test = TensorLoader(*splits["test"], data_cfg.get("eval_batch_size", 500), **common)
    return DataBundle(train, test, fashion_mnist.class_names(classes), str(folder))
