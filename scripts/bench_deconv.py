"""Speed of the deconvnet (Section 2.1, Fig. 2) against Captum and against plain inference.

1. Top-9 projections of every conv5 map over N images: zfviz's batched deconvnet against a loop
   that calls Captum's ``NeuronDeconvolution`` once per (map, image) on the same activations.
   The outputs are checked equal (Captum starts a neuron from 1, the deconvnet from its value).
2. The streaming top-9 pass against plain inference (``model(x)`` under ``no_grad``) on the same
   batches: the search must keep at least 80% of inference speed.
3. ``project(model, x, layer, channel=[...])``, every map of the layer for a few images in one call
   (one forward pass, one batched backward), against a loop over the maps calling Captum's
   ``NeuronDeconvolution`` once per map on the same images (each image's strongest cell), and
   against our own loop of one ``project`` per map.
4. The top-9 projections of 1. on zfviz's one path (the attribution mechanism with a batch of starting
   signals) against the chain inverter of ``tests/deconv_oracle.py`` (trace each image's layers and
   switches once, invert layer by layer: zfviz's fast path for chains until issue 24), in the same
   rounds: the ratio says what the one path costs on the cpu-preset ZFNet.

Both ratios come from one run in one process; the methods compared run in turn, round after
round, and each timing is the best of its rounds. Without ``--checkpoint`` the net is the cpu
preset's ZFNet as ``configs/`` builds it, with random weights.
usage: python scripts/bench_deconv.py [--images 500] [--maps-images 16] [--checkpoint runs/figures/cpu/zfnet/checkpoint.pt] [--quick]
       [--out results]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from _bench import Bench, interleaved, out_argument, preset_model, ratio
from captum.attr import NeuronDeconvolution
from omegaconf import OmegaConf

from zfviz.checkpoint import model_from_checkpoint
from zfviz.data import build_data
from zfviz.data.tensor_loader import TensorLoader
from zfviz.errors import UserError
from zfviz.viz.deconv import Units, project, project_batches
from zfviz.viz.top9 import Explainer, project_top, top_activations

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the tests' oracle
from tests.deconv_oracle import chain_batches  # noqa: E402


def load_images(n: int, size: int):
    """The first ``n`` Fashion-MNIST test images at ``size`` px (uint8) and their normalization, or noise if absent."""
    try:
        data = build_data(OmegaConf.create({"name": "fashion_mnist", "limit": n}), input_size=size, batch_size=256)
        return data.test.images[:n], data.test.normalize, "Fashion-MNIST test"
    except UserError as err:  # no data set on this machine: random images measure the same work
        print(f"(no Fashion-MNIST: {err}; using random images)")
        stored = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8)
        loader = TensorLoader(stored, torch.zeros(n), 1, mean=0.29, std=0.34)
        return stored, loader.normalize, "random"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--checkpoint", default=None, help="a cpu-preset ZFNet checkpoint; default: random weights")
    parser.add_argument("--layer", default="conv5")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs of each zfviz timing")
    parser.add_argument("--search-repeats", type=int, default=7, help="interleaved runs of search and inference")
    parser.add_argument("--maps-images", type=int, default=16, help="images of the several-maps comparison (3.)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 images, one round of each timing")
    out_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats, args.search_repeats, args.maps_images = 20, 1, 1, 4
    return args


def collect(batches, n: int, shape) -> torch.Tensor:
    """The ``(rows, projections)`` of ``batches`` as one ``n x ...`` tensor."""
    out = torch.empty(n, *shape)
    for rows, proj in batches:
        out[rows] = proj
    return out


def captum_top9(deconv: NeuronDeconvolution, x, image, channel, position) -> torch.Tensor:
    """Captum's ``NeuronDeconvolution`` once per (map, image)."""
    out = torch.empty(len(image), *x.shape[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns on every call that it sets ReLU hooks
        for j in range(len(image)):
            i, (y, w) = int(image[j]), position[j].tolist()
            out[j] = deconv.attribute(x[i : i + 1], neuron_selector=(int(channel[j]), y, w))[0]
    return out


def main() -> None:
    bench = Bench.begin(__file__)
    args = parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        model, _ = model_from_checkpoint(args.checkpoint)
    else:
        model = preset_model("cpu", num_classes=10).eval()
    stored, prepare, source = load_images(args.images, model.input_size)
    x = prepare(stored)
    batches = list(x.split(args.batch_size))
    print(f"ZFNet cpu preset ({'trained' if args.checkpoint else 'random'} weights), {len(x)} {source} images, "
          f"{torch.get_num_threads()} threads, layer {args.layer}")  # fmt: skip

    # --- 2. streaming search vs plain inference (measured first: it also finds the top 9) ---------------
    def plain():
        with torch.no_grad():
            for batch in batches:
                model(batch)

    def search():
        return top_activations(model, batches, [args.layer], k=9)[args.layer]

    plain()  # warm-up
    timed = interleaved({"plain": plain, "search": search}, args.search_repeats)
    t_plain, t_search, top = timed.best("plain"), timed.best("search"), timed.results["search"]

    # --- 1. top-9 projections: zfviz batched vs Captum per (map, image) ---------------------------------
    maps, k = top.maps, top.values.shape[1]
    image = top.image.reshape(-1)
    position = top.position.reshape(-1, 2)
    channel = torch.arange(maps)[:, None].expand(-1, k).reshape(-1)

    def ours(norm: str):
        units = Units(image, channel, position)
        return collect(project_batches(model, x, args.layer, units, batch_size=args.batch_size, norm=norm),
                       len(image), x.shape[1:])  # fmt: skip

    def chain():
        units = (image, channel, position)
        return collect(chain_batches(model, x, args.layer, units, args.batch_size), len(image), x.shape[1:])

    deconv = NeuronDeconvolution(model, model.get_submodule(args.layer))

    def theirs():
        return captum_top9(deconv, x, image, channel, position)

    ours("pass")  # warm-up
    timed = interleaved(
        {
            "pass": lambda: ours("pass"),
            # Captum back-propagates through contrast normalization; compare with our norm="backprop" mode.
            "backprop": lambda: ours("backprop"),
            "chain": chain,
            "crops": lambda: project_top(
                model, args.layer, top, stored, prepare, how=Explainer(batch_size=args.batch_size)
            ),
        },
        args.repeats,
    )
    t_ours, t_backprop, t_crops = timed.best("pass"), timed.best("backprop"), timed.best("crops")
    t_chain = timed.best("chain")
    assert torch.allclose(timed.results["chain"], timed.results["pass"], rtol=1e-5, atol=1e-7), "paths disagree"
    mine = timed.results["backprop"]
    slow = interleaved({"captum": theirs}, 1)  # once: it is the slow one
    t_captum, captum = slow.best("captum"), slow.results["captum"]
    values = top.values.reshape(-1)
    positive = values > 0  # Captum's start 1 scales to the deconvnet's only for positive values
    expected = captum[positive] * values[positive, None, None, None]
    scale = float(expected.abs().max())
    max_err = float((mine[positive] - expected).abs().max()) / scale
    n = len(image)

    print(f"\n1. top-{k} projections of all {maps} {args.layer} maps = {n} projections")
    print(f"   zfviz batched deconvnet      {t_ours:8.3f} s   {n / t_ours:9.1f} projections/s")
    print(f"   same, norm=backprop          {t_backprop:8.3f} s   {n / t_backprop:9.1f} projections/s")
    print(f"   chain inverter (tests')      {t_chain:8.3f} s   {n / t_chain:9.1f} projections/s  (the old fast path)")
    print(f"   zfviz project_top (+ crops)  {t_crops:8.3f} s   {n / t_crops:9.1f} projections/s")
    print(f"   Captum loop per (map, image) {t_captum:8.3f} s   {n / t_captum:9.1f} projections/s")
    ratio("Captum time / zfviz time", t_captum, t_ours, "s", ">= 10")
    print(
        f"   speed-up vs Captum: {t_captum / t_ours:.1f}x (norm=backprop {t_captum / t_backprop:.1f}x, "
        f"with crops {t_captum / t_crops:.1f}x; goal >= 10x)"
    )
    print(f"   equal outputs (norm=backprop): max |zfviz - Captum*value| / max|Captum*value| = {max_err:.2e} "
          f"over {int(positive.sum())}/{n} positive activations")  # fmt: skip
    print(f"\n2. streaming top-9 search over {len(x)} images, layer {args.layer}")
    print(f"   plain inference {t_plain:7.3f} s   {len(x) / t_plain:8.1f} images/s")
    print(f"   top-9 search    {t_search:7.3f} s   {len(x) / t_search:8.1f} images/s")
    ratio("search speed / inference speed", len(x) / t_search, len(x) / t_plain, "images/s", ">= 0.80")
    print(f"\n4. the one path against the chain inverter, top-{k} of 1.")
    ratio("mechanism top-9 time / chain-inverter time", t_ours, t_chain, "s")
    assert max_err < 1e-4, "zfviz and Captum disagree"
    several_maps(model, x[: args.maps_images], args.layer, args.repeats)
    bench.write(args.out, vars(args))


def several_maps(model, x, layer: str, repeats: int) -> None:
    """3. every map of ``layer`` for the images ``x``: one ``project`` call against per-map loops."""
    with torch.no_grad():
        maps = top_activations(model, [x], [layer], k=1)[layer].maps
    channels = list(range(maps))
    deconv = NeuronDeconvolution(model, model.get_submodule(layer))

    def captum_loop():
        out = torch.empty(len(x), maps, *x.shape[1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Captum warns on every call that it sets ReLU hooks
            for c in channels:  # each image's strongest cell of map c (Captum sums the selected cells)
                out[:, c] = deconv.attribute(x, neuron_selector=lambda act, c=c: act[:, c].flatten(1).amax(dim=1))
        return out

    def per_map(norm: str):
        return torch.stack([project(model, x, layer, c, norm=norm) for c in channels], dim=1)

    timed = interleaved(
        {
            "maps": lambda: project(model, x, layer, channels),
            "maps_backprop": lambda: project(model, x, layer, channels, norm="backprop"),
            "loop": lambda: per_map("pass"),
            "captum": captum_loop,
        },
        max(repeats, 1),
    )
    t_maps, t_bp, t_loop, t_captum = (timed.best(k) for k in ("maps", "maps_backprop", "loop", "captum"))
    with torch.no_grad():
        values = top_activations(model, [x], [layer], k=len(x))[layer]
    # Captum starts each cell from 1, the deconvnet from its value: scale Captum's maps to compare.
    best = torch.empty(len(x), maps)
    best[values.image, torch.arange(maps)[:, None].expand_as(values.image)] = values.values
    positive = best > 0
    expected = timed.results["captum"][positive] * best[positive][:, None, None, None]
    max_err = float((timed.results["maps_backprop"][positive] - expected).abs().max() / expected.abs().max())
    n = len(x) * maps
    print(f"\n3. all {maps} {layer} maps of {len(x)} images in one call = {n} projections")
    print(f"   project(..., channel=[...])    {t_maps:8.3f} s   {n / t_maps:9.1f} projections/s")
    print(f"   same, norm=backprop            {t_bp:8.3f} s   {n / t_bp:9.1f} projections/s")
    print(f"   loop of project per map        {t_loop:8.3f} s   {n / t_loop:9.1f} projections/s")
    print(f"   Captum NeuronDeconvolution per map {t_captum:8.3f} s   {n / t_captum:9.1f} projections/s")
    ratio("Captum per-map loop time / several-maps call time", t_captum, t_maps, "s")
    ratio("per-map project loop time / several-maps call time", t_loop, t_maps, "s")
    print(
        f"   Captum / norm=backprop call: {t_captum / t_bp:.1f}x; equal outputs (norm=backprop): max |zfviz - "
        f"Captum*value| / max|Captum*value| = {max_err:.2e} over {int(positive.sum())}/{n} positive activations"
    )
    assert max_err < 1e-4, "zfviz and Captum disagree"


if __name__ == "__main__":
    main()
