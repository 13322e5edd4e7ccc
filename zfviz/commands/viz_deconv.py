"""``zfviz viz deconv``: deconvnet projections (Section 2.1) of one layer's maps for a few images.

Writes ``<stem>.png`` and ``<stem>.npz`` (the projections) with their ``.meta.json``.
"""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig, OmegaConf

from zfviz.commands.shared import Outputs, checkpoint_source, open_run, pick_maps, split_images
from zfviz.errors import UserError
from zfviz.plotting.deconv import as_image_channels, projections_figure
from zfviz.viz.deconv import descend, select, trace


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    start = time.perf_counter()
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
    out = Outputs(cfg)
    folder = out.folder
    fig = projections_figure(stored.numpy(), shown, label_rows, title=f"deconvnet projections, {v.layer} ({v.norm})")
    out.figure(fig, f"{stem}.png")
    out.arrays(f"{stem}.npz", images=index, maps=chosen, projection=projection)
    out.provenance([checkpoint_source(cfg, ckpt)], wall_time_s=time.perf_counter() - start)
    print(f"wrote {folder / stem}.png and .npz")
    return {"layer": v.layer, "images": index.tolist(), "maps": chosen.tolist(), "out": str(folder / f"{stem}.png")}
