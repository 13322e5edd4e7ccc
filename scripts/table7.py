"""Write results/table7_<preset>.csv and its accuracy-per-layer figure for a trained net (Table 7).

usage: python scripts/table7.py --checkpoint runs/figures/cpu/zfnet/checkpoint.pt --preset cpu --out results

Features of layers 1-7 are extracted once per (checkpoint, data set, layer) into --cache and reused
by every split, N and classifier. --dataset fashion_mnist (default) uses the Fashion-MNIST test
images, which the cpu-preset nets never trained on; --dataset digits uses the transfer issue's
stand-in for Caltech (scikit-learn's digits), a data set the net has never seen at all.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from zfviz.checkpoint import model_from_checkpoint
from zfviz.errors import UserError
from zfviz.features import LAYERS, FeatureCache, cached_features, file_sha256, source_preprocess
from zfviz.plotting.ablation import layer_accuracy_lines
from zfviz.results import save_figure, write_table
from zfviz.table7 import fashion_mnist_images, layer_accuracies, table7


def load_images(dataset: str, root: str | None):
    if dataset == "fashion_mnist":
        return fashion_mnist_images(root, "test")
    if dataset == "digits":
        from zfviz.data.digits import digits_caltech

        return digits_caltech()
    raise UserError(f"unknown dataset {dataset!r}; choose one of: fashion_mnist, digits")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", default="results")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--root", default=None, help="the data set's folder (default: where zfviz finds it)")
    parser.add_argument("--n-per-class", type=int, nargs="+", default=[30, 60])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--softmax-steps", type=int, default=500)
    parser.add_argument("--cache", default="runs/features")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        model, ckpt = model_from_checkpoint(args.checkpoint)
        prep = source_preprocess(ckpt, args.checkpoint, args.cache)
        images = load_images(args.dataset, args.root)
        cache = FeatureCache(args.cache)
        features = cached_features(
            model, images, LAYERS, prep, model_key=file_sha256(args.checkpoint), cache=cache, device=args.device
        )
        rows = layer_accuracies(
            features, images.labels, n_per_class=args.n_per_class, splits=args.splits, softmax_steps=args.softmax_steps
        )
    except UserError as err:
        print(f"table7: error: {err}", file=sys.stderr)
        return 2
    df = table7(rows)
    df.insert(0, "dataset", images.name)
    df.insert(1, "model", ckpt["config"]["model"]["name"])
    source = {
        "checkpoint": args.checkpoint, "dataset": images.name, "data_source": images.source,
        "images": len(images), "feature_cache": {"hits": cache.hits, "misses": cache.misses},
        "config": ckpt["config"],
    }  # fmt: skip
    wall = time.perf_counter() - start
    write_table(df, f"{args.out}/table7_{args.preset}.csv", sources=[source], wall_time_s=round(wall, 2))
    title = f"Table 7: linear classifiers on each layer, {args.preset} preset ({images.name}, {args.splits} splits)"
    save_figure(layer_accuracy_lines(df, title=title), f"{args.out}/fig_table7_{args.preset}.png")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.drop(columns=["dataset", "model"]).round(2).to_string(index=False))
    print(f"table7: {wall:.1f} s, feature cache {cache.hits} hits, {cache.misses} misses")
    return 0


if __name__ == "__main__":
    sys.exit(main())
