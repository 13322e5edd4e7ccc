"""``zfviz viz correspondence``: Table 1 and Fig. 8, part correspondence (Section 4.3).

Writes ``<stem>.csv`` (Table 1's shape: mean and std of the sign-change score per occluded part and
layer over the draws, the paper's values beside, row by row) with its ``.meta.json``, and
``<figure>.png`` (the first draw's images, occluded part by part).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from zfviz.commands.shared import Outputs, check_split, checkpoint_source, fill_for, open_run, pixels
from zfviz.errors import UserError
from zfviz.plotting.occlusion import correspondence_figure
from zfviz.results import paper_table
from zfviz.viz.correspondence import RANDOM, Draws, aligned_pool, correspondence, occlude_boxes, random_boxes

PAPER_LAYERS = {"conv5": "layer5", "fc7": "layer7"}


def table1(rows: list[dict], layers: list[str]) -> pd.DataFrame:
    """Mean and std over draws per part and layer, shaped like Table 1, with the paper's rows beside ours."""
    df = pd.DataFrame(rows)
    stats = df.groupby(["part", "layer"], sort=False)["score"].agg(["mean", "std"]).reset_index()
    parts = list(dict.fromkeys(df["part"]))
    parts = [p for p in parts if p != RANDOM] + [RANDOM]
    out = pd.DataFrame({"occluded_part": parts})
    for layer in layers:
        name = PAPER_LAYERS.get(layer, layer)
        part_stats = stats[stats["layer"] == layer].set_index("part")
        out[f"{name}_mean"] = [part_stats.loc[p, "mean"] for p in parts]
        out[f"{name}_std"] = [part_stats.loc[p, "std"] for p in parts]
    out["draws"] = int(df["draw"].nunique())
    # The paper's parts (eyes, nose of dogs) sit beside ours in order; random beside random.
    paper = paper_table("table1_correspondence")
    paper_parts = paper[paper["occluded_part"] != "random"].reset_index(drop=True)
    ordered = [paper_parts.iloc[i] if i < len(paper_parts) else None for i in range(len(parts) - 1)]
    ordered.append(paper[paper["occluded_part"] == "random"].iloc[0])
    out["paper_part"] = [row["occluded_part"] if row is not None else None for row in ordered]
    for column in ("layer5_mean", "layer5_std", "layer7_mean", "layer7_std"):
        out[f"paper_{column}"] = [row[column] if row is not None else np.nan for row in ordered]
    return out


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    check_split(v.split)
    model, ckpt, data, device = open_run(cfg)
    loader = getattr(data, v.split)
    if not 0 <= v.class_index < data.num_classes:
        raise UserError(f"viz.class_index must be in 0..{data.num_classes - 1} ({', '.join(data.classes)})")
    index = aligned_pool(loader.images, loader.labels, v.class_index, v.pool)
    images = loader.normalize(loader.images[index]).to(device)
    fill = fill_for(v.fill, loader, tuple(images.shape[1:]), cfg.seed).to(device)
    parts = {name: list(box) for name, box in OmegaConf.to_container(v.parts).items()}
    layers = list(v.layers)
    random_size = tuple(v.random_size) if v.random_size else None
    start = time.perf_counter()
    draws = Draws(k=v.k, count=v.draws, random_size=random_size, seed=cfg.seed)
    rows = correspondence(model, images, parts, fill, draws, layers=tuple(layers))
    wall = time.perf_counter() - start
    table = table1(rows, layers)
    out = Outputs(cfg)
    folder = out.folder
    out.table(table, f"{v.stem}.csv")
    out.table(pd.DataFrame(rows), f"{v.stem}_draws.csv")
    fig = _figure(images, parts, fill, loader, v, cfg.seed, data.classes[v.class_index])
    out.figure(fig, f"{v.figure}.png")
    source = checkpoint_source(cfg, ckpt, **{"class": data.classes[v.class_index], "pool_images": index.tolist()})
    out.provenance([source], wall_time_s=wall)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(table.to_string(index=False))
    print(f"wrote {folder / v.stem}.csv and {folder / v.figure}.png ({wall:.1f} s)")
    return {"table": table.to_dict(orient="records"), "out": str(folder / f"{v.stem}.csv")}


def _figure(images, parts, fill, loader, v, seed, class_name):
    """Fig. 8: the first draw's k images (as ``correspondence`` draws them) with each part occluded."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(images), generator=generator)[: v.k]
    shown = images[chosen.to(images.device)]
    occluded = {}
    for name, box in parts.items():
        occluded[name] = pixels(occlude_boxes(shown, torch.tensor(box).expand(len(shown), 4).to(shown.device), fill), loader)  # fmt: skip
    size = tuple(images.shape[-2:])
    random_size = tuple(v.random_size) if v.random_size else tuple(next(iter(parts.values()))[2:])
    boxes = random_boxes(len(shown), size, random_size, generator).to(shown.device)
    occluded[RANDOM] = pixels(occlude_boxes(shown, boxes, fill), loader)
    return correspondence_figure(pixels(shown, loader), occluded, title=f"Occluded parts, {v.k} {class_name} images")
