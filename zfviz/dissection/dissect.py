"""Network dissection (Bau et al. 2017, Section 2): which units of a layer detect which concepts.

For every unit k of a probed layer and every concept c of a Broden-layout data set
(``zfviz.dissection.broden``), with NetDissect's procedure so that numbers compare:

1. T_k, the level unit k exceeds on the top ``quantile`` (0.005) of all its activations over the
   data set (``zfviz.dissection.quantile``: exact, streaming, three passes).
2. Each activation map upsampled bilinearly to the image's mask size and thresholded: M_k = A_k > T_k.
3. IoU_{k,c} = sum_x |M_k(x) and L_c(x)| / sum_x |M_k(x) or L_c(x)|, counts summed over the images x,
   not a mean of per-image IoUs. Pixel categories (object, part, color, material) give L_c from their
   masks; an image-level label (scene, texture) covers the whole image. As in NetDissect, the unit's
   own pixels count toward the union with c only in images where c's category is annotated, so an
   image without part masks does not count against a part detector.
4. A unit's concept is its highest-IoU concept; it is a detector when that IoU >= ``iou_threshold`` (0.04).

Speed (the cpu preset dissects 18 nets in ``make figures``): the images and labels are decoded once
and can serve many nets (``zfviz.dissection.batches.Batches``); a net's probed maps are computed in
one forward pass and kept when they fit ``cache_bytes`` (else the net runs again per pass, four
passes in all, in bounded memory); with the maps in memory T_k is found by selection
(``quantile.select_quantile``), without them by the three-pass radix select (``quantile.top_quantile``),
equal to numpy either way, so the table is the same with and without the cache. The IoU pass skips
every (image, unit) whose map never exceeds T_k (its mask is empty: a bilinear value never exceeds
the largest of the four it mixes), upsamples only the maps that fire, one map per channel
(``upsample`` says why), and counts each image's intersections with one matmul of its 0/1 masks by
its label planes (integer counts, exact in float32). The model's train/eval flags are restored and
its hooks removed afterwards, also on an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.activations import resolve, stream
from zfviz.data.tensor_loader import resize_uint8
from zfviz.dissection.batches import CACHE_BYTES, Activations, Batch, Batches
from zfviz.dissection.broden import Broden
from zfviz.dissection.quantile import select_quantile, top_quantile
from zfviz.errors import UserError

COLUMNS = ("layer", "unit", "concept", "category", "iou", "threshold", "detector")
MEANING = "rectified"  # NetDissect probes a conv layer after its ReLU (Caffe's in-place ReLU blobs)
_CELLS = 1 << 23  # upsampled pixels per chunk of firing maps (float32 32 MB)

Prepare = Callable[[Tensor], Tensor]
Data = str | Path | Broden | Batches


def scaled(images: Tensor) -> Tensor:
    """The default ``prepare``: uint8 images as floats in [0, 1], at their own size."""
    return images.float() / 255


def resized(normalize: Callable[[Tensor], Tensor], size: int) -> Prepare:
    """A ``prepare`` for a net trained at ``size`` px: the images resized as training resized its data
    (bilinear, rounded to uint8: ``resize_uint8``), then ``normalize`` (the training statistics)."""
    return lambda images: normalize(resize_uint8(images, size))


def as_batches(data: Data, batch_size: int = 64, cache_bytes: int = CACHE_BYTES) -> Batches:
    """A Broden-layout folder, a ``Broden`` or ``Batches`` (returned as they are, with their own batch size)."""
    if isinstance(data, Batches):
        return data
    return Batches(data if isinstance(data, Broden) else Broden(data), batch_size, cache_bytes)


@dataclass
class Tally:
    """Counts summed over the data set for one layer; label numbers index the last axis.

    ``both[k, c]``: pixels where unit k is on and concept c is present; ``units[k, g]``: pixels where
    unit k is on, in images where category g is annotated; ``labels[c]``: pixels of concept c."""

    both: Tensor  # (K, labels + 1) int64
    units: Tensor  # (K, categories) int64
    labels: Tensor  # (labels + 1,) int64

    def iou(self, category_of: Tensor) -> Tensor:
        """(K, labels + 1) float64 IoU; ``category_of[c]`` is concept c's category index (-1: none)."""
        on = self.units[:, category_of.clamp(min=0)] * (category_of >= 0)
        union = (on + self.labels - self.both).double()
        return torch.where(union > 0, self.both.double() / union.clamp(min=1), 0.0)

    def add(self, maps: Tensor, batch: Batch, threshold: Tensor, planes: list[Tensor]) -> None:
        """One batch's counts: ``maps`` (N, K, h, w) of one layer, ``threshold`` its T_k (K,), ``planes``
        the batch's ``label_planes``. Only the maps that exceed T_k somewhere are upsampled: the others'
        masks are empty (a bilinear value never exceeds the largest of the four it mixes)."""
        n, k = (maps.flatten(2).amax(2) > threshold).nonzero(as_tuple=True)  # the maps that fire, by image
        on = torch.zeros(maps.shape[:2], dtype=torch.int64)
        step = max(1, _CELLS // batch.pixels)
        for start in range(0, len(n), step):
            images, units = n[start : start + step], k[start : start + step]
            up = upsample(maps[images, units][:, None], batch.size)[:, 0]
            masks = (up > threshold[units, None, None]).flatten(1).to(planes[0].dtype)  # (pairs, pixels)
            ids, sizes = torch.unique_consecutive(images, return_counts=True)  # pairs come sorted by image
            sizes = sizes.tolist()
            for image, rows, which in zip(ids.tolist(), masks.split(sizes), units.split(sizes), strict=True):
                counts = (rows @ planes[image]).round().long()  # (its firing units, its labels + 1)
                self.both.index_put_((which[:, None], batch.present[image][None]), counts[:, :-1], accumulate=True)
                on[image, which] = counts[:, -1]
        self.units += on.T @ batch.annotated
        self.both += on.T @ batch.whole  # an image-level label covers the whole image
        self.labels += batch.label_pixels


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps (M, 1, h, w) upsampled bilinearly to ``size`` (NetDissect's step 2), in float32.

    One map per channel on purpose: PyTorch's CPU kernel vectorizes across channels when there are
    eight or more, and that path rounds differently in the last bit, so a value next to T_k could
    land on either side depending on how many maps went in together (the batch size)."""
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)


def label_planes(batch: Batch) -> list[Tensor]:
    """Per image, its label planes and a last plane of ones, as floats for the intersection matmul:
    0/1 products summed, exact integers (float64 past 2^24 pixels, where float32 would round)."""
    exact = torch.float32 if batch.pixels < 1 << 24 else torch.float64
    ones = torch.ones(batch.pixels, 1, dtype=exact)
    return [torch.cat([plane.to(exact), ones], 1) for plane in batch.planes]


def _empty_tally(units: int, labels: int, categories: int) -> Tally:
    return Tally(
        torch.zeros(units, labels + 1, dtype=torch.int64),
        torch.zeros(units, categories, dtype=torch.int64),
        torch.zeros(labels + 1, dtype=torch.int64),
    )


def count(activations: Activations, thresholds: dict[str, Tensor]) -> dict[str, Tally]:
    """Step 3's counts for each probed layer, at ``thresholds``, in one pass over the activations."""
    broden = activations.batches.broden
    top = max(broden.labels, default=0)
    tallies: dict[str, Tally] = {}
    for outputs, batch in activations.passes():
        planes = label_planes(batch)  # shared by the layers
        for key, maps in outputs.items():
            if key not in tallies:
                tallies[key] = _empty_tally(maps.shape[1], top, len(broden.categories))
            tallies[key].add(maps, batch, thresholds[key], planes)
    return tallies


def tally(
    model: nn.Module,
    broden: Data,
    layers: dict[str, str],
    thresholds: dict[str, Tensor],
    batch_size: int = 64,
    prepare: Prepare | None = None,
) -> dict[str, Tally]:
    """Step 3's counts for each layer key of ``layers`` (key -> module path), at ``thresholds``: one pass."""
    activations = Activations(model, as_batches(broden, batch_size), layers, prepare or scaled, cache_bytes=0)
    return count(activations, thresholds)


def find_thresholds(activations: Activations, quantile: float) -> dict[str, Tensor]:
    """Step 1: T_k per unit of each layer, over every image: selected among the maps when they are
    kept in memory, else by the radix select's three streaming passes."""
    if not activations.keep():
        return top_quantile(lambda: (maps for maps, _ in activations.passes()), quantile)
    kept = [maps for maps, _ in activations.kept]
    found = {}
    for key, first in kept[0].items():
        units = (torch.cat([maps[key][:, unit].reshape(-1) for maps in kept]) for unit in range(first.shape[1]))
        found[key] = select_quantile(units, quantile)
    return found


def thresholds(
    model: nn.Module, broden: Data, layers: dict[str, str], quantile: float, batch_size: int, prepare: Prepare | None
) -> dict[str, Tensor]:
    """Step 1: T_k per unit of each layer, over every image of ``broden``, streaming (radix select)."""
    activations = Activations(model, as_batches(broden, batch_size), layers, prepare or scaled, cache_bytes=0)
    return top_quantile(lambda: (maps for maps, _ in activations.passes()), quantile)


def probed_layers(model: nn.Module, layers: Sequence[str]) -> dict[str, str]:
    """User layer names -> the module paths probed (each conv's rectified output); a bad name is one line."""
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        raise UserError("no layers to dissect; name at least one, e.g. layers=[conv5]")
    return {layer: resolve(model, str(layer), MEANING) for layer in layers}


def dissect(
    model: nn.Module,
    root: Data,
    layers: Sequence[str],
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 64,
    prepare: Prepare | None = None,
    cache_bytes: int = CACHE_BYTES,
) -> pd.DataFrame:
    """One row per unit of each layer: its best concept, that concept's category, the IoU, T_k, and
    whether it is a detector (IoU >= ``iou_threshold``). ``root`` is a Broden-layout folder, a
    ``Broden``, or ``Batches`` already decoded (to dissect many nets, decode once); ``prepare`` maps
    uint8 images (N, 3, H, W) to the model's input (default: floats in [0, 1]). ``cache_bytes``
    bounds the memory for the decoded images and for the net's maps, each (see ``batches``); the
    table does not depend on it, nor on ``batch_size``."""
    if not 0 < quantile < 1:
        raise UserError(f"quantile={quantile} is not valid: give a fraction in (0, 1), e.g. 0.005")
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} is not valid: give a whole number, 1 or more")
    batches = as_batches(root, batch_size, cache_bytes)
    if len(batches) == 0:
        raise UserError(f"{batches.broden.root} holds no images (index.csv has no rows)")
    paths = probed_layers(model, layers)
    activations = Activations(model, batches, paths, prepare or scaled, cache_bytes)
    found = find_thresholds(activations, quantile)
    return table(count(activations, found), found, batches.broden, iou_threshold)


def category_index(broden: Broden) -> Tensor:
    """Per label number, the index of its category in ``broden.categories`` (-1: no such label or category)."""
    top = max(broden.labels, default=0)
    index = torch.full((top + 1,), -1, dtype=torch.int64)
    order = {c: i for i, c in enumerate(broden.categories)}
    for number, label in broden.labels.items():
        index[number] = order.get(label.category, -1)
    return index


def table(tallies: dict[str, Tally], levels: dict[str, Tensor], broden: Broden, iou_threshold: float) -> pd.DataFrame:
    """The per-unit rows from the counts: the best concept (lowest label number on a tie); a unit
    whose maps overlap no concept anywhere (IoU 0 with all) gets an empty concept and category."""
    categories = category_index(broden)
    rows = []
    for layer, counts in tallies.items():
        iou = counts.iou(categories)
        iou[:, 0] = -1.0  # label 0 is "no label"
        best = iou.argmax(dim=1)
        for unit, label in enumerate(best.tolist()):
            score = max(float(iou[unit, label]), 0.0)
            found = broden.labels.get(label) if score > 0 else None  # a unit overlapping no concept names none
            rows.append({
                "layer": layer, "unit": unit, "concept": found.name if found else "",
                "category": found.category if found else "", "iou": score,
                "threshold": float(levels[layer][unit]) + 0.0, "detector": bool(found) and score >= iou_threshold,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS))


def unit_maps(
    model: nn.Module, images: Tensor, layer: str, size: tuple[int, int], prepare: Prepare | None = None
) -> Tensor:
    """The probed activation maps of ``layer`` for uint8 ``images``, upsampled as dissection does: (N, K, *size)."""
    paths = probed_layers(model, [layer])
    x = (prepare or scaled)(images).to(next((p.device for p in model.parameters()), torch.device("cpu")))
    with stream(model, [x], paths) as passes:
        maps = next(iter(passes))[0][layer]
    return upsample(maps.flatten(0, 1)[:, None].cpu(), size).reshape(*maps.shape[:2], *size)


def strongest_images(
    model: nn.Module, broden: Data, layer: str, k: int = 4, batch_size: int = 64, prepare: Prepare | None = None
) -> tuple[Tensor, Tensor]:
    """Per unit of ``layer``, the ``k`` images where its map peaks highest (the earlier image on a tie):
    (peak values (K, k), image indices (K, k)), in one streaming pass."""
    paths = probed_layers(model, [layer])
    activations = Activations(model, as_batches(broden, batch_size), paths, prepare or scaled, cache_bytes=0)
    values, index, seen = None, None, 0
    for outputs, _ in activations.passes():
        peaks = outputs[layer].flatten(2).amax(2).T  # (K, n)
        ids = torch.arange(seen, seen + peaks.shape[1]).expand_as(peaks)
        seen += peaks.shape[1]
        values = peaks if values is None else torch.cat([values, peaks], 1)
        index = ids if index is None else torch.cat([index, ids], 1)
        order = values.sort(dim=1, descending=True, stable=True).indices[:, :k]  # a tie: the earlier image
        values, index = values.gather(1, order), index.gather(1, order)
    return values, index


def detector_counts(df: pd.DataFrame, categories: Sequence[str] | None = None) -> pd.DataFrame:
    """Detectors per layer (rows, in table order) and category (columns), zeros included."""
    detectors = df[df["detector"]]
    cats = list(categories) if categories is not None else sorted(df["category"].unique())
    counts = detectors.groupby(["layer", "category"]).size().unstack(fill_value=0)
    layers = list(dict.fromkeys(df["layer"]))
    return counts.reindex(index=layers, columns=cats, fill_value=0).astype(np.int64)
