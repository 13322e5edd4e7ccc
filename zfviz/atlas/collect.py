"""What the atlas shows of each unit, from one streamed pass over an image set (issue 26).

One pass records, for every unit of every requested layer at once: the top ``k`` (image, activation,
position) as Fig. 2's search keeps them (``zfviz.viz.top9``: an image counts once per unit, at its
strongest cell; ties go to the earlier image), the histogram of the unit's per-image values
(``zfviz.atlas.histogram``: exact and independent of the batching), the sum per class of those
values and of their rectified values (so the mean per class, and the class selectivity index of
Morcos et al. 2018 without a second pass). A unit's per-image value is its maximum over positions on a conv
layer's map, its value on a fully connected layer. A unit is dead when no image drives it above 0.
Then, from the net alone: the crop of each kept activation, its receptive field clipped to the image
(``zfviz.viz.receptive_field``), and the units of the next weighted layer each unit feeds most
strongly, by the L2 norm of that layer's weights on the unit's channel (a conv's kernel slice
``W[v, u]``; a linear layer's columns reading the unit, ``|W[v, u]|`` when there is one per unit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from zfviz.activations import evaluating, hooks, resolve, stream
from zfviz.atlas.histogram import Histograms
from zfviz.errors import UserError
from zfviz.viz.receptive_field import ReceptiveField, receptive_field
from zfviz.viz.top9 import TopK, merge_top

_WEIGHTED = (nn.Conv2d, nn.Linear)


@dataclass
class LayerStats:
    """One layer's units (rows) as one pass over the images saw them."""

    top: TopK  # (units, k): strongest first
    histogram: Histograms
    class_sum: Tensor  # (classes, units) float64: the sum of the units' per-image values per class
    class_count: Tensor  # (classes,) images per class (labels outside 0..classes-1 count in none)
    class_relu_sum: Tensor  # (classes, units) float64: the same sums of max(value, 0)

    @property
    def dead(self) -> Tensor:
        """(units,) bool: no image drove the unit above 0."""
        return self.top.values[:, 0] <= 0

    @property
    def class_mean(self) -> Tensor:
        """(classes, units): the mean per-image value per class; NaN for a class without images."""
        return self.class_sum / self.class_count[:, None]

    @property
    def selectivity(self) -> Tensor:
        """(units,) the class selectivity index of the rectified values; NaN where it is undefined: no
        labels (or one class with images), a dead unit, a zero denominator (``selectivity_index``)."""
        seen = self.class_count > 0
        index = selectivity_index(self.class_relu_sum[seen] / self.class_count[seen, None])
        return torch.where(self.dead, torch.nan, index)


def f32(value: float) -> float:
    """``value`` (a float32's) as the shortest decimal that reads back as the same float32: exact, and about half
    the characters of the double's repr in ``atlas.json``."""
    return float(str(np.float32(value)))


def selectivity_index(means: Tensor) -> Tensor:
    """(units,) ``(mu_max - mu_rest) / (mu_max + mu_rest)`` of each column of ``means`` (classes, units),
    the class means of a unit's rectified values (Morcos et al. 2018): ``mu_max`` the largest, ``mu_rest``
    the mean of the other classes'. In [0, 1]: 0 when every class drives the unit alike, 1 when only one
    does. NaN with fewer than two classes or a zero denominator (a unit no image drives above 0)."""
    if len(means) < 2:
        return torch.full(means.shape[1:], torch.nan, dtype=torch.float64)
    top = means.max(dim=0).values
    rest = (means.sum(dim=0) - top) / (len(means) - 1)
    total = top + rest
    return torch.where(total > 0, (top - rest) / total.where(total > 0, 1.0), torch.nan)


def weighted_layers(model: nn.Module) -> list[str]:
    """Every conv and linear layer of ``model``, in definition order: the atlas's default layers."""
    return [name for name, module in model.named_modules() if isinstance(module, _WEIGHTED)]


def _per_image_max(out: Tensor) -> tuple[Tensor, Tensor, int]:
    """A batch's per-image value of each unit, where in the map it was, and the map's width."""
    values, index = out.reshape(out.shape[0], out.shape[1], -1).max(dim=2)
    return values, index, out.shape[-1] if out.dim() == 4 else 1


def collect(
    model: nn.Module,
    batches: Iterable[Tensor],
    layers: Sequence[str],
    labels: Tensor | None = None,
    classes: int = 0,
    k: int = 9,
) -> dict[str, LayerStats]:
    """Stream ``batches`` (model inputs, data set order) through ``model`` once; per layer, ``LayerStats``.

    ``labels`` (one per image, in the same order) give the per-class sums over ``classes`` classes;
    without them the class tables are empty. The pass stops at the deepest chosen layer; hooks are
    removed and the train/eval flags restored when this returns or raises.
    """
    if k < 1:
        raise UserError(f"top_k must be at least 1, got {k}")
    paths = {name: resolve(model, name, "output") for name in layers}
    running: dict[str, TopK | None] = dict.fromkeys(layers)
    stats: dict[str, tuple[Histograms, Tensor, Tensor]] = {}
    count = torch.zeros(classes, dtype=torch.float64)
    first = 0
    with stream(model, batches, paths, keep=_per_image_max) as passes:
        for seen, _ in passes:
            n = len(next(iter(seen.values()))[0])
            label = labels[first : first + n].cpu() if labels is not None else torch.full((n,), -1)
            known = (label >= 0) & (label < classes)
            for name, (values, index, width) in seen.items():
                running[name] = merge_top(running[name], values, index, first, width, k)
                if name not in stats:
                    units = values.shape[1]
                    sums = torch.zeros(2, classes, units, dtype=torch.float64)
                    stats[name] = Histograms.empty(units), sums[0], sums[1]
                stats[name][0].add(values)
                seen_values = values.detach().double().cpu()[known]
                stats[name][1].index_add_(0, label[known], seen_values)
                stats[name][2].index_add_(0, label[known], seen_values.clamp_min(0))
            count += torch.bincount(label[known], minlength=classes).double()
            first += n
    if first == 0:
        raise UserError("no images to search: the image set is empty")
    return {name: LayerStats(running[name], *stats[name][:2], count, stats[name][2]) for name in layers}


def crop_boxes(model: nn.Module, layer: str, top: TopK, image_shape: tuple[int, int, int]) -> Tensor:
    """(units, k, 4): each kept activation's receptive field clipped to the image, ``[y0, x0, y1, x1]``
    in the input's pixels (bottom/right exclusive); the whole image for a fully connected layer."""
    return field_boxes(receptive_field(model, layer, image_shape), top)


def field_boxes(field: ReceptiveField, top: TopK) -> Tensor:
    """``crop_boxes`` with the layer's field walked already (before a search, so that a module the walk
    cannot follow is one line before the pass, not after it)."""
    boxes = [field.box(int(y), int(x)) for y, x in top.position.reshape(-1, 2)]
    return torch.tensor(boxes, dtype=torch.long).reshape(*top.position.shape[:2], 4)


@dataclass
class NextUnits:
    """For each unit (rows), the ``count`` units of layer ``name`` it feeds most strongly, strongest first."""

    name: str
    units: Tensor  # (units, count) indices into the next layer
    strength: Tensor  # (units, count) the L2 norms of the weights between them


def _execution_order(model: nn.Module, path: str, image_shape: tuple[int, int, int]) -> list[str]:
    """The weighted modules (and ``path``) in the order one forward pass on a blank image finishes them."""
    order: list[str] = []
    names = [name for name, m in model.named_modules() if isinstance(m, _WEIGHTED) or name == path]
    pairs = [(name, lambda m, i, o, name=name: order.append(name)) for name in names]
    param = next(model.parameters(), None)
    blank = torch.zeros(1, *image_shape, device=param.device if param is not None else "cpu")
    with hooks(model, pairs), evaluating(model), torch.no_grad():
        model(blank)
    return order


def _strength(module: nn.Module, units: int) -> Tensor | None:
    """(units, next units): the L2 norm of ``module``'s weights on each input unit, or None where its
    input is not ``units`` channels (a grouped conv, a layer that reads something else)."""
    weight = module.weight.detach().cpu()
    if isinstance(module, nn.Conv2d) and module.groups == 1 and weight.shape[1] == units:
        return weight.flatten(2).norm(dim=2).T
    if isinstance(module, nn.Linear) and weight.shape[1] % units == 0:
        # Flattened maps: unit u owns a contiguous run of positions (channel-major, as flatten orders them).
        return weight.reshape(weight.shape[0], units, -1).norm(dim=2).T
    return None


def next_units(
    model: nn.Module, layer: str, units: int, image_shape: tuple[int, int, int], count: int = 5
) -> NextUnits | None:
    """The first weighted layer a forward pass runs after ``layer`` and, per unit of ``layer``, the
    ``count`` of its units the unit feeds most strongly (ties to the lower index); None where no
    weighted layer follows or the one that does reads no ``units`` channels."""
    path = resolve(model, layer, "output")
    order = _execution_order(model, path, image_shape)
    after = order[order.index(path) + 1 :] if path in order else []
    if not after:
        return None
    strength = _strength(model.get_submodule(after[0]), units)
    if strength is None:
        return None
    best = torch.sort(strength, dim=1, descending=True, stable=True)
    return NextUnits(after[0], best.indices[:, :count], best.values[:, :count])
