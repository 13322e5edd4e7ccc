"""ImageNet as the ``zfviz viz`` commands read a split (Section 2.1, Figs. 2 and 4-8 at ``preset=paper``).

The viz commands index a split's stored images like a uint8 tensor and turn a batch into model input
with ``normalize``, as ``TensorLoader`` offers for the sets held in memory. ImageNet cannot be held in
memory, so ``ImageNetView`` decodes the images it is asked for when it is indexed: the centre
``S x S`` crop of the 256 square (the 1-view evaluation crop), minus the same crop of the training
run's mean image, nothing divided (Section 3). ``mean`` is that per-pixel crop (1, 3, S, S) and
``std`` is 1, so ``x * std + mean`` gives pixels back as for every other set.

Files are decoded by ``data.workers`` threads. With ``data.skip_bad=true`` the unreadable training
files the mean-image pass found are left out (indices count the readable images); any other
unreadable file is a one-line error naming it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from zfviz.data import DataBundle
from zfviz.data.imagenet import ImageNetImages, ImageNetLoader, load_256, view_boxes
from zfviz.data.images import DECODE_ERRORS
from zfviz.errors import UserError


class DecodedImages:
    """uint8 (N, 3, S, S) centre crops of image files, decoded when indexed; indexes like a tensor."""

    dtype = torch.uint8

    def __init__(self, images: ImageNetImages, keep: np.ndarray, threads: int = 1):
        self.images, self.keep, self.threads = images, keep, threads
        self.box = view_boxes(images.crop)[4]  # the centre crop, as the 1-view evaluation takes it

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.keep), 3, self.images.crop, self.images.crop))

    def __len__(self) -> int:
        return len(self.keep)

    def head(self, count: int) -> DecodedImages:
        """The first ``count`` images, still undecoded (a slice would decode them)."""
        return DecodedImages(self.images, self.keep[:count], self.threads)

    def crop(self, square: torch.Tensor) -> torch.Tensor:
        (top, left), c = self.box, self.images.crop
        return square[..., top : top + c, left : left + c]

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            picked = self.keep[key]
        else:
            picked = self.keep[np.asarray(key.cpu() if torch.is_tensor(key) else key)]
        indices = [int(i) for i in np.atleast_1d(picked)]
        if self.threads > 1 and len(indices) > 1:  # PIL decodes and resizes without holding the GIL
            with ThreadPoolExecutor(self.threads) as pool:
                squares = list(pool.map(self._decode, indices))
        else:
            squares = [self._decode(i) for i in indices]
        batch = torch.stack(squares) if squares else torch.empty(0, *self.shape[1:], dtype=torch.uint8)
        return batch if np.ndim(picked) else batch[0]

    def _decode(self, index: int) -> torch.Tensor:
        path = self.images.root / self.images.paths[index]
        try:
            return self.crop(load_256(path)).contiguous()
        except DECODE_ERRORS as err:
            raise UserError(f"cannot read image {path} ({type(err).__name__}: {err}); remove or replace it") from None


class ImageNetView:
    """One split as the viz commands read it: ``images``, ``labels``, ``normalize``, ``mean``, ``std``."""

    def __init__(self, loader: ImageNetLoader):
        images = loader.images
        bad = loader.bad_files if loader.skip_bad else set()
        keep = np.array([i for i, p in enumerate(images.paths) if str(images.root / p) not in bad], dtype=np.int64)
        self.images = DecodedImages(images, keep, threads=max(1, loader.workers))
        self.labels = torch.as_tensor(images.labels[keep], dtype=torch.int64)
        self.mean = self.images.crop(images.mean).unsqueeze(0).float()  # (1, 3, S, S), 0..255
        self.std = torch.ones(1, 3, 1, 1)  # Section 3: the mean image is subtracted, nothing divided
        self.channels = 3

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) crops -> model input: minus the mean image's crop."""
        return (batch.float() - self.mean) / self.std


def viz_bundle(data: DataBundle) -> DataBundle:
    """``data`` (``build_imagenet``'s loaders) with both splits as ``ImageNetView``s."""
    return DataBundle(ImageNetView(data.train), ImageNetView(data.test), data.classes, data.source)
