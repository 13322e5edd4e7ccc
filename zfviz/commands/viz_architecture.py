"""``zfviz viz architecture``: Fig. 6 (Section 4.1), AlexNet's layers 1-2 against ZFNet's, and clipping.

Panels: layer-1 filters of AlexNet and ZFNet (and of a ZFNet trained with and without filter RMS
clipping, when given), and layer-2 projections (each shown map's strongest activation over the
split). The CSV puts numbers on what the paper reads off the picture (see ``zfviz.viz.architecture``),
with each net's ``seed`` and whether its training ``diverged`` (then its numbers are not evidence).
``viz.clipped``/``viz.unclipped`` may list one checkpoint per seed: one row per net, the label repeated.
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
from zfviz.viz.architecture import (
    alias_energy,
    dead_fraction,
    diverged,
    filter_rms,
    high_frequency_energy,
    rms_dominance,
)
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
    swapped ``checkpoint=`` and ``viz.alexnet=`` (or clipped and unclipped) would give a mislabelled figure
    and table."""
    for label, (path, what, kind) in nets.items():
        if not path:
            raise UserError(f"set {what}=path/to/checkpoint.pt (a 'zfviz train' checkpoint)")
        config = checkpoint_header(path)["config"]
        clip = config["trainer"].get("clip_rms")
        if kind.startswith("zfnet, ") and (clip is None) != (kind == "zfnet, no clipping"):
            raise UserError(f"{what}={path} was trained with trainer.clip_rms={clip}: viz.clipped takes nets trained "
                            "with clipping, viz.unclipped nets trained without")  # fmt: skip
        found = config["model"]["name"]
        wanted = "alexnet" if label == "alexnet" else "zfnet"
        if found.split("_")[0] != wanted:  # zfnet_b (Table 3's variant) is a ZFNet too
            raise UserError(
                f"{what}={path} holds a {found}, but {what} takes a {wanted} checkpoint "
                "(viz.alexnet: the AlexNet; checkpoint, viz.clipped, viz.unclipped: ZFNets)"
            )


def as_paths(value) -> list[str]:
    """``viz.clipped``/``viz.unclipped``: one checkpoint or a list of them (one per seed)."""
    if not value:
        return []
    return [str(value)] if isinstance(value, str) else [str(p) for p in value]


def nets_to_compare(cfg: DictConfig) -> dict[str, tuple[str, str, str]]:
    """key -> (checkpoint, the setting that named it, the net's label in the table): AlexNet, ZFNet, then each
    seed's ZFNet trained without and with clipping (keys get ``, run <i>`` when a list gives several)."""
    v = cfg.viz
    if not v.alexnet:
        raise UserError("set viz.alexnet=path/to/checkpoint.pt (an AlexNet 'zfviz train' checkpoint) to compare")
    clipped, unclipped = as_paths(v.clipped), as_paths(v.unclipped)
    if len(clipped) != len(unclipped):
        raise UserError(
            "give viz.clipped and viz.unclipped (ZFNets trained with and without clip_rms) as many checkpoints "
            f"each, one per seed, or neither; got {len(clipped)} and {len(unclipped)}"
        )
    nets = {"alexnet": (v.alexnet, "viz.alexnet", "alexnet"), "zfnet": (cfg.checkpoint, "checkpoint", "zfnet")}
    for i, (off, on) in enumerate(zip(unclipped, clipped, strict=True)):
        run = f", run {i}" if len(clipped) > 1 else ""
        nets[f"zfnet, no clipping{run}"] = (off, "viz.unclipped", "zfnet, no clipping")
        nets[f"zfnet, clipping{run}"] = (on, "viz.clipped", "zfnet, clipping")
    return nets


def layer1_row(label: str, model, ckpt: dict, weight, tops) -> dict:
    """The table's layer-1 numbers of one net, with whether its training broke down (``diverged``)."""
    config, conv1 = ckpt["config"], model.get_submodule("conv1")
    losses = [row.get(key) for row in ckpt.get("rows", []) for key in ("train_loss", "val_loss")]
    return {
        "net": label,
        "model": config["model"]["name"],
        "seed": config.get("seed"),
        "conv1": f"{conv1.kernel_size[0]}x{conv1.kernel_size[1]} stride {conv1.stride[0]}",
        "clip_rms": config["trainer"].get("clip_rms"),
        "epochs": ckpt["epoch"],
        "diverged": diverged(model.parameters(), losses),
        "l1_filters": weight.shape[0],
        "l1_rms_max": float(filter_rms(conv1.weight).max()),  # the quantity clip_rms bounds, on conv1 as trained
        "l1_rms_dominance": rms_dominance(weight),
        "l1_alias_energy": float(alias_energy(weight, conv1.stride[0]).mean()),
        "l1_dead_frac": dead_fraction(tops["relu1"].values[:, 0]),
    }


def layer2(model, tops, images, prepare, v, cfg, label: str) -> tuple[dict, dict]:
    """Layer 2 of a compared net: the table's numbers and the arrays its figure panel is drawn from."""
    how = Explainer(norm=v.norm, batch_size=v.batch_size)
    out = project_top(model, v.layer2, tops[v.layer2], images, prepare, how=how)
    proj = as_image_channels(out.projection[:, 0].numpy(), images.shape[1])
    patch = out.patch[:, 0].float()
    alive = out.values[:, 0] > 0  # a map that never fires projects nothing
    numbers = {
        "l2_maps_alive": int(alive.sum()),
        "l2_proj_hf_energy": float(high_frequency_energy(proj[alive.numpy()], v.cutoff).mean()),
        "l2_patch_hf_energy": float(high_frequency_energy(patch[alive], v.cutoff).mean()),
    }
    shown = pick_maps(v.maps, out.maps.numel(), cfg.seed, label)
    arrays = {"l2_projection": proj, "l2_values": out.values[:, 0].numpy(), "l2_shown": np.array(shown)}
    return numbers, arrays


def measure(key: str, net: tuple[str, str, str], cfg: DictConfig, datasets: dict, device) -> tuple[dict, dict, dict]:
    """One net's table row, its arrays (npz keys without the ``<key>/`` prefix) and its provenance;
    ``net``: (checkpoint, the setting that named it, its label in the table)."""
    v = cfg.viz
    path, what, label = net
    model, ckpt = load_net(path, device, what)
    config = ckpt["config"]
    data_key = json.dumps([config["data"], config["model"]["input_size"]], sort_keys=True, default=str)
    if data_key not in datasets:
        datasets[data_key] = split_images(load_data(ckpt, path, root=cfg.data.get("root")), v.split, v.limit, device)
    images, prepare = datasets[data_key]
    weight = model.get_submodule("conv1").weight.detach().cpu()
    if images.shape[1] == 1:
        weight = weight.sum(dim=1, keepdim=True)  # gray data: the filter the image actually meets
    compare = key in ("alexnet", "zfnet")  # layer 2: the AlexNet-vs-ZFNet panels
    layers = ["relu1", v.layer2] if compare else ["relu1"]
    tops = top_activations(model, ordered_batches(images, prepare, v.batch_size), layers, k=1)
    row = layer1_row(label, model, ckpt, weight, tops)
    arrays = {"l1_filters": weight.numpy(), "l1_max_activation": tops["relu1"].values[:, 0].numpy()}
    if compare:
        numbers, more = layer2(model, tops, images, prepare, v, cfg, key)
        row, arrays = row | numbers, arrays | more
    classes = model.get_submodule("fc8").out_features
    # chance_top1_err: a net that never learned (error at guessing) has filters that say little about its recipe
    row |= {"val_top1_err": ckpt.get("metrics", {}).get("val_top1_err"), "chance_top1_err": 100 * (1 - 1 / classes),
            "paper_fig6": PAPER[label], "checkpoint": str(path)}  # fmt: skip
    return row, arrays, {"net": key, "checkpoint": str(path), "epoch": ckpt["epoch"], "config": config}


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    device = resolve_device(cfg.device)
    nets = nets_to_compare(cfg)
    check_nets(nets)
    start = time.perf_counter()
    datasets: dict[str, tuple] = {}
    rows, arrays, sources = [], {}, []
    for key, net in nets.items():
        row, kept, source = measure(key, net, cfg, datasets, device)
        rows.append(row)
        arrays |= {f"{key}/{name}": value for name, value in kept.items()}
        sources.append(source)
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
    if df["diverged"].any():
        print(f"diverged (non-finite weights or losses): {', '.join(df.loc[df['diverged'], 'net'])}")
    print(f"wrote {target / v.stem}.csv, .png and .npz ({elapsed:.1f} s)")
    return {"rows": rows, "out": str(target / f"{v.stem}.csv")}
