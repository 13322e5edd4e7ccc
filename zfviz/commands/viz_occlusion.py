"""``zfviz viz occlusion``: Fig. 7, occlusion sensitivity of a trained net (Section 4.2).

Writes ``<stem>.png`` (the paper's 5-panel row per image) and ``<stem>.npz`` (the maps), with
their ``.meta.json``.

The paper's square covers a part of the object (the dog's face) and is sized to it. ``viz.object_frac``
does the same here: the square's side is that fraction of the shown objects' median side, their boxes
found from the images (``object_boxes``) and kept in the .npz (``object_boxes``, ``window``) and the figure.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from omegaconf import DictConfig

from zfviz.attribution.occlusion import (
    Occluder,
    grid,
    object_boxes,
    object_window,
    occluded_copies,
    occlusion,
    resolve_layer,
)
from zfviz.commands.shared import Outputs, checkpoint_source, fill_for, open_run, pick_images, pixels
from zfviz.plotting.deconv import as_image_channels
from zfviz.plotting.occlusion import OcclusionMaps, Projections, occlusion_figure
from zfviz.viz.deconv import project


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    model, ckpt, data, device = open_run(cfg)
    loader, x, labels = pick_images(data, v.split, v.images, device)
    start = time.perf_counter()
    shown_pixels = pixels(x, loader)
    boxes = object_boxes(torch.from_numpy(shown_pixels))
    frac = v.get("object_frac")
    window = int(v.window) if frac is None else object_window(boxes, float(frac), x.shape[-1])
    fill = fill_for(v.fill, loader, tuple(x.shape[1:]), cfg.seed).to(device)
    maps = occlusion(model, x, labels, Occluder(window, v.stride, fill), v.layer, chunk_size=v.chunk_size)
    sweep_s = time.perf_counter() - start
    feature_name = maps.pop("layer")  # the module path the maps of panels (b), (c) come from
    maps = {key: value.cpu().numpy() for key, value in maps.items()}
    origins = grid(x.shape[-1], window, v.stride).numpy()
    projections, titles, corners = None, [], []
    if v.projections:
        projections, titles, corners = _projections(model, x, maps, origins, fill, v, window, loader.images.shape[1])
    out = Outputs(cfg)
    folder = out.folder
    sized = "" if frac is None else f" ({float(frac):g} of the objects' median side, dashed: each object's box)"
    title = f"Occlusion, {window}-px {v.fill} square{sized}, stride {v.stride} ({ckpt['config']['model']['name']})"
    worst, _ = _at(x, maps["p_true"], origins, window, fill)
    shown = None if projections is None else Projections(projections, titles, corners)
    sweep = OcclusionMaps(maps, origins, window, feature_name, objects=boxes.numpy())
    fig = occlusion_figure(
        shown_pixels, sweep, data.classes, labels.tolist(), shown, occluded=pixels(worst, loader), title=title
    )
    out.figure(fig, f"{v.stem}.png")
    out.arrays(
        f"{v.stem}.npz", images=np.asarray(list(v.images)), labels=labels.cpu(), origins=origins, window=window,
        object_boxes=boxes.numpy(), object_frac=np.nan if frac is None else float(frac), **maps,
    )  # fmt: skip
    out.provenance([checkpoint_source(cfg, ckpt)], wall_time_s=sweep_s)
    print(
        f"{len(x)} images x {maps['p_true'][0].size} positions in {sweep_s:.1f} s; wrote {folder / v.stem}.png and .npz"
    )
    return {"images": list(v.images), "sweep_s": sweep_s, "out": str(folder / f"{v.stem}.png")}


def _at(x, score, origins, window, fill):
    """Each image occluded at the position where ``score`` (N, rows, cols) is lowest, and that position."""
    r, c = np.divmod(score.reshape(len(x), -1).argmin(axis=1), score.shape[2])
    ys, xs = torch.as_tensor(origins[r], device=x.device), torch.as_tensor(origins[c], device=x.device)
    return occluded_copies(x, fill, torch.arange(len(x), device=x.device), ys, xs, window), (r, c)


def _projections(model, x, maps, origins, fill, v, window: int, data_channels: int):
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
        copies, (r, c) = _at(x, score, origins, window, fill)
        shown.append(project(model, copies, layer, channel, norm=v.norm).cpu().numpy())
        corners.append(list(zip(origins[r].tolist(), origins[c].tolist(), strict=True)))
    projection = as_image_channels(np.stack(shown, axis=1), data_channels)
    titles = ["unoccluded"] + [name for name, _ in choices]
    boxes = [[None] + [corner[i] for corner in corners] for i in range(len(x))]  # per image, per tile
    return projection, titles, boxes
