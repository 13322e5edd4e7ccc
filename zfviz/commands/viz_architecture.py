"""``zfviz viz architecture``: Fig. 6 (Section 4.1), AlexNet's layers 1-2 against ZFNet's, and clipping.

Panels: layer-1 filters of AlexNet and ZFNet (and of a ZFNet trained with and without filter RMS
clipping, when given), and layer-2 projections (each shown map's strongest activation over the
split). The CSV puts numbers on what the paper reads off the picture (see ``zfviz.viz.architecture``).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from zfviz.checkpoint import checkpoint_header
from zfviz.commands.shared import Outputs, pick_maps, split_images
from zfviz.data.trained import load_data
from zfviz.errors import UserError
from zfviz.models.load import load_net
from zfviz.plotting.deconv import architecture_from_arrays, as_image_channels
from zfviz.utils import resolve_device
from zfviz.viz.architecture import alias_energy, dead_fraction, high_frequency_energy, rms_dominance
from zfviz.viz.top9 import Explainer, ordered_batches, project_top, top_activations

# What Fig. 6 shows by eye, beside our numbers for the same nets.
PAPER = {
    "alexnet": "(b) mix of very high and low frequencies, dead filters; (d) aliasing from stride 4",
    "zfnet": "(c) 7x7 stride 2: fewer dead filters, more mid frequencies; (e) cleaner, no aliasing",
    "zfnet, no clipping": "(a) without feature scale clipping one filter dominates",
    "zfnet, clipping": "trained with clipping (the paper's recipe)",
}


def check_nets(nets: dict[str, tuple]) -> None:
    """Every checkpoint holds the net its key says, read from the configs alone, before any work:
    swapped ``checkpoint=`` and ``viz.alexnet=`` would give a mislabelled figure and table."""
    for label, (path, what) in nets.items():
        if not path:
            raise UserError(f"set {what}=path/to/checkpoint.pt (a 'zfviz train' checkpoint)")
        found = checkpoint_header(path)["config"]["model"]["name"]
        wanted = "alexnet" if label == "alexnet" else "zfnet"
        if found.split("_")[0] != wanted:  # zfnet_b (Table 3's variant) is a ZFNet too
            raise UserError(
                f"{what}={path} holds a {found}, but {what} takes a {wanted} checkpoint "
                "(viz.alexnet: the AlexNet; checkpoint, viz.clipped, viz.unclipped: ZFNets)"
            )


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    if not v.alexnet:
        raise UserError("set viz.alexnet=path/to/checkpoint.pt (an AlexNet 'zfviz train' checkpoint) to compare")
    if bool(v.clipped) != bool(v.unclipped):
        raise UserError(
            "give both viz.clipped and viz.unclipped (ZFNets trained with and without clip_rms), or neither"
        )
    device = resolve_device(cfg.device)
    # label -> (checkpoint path, the key that set it, for error messages)
    nets = {"alexnet": (v.alexnet, "viz.alexnet"), "zfnet": (cfg.checkpoint, "checkpoint")}
    if v.clipped:
        nets |= {"zfnet, no clipping": (v.unclipped, "viz.unclipped"), "zfnet, clipping": (v.clipped, "viz.clipped")}
    check_nets(nets)
    start = time.perf_counter()
    datasets: dict[str, tuple] = {}
    rows, arrays, sources = [], {}, []
    for label, (path, what) in nets.items():
        model, ckpt = load_net(path, device, what)
        config = ckpt["config"]
        key = json.dumps([config["data"], config["model"]["input_size"]], sort_keys=True, default=str)
        if key not in datasets:
            datasets[key] = split_images(load_data(ckpt, path, root=cfg.data.get("root")), v.split, v.limit, device)
        images, prepare = datasets[key]
        conv1 = model.get_submodule("conv1")
        weight = conv1.weight.detach().cpu()
        if images.shape[1] == 1:
            weight = weight.sum(dim=1, keepdim=True)  # gray data: the filter the image actually meets
        row = {
            "net": label,
            "model": config["model"]["name"],
            "conv1": f"{conv1.kernel_size[0]}x{conv1.kernel_size[1]} stride {conv1.stride[0]}",
            "clip_rms": config["trainer"].get("clip_rms"),
            "epochs": ckpt["epoch"],
            "l1_filters": weight.shape[0],
            "l1_rms_dominance": rms_dominance(weight),
            "l1_alias_energy": float(alias_energy(weight, conv1.stride[0]).mean()),
        }
        compare = label in ("alexnet", "zfnet")  # layer 2 and dead filters: the AlexNet-vs-ZFNet panels
        layers = ["relu1", v.layer2] if compare else ["relu1"]
        tops = top_activations(model, ordered_batches(images, prepare, v.batch_size), layers, k=1)
        row["l1_dead_frac"] = dead_fraction(tops["relu1"].values[:, 0])
        if compare:
            how = Explainer(norm=v.norm, batch_size=v.batch_size)
            out = project_top(model, v.layer2, tops[v.layer2], images, prepare, how=how)
            proj = as_image_channels(out.projection[:, 0].numpy(), images.shape[1])
            patch = out.patch[:, 0].float()
            alive = out.values[:, 0] > 0  # a map that never fires projects nothing
            row["l2_maps_alive"] = int(alive.sum())
            row["l2_proj_hf_energy"] = float(high_frequency_energy(proj[alive.numpy()], v.cutoff).mean())
            row["l2_patch_hf_energy"] = float(high_frequency_energy(patch[alive], v.cutoff).mean())
            shown = pick_maps(v.maps, out.maps.numel(), cfg.seed, label)
            arrays[f"{label}/l2_projection"] = proj
            arrays[f"{label}/l2_values"] = out.values[:, 0].numpy()
            arrays[f"{label}/l2_shown"] = np.array(shown)
        arrays[f"{label}/l1_filters"] = weight.numpy()
        arrays[f"{label}/l1_max_activation"] = tops["relu1"].values[:, 0].numpy()
        row["val_top1_err"] = ckpt.get("metrics", {}).get("val_top1_err")
        row["paper_fig6"] = PAPER[label]
        row["checkpoint"] = str(path)
        rows.append(row)
        sources.append({"net": label, "checkpoint": str(path), "epoch": ckpt["epoch"], "config": config})
    df = pd.DataFrame(rows)
    out = Outputs(cfg)
    target = out.folder
    elapsed = time.perf_counter() - start
    out.table(df, f"{v.stem}.csv")
    fig = architecture_from_arrays(arrays)  # the figure from what the .npz keeps: redrawable from it alone
    out.figure(fig, f"{v.stem}.png")
    out.arrays(f"{v.stem}.npz", **arrays)
    out.provenance(sources, wall_time_s=elapsed)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.drop(columns=["checkpoint", "paper_fig6"]).to_string(index=False))
    print(f"wrote {target / v.stem}.csv, .png and .npz ({elapsed:.1f} s)")
    return {"rows": rows, "out": str(target / f"{v.stem}.csv")}
