"""``zfviz viz invariance``: Fig. 5, feature invariance to translation, scale and rotation (Section 4).

Writes ``<stem>.csv`` (one row per image, transform and amount: the feature distance at each layer
and p(true class)) with its ``.meta.json``, and ``<stem>.png`` (the paper's 3x4 grid).
"""

from __future__ import annotations

import time

import pandas as pd
import torch
from omegaconf import DictConfig

from zfviz.commands.shared import Outputs, checkpoint_source, open_run, pick_images, pixels
from zfviz.errors import UserError
from zfviz.plotting.occlusion import invariance_figure
from zfviz.viz.invariance import TRANSFORMS, invariance, sweep_values, transform

BACKGROUNDS = ("zero", "mean")


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    if v.background not in BACKGROUNDS:
        raise UserError(f"unknown viz.background {v.background!r}; choose one of: {', '.join(BACKGROUNDS)}")
    model, ckpt, data, device = open_run(cfg)
    loader, x, labels = pick_images(data, v.split, v.images, device)
    # Normalized black (Fashion-MNIST's background) or the mean pixel (0 after normalization).
    background = (-loader.mean / loader.std)[0] if v.background == "zero" else torch.zeros(1)
    background = background.to(device)
    sweeps = {kind: sweep_values(v[kind]) for kind in TRANSFORMS}
    start = time.perf_counter()
    rows = invariance(model, x, labels, sweeps, tuple(v.layers), background)
    wall = time.perf_counter() - start
    df = pd.DataFrame(rows)
    df.insert(1, "index", [int(v.images[i]) for i in df["image"]])
    df.insert(2, "label", [data.classes[int(labels[i])] for i in df["image"]])
    out = Outputs(cfg)
    folder = out.folder
    out.table(df, f"{v.stem}.csv")
    examples = {}
    for kind, amounts in sweeps.items():
        # An even spread of the sweep, applied to the first image.
        picks = [amounts[round(j * (len(amounts) - 1) / max(1, v.examples - 1))] for j in range(v.examples)]
        examples[kind] = [(a, pixels(transform(x[:1], kind, a, background), loader)[0]) for a in picks]
    names = [f"{data.classes[int(labels[i])]} ({int(v.images[i])})" for i in range(len(x))]
    title = f"Invariance ({ckpt['config']['model']['name']}, {v.background} background)"
    fig = invariance_figure(df, examples, list(v.layers), names, x.shape[-2], title=title)
    out.figure(fig, f"{v.stem}.png")
    out.provenance([checkpoint_source(cfg, ckpt)], wall_time_s=wall)
    print(f"{len(df)} transformed images in {wall:.1f} s; wrote {folder / v.stem}.csv and .png")
    return {"rows": len(df), "out": str(folder / f"{v.stem}.csv")}
