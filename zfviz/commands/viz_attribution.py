"""``zfviz viz attribution``: one method of the visualization family (issue 13) on a few images.

The net is ours (``checkpoint=``, its images from a split or from files, read and normalized as in
its training) or any other ``net=`` (``torchvision:<name>`` with ``weights=`` a file or a weight name,
``timm:<name>``, ``<module>:<function>``: ``zfviz.models.load``), its image files resized, cropped and
normalized as that net expects (``size=``, ``mean=``, ``std=`` override). ``zfviz.attribution.attribute`` explains each
image's predicted class (or its label, a class, a unit). Writes ``<stem>.png`` (input beside map),
``<stem>.npz`` (the raw maps) and their ``.meta.json``; every mistake is found before any of them.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from zfviz.attribution import attribute
from zfviz.attribution.targets import class_named
from zfviz.commands.shared import (
    Outputs,
    attribution_options,
    check_split,
    checkpoint_source,
    file_data,
    first_n,
    net_image_paths,
    net_source,
    open_net_of,
    open_run,
    predictions,
    refuse_net_keys,
)
from zfviz.data.imagenet import PREP_SIZE
from zfviz.data.images import image_paths, read_images
from zfviz.errors import UserError
from zfviz.plotting.attribution import attribution_figure
from zfviz.plotting.deconv import as_image_channels
from zfviz.validate import check_input_size

# The keys of configs/viz/attribution.yaml this command reads itself; every other key there is a method
# option, typed bare, declared (and checked) with its method (``zfviz.attribution.registry``). ``seed=`` is
# the run's RNG seed; where a backward pass starts is ``start=`` (the deconvnet's option).
OWN_KEYS = (
    "name", "method", "target", "images", "n", "split", "net", "weights", "size", "mean", "std", "batch_size",
    "options", "stem",
)  # fmt: skip
# Non-negative, coarse heat maps (one value per cell of a layer's grid, or per patch): drawn over the image.
OVERLAID = ("gradcam", "attention_rollout", "generic_attention")


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    start = time.perf_counter()
    options = _options(v)  # before anything is read: a mistake here costs nothing
    if v.n is not None and (not isinstance(v.n, int) or isinstance(v.n, bool) or v.n < 1):
        raise UserError(f"n={v.n} is not valid: give a whole number of images, 1 or more")
    if v.net is not None:
        model, images, prepare, names, classes, source = _net_inputs(cfg)
        labels, net = None, source["net"]
    else:
        model, images, prepare, names, labels, classes, source = _our_inputs(cfg)
        net = source["train_config"]["model"]["name"]
    device = next(model.parameters()).device
    x = prepare(images).to(device)
    predicted, probability = predictions(model, x, v.batch_size)
    target = _target(v.target, predicted, labels, len(x), classes)
    options = _zbox_bounds(options, prepare, images, device)
    maps = []
    for at in range(0, len(x), v.batch_size):  # one call per batch: the methods batch over images
        rows = slice(at, at + v.batch_size)
        chunk = target if isinstance(target, tuple) else target[rows]
        maps.append(attribute(model, x[rows], chunk, v.method, **options).detach().cpu())
    maps = torch.cat(maps).numpy()
    rows = _row_labels(names, predicted, probability, classes, target)
    stem = v.stem or f"attribution_{v.method}"
    out = Outputs(cfg)
    shown = as_image_channels(maps, images.shape[1]) if maps.shape[1] == x.shape[1] else maps
    about = f"target {_target_text(v.target)}" + "".join(f", {k}={val}" for k, val in options.items() if k not in ("low", "high"))  # fmt: skip
    fig = attribution_figure(
        images.numpy(),
        shown,
        rows,
        method=v.method,
        overlay=v.method in OVERLAID,
        title=f"{v.method} on {net}: {about}",
    )
    out.figure(fig, f"{stem}.png")
    unit = isinstance(target, tuple)
    out.arrays(
        f"{stem}.npz", maps=maps, images=images.numpy(), names=np.asarray(names), predicted=predicted,
        probability=probability, target=np.full(len(x), -1) if unit else target.cpu(),
    )  # fmt: skip
    out.provenance([{**source, "images": names}], wall_time_s=time.perf_counter() - start)
    print(f"{v.method} of {len(x)} images on {net}; wrote {out.folder / stem}.png and .npz")
    return {"method": v.method, "images": names, "shape": list(maps.shape), "out": str(out.folder / f"{stem}.png")}


def _options(v: DictConfig) -> dict:
    """The method's options: the keys of the config that are set, and ``options={...}``."""
    given = {k: v.get(k) for k in v if k not in OWN_KEYS}
    extra = v.get("options") or {}
    if not OmegaConf.is_dict(extra) and not isinstance(extra, dict):
        raise UserError(f"options={extra} is not valid: give options={{name:value,...}}")
    given.update(OmegaConf.to_container(extra) if OmegaConf.is_config(extra) else extra)
    return attribution_options(v.method, given)


def _net_inputs(cfg: DictConfig):
    """(model, uint8 images, normalize, names, class names, provenance) for ``net=`` and ``images=``."""
    paths = net_image_paths(cfg, cfg.viz.n)
    model, preprocessing, info, _ = open_net_of(cfg)
    check_input_size(model, preprocessing.crop, cfg.viz.net)  # before the files are read
    data = file_data(paths, preprocessing, info)
    names = [str(p) for p in paths]
    return model, data.test.images, preprocessing.normalize, names, info["categories"], net_source(cfg, info)


def _our_inputs(cfg: DictConfig):
    """(model, uint8 images, normalize, names, labels or None, class names, provenance) for ``checkpoint=``."""
    v = cfg.viz
    refuse_net_keys(v)
    check_split(v.split)
    model, ckpt, data, _ = open_run(cfg)
    loader = getattr(data, v.split)
    if v.images is None or _indices(v.images):
        count = len(loader.images) if v.n is None else min(v.n, len(loader.images))
        index = list(range(count)) if v.images is None else [int(i) for i in v.images]
        if not index or min(index) < 0 or max(index) >= len(loader.images):
            raise UserError(f"images must be indices in 0..{len(loader.images) - 1} of the {v.split} split")
        picked = torch.as_tensor(index)
        images, labels, names = loader.images[picked], loader.labels[picked], [f"{v.split} #{i}" for i in index]
    else:
        paths = first_n(image_paths(v.images), v.n)
        size, channels = loader.images.shape[-1], loader.images.shape[1]
        imagenet = ckpt["config"]["data"]["name"] == "imagenet"
        resize = PREP_SIZE if imagenet else size  # ImageNet's viz view: the centre of the 256 square
        images, labels, names = read_images(paths, size, channels, resize), None, [str(p) for p in paths]
    return model, images, loader.normalize, names, labels, list(data.classes), checkpoint_source(cfg, ckpt)


def _indices(images) -> bool:
    values = OmegaConf.to_container(images) if OmegaConf.is_config(images) else images
    return isinstance(values, list) and bool(values) and all(isinstance(i, int) for i in values)


def _target(spec, predicted: torch.Tensor, labels, n: int, classes=None):
    """``target=`` as ``attribute`` takes it: a class per image (an index, or a name of ``classes`` in any
    case), or a (layer, channel[, "all"]) unit."""
    spec = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else spec
    if spec == "predicted":
        return predicted
    if spec == "label":
        if labels is None:
            raise UserError(
                "target=label needs images of the split (image files have no labels); give target=predicted"
            )
        return labels
    if isinstance(spec, int) and not isinstance(spec, bool):
        return torch.full((n,), spec, dtype=torch.long)
    if isinstance(spec, list) and len(spec) in (2, 3) and isinstance(spec[0], str) and isinstance(spec[1], int):
        if len(spec) == 3 and spec[2] != "all":
            raise UserError(f"target={spec}: a unit is [layer,channel] (its strongest cell) or [layer,channel,all]")
        return tuple(spec)
    if isinstance(spec, list) and len(spec) == n and all(isinstance(c, int) for c in spec):
        return torch.as_tensor(spec)
    if isinstance(spec, str):  # a class by name (target=Sandal); an unknown name is one line listing them
        return torch.full((n,), class_named(spec, classes), dtype=torch.long)
    raise UserError(
        f"target={spec} is not valid: give predicted, label, a class index, one index per image ({n}), "
        "or a unit [layer,channel] / [layer,channel,all]"
    )


def _target_text(spec) -> str:
    spec = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else spec
    return ",".join(map(str, spec)) if isinstance(spec, list) else str(spec)


def _zbox_bounds(options: dict, prepare, images: torch.Tensor, device) -> dict:
    """The z^B rule's pixel bounds, if not given: pixels 0 and 255 after the net's normalization."""
    box = options.get("first_rule") == "zbox" or str(options.get("composite", "")).endswith("_box")
    if not box or ("low" in options and "high" in options):
        return options
    shape = (1, *images.shape[1:])
    low = prepare(torch.zeros(shape, dtype=torch.uint8))[0].to(device)
    high = prepare(torch.full(shape, 255, dtype=torch.uint8))[0].to(device)
    return {"low": low, "high": high, **options}


def _row_labels(names, predicted, probability, classes, target) -> list[str]:
    def name(c: int) -> str:
        return classes[c] if classes and 0 <= c < len(classes) else f"class {c}"

    rows = []
    for i, label in enumerate(names):
        short = label.rsplit("/", 1)[-1]
        line = f"{short}\n{name(int(predicted[i]))} ({float(probability[i]):.2f})"
        if not isinstance(target, tuple) and int(target[i]) != int(predicted[i]):
            line += f"\ntarget: {name(int(target[i]))}"
        rows.append(line)
    return rows
