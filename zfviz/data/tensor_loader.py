"""A batch loader over a data set that fits in memory as one uint8 tensor.

Small data sets (Fashion-MNIST, scikit-learn's digits) are decoded and resized once; batches are
then cut, augmented and normalized as whole tensors, which on 2 cores is several times faster than
a per-item ``DataLoader``. The shuffle and the augmentation draw from a generator seeded by
``(seed, epoch, batch)``, so an epoch's batches are the same whatever came before them (resume
starts mid-epoch without drawing the earlier batches) and however many processes share them.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field

import torch
import torch.nn.functional as F


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) uint8 -> (N, C, size, size) uint8, bilinear, in chunks."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.contiguous()
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].float()
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False)
        out[start : start + 4096] = chunk.round().clamp(0, 255).to(torch.uint8)
    return out


def random_crop(batch: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random translation by up to ``pad`` pixels (zero padding), as one gather."""
    n, c, h, w = batch.shape
    padded = F.pad(batch, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w)
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
    flat = padded.reshape(n, c, -1)
    index = (rows * (w + 2 * pad) + cols).reshape(n, c, -1)
    return flat.gather(2, index).reshape(n, c, h, w)


@dataclass(eq=False, repr=False)
class TensorLoader:
    """Iterate ``(x, y)`` batches of float images normalized by ``mean``/``std``.

    ``images`` is uint8 (N, C, S, S); a 1-channel set is repeated to ``channels`` so the same
    architectures serve gray and colour data. ``mean``/``std``: per channel (or one), on the 0..1
    scale; kept as (1, C, 1, 1) tensors on the 0..255 scale of ``images``. Training: ``shuffle``,
    random horizontal ``flip`` and translation by up to ``crop_pad`` pixels, drawn from ``seed``.
    Under DDP every process draws the same global batch and keeps its slice (``rank`` of
    ``world_size``), so N processes see exactly the batches (and augmentations) one process would.
    """

    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    _: KW_ONLY
    mean: float | list[float] | torch.Tensor
    std: float | list[float] | torch.Tensor
    channels: int = 3
    shuffle: bool = False
    flip: bool = False
    crop_pad: int = 0
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = field(default=0, init=False)
    start_batch: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32).reshape(1, -1, 1, 1) * 255
        self.std = torch.as_tensor(self.std, dtype=torch.float32).reshape(1, -1, 1, 1) * 255

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; ``start_batch`` > 0 resumes it there (the batches before are not drawn)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, S, S) -> float, channels repeated to ``self.channels``, normalized."""
        x = batch.float()
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        return (x - self.mean) / self.std

    def __iter__(self):
        key = self.seed * 100_003 + self.epoch
        n = len(self.labels)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(key)) if self.shuffle else torch.arange(n)
        for batch in range(self.start_batch, len(self)):
            # Each batch draws its augmentation from its own generator, so any batch can come first.
            gen = torch.Generator().manual_seed(key * 10_007 + batch)
            idx = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            x = self.images[idx]
            if self.crop_pad:
                x = random_crop(x, self.crop_pad, gen)
            if self.flip:
                mask = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(mask[:, None, None, None], x.flip(-1), x)
            if self.world_size > 1:
                x, idx = x[self.rank :: self.world_size], idx[self.rank :: self.world_size]
            yield self.normalize(x), self.labels[idx]
