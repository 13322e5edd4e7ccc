"""``zfviz viz deconv``: deconvnet projections (Section 2.1) of one layer's maps for a few images.

Also holds what the other deconvnet commands (top9, evolution, architecture) share: loading a
checkpoint and the data set it was trained on, picking maps, and where outputs go.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from zfviz.checkpoint import model_from_checkpoint
from zfviz.data import DataBundle, build_data
from zfviz.errors import UserError
from zfviz.plotting import plt
from zfviz.plotting.deconv import as_image_channels, projections_figure
from zfviz.results import save_figure
from zfviz.utils import atomic_path, resolve_device
from zfviz.viz.deconv import descend, select, trace

SPLITS = ("train", "test")


def load_net(path, device: torch.device, what: str = "checkpoint") -> tuple[nn.Module, dict]:
    """The trained model (eval mode, on ``device``) and its checkpoint; a missing path is a UserError."""
    if not path:
        raise UserError(f"set {what}=path/to/checkpoint.pt (a 'zfviz train' checkpoint)")
    model, ckpt = model_from_checkpoint(path)
    return model.to(device).eval(), ckpt


def load_data(ckpt: dict, cfg: DictConfig) -> DataBundle:
    """The data set the checkpoint was trained on, normalized as in training (same config, same statistics)."""
    data_cfg = OmegaConf.create(ckpt["config"]["data"])
    if cfg.data.get("root"):
        data_cfg.root = cfg.data.root
    model_cfg = ckpt["config"]["model"]
    return build_data(data_cfg, input_size=model_cfg["input_size"], batch_size=256, in_chans=model_cfg["in_chans"])


def open_run(cfg: DictConfig) -> tuple[nn.Module, dict, DataBundle, torch.device]:
    """What every ``zfviz viz`` method starts from: the net of ``cfg.checkpoint``, its checkpoint,
    the data it was trained on, and the device it now sits on."""
    device = resolve_device(cfg.device)
    model, ckpt = load_net(cfg.checkpoint, device)
    return model, ckpt, load_data(ckpt, cfg), device


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")


def split_images(data: DataBundle, split: str, limit: int | None, device: torch.device):
    """(uint8 images of ``split``, first ``limit``) and a function turning a batch of them into model input."""
    check_split(split)
    loader = getattr(data, split)
    images = loader.images if limit is None else loader.images[: int(limit)]
    return images, lambda batch: loader.normalize(batch).to(device)


def pick_maps(maps, count: int, seed: int, key: str = "") -> list[int]:
    """``maps`` as given (a list), or ``maps`` indices drawn without replacement from ``count`` (seeded)."""
    if isinstance(maps, int):
        # The layer name goes into the seed, so layers draw different subsets.
        gen = torch.Generator().manual_seed(seed * 1_000_003 + sum(map(ord, key)))
        return sorted(torch.randperm(count, generator=gen)[: min(maps, count)].tolist())
    chosen = [int(m) for m in maps]
    bad = [m for m in chosen if not 0 <= m < count]
    if bad:
        raise UserError(f"maps {bad} do not exist in {key or 'this layer'}; it has maps 0..{count - 1}")
    return chosen


def map_count(model: nn.Module, layer: str, sample: torch.Tensor) -> int:
    return trace(model, sample, layer).activation.shape[1]


def out_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.out_dir) if cfg.get("out_dir") else Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_arrays(path: Path, **arrays) -> None:
    """Write ``arrays`` to ``path`` (.npz) atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    model, ckpt, data, device = open_run(cfg)
    images, prepare = split_images(data, v.split, None, device)
    index = torch.as_tensor(list(v.images), dtype=torch.long)
    if len(index) == 0 or index.min() < 0 or index.max() >= len(images):
        raise UserError(f"viz.images must be indices in 0..{len(images) - 1} of the {v.split} split")
    stored = images[index]
    x = prepare(stored)
    result = trace(model, x, v.layer, norm=v.norm)  # once: every map's projection reuses its switches
    activation = result.activation
    count = activation.shape[1]
    if isinstance(v.maps, int):
        # Each image's own most active maps (strongest single activation).
        strength = activation.reshape(len(x), count, -1).amax(dim=2)
        chosen = strength.topk(min(v.maps, count), dim=1).indices
    else:
        chosen = torch.as_tensor(pick_maps(list(v.maps), count, 0, v.layer)).expand(len(x), -1)
    position = OmegaConf.to_container(v.position) if OmegaConf.is_config(v.position) else v.position
    projections, labels = [], []
    for j in range(chosen.shape[1]):
        seed, values, _ = select(activation, chosen[:, j].to(device), position)
        projections.append(descend(result, seed, v.norm).reshape(x.shape).cpu())
        labels.append([f"{v.layer} #{int(c)} ({float(a):.2g})" for c, a in zip(chosen[:, j], values, strict=True)])
    projection = torch.stack(projections, dim=1).numpy()  # (images, maps, C, H, W)
    shown = as_image_channels(projection, stored.shape[1])
    label_rows = [list(row) for row in zip(*labels, strict=True)]
    stem = v.stem or f"deconv_{v.layer}"
    folder = out_dir(cfg)
    fig = projections_figure(stored.numpy(), shown, label_rows, title=f"deconvnet projections, {v.layer} ({v.norm})")
    save_figure(fig, folder / f"{stem}.png")
    plt.close(fig)
    save_arrays(folder / f"{stem}.npz", images=index, maps=chosen, projection=projection)
    print(f"wrote {folder / stem}.png and .npz")
    return {"layer": v.layer, "images": index.tolist(), "maps": chosen.tolist(), "out": str(folder / f"{stem}.png")}
