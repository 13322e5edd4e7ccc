"""Speed of the deconvnet (Section 2.1, Fig. 2) against Captum and against plain inference.

1. Top-9 projections of every conv5 map over N images: zfviz's batched deconvnet against a loop
   that calls Captum's ``NeuronDeconvolution`` once per (map, image) on the same activations.
   The outputs are checked equal (Captum seeds a neuron with 1, the deconvnet with its value).
2. The streaming top-9 pass against plain inference (``model(x)`` under ``no_grad``) on the same
   batches: the search must keep at least 80% of inference speed.

Both ratios come from one run in one process; each timing is the best of ``--repeats``.
usage: python scripts/bench_deconv.py [--images 500] [--checkpoint runs/figures/cpu/zfnet/checkpoint.pt]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from captum.attr import NeuronDeconvolution
from omegaconf import OmegaConf

from zfviz.checkpoint import model_from_checkpoint
from zfviz.data import build_data
from zfviz.data.tensor_loader import TensorLoader
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.viz.deconv import project_batches
from zfviz.viz.top9 import project_top, top_activations


def best_of(repeats: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def load_images(n: int):
    """The first ``n`` Fashion-MNIST test images at 64 px (uint8) and their normalization, or noise if absent."""
    try:
        data = build_data(OmegaConf.create({"name": "fashion_mnist", "limit": n}), input_size=64, batch_size=256)
        return data.test.images[:n], data.test.normalize, "Fashion-MNIST test"
    except UserError as err:  # no data set on this machine: random images measure the same work
        print(f"(no Fashion-MNIST: {err}; using random images)")
        stored = torch.randint(0, 256, (n, 1, 64, 64), dtype=torch.uint8)
        loader = TensorLoader(stored, torch.zeros(n), 1, mean=0.29, std=0.34)
        return stored, loader.normalize, "random"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--checkpoint", default=None, help="a cpu-preset ZFNet checkpoint; default: random weights")
    parser.add_argument("--layer", default="conv5")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs of each zfviz timing")
    parser.add_argument("--search-repeats", type=int, default=7, help="interleaved runs of search and inference")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        model, _ = model_from_checkpoint(args.checkpoint)
    else:
        model = build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=512, init="kaiming").eval()
    stored, prepare, source = load_images(args.images)
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
    t_plain = t_search = float("inf")
    for _ in range(args.search_repeats):  # interleaved, so a change in the machine's load hits both alike
        t_plain = min(t_plain, best_of(1, plain)[0])
        elapsed, top = best_of(1, search)
        t_search = min(t_search, elapsed)

    # --- 1. top-9 projections: zfviz batched vs Captum per (map, image) ---------------------------------
    maps, k = top.maps, top.values.shape[1]
    image = top.image.reshape(-1)
    position = top.position.reshape(-1, 2)
    channel = torch.arange(maps)[:, None].expand(-1, k).reshape(-1)

    def ours(norm: str):
        out = torch.empty(len(image), *x.shape[1:])
        batches = project_batches(
            model, x, args.layer, image, channel, position, batch_size=args.batch_size, norm=norm
        )  # fmt: skip
        for rows, proj in batches:
            out[rows] = proj
        return out

    deconv = NeuronDeconvolution(model, model.get_submodule(args.layer))

    def theirs():
        out = torch.empty(len(image), *x.shape[1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Captum warns on every call that it sets ReLU hooks
            for j in range(len(image)):
                i, (y, w) = int(image[j]), position[j].tolist()
                out[j] = deconv.attribute(x[i : i + 1], neuron_selector=(int(channel[j]), y, w))[0]
        return out

    ours("pass")  # warm-up
    t_ours, _ = best_of(args.repeats, lambda: ours("pass"))
    # Captum back-propagates through contrast normalization; compare with our norm="backprop" mode.
    t_backprop, mine = best_of(args.repeats, lambda: ours("backprop"))
    t_crops, _ = best_of(
        args.repeats, lambda: project_top(model, args.layer, top, stored, prepare, batch_size=args.batch_size)
    )
    t_captum, captum = best_of(1, theirs)
    values = top.values.reshape(-1)
    positive = values > 0  # Captum's seed 1 scales to the deconvnet's seed only for positive values
    expected = captum[positive] * values[positive, None, None, None]
    scale = float(expected.abs().max())
    max_err = float((mine[positive] - expected).abs().max()) / scale
    n = len(image)

    print(f"\n1. top-{k} projections of all {maps} {args.layer} maps = {n} projections")
    print(f"   zfviz batched deconvnet      {t_ours:8.3f} s   {n / t_ours:9.1f} projections/s")
    print(f"   same, norm=backprop          {t_backprop:8.3f} s   {n / t_backprop:9.1f} projections/s")
    print(f"   zfviz project_top (+ crops)  {t_crops:8.3f} s   {n / t_crops:9.1f} projections/s")
    print(f"   Captum loop per (map, image) {t_captum:8.3f} s   {n / t_captum:9.1f} projections/s")
    print(
        f"   speed-up vs Captum: {t_captum / t_ours:.1f}x (norm=backprop {t_captum / t_backprop:.1f}x, "
        f"with crops {t_captum / t_crops:.1f}x; goal >= 10x)"
    )
    print(f"   equal outputs (norm=backprop): max |zfviz - Captum*value| / max|Captum*value| = {max_err:.2e} "
          f"over {int(positive.sum())}/{n} positive activations")  # fmt: skip
    print(f"\n2. streaming top-9 search over {len(x)} images, layer {args.layer}")
    print(f"   plain inference {t_plain:7.3f} s   {len(x) / t_plain:8.1f} images/s")
    print(f"   top-9 search    {t_search:7.3f} s   {len(x) / t_search:8.1f} images/s")
    print(f"   search speed / inference speed: {t_plain / t_search:.2f} (goal >= 0.80)")
    assert max_err < 1e-4, "zfviz and Captum disagree"


if __name__ == "__main__":
    main()
