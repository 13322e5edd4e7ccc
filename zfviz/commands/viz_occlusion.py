"""``zfviz viz occlusion``: Fig. 7, occlusion sensitivity of a trained net (Section 4.2).

Writes ``<stem>.png`` (the paper's 5-panel row per image) and ``<stem>.npz`` (the maps). Also holds
what the correspondence and invariance commands share: picking images and turning model inputs
back into pixels for display.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from omegaconf import DictConfig

from zfviz.commands.viz_deconv import check_split, open_run, out_dir, save_arrays
from zfviz.data import DataBundle
from zfviz.data.tensor_loader import TensorLoader
from zfviz.errors import UserError
from zfviz.plotting import plt
from zfviz.plotting.deconv import as_image_channels
from zfviz.plotting.occlusion import occlusion_figure
from zfviz.results import save_figure
from zfviz.viz.deconv import project
from zfviz.viz.occlusion import fill_image, grid, occluded_copies, occlusion, resolve_layer


def pick_images(data: DataBundle, split: str, indices, device: torch.device):
    """(loader, model inputs, labels) for ``indices`` of ``split``; bad indices are a UserError."""
    check_split(split)
    loader: TensorLoader = getattr(data, split)
    index = torch.as_tensor(list(indices), dtype=torch.long)
    if len(index) == 0 or index.min() < 0 or index.max() >= len(loader.images):
        raise UserError(f"viz.images must be indices in 0..{len(loader.images) - 1} of the {split} split")
    return loader, loader.normalize(loader.images[index]).to(device), loader.labels[index].to(device)


def pixels(x: torch.Tensor, loader: TensorLoader) -> np.ndarray:
    """Model inputs back to pixel values (0..255) for display."""
    return (x.detach().cpu() * loader.std + loader.mean).numpy()


def fill_for(fill, loader: TensorLoader, shape, seed: int) -> torch.Tensor:
    """The occluder's pixels for data from ``loader``; noise is gray when the data are."""
    gray = loader.images.shape[1] == 1
    return fill_image(fill, shape, loader.mean.flatten(), loader.std.flatten(), seed, gray=gray)


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    model, ckpt, data, device = open_run(cfg)
    loader, x, labels = pick_images(data, v.split, v.images, device)
    start = time.perf_counter()
    fill = fill_for(v.fill, loader, tuple(x.shape[1:]), cfg.seed).to(device)
    maps = occlusion(model, x, labels, v.window, v.stride, fill, v.layer, chunk_size=v.chunk_size)
    sweep_s = time.perf_counter() - start
    maps = {key: value.cpu().numpy() for key, value in maps.items()}
    origins = grid(x.shape[-1], v.window, v.stride).numpy()
    projections, titles, boxes = None, [], []
    if v.projections:
        projections, titles, boxes = _projections(model, x, maps, origins, fill, v, loader.images.shape[1])
    folder = out_dir(cfg)
    feature_name = resolve_layer(model, v.layer)
    title = f"Occlusion, {v.window}-px {v.fill} square, stride {v.stride} ({ckpt['config']['model']['name']})"
    worst, _ = _at(x, maps["p_true"], origins, v.window, fill)
    fig = occlusion_figure(
        pixels(x, loader), maps, origins, v.window, data.classes, labels.tolist(), feature_name,
        projections, titles, boxes, occluded=pixels(worst, loader), title=title,
    )  # fmt: skip
    save_figure(fig, folder / f"{v.stem}.png")
    plt.close(fig)
    save_arrays(
        folder / f"{v.stem}.npz", images=np.asarray(list(v.images)), labels=labels.cpu(), origins=origins, **maps
    )
    print(
        f"{len(x)} images x {maps['p_true'][0].size} positions in {sweep_s:.1f} s; wrote {folder / v.stem}.png and .npz"
    )
    return {"images": list(v.images), "sweep_s": sweep_s, "out": str(folder / f"{v.stem}.png")}


def _at(x, score, origins, window, fill):
    """Each image occluded at the position where ``score`` (N, rows, cols) is lowest, and that position."""
    r, c = np.divmod(score.reshape(len(x), -1).argmin(axis=1), score.shape[2])
    ys, xs = torch.as_tensor(origins[r], device=x.device), torch.as_tensor(origins[c], device=x.device)
    return occluded_copies(x, fill, torch.arange(len(x), device=x.device), ys, xs, window), (r, c)


def _projections(model, x, maps, origins, fill, v, data_channels: int):
    """Panel (c): the chosen map projected for the unoccluded image and for a few telling occluder positions."""
    choices = [
        ("lowest total", maps["feature_activation"]),
        ("lowest p(true)", maps["p_true"]),
        ("highest total", -maps["feature_activation"]),
    ][: int(v.projections)]
    layer = resolve_layer(model, v.layer)
    channel = torch.as_tensor(maps["channel"], device=x.device)
    shown = [project(model, x, layer, channel, norm=v.norm).cpu().numpy()]
    corners = []
    for _, score in choices:
        copies, (r, c) = _at(x, score, origins, v.window, fill)
        shown.append(project(model, copies, layer, channel, norm=v.norm).cpu().numpy())
        corners.append(list(zip(origins[r].tolist(), origins[c].tolist(), strict=True)))
    projection = as_image_channels(np.stack(shown, axis=1), data_channels)
    titles = ["unoccluded"] + [name for name, _ in choices]
    boxes = [[None] + [corner[i] for corner in corners] for i in range(len(x))]  # per image, per tile
    return projection, titles, boxes
