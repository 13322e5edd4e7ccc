"""``zfviz viz deconv``: deconvnet projections (Section 2.1) of one layer's maps for a few images.

The net is ours (``checkpoint=``, ``images=`` indices into a split) or any ``net=`` of ``zfviz viz
attribution`` (``images=`` image files, read as that net expects: ``zfviz.commands.shared.open_viz``).
Writes ``<stem>.png`` and ``<stem>.npz`` (the projections) with their ``.meta.json``.
"""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig, OmegaConf

from zfviz.activations import Capture, evaluating, resolve
from zfviz.commands.shared import Outputs, open_viz, pick_maps, split_images
from zfviz.errors import UserError
from zfviz.plotting.deconv import as_image_channels, projections_figure
from zfviz.validate import check_input_size, check_map_count
from zfviz.viz.deconv import project_with_values


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    start = time.perf_counter()
    opened = open_viz(cfg)
    model, device = opened.model, opened.device
    if opened.preprocessing is not None:  # a net of net=: size= checked before the projections
        check_input_size(model, opened.preprocessing.crop, opened.name)
    images, prepare = split_images(opened.data, v.split, None, device)
    # A net of net= reads the files of images= as its split: all of them are shown.
    index = torch.as_tensor(list(v.images) if opened.ckpt else range(len(images)), dtype=torch.long)
    if len(index) == 0 or index.min() < 0 or index.max() >= len(images):
        raise UserError(f"viz.images must be indices in 0..{len(images) - 1} of the {v.split} split")
    stored = images[index]
    x = prepare(stored)
    with evaluating(model), Capture(model, {"act": resolve(model, v.layer, "output")}, stop=True) as capture:
        with torch.no_grad():
            capture(x)
    activation = capture.outputs["act"]
    count = activation.shape[1]
    check_map_count(v.maps, count, v.layer)
    if isinstance(v.maps, int):
        # Each image's own most active maps (strongest single activation).
        strength = activation.reshape(len(x), count, -1).amax(dim=2)
        chosen = strength.topk(v.maps, dim=1).indices
    else:
        chosen = torch.as_tensor(pick_maps(list(v.maps), count, 0, v.layer)).expand(len(x), -1)
    position = OmegaConf.to_container(v.position) if OmegaConf.is_config(v.position) else v.position
    # Every chosen map of every image from one forward pass and one batched backward.
    projected, values, _ = project_with_values(model, x, v.layer, chosen.to(device), position, norm=v.norm)
    projection = projected.cpu().numpy()  # (images, maps, C, H, W)
    shown = as_image_channels(projection, stored.shape[1])
    label_rows = [
        [f"{v.layer} #{int(c)} ({float(a):.2g})" for c, a in zip(maps, value, strict=True)]
        for maps, value in zip(chosen, values, strict=True)
    ]
    stem = v.stem or f"deconv_{v.layer}"
    out = Outputs(cfg)
    folder = out.folder
    fig = projections_figure(stored.numpy(), shown, label_rows, title=f"deconvnet projections, {v.layer} ({v.norm})")
    out.figure(fig, f"{stem}.png")
    out.arrays(f"{stem}.npz", images=index, maps=chosen, projection=projection)
    out.provenance([opened.source], wall_time_s=time.perf_counter() - start)
    print(f"wrote {folder / stem}.png and .npz")
    return {"layer": v.layer, "images": index.tolist(), "maps": chosen.tolist(), "out": str(folder / f"{stem}.png")}
