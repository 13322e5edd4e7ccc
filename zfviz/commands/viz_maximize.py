"""``zfviz viz maximize``: activation maximization of a trained net's classes or units (issue 14).

Targets: ``classes=[...]`` (class logits, the unnormalized scores Simonyan et al. 2014 maximize; by index or
by name, ``classes=[Sandal,Bag]``), or
``layer`` + ``channels`` (+ ``position``: one cell [row, col], or ``mean``: the whole map's mean;
``null``, its old spelling, is still read as ``mean``). ``layer=fc8`` is the logits too, since fc8's
output is the net's. All targets are optimized in one batch (``zfviz.reconstruction.maximize``). Each target's strongest activation over the first
``real_images`` images of ``split`` is the yardstick: the CSV gives ``activation``, ``strongest_real``
and ``ratio`` = activation / strongest_real. Gray data (Fashion-MNIST repeated to 3 channels) give
gray images: ``gray=true`` ties the pixels' channels (``data_color``); the Fourier color basis of
gray data has one axis anyway. Writes ``<stem>.png``, ``<stem>.csv``, ``<stem>.npz`` and
their ``.meta.json``; every mistake is found before anything is optimized or written. The net is ours
(``checkpoint=``) or any ``net=`` of ``zfviz viz attribution``, whose real images are the files of ``images=``
(``zfviz.commands.shared.open_viz``).
"""

from __future__ import annotations

import time

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from zfviz.attribution.targets import class_named
from zfviz.commands.shared import Outputs, open_viz, pixels, split_images
from zfviz.errors import UserError
from zfviz.plotting.maximize import maximize_grid, ratio_caption
from zfviz.reconstruction.maximize import (
    MEAN,
    PARAMS,
    Canvas,
    Priors,
    Target,
    check_targets,
    code_start,
    maximize,
    pixel_bounds,
    ratio,
    strongest_real,
)
from zfviz.reconstruction.parameterization import color_basis, data_color
from zfviz.viz.top9 import ordered_batches

PRIOR_KEYS = ("l2", "lp", "p", "tv", "beta", "jitter", "scale", "rotate", "decay", "blur", "blur_every", "clip_norm",
              "clip_contribution")  # fmt: skip
BATCH = 256


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _whole(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{what}={value} is not valid: give a whole number, 0 or more")
    return value


def _class(value, names) -> int:
    """A class of ``classes=``: an index, or a name of ``names`` (the net's classes; None: not known yet, 0)."""
    if not isinstance(value, str):
        return _whole(value, "classes")
    return 0 if names is None else class_named(value, names, "classes")


def targets_of(v: DictConfig, names=None) -> list[Target]:
    """The targets the config names: ``classes`` (logits; a name is looked up in ``names``, the net's class
    names), else ``layer``'s ``channels`` at ``position``."""
    classes, channels, position = _plain(v.classes), _plain(v.channels), _plain(v.position)
    if classes is not None:
        classes = classes if isinstance(classes, list) else [classes]
        return [Target(None, _class(c, names)) for c in classes]
    if not v.layer:
        raise UserError("name the units' layer (layer=conv5) or give classes=[0,1,...]")
    channels = channels if isinstance(channels, list) else [channels]
    if position is None or position == MEAN:  # null: the old spelling of mean, still read
        return [Target(str(v.layer), _whole(c, "channels"), MEAN) for c in channels]
    if not isinstance(position, list) or len(position) != 2:
        raise UserError(f"position={position} is not valid: give [row, col], or mean for the whole map")
    where = (_whole(position[0], "position"), _whole(position[1], "position"))
    return [Target(str(v.layer), _whole(c, "channels"), where) for c in channels]


def _checked(v: DictConfig) -> tuple[list[Target], Priors]:
    targets = targets_of(v)
    if not targets:
        raise UserError("no targets: give channels=[0,1,...] or classes=[0,1,...]")
    if v.param not in PARAMS:
        raise UserError(f"unknown param {v.param!r}; choose one of: {', '.join(PARAMS)}")
    if v.param == "generator" and not v.decoder:
        raise UserError("param=generator needs decoder=<the run folder of a decoder of code_layer>")
    if not isinstance(v.steps, int) or v.steps < 1 or not float(v.lr) > 0:
        raise UserError(f"steps={v.steps}, lr={v.lr}: give steps >= 1 (a whole number) and lr > 0")
    if _whole(v.real_images, "real_images") < 1:
        raise UserError("real_images=0: give how many real images to compare with, 1 or more")
    return targets, Priors.from_dict({k: _plain(v[k]) for k in PRIOR_KEYS})


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    _, priors = _checked(v)
    opened = open_viz(cfg)
    targets = targets_of(v, opened.data.classes)  # class names read now, with the net's
    model, device = opened.model, opened.device
    images, prepare = split_images(opened.data, v.split, v.real_images, device)
    loader = getattr(opened.data, v.split)
    sample = prepare(images[:1])  # the model's input: gray data come repeated to its channels
    size, channels = int(sample.shape[-1]), int(sample.shape[1])
    check_targets(model, targets, sample)  # a wrong unit is one line before any ascent
    generator, code, code_bounds = None, None, None
    if v.param == "generator":
        from zfviz.reconstruction.decoder import load_decoder  # only the generator prior needs a decoder

        generator = load_decoder(v.decoder, v.code_layer).to(device)
        code, code_bounds = code_start(model, v.code_layer, ordered_batches(images, prepare, BATCH))
    if v.param == "fourier":
        color = color_basis(prepare(images[:BATCH]))  # gray data: one axis, (1, 1, 1)
    else:
        color = data_color(loader) if v.param == "pixels" and v.gray else None
    start = time.perf_counter()
    canvas = Canvas(
        param=v.param, size=size, channels=channels, init=v.init, init_std=float(v.init_std),
        mean_images=prepare(images[:BATCH]) if v.init == "mean" else None,
        bounds=pixel_bounds(loader.mean, loader.std) if v.bounded else None,
        color=color, generator=generator, code=code, code_bounds=code_bounds,
    )  # fmt: skip
    result = maximize(model, targets, steps=v.steps, lr=float(v.lr), priors=priors, seed=int(cfg.seed), canvas=canvas)
    wall = time.perf_counter() - start
    real, where = strongest_real(model, targets, ordered_batches(images, prepare, BATCH))
    table = pd.DataFrame({
        "target": [t.label() for t in targets],
        "activation": result.activation.cpu().numpy(),
        "strongest_real": real.cpu().numpy(),
        "ratio": ratio(result.activation, real).cpu().numpy(),
        "real_image": where.cpu().numpy(),
    })  # fmt: skip
    out = Outputs(cfg)
    shown = pixels(result.images, loader)
    ratios = [ratio_caption(a, r) for a, r in zip(table["activation"], table["strongest_real"], strict=True)]
    captions = [f"{t.label()}\n{r}{' real' if r.endswith('x') else ''}" for t, r in zip(targets, ratios, strict=True)]
    tiles = [(image, t.layer or "output", caption) for image, t, caption in zip(shown, targets, captions, strict=True)]
    out.figure(maximize_grid({f"{opened.name}, {v.param}": tiles}, title=f"Activation maximization, {v.steps} steps"),
               f"{v.stem}.png")  # fmt: skip
    out.table(table, f"{v.stem}.csv")
    out.arrays(f"{v.stem}.npz", images=result.images.cpu(), objective=result.objective.cpu())
    color_list = None if color is None else color.tolist()
    out.provenance([{**opened.source, "decoder": v.decoder, "color": color_list}], wall_time_s=wall)
    print(table.to_string(index=False))
    print(f"{len(targets)} targets, {v.steps} steps in {wall:.1f} s; wrote {out.folder / v.stem}.png, .csv, .npz")
    return {"targets": [t.label() for t in targets], "ratio": table["ratio"].tolist(), "wall_s": wall,
            "out": str(out.folder / f"{v.stem}.csv")}  # fmt: skip
