"""``zfviz viz top9``: Fig. 2, the top 9 activations of feature maps over a data set (Section 2.1).

One streaming pass over the split finds, for every map of every chosen layer, its 9 strongest
activations (one per image); then a subset of maps is projected and cropped to the receptive field.
``method=`` projects with another method of the family (``zfviz.attribution``) instead of the
paper's deconvnet, so Fig. 2 can be read under any rule; the default path is the paper's. The net is
ours (``checkpoint=``, searched over a split) or any ``net=`` of ``zfviz viz attribution`` (searched over
the image files of ``images=``, read as that net expects: ``zfviz.commands.shared.open_viz``).
Writes ``<stem>.png`` (one panel per layer) and ``<stem>.npz`` (the raw arrays, keys ``<layer>/...``),
with their ``.meta.json``.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig

from zfviz.commands.shared import Outputs, attribution_options, map_count, open_viz, pick_maps, split_images
from zfviz.errors import UserError
from zfviz.plotting.deconv import as_image_channels, top9_figure
from zfviz.validate import check_input_size
from zfviz.viz.top9 import Explainer, ordered_batches, project_top, top_activations


def check_maps(model, layers: list[str], maps, sample) -> None:
    """``maps`` against each layer's maps (one image's pass up to it), before the search: more maps than a
    layer has, or an index it lacks, is one line naming how many it has."""
    for layer in layers:
        pick_maps(maps, map_count(model, layer, sample), 0, layer)  # a count past the layer's or a bad index: one line


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    if not v.layers:
        raise UserError("viz.layers is empty; name at least one layer, e.g. viz.layers=[conv2,conv5]")
    options = attribution_options(v.method, v.options or {})  # checked before the search
    if v.method == "deconvnet" and options:
        options.setdefault("norm", v.norm)
    stem = v.stem or ("fig2_top9" if v.method == "deconvnet" else f"fig2_top9_{v.method}")
    opened = open_viz(cfg)
    model = opened.model
    if opened.preprocessing is not None:  # a net of net=: size= checked before the search
        check_input_size(model, opened.preprocessing.crop, opened.name)
    images, prepare = split_images(opened.data, v.split, v.limit, opened.device)
    check_maps(model, list(v.layers), v.maps, prepare(images[:1]))
    start = time.perf_counter()
    tops = top_activations(model, ordered_batches(images, prepare, v.batch_size), list(v.layers), k=v.k)
    search_s = time.perf_counter() - start
    panels, arrays = {}, {}
    for layer in v.layers:
        top = tops[layer]
        maps = pick_maps(v.maps, top.maps, cfg.seed, layer)
        how = Explainer(v.method, options, v.norm, v.batch_size)
        out = project_top(model, layer, top, images, prepare, maps, how=how)
        projection = out.projection.numpy()
        panels[layer] = {
            "projection": as_image_channels(projection, images.shape[1]),
            "patch": out.patch.numpy(),
            "maps": out.maps.numpy(),
        }
        for key in ("maps", "values", "image", "position", "corner", "projection", "patch"):
            arrays[f"{layer}/{key}"] = getattr(out, key).numpy()
        # Every map's top k, not only the shown ones: the search result itself.
        arrays[f"{layer}/all_values"], arrays[f"{layer}/all_image"] = top.values.numpy(), top.image.numpy()
        arrays[f"{layer}/all_position"] = top.position.numpy()
    out = Outputs(cfg)
    folder = out.folder
    searched = f"{v.split} images" if opened.ckpt else "image files"  # a net= run's files stand in for both splits
    title = f"Top {v.k} activations over {len(images)} {searched} ({opened.name})"
    title += "" if v.method == "deconvnet" else f", {v.method}"
    fig = top9_figure(panels, title=title)
    out.figure(fig, f"{stem}.png")
    out.arrays(f"{stem}.npz", **arrays)
    total_s = time.perf_counter() - start
    out.provenance([opened.source], wall_time_s=total_s)
    print(f"searched {len(images)} images in {search_s:.1f} s; wrote {folder / stem}.png and .npz ({total_s:.1f} s)")
    return {"images": len(images), "layers": list(v.layers), "search_s": search_s, "out": str(folder / f"{stem}.png")}
