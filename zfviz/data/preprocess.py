"""How a data set's images become a pretrained net's input: the source data set's normalization.

Transfer (Section 5.2) and the feature analysis (Section 5.3) feed new images to a net trained on
Fashion-MNIST or ImageNet; they must be scaled as the net's own training images were.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zfviz.errors import UserError
from zfviz.utils import atomic_write_text


@dataclass(frozen=True)
class Preprocess:
    """How images become the net's input: size, channels and the source data set's normalization.

    ``mean``/``std`` are per channel (or one value) on the 0-255 scale; ``std = 1`` means the
    paper's raw pixels minus the mean.
    """

    input_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.float()
        if x.shape[1] != self.in_chans:
            x = x.expand(-1, self.in_chans, -1, -1)
        mean = torch.tensor(self.mean).reshape(1, -1, 1, 1)
        std = torch.tensor(self.std).reshape(1, -1, 1, 1)
        return (x - mean) / std

    def key(self) -> dict:
        return {"input_size": self.input_size, "in_chans": self.in_chans, "mean": self.mean, "std": self.std}


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file (a checkpoint's name in the feature and normalization caches)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_preprocess(ckpt: dict, checkpoint_path: str | Path, cache_dir: str | Path | None = None) -> Preprocess:
    """The normalization the checkpoint's net was trained with.

    A checkpoint carries the statistics its training used (``preprocessing``: the loaders' mean/std, or
    ImageNet's mean image). One written before that, of Fashion-MNIST, stores ``data.mean = null``
    (computed at load time from the training pixels), so the statistics are recomputed once with
    ``build_data`` and the checkpoint's own data config, then kept in ``<cache_dir>/norm-<hash>.json``.
    ImageNet checkpoints subtract a per-pixel mean image: we use its per-channel average (std 1), read
    from the checkpoint, else from ``mean_image.pt`` beside it or ``data.mean_cache``.
    """
    config = ckpt["config"]
    model_cfg, data_cfg = config["model"], config["data"]
    size, chans = int(model_cfg["input_size"]), int(model_cfg.get("in_chans", 3))
    if data_cfg.get("mean") is not None and data_cfg.get("std") is not None:
        mean, std = np.atleast_1d(data_cfg["mean"]) * 255.0, np.atleast_1d(data_cfg["std"]) * 255.0
        return Preprocess(size, chans, tuple(map(float, mean)), tuple(map(float, std)))
    stored = ckpt.get("preprocessing") or {}
    if stored.get("normalization"):
        norm = stored["normalization"]  # the training loaders' statistics (fractions of 255), scaled as they scale them
        mean, std = (torch.as_tensor(norm[k], dtype=torch.float32).reshape(-1) * 255 for k in ("mean", "std"))
        return Preprocess(size, chans, tuple(map(float, mean)), tuple(map(float, std)))
    if stored.get("mean_image") is not None:  # ImageNet's, as mean_image.pt holds it
        mean = stored["mean_image"].mean(dim=(1, 2))
        return Preprocess(size, chans, tuple(map(float, mean)), (1.0,) * len(mean))
    if data_cfg["name"] == "imagenet":
        candidates = [Path(p) for p in (data_cfg.get("mean_cache"),) if p] + [
            Path(checkpoint_path).parent / "mean_image.pt"
        ]
        for path in candidates:
            if path.is_file():
                mean = torch.load(path, weights_only=True)["mean"].mean(dim=(1, 2))
                return Preprocess(size, chans, tuple(map(float, mean)), (1.0,) * len(mean))
        raise UserError(f"no mean image for {checkpoint_path}: expected {' or '.join(map(str, candidates))}")
    stored = Path(cache_dir) / f"norm-{file_sha256(checkpoint_path)[:16]}.json" if cache_dir else None
    if stored is not None and stored.is_file():
        saved = json.loads(stored.read_text())
        return Preprocess(size, chans, tuple(saved["mean"]), tuple(saved["std"]))
    from omegaconf import OmegaConf

    from zfviz.data import build_data

    bundle = build_data(OmegaConf.create(data_cfg), input_size=size, batch_size=256, in_chans=chans)
    mean = tuple(float(v) for v in bundle.train.mean.flatten())
    std = tuple(float(v) for v in bundle.train.std.flatten())
    if stored is not None:
        atomic_write_text(stored, json.dumps({"mean": mean, "std": std, "data": data_cfg}, default=str))
    return Preprocess(size, chans, mean, std)
