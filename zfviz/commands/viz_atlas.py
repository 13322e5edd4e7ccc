"""``zfviz viz atlas``: the unit atlas (issue 26), every unit of the chosen layers from one pass, as data and pages.

The net is ours (``checkpoint=``, searched over a split, with its class names for the per-class means)
or any ``net=`` of ``zfviz viz attribution`` (searched over the files of ``images=``; no labels, so no
class means). ``zfviz.atlas.collect`` makes the one pass; ``zfviz.atlas.export`` writes ``atlas.json``
and ``thumbs/<layer>/<unit>.jpg`` (each live unit's strongest crop), ``zfviz.atlas.pages`` the static
``index.html`` and a page per layer that show them: all in the folder ``atlas/`` of the run folder, with
``atlas.meta.json`` beside it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from zfviz.atlas.collect import collect, field_boxes, next_units, weighted_layers
from zfviz.atlas.export import LayerAtlas, write_atlas, write_thumbnails
from zfviz.atlas.pages import write_pages
from zfviz.commands.shared import Outputs, map_count, open_viz, split_images
from zfviz.errors import UserError
from zfviz.utils import as_list
from zfviz.validate import check_input_size, whole
from zfviz.viz.receptive_field import receptive_field
from zfviz.viz.top9 import ordered_batches


def check_counts(v: DictConfig) -> None:
    """``top_k``, ``next_units`` and ``thumbnail`` are whole numbers (1 or more), ``units`` null, a whole
    number or a list of unit indices: one line before any net is read."""
    for key in ("top_k", "next_units", "thumbnail"):
        if not whole(1)(v[key]):
            raise UserError(f"viz.{key}={v[key]} is not valid: give a whole number, 1 or more")
    units = OmegaConf.to_container(v.units) if OmegaConf.is_config(v.units) else v.units
    if not (
        units is None or whole(1)(units) or (isinstance(units, list) and units and all(whole(0)(u) for u in units))
    ):
        raise UserError(f"viz.units={units} is not valid: give null (every unit), a number N (the first N) or a list")


def chosen_units(units, count: int, layer: str) -> list[int]:
    """The units of ``layer`` (``count`` of them) that ``viz.units`` names."""
    if units is None:
        return list(range(count))
    if isinstance(units, int):
        return list(range(min(units, count)))
    chosen = list(units)
    if max(chosen) >= count:
        raise UserError(f"viz.units: {layer} has {count} units (0..{count - 1}); {max(chosen)} is not one of them")
    return chosen


def labels_of(data, split: str, count: int) -> tuple[torch.Tensor | None, list[str]]:
    """The first ``count`` labels of ``split`` and the class names; none where the images carry no labels
    (a ``net=`` run's files)."""
    labels = getattr(data, split).labels[:count]
    if len(labels) == 0 or bool((labels < 0).all()):
        return None, []
    return labels, list(data.classes)


def write_site(out: Outputs, atlas: dict[str, LayerAtlas], stored, thumbnail: int, **about) -> Path:
    """The folder ``atlas/`` of the run folder: the thumbnails (cut from the ``stored`` images), ``atlas.json``
    (``about`` at its top) and the pages; one folder to open or copy, named by ``atlas.meta.json`` beside it."""
    site = out.folder / "atlas"
    thumbs = {name: write_thumbnails(site, name, layer, stored, thumbnail) for name, layer in atlas.items()}
    write_pages(site, write_atlas(site / "atlas.json", atlas, thumbs, **about))
    out.written.append(site)
    return site


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    check_counts(v)
    opened = open_viz(cfg)
    model = opened.model
    if opened.preprocessing is not None:  # a net of net=: size= checked before the search
        check_input_size(model, opened.preprocessing.crop, opened.name)
    split = v.split if opened.ckpt else "test"  # a net= run's files stand in for both splits
    images, prepare = split_images(opened.data, split, v.limit, opened.device)
    layers = [str(layer) for layer in as_list(v.layers)] if v.layers else weighted_layers(model)
    labels, classes = labels_of(opened.data, split, len(images))
    sample = prepare(images[:1])
    image_shape = tuple(sample.shape[1:])
    units = OmegaConf.to_container(v.units) if OmegaConf.is_config(v.units) else v.units
    # Checked on one image before the search: a unit a layer lacks, or a module the receptive field cannot
    # follow, is one line, not minutes later.
    shown = {layer: chosen_units(units, map_count(model, layer, sample), layer) for layer in layers}
    fields = {layer: receptive_field(model, layer, image_shape) for layer in layers}
    start = time.perf_counter()
    batches = ordered_batches(images, prepare, int(v.batch_size))
    stats = collect(model, batches, layers, labels, len(classes), int(v.top_k))
    search_s = time.perf_counter() - start
    atlas = {
        name: LayerAtlas(
            s,
            field_boxes(fields[name], s.top),
            next_units(model, name, s.top.maps, image_shape, int(v.next_units)),
            shown[name],
        )
        for name, s in stats.items()
    }
    out = Outputs(cfg)
    about = {"net": opened.name, "images": len(images), "split": split, "image_size": list(image_shape[1:])}
    if opened.ckpt is None:  # a net= run's images are files: the indices in atlas.json refer to this list
        about["image_files"] = opened.source["images"][: len(images)]
    site = write_site(out, atlas, images, int(v.thumbnail), **about, classes=classes, top_k=int(v.top_k))
    total_s = time.perf_counter() - start
    out.provenance([opened.source], wall_time_s=total_s)
    count = sum(s.top.maps for s in stats.values())
    print(f"searched {len(images)} images for {count} units of {len(layers)} layers in {search_s:.1f} s; "
          f"wrote {site / 'index.html'}, atlas.json and thumbs/ ({total_s:.1f} s)")  # fmt: skip
    return {"images": len(images), "layers": layers, "units": count, "out": str(site / "index.html")}
