"""The images of a transfer or feature-analysis data set, decoded on demand (Sections 5.2, 5.3).

Transfer (Tables 4-6, Fig. 9) and the feature analysis (Table 7) push every image of a data set
through a frozen net once; an ``ImageSet`` is what they read: labels, a ``read(indices, size)``
that decodes at the net's input size, and a fingerprint naming the pixels for the feature cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from zfviz.data.tensor_loader import resize_uint8


@dataclass
class ImageSet:
    """The images of a transfer data set, decoded on demand.

    ``read(indices, size)`` returns uint8 ``(n, channels, size, size)``. ``labels`` is one class per
    image; multi-label sets (PASCAL) add ``targets`` (N, C) in {0, 1} and ``ignore`` (N, C), true
    where a class is present only as "difficult" objects (not scored, as in VOC).
    ``fingerprint`` names the content (file list and decoder, or pixel hash) for the feature cache.
    """

    name: str
    classes: tuple[str, ...]
    labels: np.ndarray
    read: Callable[[np.ndarray, int], torch.Tensor]
    fingerprint: str
    source: str
    targets: np.ndarray | None = None
    ignore: np.ndarray | None = None
    note: str = ""
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def in_memory(cls, images: np.ndarray, labels: np.ndarray, **fields) -> ImageSet:
        """An ImageSet over uint8 (N, H, W) arrays: one channel, resized on read, named by a pixel hash."""
        tensor = torch.from_numpy(images).unsqueeze(1)

        def read(index: np.ndarray, size: int) -> torch.Tensor:
            return resize_uint8(tensor[torch.as_tensor(index, dtype=torch.long)], size)

        digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:16]
        return cls(labels=labels, read=read, fingerprint=digest, **fields)
