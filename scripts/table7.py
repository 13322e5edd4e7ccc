"""Write results/table7_<preset>.csv and its accuracy-per-layer figure for a trained net (Table 7).

usage: python scripts/table7.py checkpoint=runs/figures/cpu/zfnet/checkpoint.pt preset=cpu out_dir=results

Without ``checkpoint=`` it takes the net ``zfviz transfer`` would: the newest finished zfnet run.

A Hydra app on zfviz transfer's config with ``experiment=table7`` (configs/experiment/table7.yaml,
added when no experiment is given): the heads, splits and feature settings are the transfer keys
(``softmax.steps=50``, ``svm.C=0.5``, ``n_per_class=[3]``, ``features.cache_dir=...``). Features of
layers 1-7 are extracted once per (checkpoint, data set, layer) into ``features.cache_dir`` and reused
by every split, N and classifier. ``dataset=fashion_mnist`` (default) uses the Fashion-MNIST test
images, which the cpu-preset nets never trained on; ``dataset=digits`` uses the transfer stand-in
for Caltech (scikit-learn's digits), a data set the net has never seen at all.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zfviz.checkpoint import model_from_checkpoint, with_checkpoint
from zfviz.commands import CONFIG_DIR
from zfviz.data.preprocess import file_sha256, source_preprocess
from zfviz.errors import UserError
from zfviz.features import LAYERS, Extraction, FeatureCache, cached_features
from zfviz.outputs import FIG_TABLE7, TABLE7, named
from zfviz.plotting.ablation import layer_accuracy_lines
from zfviz.results import save_figure, write_table
from zfviz.table7 import CLASSIFIERS, fashion_mnist_images, layer_accuracies, table7
from zfviz.transfer import HeadRecipes, SoftmaxRecipe, SplitProtocol
from zfviz.utils import as_list, resolve_device

DATASETS = ("fashion_mnist", "digits", "caltech101", "caltech256")


def load_images(dataset: str, root: str | None, channels: int):
    if dataset == "fashion_mnist":
        return fashion_mnist_images(root, "test")
    if dataset == "digits":
        from zfviz.data.digits import digits_caltech

        return digits_caltech()
    if dataset in ("caltech101", "caltech256"):  # the paper's (Section 5.3): Caltech-101 at 30/class, -256 at 60
        from zfviz.data.caltech import load_caltech

        return load_caltech(dataset, root, channels=channels)
    raise UserError(f"unknown dataset {dataset!r} for Table 7; choose one of: {', '.join(DATASETS)}")


def for_dataset(cfg: DictConfig, dataset: str, key: str):
    """``key`` for ``dataset``: its own value under ``per_dataset`` (the paper preset gives Caltech-101 and
    Caltech-256 their own roots and N), else the one value for every data set."""
    own = (cfg.get("per_dataset") or {}).get(dataset) or {}
    return cfg[key] if own.get(key) is None else own[key]


def check(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(layers, classifiers), or a UserError naming the valid choices."""
    layers, heads = [str(x) for x in as_list(cfg.layer)], [str(h) for h in as_list(cfg.head)]
    bad = [x for x in layers if x not in LAYERS] + [h for h in heads if h not in CLASSIFIERS]
    if bad:
        raise UserError(f"unknown {bad[0]!r}; layer: any of {', '.join(LAYERS)}; head: any of {', '.join(CLASSIFIERS)}")
    return layers, heads


def run(cfg: DictConfig) -> pd.DataFrame:
    start = time.perf_counter()
    layers, heads = check(cfg)
    cfg, chosen = with_checkpoint(cfg)  # without checkpoint=, the net zfviz transfer would take
    if chosen:
        print(f"table7: checkpoint={cfg.checkpoint}, {chosen}", flush=True)
    model, ckpt = model_from_checkpoint(cfg.checkpoint)
    cache_dir = cfg.features.cache_dir
    prep = source_preprocess(ckpt, cfg.checkpoint, cache_dir)
    cache = FeatureCache(cache_dir) if cache_dir else None
    channels = 1 if ckpt["config"]["data"]["name"] == "fashion_mnist" else prep.in_chans
    test_cap = None if cfg.test_per_class in (None, "auto") else int(cfg.test_per_class)
    frames, sources = [], []
    for dataset in [str(d) for d in as_list(cfg.dataset)]:  # the paper: Caltech-101 and Caltech-256
        images = load_images(dataset, for_dataset(cfg, dataset, "root"), channels)
        features = cached_features(
            model, images, layers, prep, model_key=file_sha256(cfg.checkpoint), cache=cache,
            how=Extraction.from_config(cfg.features, resolve_device(cfg.device)),
        )  # fmt: skip
        n_per_class = [int(n) for n in as_list(for_dataset(cfg, dataset, "n_per_class"))]
        protocol = SplitProtocol(n_per_class, int(cfg.splits), seed=int(cfg.seed), test_per_class=test_cap)
        recipes = HeadRecipes(SoftmaxRecipe(**cfg.softmax), svm_c=cfg.svm.C)
        rows = layer_accuracies(features, images.labels, protocol, heads, recipes)
        df = table7(rows)
        df.insert(0, "dataset", images.name)
        df.insert(1, "model", ckpt["config"]["model"]["name"])
        frames.append(df)
        sources.append({"dataset": images.name, "data_source": images.source, "images": len(images)})
    df = pd.concat(frames, ignore_index=True)
    hits = {"hits": cache.hits, "misses": cache.misses} if cache else None
    source = {
        "checkpoint": cfg.checkpoint, "datasets": sources, "feature_cache": hits, "config": ckpt["config"],
        "table7_config": OmegaConf.to_container(cfg, resolve=True),
    }  # fmt: skip
    out = Path(cfg.out_dir) if cfg.get("out_dir") else Path(HydraConfig.get().runtime.output_dir)
    wall = time.perf_counter() - start
    write_table(df, out / named(TABLE7, cfg.preset), sources=[source], wall_time_s=round(wall, 2))
    names = ", ".join(df["dataset"].unique())
    title = f"Table 7: linear classifiers on each layer, {cfg.preset} preset ({names}, {cfg.splits} splits)"
    save_figure(
        layer_accuracy_lines(df, title=title),
        out / named(FIG_TABLE7, cfg.preset),
        sources=[source],
        table=named(TABLE7, cfg.preset),
    )
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.drop(columns=["dataset", "model"]).round(2).to_string(index=False))
    print(f"table7: {wall:.1f} s, feature cache {hits}, wrote {out}/{named(TABLE7, cfg.preset)}")
    return df


@hydra.main(config_path=CONFIG_DIR, config_name="transfer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except UserError as err:
        print(f"table7: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    if not any(arg.startswith(("experiment=", "+experiment=")) for arg in sys.argv[1:]):
        sys.argv.insert(1, "experiment=table7")
    main()
