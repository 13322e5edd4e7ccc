"""Features of the frozen layers of a trained net, computed once and cached (Sections 5.2 and 5.3).

Transfer (Tables 4-6, Fig. 9) keeps layers 1-7 of a pretrained net fixed and trains a new head on
their output; the feature analysis (Table 7) trains heads on any one layer. Both need the same
thing: every image of a data set pushed through the frozen net once, the output of a layer kept.

What "the features of layer L" are, for a net that is one ``nn.Sequential`` of paper-named children:

- ``fc6``, ``fc7``: the output of ``relu6`` / ``relu7`` (the net is in eval mode, so dropout is off).
- ``conv1`` .. ``conv5``: the output of the layer's whole block, i.e. the last module before the next
  conv (or ``flatten``): after its ReLU, and its pooling and contrast normalization where it has them.
  That is what the next layer sees. The map is then average-pooled to at most ``pool_grid`` x
  ``pool_grid`` cells (``F.adaptive_avg_pool2d``; a smaller map is kept as it is), so the length is
  fixed per layer whatever the input size: ``maps * min(grid, size)**2``. The default grid of 6 is
  conv5's own size at the paper's 224 px, so the paper preset's layer 5 is not pooled at all.

The cache holds one ``.npy`` per (checkpoint hash, data set fingerprint, layer, preprocessing);
every split, number of images per class and head reads the same file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zfviz import run_cache
from zfviz.activations import resolve, stream
from zfviz.data.imageset import ImageSet
from zfviz.data.preprocess import Preprocess
from zfviz.errors import UserError
from zfviz.utils import atomic_path

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
DEFAULT_GRID = 6


def layer_outputs(model: nn.Module) -> dict[str, str]:
    """Paper layer -> the module whose output is its feature: the layer's block (``zfviz.activations``)."""
    names = [name for name, _ in model.named_children() if name.startswith("conv") or name in ("fc6", "fc7")]
    return {name: resolve(model, name, "block") for name in names}


def _check_layers(model: nn.Sequential, layers: Sequence[str]) -> dict[str, str]:
    available = layer_outputs(model)
    bad = [layer for layer in layers if layer not in available]
    if bad:
        raise UserError(f"layer {', '.join(bad)} is not in this net; choose from: {', '.join(available)}")
    return {layer: available[layer] for layer in layers}


def _flatten(output: torch.Tensor, grid: int) -> torch.Tensor:
    if output.dim() == 4:
        h, w = output.shape[-2:]
        output = F.adaptive_avg_pool2d(output, (min(grid, h), min(grid, w)))
    return output.flatten(1)


@dataclass(frozen=True)
class Extraction:
    """How the features are pushed out of the net: the conv maps' pooling grid (part of the cache key), and
    the batch size and device (not in it: they do not change the features)."""

    grid: int = DEFAULT_GRID
    batch_size: int = 256
    device: torch.device | str = "cpu"

    @classmethod
    def from_config(cls, features_cfg, device: torch.device | str) -> Extraction:
        """From a command's ``features`` group (``pool_grid``, ``batch_size``)."""
        return cls(int(features_cfg.pool_grid), int(features_cfg.batch_size), device)


@torch.no_grad()
def extract(
    model: nn.Sequential, images: ImageSet, layers: Sequence[str], prep: Preprocess, how: Extraction = Extraction()
) -> dict[str, np.ndarray]:
    """float32 features (N, D) of every image at each of ``layers``, in one pass over the set.

    Each batch's pass stops after the deepest of ``layers``; the maps are pooled in the hook.
    """
    where = _check_layers(model, layers)
    model = model.to(how.device).eval()
    chunks: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    batches = (
        prep(images.read(np.arange(start, min(start + how.batch_size, len(images))), prep.input_size)).to(how.device)
        for start in range(0, len(images), how.batch_size)
    )
    with stream(model, batches, where, keep=lambda out: _flatten(out, how.grid).float().cpu()) as passes:
        for seen, _ in passes:
            for layer in layers:
                chunks[layer].append(seen[layer])
    return {layer: torch.cat(chunks[layer]).numpy() for layer in layers}


class FeatureCache:
    """One ``.npy`` per (model, data set, layer, preprocessing) under ``folder``, its key beside it in a
    ``.json`` written last (``zfviz.run_cache``: an array without it is computed again); counts hits."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def path(self, key: dict) -> Path:
        """``<folder>/<dataset>/<layer>-<digest>.npy``."""
        stem = run_cache.entry(self.folder / str(key["dataset"]), key, length=20, prefix=f"{key['layer']}-")
        return stem.parent / f"{stem.name}.npy"

    def load(self, key: dict) -> np.ndarray | None:
        path = self.path(key)
        if run_cache.complete(path.with_suffix(".json"), key, field=None) is None:
            return None
        try:
            return np.load(path)
        except (OSError, ValueError):  # a damaged file is recomputed, not trusted
            return None

    def save(self, key: dict, array: np.ndarray) -> None:
        path = self.path(key)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, array)
        run_cache.mark_complete(path.with_suffix(".json"), key)


def cached_features(
    model: nn.Sequential,
    images: ImageSet,
    layers: Sequence[str],
    prep: Preprocess,
    *,
    model_key: str,
    cache: FeatureCache | None = None,
    how: Extraction = Extraction(),
) -> dict[str, np.ndarray]:
    """``extract`` through ``cache``: layers already on disk are read, the others computed in one pass.

    ``model_key`` names the weights (the checkpoint's sha256); the batch size is not part of the key
    because it does not change the features.
    """
    _check_layers(model, layers)

    def key(layer: str) -> dict:
        grid_used = how.grid if layer.startswith("conv") else None
        return {"model": model_key, "dataset": images.name, "images": images.fingerprint, "layer": layer,
                "pool_grid": grid_used, **prep.key()}  # fmt: skip

    found = {}
    if cache is not None:
        for layer in layers:
            array = cache.load(key(layer))
            if array is not None and len(array) == len(images):
                found[layer] = array
                cache.hits += 1
    missing = [layer for layer in layers if layer not in found]
    if missing:
        fresh = extract(model, images, missing, prep, how)
        for layer, array in fresh.items():
            if cache is not None:
                cache.misses += 1
                cache.save(key(layer), array)
            found[layer] = array
    return {layer: found[layer] for layer in layers}
