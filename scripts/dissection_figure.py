"""Write results/dissection_<preset>.csv and results/fig_dissection_<preset>.png: network dissection of our nets.

Every unit of conv1-conv5 of each net is scored against the concept set (Bau et al. 2017;
``zfviz.dissection.dissect``), for ZFNet, the AlexNet replication and the Table 3 variants (the
``zfviz ablate`` run's ``variants.json`` names their cached runs): does removing layers change how
many detectors the remaining layers learn? A variant without some conv layer is dissected on the
ones it has; its net name is ``t3:<variant>`` (``t3:zfnet`` is not the Table 2 ``zfnet``: a shorter
schedule). The CSV has one row per net and unit (net, layer, unit, concept, category, iou,
threshold, detector). The figure: (top) a nets x layers grid of detector counts, split by category per
net; (bottom) the first net's strongest detectors, each with its ``--images`` strongest images and
the thresholded map (A_k > T_k, upsampled as dissection does) outlined in cyan on a black halo. The concept images and masks
are decoded once for all nets (``zfviz.dissection.batches.Batches``), and each net's maps are kept in
memory for its dissection, so a net costs one forward pass plus the quantile and IoU work.

usage: python scripts/dissection_figure.py --preset cpu --out results --concepts data/concepts
       [--ablate runs/ablate/table3_cpu] RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import patheffects

from zfviz.ablation import read_manifests
from zfviz.data.tensor_loader import TensorLoader
from zfviz.data.trained import load_data
from zfviz.dissection import Broden, detector_counts, dissect
from zfviz.dissection.batches import Batches
from zfviz.dissection.dissect import resized, strongest_images, unit_maps
from zfviz.models.load import load_net
from zfviz.outputs import DISSECTION, FIG_DISSECTION, named
from zfviz.plotting import plt
from zfviz.plotting.dissection import LAYERS, count_panel
from zfviz.results import load_run, run_source, runs_parser, save_figure, write_table
from zfviz.script_main import script_main


def normalizer(ckpt: dict, path: Path, known: dict[str, Callable]) -> Callable:
    """The normalization the checkpoint's net was trained with (its training set's statistics).

    Finding them builds the training set (5-8 s for Fashion-MNIST at 64 px), so they are built once
    per data config in ``known`` (the 18 nets share two: Table 2's and Table 3's 10,000 images), and a
    loader held in memory is kept without its images (70,000 of them, 290 MB)."""
    config = ckpt["config"]
    key = json.dumps([config["data"], config["model"]["input_size"], config["model"].get("in_chans")], default=str)
    if key not in known:
        test = load_data(ckpt, path).test
        if isinstance(test, TensorLoader):
            test = copy.copy(test)
            test.images, test.labels = test.images[:0], test.labels[:0]
        known[key] = test.normalize
    return known[key]


def dissect_run(name: str, run_dir: Path, batches: Batches, normalizers: dict[str, Callable]):
    """(the net's table with a ``net`` column, model, prepare, provenance) for one finished training run;
    ``batches``: the concept set, decoded once for every net; ``normalizers``: see ``normalizer``."""
    summary, _ = load_run(run_dir)
    path = run_dir / "checkpoint.pt"
    model, ckpt = load_net(path, torch.device("cpu"))
    prepare = resized(normalizer(ckpt, path, normalizers), int(ckpt["config"]["model"]["input_size"]))
    names = dict(model.named_modules())
    layers = [layer for layer in LAYERS if layer in names]
    start = time.perf_counter()
    df = dissect(model, batches, layers, prepare=prepare)
    print(f"{name}: {len(layers)} layers dissected in {time.perf_counter() - start:.1f} s", flush=True)
    source = run_source(summary, net=name, checkpoint=str(path), epoch=ckpt.get("epoch"))
    return df.assign(net=name), model, prepare, source


def top_units(df: pd.DataFrame, count: int) -> pd.DataFrame:
    """The ``count`` best detectors, at most two per layer so several layers show."""
    best = df[df["detector"]].sort_values("iou", ascending=False)
    shown = best.groupby("layer", sort=False).head(2).head(count)
    shown.attrs["net"] = str(df["net"].iloc[0]) if "net" in df and len(df) else ""
    return shown


def unit_rows(sub, shown: pd.DataFrame, model, prepare, batches: Batches, broden: Broden, count: int) -> None:
    """On ``sub``: a row per shown unit, its ``count`` strongest concept images, each with the region where
    the unit's map exceeds its threshold outlined (cyan on a black halo: visible on any background)."""
    size = broden.mask_size()
    strongest = {  # one pass per layer shown finds every unit's strongest images
        layer: strongest_images(model, batches, layer, k=count, prepare=prepare)[1] for layer in shown["layer"].unique()
    }
    axes = np.asarray(sub.subplots(len(shown), count, squeeze=False))
    halo = [patheffects.withStroke(linewidth=3.2, foreground="black")]
    for row, unit in enumerate(shown.itertuples()):
        picked = strongest[unit.layer][unit.unit].tolist()
        images = torch.stack([broden[i].image for i in picked])
        maps = unit_maps(model, images, unit.layer, size, prepare)[:, unit.unit]
        for ax, image, amap in zip(axes[row], images, maps, strict=True):
            ax.imshow(image.permute(1, 2, 0).numpy(), extent=(0, size[1], size[0], 0))
            lines = ax.contour(np.asarray(amap > unit.threshold, dtype=float), levels=[0.5], colors="cyan",
                               linewidths=1.4)  # fmt: skip
            lines.set_path_effects(halo)
            ax.set_axis_off()
        axes[row, 0].set_title(f"{shown.attrs.get('net', '')} {unit.layer} unit {unit.unit}: {unit.concept} "
                               f"({unit.category}), IoU {unit.iou:.2f}", fontsize=8, loc="left")  # fmt: skip
    sub.suptitle(f"the strongest detectors' {count} strongest images; outlined: where the unit's map exceeds its "
                 "threshold T_k (upsampled as dissection does)", fontsize=9)  # fmt: skip


@script_main
def main() -> int:
    parser = runs_parser(__doc__)
    parser.add_argument("--concepts", required=True, help="the Broden-layout concept folder")
    parser.add_argument(
        "--ablate", action="append", default=[], help="a zfviz ablate run folder (variants.json); repeat for several"
    )
    parser.add_argument("--units", type=int, default=6, help="detectors shown with their strongest images")
    parser.add_argument("--images", type=int, default=4, help="strongest images per shown detector")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    start = time.perf_counter()
    broden = Broden(args.concepts)
    nets = [(load_run(run)[0]["model"], Path(run)) for run in args.runs]
    nets += (
        [(f"t3:{entry['variant']}", Path(entry["cache_dir"])) for entry in read_manifests(args.ablate)]
        if args.ablate
        else []
    )
    batches = Batches(broden, args.batch_size)  # the images and masks, decoded once for all nets
    normalizers: dict[str, Callable] = {}
    results = [dissect_run(name, run, batches, normalizers) for name, run in nets]
    df = pd.concat([r[0] for r in results], ignore_index=True)
    df = df[["net", *[c for c in df.columns if c != "net"]]]
    sources = [r[3] for r in results]
    out = Path(args.out)
    wall = round(time.perf_counter() - start, 2)
    table, figure = named(DISSECTION, args.preset), named(FIG_DISSECTION, args.preset)
    write_table(df, out / table, sources=sources, wall_time_s=wall)
    counts = {name: detector_counts(r[0], broden.categories) for (name, _), r in zip(nets, results, strict=True)}
    shown = top_units(results[0][0], args.units)
    top = max(1.4, 0.3 * len(counts) + 0.9)
    fig = plt.figure(figsize=(10, 0.8 + top + 1.9 * len(shown)), layout="constrained")
    upper, lower = fig.subfigures(2, 1, height_ratios=[top, 0.1 + 1.9 * len(shown)])
    count_panel(upper.subplots(), counts, broden.categories)
    if len(shown):
        _, model, prepare, _ = results[0]
        unit_rows(lower, shown, model, prepare, batches, broden, args.images)
    fig.suptitle(f"Network dissection on the concept set ({len(broden)} images), {args.preset} preset")
    save_figure(fig, out / figure, sources=sources, table=table,
                wall_time_s=round(time.perf_counter() - start, 2), concepts=str(broden.root))  # fmt: skip
    plt.close(fig)
    with pd.option_context("display.width", 200):
        print(pd.concat(counts, names=["net", "layer"]).assign(total=lambda t: t.sum(axis=1)).to_string())
    print(f"wrote {out}/{table} and {figure} ({len(nets)} nets, {wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
