"""What network dissection's passes read (Bau et al. 2017, Section 2): labelled batches and unit maps.

A dissection reads the data set more than once: the thresholds T_k need every activation before a
single IoU can be counted (``zfviz.dissection.dissect``). Two things are worth computing only once:

- ``Batches``: the images and their labels in the form the IoU count uses, decoded from PNG once.
  They are the same for every net, so a caller dissecting many nets (``scripts/dissection_figure.py``:
  ZFNet, AlexNet and the 16 Table 3 variants) builds one ``Batches`` and passes it to each dissection.
- ``Activations``: one net's probed maps over the whole data set, computed in one forward pass.

Each is kept in memory only while it fits its byte budget (``cache_bytes``); past it, it is made
again on every pass (decoded again, or the net run again), so memory stays bounded whatever the
data set's size, and the counts are the same either way. The activations are kept in float32:
float16 would move values across T_k and change the thresholds and the IoU.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zfviz.activations import stream
from zfviz.dissection.broden import Broden, BrodenItem

CACHE_BYTES = 1 << 30  # per kept object: the decoded data set, and one net's probed maps (float32)

Prepare = Callable[[Tensor], Tensor]


def mask_size(item: BrodenItem, default: tuple[int, int]) -> tuple[int, int]:
    """The grid an item is scored at: its masks' size; an item with image-level labels only has no
    masks, and takes ``default`` (the data set's mask size) so its pixels weigh as the others'."""
    for masks in item.masks.values():
        if masks:
            return tuple(masks[0].shape[-2:])
    return default


@dataclass
class Batch:
    """Consecutive images of one image size and one mask size, with their labels as the IoU count reads them.

    ``present[n]``: the label numbers in image n's masks (sorted); ``planes[n]``: (pixels, len(present[n]))
    bool, pixel x holds that label in some mask (several masks with one label: still one pixel);
    ``whole``: (N, labels + 1) how often each image-level label (scene, texture) is listed per image;
    ``annotated``: (N, categories) 1 where the image has masks or labels of that category;
    ``label_pixels``: (labels + 1,) pixels of each concept over the batch (an image-level label: all)."""

    images: Tensor  # uint8 (N, 3, H, W)
    size: tuple[int, int]  # (sh, sw)
    present: list[Tensor]
    planes: list[Tensor]
    whole: Tensor
    annotated: Tensor
    label_pixels: Tensor

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]

    def nbytes(self) -> int:
        tensors = [self.images, self.whole, self.annotated, self.label_pixels, *self.present, *self.planes]
        return sum(t.numel() * t.element_size() for t in tensors)


def _batch(items: list[BrodenItem], broden: Broden, size: tuple[int, int]) -> Batch:
    top = max(broden.labels, default=0)
    pixels = size[0] * size[1]
    present, planes = [], []
    label_pixels = torch.zeros(top + 1, dtype=torch.int64)
    for item in items:
        flat = [m.reshape(-1).long() for cat in broden.pixel_categories for m in item.masks.get(cat, [])]
        stack = torch.stack(flat) if flat else torch.zeros(0, pixels, dtype=torch.int64)
        labels = stack.unique()
        labels = labels[labels > 0]
        plane = torch.zeros(pixels, len(labels), dtype=torch.bool)
        for mask in stack:
            on = mask.nonzero()[:, 0]
            plane[on, torch.searchsorted(labels, mask[on])] = True
        present.append(labels)
        planes.append(plane)
        label_pixels[labels] += plane.sum(0)
    whole = torch.zeros(len(items), top + 1, dtype=torch.int64)
    for n, item in enumerate(items):
        for cat in broden.image_categories:
            for label in item.image_labels.get(cat, []):
                whole[n, label] += 1
    label_pixels += pixels * whole.sum(0)
    annotated = torch.tensor(
        [[bool(item.masks.get(c)) or bool(item.image_labels.get(c)) for c in broden.categories] for item in items],
        dtype=torch.int64,
    ).reshape(len(items), len(broden.categories))
    return Batch(torch.stack([item.image for item in items]), size, present, planes, whole, annotated, label_pixels)


class Batches:
    """``broden`` cut into batches of ``batch_size`` images, decoded once and kept while their bytes
    stay within ``cache_bytes`` (else decoded again on every pass). A size change (image or mask)
    starts a new batch, so images stack and maps upsample together."""

    def __init__(self, broden: Broden, batch_size: int = 64, cache_bytes: int = CACHE_BYTES) -> None:
        self.broden, self.batch_size, self.cache_bytes = broden, batch_size, cache_bytes
        self.kept: list[Batch] | None = None
        self.fits = True  # until a pass finds the decoded set larger than the budget

    def __len__(self) -> int:
        return len(self.broden)

    def __iter__(self) -> Iterator[Batch]:
        if self.kept is not None:
            yield from self.kept
            return
        kept: list[Batch] | None = [] if self.fits else None
        held = 0
        for batch in self._decode():
            if kept is not None:
                held += batch.nbytes()
                if held > self.cache_bytes:
                    kept, self.fits = None, False
                else:
                    kept.append(batch)
            yield batch
        self.kept = kept

    def _decode(self) -> Iterator[Batch]:
        group: list[BrodenItem] = []
        default = self.broden.mask_size()
        key = None
        for i in range(len(self.broden)):
            item = self.broden[i]
            size = (tuple(item.image.shape), mask_size(item, default))
            if group and (len(group) == self.batch_size or size != key):
                yield _batch(group, self.broden, key[1])
                group = []
            group.append(item)
            key = size
        if group:
            yield _batch(group, self.broden, key[1])


class Activations:
    """One net's probed maps over ``batches``, pass after pass: ``passes()`` yields (maps by layer key,
    the batch) on the CPU. The first pass keeps them when the estimate from its first batch (bytes
    per image times images) fits ``cache_bytes``; a later pass then replays them without running the
    net. Otherwise (or if the estimate was short) every pass runs the net again."""

    def __init__(
        self,
        model: nn.Module,
        batches: Batches,
        layers: Mapping[str, str],
        prepare: Prepare,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.model, self.batches, self.layers, self.prepare = model, batches, dict(layers), prepare
        self.cache_bytes = cache_bytes
        self.kept: list[tuple[dict[str, Tensor], Batch]] | None = None
        self.fits = cache_bytes > 0

    def keep(self) -> bool:
        """Whether the maps are in memory, after one pass that keeps them if they fit; a pass that finds
        they do not (at its first batch, or later past the budget) stops there."""
        if self.kept is None and self.fits:
            for _ in self.passes():
                if not self.fits:
                    break
        return self.kept is not None

    def passes(self) -> Iterator[tuple[dict[str, Tensor], Batch]]:
        if self.kept is not None:
            yield from self.kept
            return
        kept: list[tuple[dict[str, Tensor], Batch]] | None = [] if self.fits else None
        held = 0
        for maps, batch in self._run():
            if kept is not None:
                held += sum(m.numel() * m.element_size() for m in maps.values())
                estimate = held / len(batch.images) * len(self.batches)  # read on the first batch only
                if held > self.cache_bytes or (not kept and estimate > self.cache_bytes):
                    kept, self.fits = None, False
                else:
                    kept.append((maps, batch))
            yield maps, batch
        self.kept = kept

    def _run(self) -> Iterator[tuple[dict[str, Tensor], Batch]]:
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        pending: deque[Batch] = deque()  # each batch, until its forward pass is done

        def inputs() -> Iterator[Tensor]:
            for batch in self.batches:
                pending.append(batch)
                yield self.prepare(batch.images).to(device)

        with stream(self.model, inputs(), self.layers) as passes:
            for outputs, _ in passes:
                yield {key: maps.float().cpu() for key, maps in outputs.items()}, pending.popleft()
