"""Write results/fig_maximize_<preset>.png and results/maximize_<preset>.csv: activation maximization (issue 14).

For each net (ZFNet, the AlexNet replication): its 10 class logits and the top ``--units`` units of
every layer (conv1..conv5 and fc6, fc7, each its module's own output, before the ReLU; a conv unit is
its whole map's mean), synthesized under pixel and Fourier parameterization and, when ``--decoders``
holds a finished decoder of fc6 for the run's checkpoint (``reconstruction_figure.py`` trains them
there; ``zfviz.reconstruction.decoder.find_decoder``), the
generator prior. Gray data (Fashion-MNIST) give gray images: the pixels' channels are tied into one
(``data_color``), and the Fourier color basis of gray data has one axis. "Top" is a documented rule: the units with the highest mean activation over the first
``--images`` test images, among those some image drives above 0 (the units the data drive most, not
dead ones). All targets of a net and a
parameterization are one batched optimization. The priors are Yosinski et al. 2015's (decay, blur
every 4 steps) with jitter; the images stay in the pixel range. The CSV has one row per net, layer,
unit and parameterization: the target's activation on its image, the strongest activation of any of
those test images, and their ratio (NaN when no test image drives the unit above 0). The figure shows a
readable subset (``--shown`` per layer: the units the data drive most, and as many classes), one row per net
and parameterization; the table holds every target.

usage: python scripts/maximize_figure.py --preset cpu --out results [--decoders DIR] RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch

from zfviz.activations import resolve, stream
from zfviz.data.trained import load_data
from zfviz.errors import UserError
from zfviz.models.load import load_net
from zfviz.outputs import FIG_MAXIMIZE, MAXIMIZE, named
from zfviz.plotting import plt
from zfviz.plotting.maximize import maximize_grid, ratio_caption
from zfviz.reconstruction.maximize import (
    Canvas,
    Priors,
    Target,
    code_start,
    maximize,
    pixel_bounds,
    ratio,
    strongest_real,
)
from zfviz.reconstruction.parameterization import color_basis, data_color
from zfviz.results import load_run, run_source, runs_parser, save_figure, write_table
from zfviz.script_main import script_main
from zfviz.viz.top9 import ordered_batches

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
PRIORS = Priors(jitter=2, decay=0.01, blur=0.5, blur_every=4)
BATCH = 250


def top_units(model, batches, layers: list[str], count: int) -> dict[str, list[int]]:
    """Per layer, the ``count`` units of highest mean activation (conv: the map's mean) over ``batches``,
    the highest first, among the units some image drives above 0 (a unit no image drives above 0 has no
    yardstick, ``strongest_real``); fewer when fewer are alive, with a note."""
    paths = {layer: resolve(model, layer, "output") for layer in layers}
    totals: dict[str, torch.Tensor] = {}
    peaks: dict[str, torch.Tensor] = {}
    with stream(model, batches, paths, keep=lambda out: out.flatten(2).mean(2) if out.dim() > 2 else out) as passes:
        for outputs, _ in passes:
            for layer in layers:
                totals[layer] = totals.get(layer, 0) + outputs[layer].sum(0)
                peak = outputs[layer].amax(0)
                peaks[layer] = peak if layer not in peaks else torch.maximum(peaks[layer], peak)
    ranked = {}
    for layer in layers:
        alive = (peaks[layer] > 0).nonzero().flatten()
        order = totals[layer][alive].argsort(descending=True)[:count]
        ranked[layer] = alive[order].tolist()
        if len(ranked[layer]) < count:
            print(f"{layer}: only {len(alive)} units driven above 0 by these images; {len(ranked[layer])} taken",
                  flush=True)  # fmt: skip
    return ranked


def shown_targets(targets: list[Target], units: dict[str, list[int]], shown: int) -> list[int]:
    """Indices into ``targets`` of the figure's tiles: the first ``shown`` classes, and per layer the
    ``shown`` units the test images drive most (``units`` ranks them); the table keeps every target."""
    keep = {(None, c) for c in range(shown)} | {(layer, u) for layer, ranked in units.items() for u in ranked[:shown]}
    return [k for k, t in enumerate(targets) if (t.layer, t.channel) in keep]


def decoder_for(decoders: Path | None, checkpoint: Path, net: str):
    """(the fc6 decoder of ``checkpoint`` under ``decoders``, its folder), or (None, None) with a note."""
    if decoders is None:
        return None, None
    try:
        from zfviz.reconstruction.decoder import find_decoder, load_decoder

        folder = find_decoder(decoders, checkpoint, "fc6")
        return load_decoder(folder, "fc6"), folder
    except (ImportError, UserError, FileNotFoundError) as err:
        print(f"{net}: no generator prior ({err})", flush=True)
        return None, None


def maximize_run(run_dir: Path, args) -> tuple[pd.DataFrame, dict, dict]:
    """(rows, figure rows, provenance) for one finished training run."""
    summary, _ = load_run(run_dir)
    net = summary["model"]
    path = run_dir / "checkpoint.pt"
    model, ckpt = load_net(path, torch.device("cpu"))
    test = load_data(ckpt, path).test
    images = test.images[: args.images]
    layers = [layer for layer in LAYERS if layer in dict(model.named_modules())]
    units = top_units(model, ordered_batches(images, test.normalize, BATCH), layers, args.units)
    classes = int(ckpt["config"].get("num_classes", 10))
    targets = [Target(None, c) for c in range(classes)]
    targets += [Target(layer, u) for layer in layers for u in sorted(units[layer])]
    real, _ = strongest_real(model, targets, ordered_batches(images, test.normalize, BATCH))
    sample = test.normalize(images[:BATCH])
    common = dict(steps=args.steps, lr=args.lr, priors=PRIORS, seed=args.seed)
    image = dict(size=sample.shape[-1], channels=sample.shape[1], bounds=pixel_bounds(test.mean, test.std))
    runs = {"pixels": {"color": data_color(test)}, "fourier": {"color": color_basis(sample)}}
    generator, folder = decoder_for(args.decoders, path, net)
    if generator is not None:
        code, bounds = code_start(model, "fc6", ordered_batches(images, test.normalize, BATCH))
        runs["generator"] = {"generator": generator, "code": code, "code_bounds": bounds}
    rows, shown = [], {}
    for param, extra in runs.items():
        start = time.perf_counter()
        priors = Priors(jitter=2) if param == "generator" else PRIORS
        canvas = Canvas(param=param, **image, **extra)
        result = maximize(model, targets, canvas=canvas, **{**common, "priors": priors})
        print(f"{net} {param}: {len(targets)} targets x {args.steps} steps in {time.perf_counter() - start:.1f} s",
              flush=True)  # fmt: skip
        r = ratio(result.activation, real)
        for k, t in enumerate(targets):
            rows.append({"net": net, "layer": t.layer or "fc8", "unit": t.channel, "param": param,
                         "activation": float(result.activation[k]), "strongest_real": float(real[k]),
                         "ratio": float(r[k])})  # fmt: skip
        pixels = (result.images * test.std + test.mean).numpy()
        shown[f"{net}\n{param}"] = [
            (pixels[k], _group(targets[k]), _caption(targets[k], result.activation[k], real[k]))
            for k in shown_targets(targets, units, args.shown)
        ]
    pixels_color = None if runs["pixels"]["color"] is None else runs["pixels"]["color"].tolist()
    source = run_source(summary, net=net, checkpoint=str(path), epoch=ckpt.get("epoch"), pixels_color=pixels_color,
                        decoder=None if folder is None else str(folder))  # fmt: skip
    return pd.DataFrame(rows), shown, source


def _group(target: Target) -> str:
    return "fc8 (class logits)" if target.layer is None else target.layer


def _caption(target: Target, activation, real) -> str:
    name = f"class {target.channel}" if target.layer is None else f"unit {target.channel}"
    return f"{name}\n{ratio_caption(float(activation), float(real))}"


@script_main
def main() -> int:
    parser = runs_parser(__doc__)
    parser.add_argument("--decoders", type=Path, default=None, help="folder of fc6 decoder runs, one per net name")
    parser.add_argument("--units", type=int, default=4, help="top units per layer (the table)")
    parser.add_argument("--shown", type=int, default=2, help="of those, the figure's per layer (and its classes)")
    parser.add_argument(
        "--images", type=int, default=1000, help="test images ranking units and giving the strongest real"
    )
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    results = [maximize_run(Path(run), args) for run in args.runs]
    df = pd.concat([r[0] for r in results], ignore_index=True)
    sources = [r[2] for r in results]
    out = Path(args.out)
    wall = round(time.perf_counter() - start, 2)
    settings = {"steps": args.steps, "lr": args.lr, "units": args.units, "images": args.images, "seed": args.seed,
                "priors": str(PRIORS)}  # fmt: skip
    table, figure = named(MAXIMIZE, args.preset), named(FIG_MAXIMIZE, args.preset)
    write_table(df, out / table, sources=[*sources, settings], wall_time_s=wall)
    rows = {label: tiles for r in results for label, tiles in r[1].items()}
    title = (f"Activation maximization, {args.preset} preset. Shown: the first {args.shown} classes and, per layer, "
             f"the {args.shown} units the first {args.images} test images drive most (of the {args.units} in {table}, "
             "which holds every target). Under each image: its target's activation / the strongest of those test "
             "images' ('real <= 0': no test image drives the target above 0, no yardstick)")  # fmt: skip
    fig = maximize_grid(rows, title=title)
    save_figure(fig, out / figure, sources=[*sources, settings],
                table=table, wall_time_s=round(time.perf_counter() - start, 2))  # fmt: skip
    plt.close(fig)
    summary = df.groupby(["net", "param", "layer"], sort=False)["ratio"].median().unstack("layer")
    with pd.option_context("display.width", 200):
        print("median ratio (activation / strongest real):\n" + summary.round(2).to_string())
    print(f"wrote {out}/{table} and {figure} ({len(results)} nets, {wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
