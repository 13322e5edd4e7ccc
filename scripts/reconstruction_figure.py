"""Write results/reconstruction_<preset>.csv and results/fig_reconstruction_<preset>.png: network inversion.

The same held-out test images reconstructed from every layer (conv1 .. fc8, each after its ReLU;
fc8 the logits) of each net, by optimization (``regularized``, Mahendran and Vedaldi 2015; gray data
reconstructed as one gray channel, ``data_color``) and by a
decoder trained per layer (``learned``, Dosovitskiy and Brox 2016; trained into ``--decoders`` or
loaded from there when finished). The CSV has one row per net, layer and method: the normalized
error ||x* - x|| / ||x|| and the PSNR on pixels, averaged over the images. Prints whether the
survey's two claims show: deeper layers keep less, and learned beats regularized at high layers.

usage: python scripts/reconstruction_figure.py --preset cpu --out results --decoders runs/figures/cpu/decoders
       [--images 8] [--steps 200] RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zfviz.data.trained import load_data
from zfviz.models.load import load_net
from zfviz.outputs import FIG_RECONSTRUCTION, RECONSTRUCTION, named
from zfviz.plotting import plt
from zfviz.plotting.reconstruction import reconstruction_panels
from zfviz.reconstruction.decoder import Recipe, layer_features_of, load_decoder, train_decoders
from zfviz.reconstruction.invert import Descent, invert, normalized_error, psnr, to_pixels
from zfviz.reconstruction.parameterization import data_color
from zfviz.results import load_run, run_source, runs_parser, save_figure, write_table
from zfviz.script_main import script_main

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
METHODS = ("regularized", "learned")
HIGH = ("conv5", "fc6", "fc7", "fc8")  # "high layers" for the learned-beats-regularized check


def reconstruct(run_dir: Path, args, recipe: Recipe):
    """(rows, originals in pixels, {(method, layer): pixels}, provenance) for one finished training run."""
    summary, _ = load_run(run_dir)
    path = run_dir / "checkpoint.pt"
    model, ckpt = load_net(path, torch.device("cpu"))
    net = ckpt["config"]["model"]["name"]
    test = load_data(ckpt, path).test
    # Spread over the test split (every 1250th of Fashion-MNIST's 10,000), never trained on.
    index = torch.arange(args.images) * (len(test.images) // args.images)
    x = test.normalize(test.images[index])
    truth = to_pixels(x, test.mean, test.std)
    start = time.perf_counter()
    runs = train_decoders(path, LAYERS, args.decoders, recipe=recipe, progress=True)
    decoders_s = time.perf_counter() - start
    feats = layer_features_of(model, x, LAYERS)
    color = data_color(test)  # gray data: one gray channel optimized, copied to the net's three
    shown, rows = {}, []
    start = time.perf_counter()
    for layer in LAYERS:
        with torch.no_grad():
            learned = load_decoder(runs[layer])(feats[layer])
        regularized = invert(model, x, layer, descent=Descent(steps=args.steps, seed=args.seed), color=color).images
        for method, images in (("regularized", regularized), ("learned", learned)):
            pixels = to_pixels(images, test.mean, test.std)
            shown[(method, layer)] = pixels.numpy()
            rows.append({"net": net, "layer": layer, "method": method,
                         "error": float(normalized_error(pixels, truth).mean()), "psnr": float(psnr(pixels, truth).mean())})  # fmt: skip
    invert_s = time.perf_counter() - start
    print(f"{net}: decoders {decoders_s:.1f} s (trained or loaded), regularized + learned inversion {invert_s:.1f} s",
          flush=True)  # fmt: skip
    source = run_source(summary, net=net, checkpoint=str(path), epoch=ckpt.get("epoch"),
                        test_images=index.tolist(), decoders={k: str(v) for k, v in runs.items()},
                        color=None if color is None else color.tolist())  # fmt: skip
    return rows, truth.numpy(), shown, source


def claims(df: pd.DataFrame) -> list[str]:
    """The survey's two claims, as shown (or not) by the table."""
    lines = []
    for (net, method), part in df.groupby(["net", "method"], sort=False):
        errors = part.set_index("layer").loc[list(LAYERS), "error"]
        # Spearman's rank correlation of error with depth: 1 = every layer keeps less than the one below.
        # At the top, regularized errors sit near a grey image's (0.80) and their order there is noise.
        rho = float(np.corrcoef(np.arange(len(errors)), errors.rank().to_numpy())[0, 1])
        lines.append(f"{net} {method}: deeper layers keep less: {'yes' if rho >= 0.8 else 'no'} (rank correlation "
                     f"of error with depth {rho:.2f}; error {errors.iloc[0]:.3f} at conv1 -> {errors.iloc[-1]:.3f} at fc8)")  # fmt: skip
    for net, part in df.groupby("net", sort=False):
        table = part.pivot(index="layer", columns="method", values="error").loc[list(HIGH)]
        wins = int((table["learned"] < table["regularized"]).sum())
        lines.append(f"{net}: learned beats regularized at high layers: {'yes' if wins == len(HIGH) else 'no'} "
                     f"({wins}/{len(HIGH)} of {', '.join(HIGH)})")  # fmt: skip
    return lines


@script_main
def main() -> int:
    parser = runs_parser(__doc__)
    parser.add_argument("--decoders", required=True, help="folder of the trained decoders (cached runs)")
    parser.add_argument("--images", type=int, default=8, help="held-out test images reconstructed")
    parser.add_argument("--steps", type=int, default=200, help="regularized inversion: optimization steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoder-images", type=int, default=Recipe.images, help="decoder training images")
    parser.add_argument("--decoder-epochs", type=int, default=Recipe.epochs)
    # One thread: the steps are small (8 images, or 64 at 32 px), and on the shared 2-core machine two
    # threads spin-waited: 30 inversion steps took 0.4 s of CPU on one thread, 3.3-4.6 s on two (load 8).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    recipe = Recipe(images=args.decoder_images, epochs=args.decoder_epochs, seed=args.seed)
    results = [reconstruct(Path(run), args, recipe) for run in args.runs]
    df = pd.DataFrame([row for r in results for row in r[0]], columns=["net", "layer", "method", "error", "psnr"])
    sources = [r[3] for r in results]
    out = Path(args.out)
    wall = round(time.perf_counter() - start, 2)
    table, figure = named(RECONSTRUCTION, args.preset), named(FIG_RECONSTRUCTION, args.preset)
    write_table(df, out / table, sources=sources, wall_time_s=wall)
    panels = [(df["net"][df.index[i * len(LAYERS) * 2]], r[1], r[2]) for i, r in enumerate(results)]
    fig = reconstruction_panels(panels, list(LAYERS), list(METHODS),
                                title=f"Reconstructions from every layer, regularized and learned ({args.preset} preset)")  # fmt: skip
    save_figure(fig, out / figure, sources=sources, table=table, wall_time_s=wall)  # fmt: skip
    plt.close(fig)
    with pd.option_context("display.width", 200):
        print(df.pivot_table(index="layer", columns=["net", "method"], values="error", sort=False).round(3).to_string())
    print("\n".join(claims(df)))
    print(f"wrote {out}/{table} and {figure} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
