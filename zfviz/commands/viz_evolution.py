"""``zfviz viz evolution``: Fig. 4, feature evolution during training (Section 4).

For every ``checkpoint_epoch<N>.pt`` beside ``checkpoint`` (saved by ``trainer.save_epochs``), the
strongest activation of each shown map across the training set is found and projected with the
deconvnet. One figure: rows = maps (the same map indices at every epoch), columns = epochs.
Writes ``<stem>.png`` and ``<stem>.npz`` with their ``.meta.json`` (which names every epoch's checkpoint).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from zfviz.commands.shared import Outputs, checkpoint_source, map_count, open_run, pick_maps, split_images
from zfviz.errors import UserError
from zfviz.models.load import load_net
from zfviz.plotting.deconv import as_image_channels, evolution_figure
from zfviz.viz.top9 import Explainer, ordered_batches, project_top, top_activations

_EPOCH_FILE = re.compile(r"^checkpoint_epoch(\d+)\.pt$")


def epoch_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``checkpoint_epoch<N>.pt`` in ``folder``, by epoch."""
    found = []
    for path in Path(folder).iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    if not cfg.checkpoint:
        raise UserError("set checkpoint=path/to/checkpoint.pt; its folder must hold checkpoint_epoch<N>.pt files")
    folder = Path(cfg.checkpoint).parent
    saved = epoch_checkpoints(folder) if folder.is_dir() else []
    if not saved:
        raise UserError(
            f"no checkpoint_epoch<N>.pt in {folder}; train with trainer.save_epochs=[1,2,5,...] (experiment=table2)"
        )
    final, ckpt, data, device = open_run(cfg)
    images, prepare = split_images(data, v.split, v.limit, device)
    layers = list(v.layers)
    sample = prepare(images[:1])
    start = time.perf_counter()
    maps = {layer: pick_maps(v.maps, map_count(final, layer, sample), cfg.seed, layer) for layer in layers}
    epochs, per_epoch, sources = [], [], [checkpoint_source(cfg, ckpt)]
    for epoch, path in saved:
        model, _ = load_net(path, device)
        sources.append({"checkpoint": str(path), "epoch": epoch})
        tops = top_activations(model, ordered_batches(images, prepare, v.batch_size), layers, k=1)
        per_epoch.append(
            {
                layer: project_top(model, layer, tops[layer], images, prepare, maps[layer], how=Explainer(norm=v.norm))
                for layer in layers
            }
        )
        epochs.append(epoch)
        print(f"epoch {epoch}: searched {len(images)} images ({time.perf_counter() - start:.0f} s)")
    rows, labels, arrays = [], [], {"epochs": np.array(epochs)}
    for layer in layers:
        stacked = np.stack([out[layer].projection[:, 0].numpy() for out in per_epoch], axis=1)  # (M, E, C, h, w)
        shown = as_image_channels(stacked, images.shape[1])
        for m, index in enumerate(maps[layer]):
            rows.append(list(shown[m]))
            labels.append(f"{layer} #{index}")
        arrays[f"{layer}/maps"] = np.array(maps[layer])
        arrays[f"{layer}/projection"] = stacked
        for key in ("values", "image", "position"):
            arrays[f"{layer}/{key}"] = np.stack([getattr(out[layer], key)[:, 0].numpy() for out in per_epoch], axis=1)
    out = Outputs(cfg)
    target = out.folder
    title = f"Strongest activation per map over {len(images)} {v.split} images"
    fig = evolution_figure(rows, labels, epochs, title=title)
    out.figure(fig, f"{v.stem}.png")
    out.arrays(f"{v.stem}.npz", **arrays)
    out.provenance(sources, wall_time_s=time.perf_counter() - start)
    print(f"wrote {target / v.stem}.png and .npz ({time.perf_counter() - start:.1f} s)")
    return {"epochs": epochs, "maps": maps, "out": str(target / f"{v.stem}.png")}
