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

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zfviz.errors import UserError
from zfviz.utils import atomic_path, atomic_write_text

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
DEFAULT_GRID = 6


@dataclass
class ImageSet:
    """The images of a transfer data set, decoded on demand.

    ``read(indices, size)`` returns uint8 ``(n, channels, size, size)``. ``labels`` is one class per
    image; multi-label sets (PASCAL) add ``targets`` (N, C) in {0, 1} and ``ignore`` (N, C), true
    where a class is present only as "difficult" objects (not scored, as in VOC).
    ``fingerprint`` names the content (file list or pixel hash) for the feature cache.
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
        from zfviz.data.tensor_loader import resize_uint8

        tensor = torch.from_numpy(images).unsqueeze(1)

        def read(index: np.ndarray, size: int) -> torch.Tensor:
            return resize_uint8(tensor[torch.as_tensor(index, dtype=torch.long)], size)

        digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:16]
        return cls(labels=labels, read=read, fingerprint=digest, **fields)


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
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_preprocess(ckpt: dict, checkpoint_path: str | Path, cache_dir: str | Path | None = None) -> Preprocess:
    """The normalization the checkpoint's net was trained with.

    Fashion-MNIST checkpoints store ``data.mean = null`` (computed at load time from the training
    pixels), so the statistics are recomputed once with ``build_data`` and the checkpoint's own data
    config, then kept in ``<cache_dir>/norm-<hash>.json``. ImageNet checkpoints subtract a per-pixel
    mean image: we use its per-channel average (std 1), read from ``mean_image.pt`` beside the
    checkpoint or ``data.mean_cache``.
    """
    config = ckpt["config"]
    model_cfg, data_cfg = config["model"], config["data"]
    size, chans = int(model_cfg["input_size"]), int(model_cfg.get("in_chans", 3))
    if data_cfg.get("mean") is not None and data_cfg.get("std") is not None:
        mean, std = np.atleast_1d(data_cfg["mean"]) * 255.0, np.atleast_1d(data_cfg["std"]) * 255.0
        return Preprocess(size, chans, tuple(map(float, mean)), tuple(map(float, std)))
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


def layer_outputs(model: nn.Sequential) -> dict[str, str]:
    """Paper layer -> the child whose output is its feature (see the module docstring)."""
    names = [n for n, _ in model.named_children()]
    out = {}
    for i, name in enumerate(names):
        if name.startswith("conv"):
            j = i
            while j + 1 < len(names) and names[j + 1].startswith(("relu", "pool", "norm")):
                j += 1
            out[name] = names[j]
        elif name in ("fc6", "fc7"):
            relu = f"relu{name[-1]}"
            out[name] = relu if relu in names else name
    return out


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


@torch.no_grad()
def extract(
    model: nn.Sequential,
    images: ImageSet,
    layers: Sequence[str],
    prep: Preprocess,
    *,
    grid: int = DEFAULT_GRID,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """float32 features (N, D) of every image at each of ``layers``, in one pass over the set."""
    where = _check_layers(model, layers)
    model = model.to(device).eval()
    names = [n for n, _ in model.named_children()]
    last = max(names.index(child) for child in where.values())
    trunk = nn.Sequential(*[model.get_submodule(n) for n in names[: last + 1]])  # stop after the deepest layer
    chunks: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    grabbed: dict[str, torch.Tensor] = {}

    def keeper(layer: str):
        def hook(module, inputs, output):
            grabbed[layer] = output

        return hook

    handles = []
    try:
        for layer, child in where.items():
            handles.append(model.get_submodule(child).register_forward_hook(keeper(layer)))
        for start in range(0, len(images), batch_size):
            index = np.arange(start, min(start + batch_size, len(images)))
            trunk(prep(images.read(index, prep.input_size)).to(device))
            for layer in layers:
                chunks[layer].append(_flatten(grabbed[layer], grid).float().cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {layer: torch.cat(chunks[layer]).numpy() for layer in layers}


class FeatureCache:
    """One ``.npy`` per (model, data set, layer, preprocessing) under ``folder``; counts hits."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.folder / str(key["dataset"]) / f"{key['layer']}-{digest}.npy"

    def load(self, key: dict) -> np.ndarray | None:
        path = self.path(key)
        if not path.is_file():
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
        atomic_write_text(path.with_suffix(".json"), json.dumps(key, indent=1, default=str))


def cached_features(
    model: nn.Sequential,
    images: ImageSet,
    layers: Sequence[str],
    prep: Preprocess,
    *,
    model_key: str,
    cache: FeatureCache | None = None,
    grid: int = DEFAULT_GRID,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """``extract`` through ``cache``: layers already on disk are read, the others computed in one pass.

    ``model_key`` names the weights (the checkpoint's sha256); the batch size is not part of the key
    because it does not change the features.
    """
    _check_layers(model, layers)

    def key(layer: str) -> dict:
        grid_used = grid if layer.startswith("conv") else None
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
        fresh = extract(model, images, missing, prep, grid=grid, batch_size=batch_size, device=device)
        for layer, array in fresh.items():
            if cache is not None:
                cache.misses += 1
                cache.save(key(layer), array)
            found[layer] = array
    return {layer: found[layer] for layer in layers}
