"""``zfviz viz atlas``: the unit atlas (issue 26), every unit of the chosen layers from one pass, as data and pages.

The net is ours (``checkpoint=``, searched over a split, with its class names for the per-class means)
or any ``net=`` of ``zfviz viz attribution`` (searched over the files of ``images=``; no labels, so no
class means). ``zfviz.atlas.collect`` makes the one pass; ``zfviz.atlas.unit_images`` the sprites (the top
patches with their deconvnet and guided backprop projections) and the maximization images (``maximize=``,
``steps=``; the generator prior with ``decoders=``); ``zfviz.atlas.concepts`` the concept labels
(``labels=`` a dissection table, or ``concepts=`` a Broden-layout folder dissected now);
``zfviz.atlas.export`` writes ``atlas.json`` and ``thumbs/<layer>/<unit>.jpg`` (each live unit's strongest
crop), ``zfviz.atlas.pages`` the static pages that show them: all in the folder ``atlas/`` of the run
folder, with ``atlas.meta.json`` beside it. Every mistake in the options is one line before the search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from zfviz.activations import Capture, evaluating, resolve
from zfviz.atlas.collect import collect, field_boxes, next_units, weighted_layers
from zfviz.atlas.concepts import Labels, dissected_labels, read_labels
from zfviz.atlas.export import LayerAtlas, write_atlas, write_thumbnails
from zfviz.atlas.pages import write_pages
from zfviz.atlas.unit_images import ROWS, Maximizing, Projecting, pixels_of, write_maximization, write_sprites
from zfviz.commands.shared import Opened, Outputs, map_count, open_viz, split_images
from zfviz.dissection.dissect import resized
from zfviz.errors import UserError
from zfviz.reconstruction.decoder import find_decoder, load_decoder
from zfviz.reconstruction.maximize import Canvas, Priors, code_start, pixel_bounds
from zfviz.reconstruction.parameterization import color_basis, data_color
from zfviz.utils import as_list
from zfviz.validate import check_input_size, whole
from zfviz.viz.receptive_field import receptive_field
from zfviz.viz.top9 import ordered_batches

MAXIMIZED = ("pixels", "fourier")  # maximize=: the generator prior comes with decoders=
PRIORS = Priors(jitter=2)  # viz maximize's defaults, for every parameterization: jitter 2 pixels, nothing else
CODE_LAYER = "fc6"  # the generator's code: viz maximize's code_layer
CODE_IMAGES = 2000  # the images whose mean code starts the generator: viz maximize's real_images
BATCH = 256  # images per pass outside the search (colour basis, code start)


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


def check_options(v: DictConfig) -> list[str]:
    """The parameterizations ``maximize=`` names (checked, with ``steps``, ``lr``, ``tile``), and one source of
    concept labels at most: one line before any net is read."""
    check_counts(v)
    params = [str(p) for p in as_list(v.maximize)] if v.maximize is not None else []
    wrong = [p for p in params if p not in MAXIMIZED]
    if wrong:
        raise UserError(f"viz.maximize: {wrong[0]!r} is not one of {', '.join(MAXIMIZED)} "
                        "(the generator prior comes with decoders=); [] for none")  # fmt: skip
    if not whole(1)(v.steps) or not whole(1)(v.tile) or not float(v.lr) > 0:
        raise UserError(f"viz.steps={v.steps}, tile={v.tile}, lr={v.lr}: give whole numbers, 1 or more, and lr > 0")
    if v.labels and v.concepts:
        raise UserError("give labels= (a dissection table) or concepts= (a Broden-layout folder), not both")
    return params


def generator_canvas(cfg: DictConfig, opened: Opened, images, prepare, image: dict) -> Canvas:
    """The generator prior's canvas: the decoder of ``CODE_LAYER`` that ``decoders=`` holds for the checkpoint,
    started from the mean code of the first ``CODE_IMAGES`` images (as viz maximize and maximize_figure.py)."""
    if opened.ckpt is None:
        raise UserError("decoders= goes with checkpoint=: a decoder is trained for a checkpoint of ours")
    folder = find_decoder(Path(str(cfg.viz.decoders)).expanduser(), cfg.checkpoint, CODE_LAYER)
    generator = load_decoder(folder, CODE_LAYER).to(opened.device)
    code, bounds = code_start(opened.model, CODE_LAYER, ordered_batches(images[:CODE_IMAGES], prepare, BATCH))
    return Canvas(param="generator", generator=generator, code=code, code_bounds=bounds, **image)


def maximizing(cfg: DictConfig, opened: Opened, split: str, images, prepare, params: list[str]) -> Maximizing | None:
    """How the units are maximized: ``params`` (``maximize=``'s) and the generator with ``decoders=``, at viz
    maximize's defaults (bounded to the pixel range, gray data kept gray); None when neither is asked."""
    v = cfg.viz
    loader = getattr(opened.data, split)
    sample = prepare(images[:BATCH])
    image = {"size": int(sample.shape[-1]), "channels": int(sample.shape[1])}
    bounds = pixel_bounds(loader.mean, loader.std)
    canvases = {
        p: Canvas(param=p, bounds=bounds, color=data_color(loader) if p == "pixels" else color_basis(sample), **image)
        for p in params
    }
    if v.decoders:
        canvases["generator"] = generator_canvas(cfg, opened, images, prepare, image)
    if not canvases:
        return None
    to_pixels = pixels_of(loader.mean, loader.std, gray=images.shape[1] == 1)
    priors = dict.fromkeys(canvases, PRIORS)
    return Maximizing(canvases, int(v.steps), float(v.lr), to_pixels, priors, int(cfg.seed))


def labels_given(cfg: DictConfig, opened: Opened) -> Labels | None:
    """The labels of ``labels=`` (a dissection table; its rows of ``labels_net=``, default the net's name),
    read before the search so a bad table is one line; None otherwise."""
    v = cfg.viz
    return read_labels(Path(str(v.labels)).expanduser(), str(v.labels_net or opened.name)) if v.labels else None


def spatial(model, layers: list[str], sample: torch.Tensor) -> list[str]:
    """The layers of ``layers`` whose output is a map (those dissection can score)."""
    paths = {layer: resolve(model, layer, "output") for layer in layers}
    with evaluating(model), Capture(model, paths, stop=True) as capture, torch.no_grad():
        capture(sample)
    return [layer for layer in layers if capture.outputs[layer].dim() == 4]


@dataclass
class Making:
    """What ``write_site`` makes per unit besides the data: the thumbnails' side, the sprites (``tile``,
    ``projecting``), the maximization images (None: none) and the concept labels (None: no source)."""

    thumbnail: int
    tile: int
    projecting: Projecting
    maximizing: Maximizing | None
    labels: Labels | None


def unit_files(site: Path, atlas: dict[str, LayerAtlas], making: Making) -> dict[str, dict[int, dict]]:
    """Per layer and written unit, its thumbnail, sprite, maximization images and concept (``UNIT_FILES``)."""
    made = {}
    stored = making.projecting.stored
    for name, layer in atlas.items():
        thumbs = write_thumbnails(site, name, layer, stored, making.thumbnail)
        sprites = write_sprites(site, name, making.projecting, layer, making.tile)
        live = [u for u in layer.units if not layer.stats.dead[u]]
        maxim = {}
        if making.maximizing is not None:
            maxim = write_maximization(site, making.projecting.model, name, live, making.maximizing)
        labels = making.labels or {}
        made[name] = {
            u: {"thumbnail": thumbs.get(u), "sprite": sprites.get(u), "maximization": maxim.get(u),
                "concept": labels.get((name, u))}
            for u in layer.units
        }  # fmt: skip
    return made


def write_site(out: Outputs, atlas: dict[str, LayerAtlas], making: Making, **about) -> Path:
    """The folder ``atlas/`` of the run folder: each unit's images (``making``), ``atlas.json`` (``about`` at its
    top) and the pages; one folder to open or copy, named by ``atlas.meta.json`` beside it."""
    site = out.folder / "atlas"
    made = unit_files(site, atlas, making)
    maxim = making.maximizing
    settings = None if maxim is None else {"params": list(maxim.canvases), "steps": maxim.steps, "lr": maxim.lr}
    about |= {"tile": making.tile, "sprite_rows": list(ROWS), "maximization": settings}
    write_pages(site, write_atlas(site / "atlas.json", atlas, made, **about))
    out.written.append(site)
    return site


def search(cfg: DictConfig, opened: Opened, images, prepare, layers: list[str]):
    """The one pass over ``images`` and, per layer, its ``LayerAtlas``; every unit and layer named is checked on
    one image first (a unit a layer lacks, a module the receptive field cannot follow: one line, not minutes
    later). Returns the atlas and the search's seconds."""
    v, model = cfg.viz, opened.model
    split = v.split if opened.ckpt else "test"
    labels, classes = labels_of(opened.data, split, len(images))
    sample = prepare(images[:1])
    image_shape = tuple(sample.shape[1:])
    units = OmegaConf.to_container(v.units) if OmegaConf.is_config(v.units) else v.units
    shown = {layer: chosen_units(units, map_count(model, layer, sample), layer) for layer in layers}
    fields = {layer: receptive_field(model, layer, image_shape) for layer in layers}
    start = time.perf_counter()
    stats = collect(model, ordered_batches(images, prepare, int(v.batch_size)), layers, labels, len(classes),
                    int(v.top_k))  # fmt: skip
    atlas = {
        name: LayerAtlas(
            s, field_boxes(fields[name], s.top), next_units(model, name, s.top.maps, image_shape, int(v.next_units)),
            shown[name],
        )
        for name, s in stats.items()
    }  # fmt: skip
    return atlas, classes, time.perf_counter() - start


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    params = check_options(v)
    opened = open_viz(cfg)
    model = opened.model
    if opened.preprocessing is not None:  # a net of net=: size= checked before the search
        check_input_size(model, opened.preprocessing.crop, opened.name)
    split = v.split if opened.ckpt else "test"  # a net= run's files stand in for both splits
    images, prepare = split_images(opened.data, split, v.limit, opened.device)
    layers = [str(layer) for layer in as_list(v.layers)] if v.layers else weighted_layers(model)
    labels = labels_given(cfg, opened)
    how = maximizing(cfg, opened, split, images, prepare, params)
    start = time.perf_counter()
    atlas, classes, search_s = search(cfg, opened, images, prepare, layers)
    if v.concepts:
        sample = prepare(images[:1])
        broden_input = resized(getattr(opened.data, split).normalize, int(sample.shape[-1]))
        labels = dissected_labels(model, str(v.concepts), spatial(model, layers, sample), broden_input)
    making = Making(int(v.thumbnail), int(v.tile), Projecting(model, images, prepare, int(v.batch_size)), how, labels)
    out = Outputs(cfg)
    size = list(prepare(images[:1]).shape[2:])
    about = {"net": opened.name, "images": len(images), "split": split, "image_size": size}
    if opened.ckpt is None:  # a net= run's images are files: the indices in atlas.json refer to this list
        about["image_files"] = opened.source["images"][: len(images)]
    concepts = str(v.labels or v.concepts) if (v.labels or v.concepts) else None
    site = write_site(out, atlas, making, **about, classes=classes, top_k=int(v.top_k), concepts=concepts)
    total_s = time.perf_counter() - start
    out.provenance([opened.source], wall_time_s=total_s)
    count = sum(layer.stats.top.maps for layer in atlas.values())
    print(f"searched {len(images)} images for {count} units of {len(layers)} layers in {search_s:.1f} s; "
          f"wrote {site / 'index.html'}, atlas.json, thumbs/, sprites/"
          f"{', maxim/' if how else ''} ({total_s:.1f} s)")  # fmt: skip
    return {"images": len(images), "layers": layers, "units": count, "out": str(site / "index.html")}
