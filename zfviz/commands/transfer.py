"""``zfviz transfer``: Caltech-101/256 and PASCAL VOC 2012 with the frozen layers 1-7 (Section 5.2).

Caltech (Tables 4, 5, Fig. 9): for every N in ``n_per_class`` and every split, each head is
trained on N images per class and scored by the mean of per-class accuracies on the test images.
PASCAL (Table 6): each head is trained on the training split, and scored by per-class AP and mAP.
With ``root=null`` the data are the cpu preset's stand-ins built from scikit-learn's digits.
``dataset=fashion_mnist`` is the within-domain analogue of Fig. 9: Fashion-MNIST classes the
pretrained net never saw (``classes``), under the Caltech protocol.
Writes ``rows.csv`` (one row per split or class), ``summary.csv`` (mean and std over splits) and
``run.json`` (provenance) to the run folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zfviz.checkpoint import model_from_checkpoint, with_checkpoint
from zfviz.commands import CONFIG_DIR, guarded
from zfviz.data.imageset import ImageSet
from zfviz.data.preprocess import file_sha256, source_preprocess
from zfviz.errors import UserError
from zfviz.features import LAYERS, Extraction, FeatureCache, cached_features
from zfviz.models import build_model
from zfviz.transfer import (
    HeadRecipes,
    ScratchRecipe,
    SoftmaxRecipe,
    SplitProtocol,
    evaluate_heads,
    fit_softmax,
    fit_svm,
    head_scores,
    per_class_ap,
    predict,
    train_scratch,
)
from zfviz.utils import as_list, atomic_write_text, git_state, resolve_device, seeded, versions
from zfviz.validate import check_config

DATASETS = ("caltech101", "caltech256", "pascal2012", "fashion_mnist")
HEADS = {"caltech": ("softmax", "svm", "scratch"), "pascal": ("softmax", "multilabel", "svm")}
TEST_PER_CLASS = {"caltech101": 50, "caltech256": None, "fashion_mnist": None}


def check_choices(cfg: DictConfig) -> tuple[str, list[str]]:
    """(``caltech`` or ``pascal``, the heads), or a UserError naming the valid choices."""
    if cfg.dataset not in DATASETS:
        raise UserError(f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)}")
    kind = "pascal" if cfg.dataset == "pascal2012" else "caltech"
    if cfg.dataset == "fashion_mnist":
        from zfviz.data.fashion_mnist import check_classes

        check_classes(cfg.get("classes"), key="classes")
    elif cfg.get("classes") is not None:
        raise UserError("classes= picks Fashion-MNIST classes; give dataset=fashion_mnist or classes=null")
    heads = [str(h) for h in as_list(cfg.head)]
    bad = [h for h in heads if h not in HEADS[kind]]
    if bad:
        raise UserError(f"unknown head {bad[0]!r} for {cfg.dataset}; choose from: {', '.join(HEADS[kind])}")
    if cfg.layer not in LAYERS:
        raise UserError(f"unknown layer {cfg.layer!r}; choose one of: {', '.join(LAYERS)}")
    if kind == "caltech" and any(int(n) < 1 for n in as_list(cfg.n_per_class)):
        raise UserError(f"n_per_class must be 1 or more, got {as_list(cfg.n_per_class)}")
    return kind, heads


def load_sets(cfg: DictConfig, channels: int, ckpt: dict | None = None) -> tuple[list[ImageSet], str, bool]:
    """The target data: ([all images] for Caltech, [train, test] for PASCAL), a note, stand-in or not.

    ``fashion_mnist``: the classes ``cfg.classes`` (null = those ``ckpt``'s net was not trained on).
    """
    from zfviz.data import digits

    if cfg.dataset == "fashion_mnist":
        from zfviz.data import fashion_mnist

        seen = fashion_mnist.seen_classes(ckpt["config"]["data"]) if ckpt is not None else ()
        classes = fashion_mnist.transfer_classes(cfg.get("classes"), seen, f"checkpoint={cfg.checkpoint}")
        images = fashion_mnist.transfer_set(cfg.root, classes)
        return [images], images.note, False

    if cfg.dataset == "pascal2012":
        if cfg.root is None:
            train, test = digits.digit_canvases(cfg.canvases.train, cfg.canvases.test, seed=cfg.seed)
            return [train, test], train.note, True
        from zfviz.data.voc import load_voc

        train, test, note = load_voc(cfg.root, channels=channels)
        return [train, test], note, False
    if cfg.root is None:
        images = digits.digits_caltech()
        return [images], f"{cfg.dataset} {images.note}", True
    from zfviz.data.caltech import load_caltech

    exclude = None if cfg.exclude is None else [str(e) for e in as_list(cfg.exclude)]
    images = load_caltech(cfg.dataset, cfg.root, exclude=exclude, channels=channels)
    return [images], images.note, False


def _chunks(images: ImageSet, index: np.ndarray, size: int, chunk: int = 512):
    for start in range(0, len(index), chunk):
        yield images.read(index[start : start + chunk], size)


def caltech_rows(cfg, images, feats, ckpt, prep, heads, stand_in, device) -> list[dict]:
    """One row per (head, N, split): the mean per-class accuracy in percent."""
    if cfg.test_per_class == "auto":
        test_cap = None if stand_in else TEST_PER_CLASS[cfg.dataset]
    else:  # a number, or null for all the rest
        test_cap = None if cfg.test_per_class is None else int(cfg.test_per_class)
    model_cfg = dict(ckpt["config"]["model"])
    name = model_cfg.pop("name")
    data_cfg = ckpt["config"]["data"]
    flip = (
        (not stand_in and bool(data_cfg.get("flip", False))) if cfg.scratch.flip == "auto" else bool(cfg.scratch.flip)
    )
    crop_pad = round(float(data_cfg.get("crop_pad_frac", 0.0)) * prep.input_size)

    s = cfg.scratch
    recipe = ScratchRecipe(s.epochs, s.max_steps, s.batch_size, s.optim, flip=flip, crop_pad=crop_pad)

    def scratch(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
        net_s = train_scratch(
            lambda: build_model(name, num_classes=len(images.classes), **model_cfg),
            images.read(train, prep.input_size), images.labels[train], prep, recipe, seed=seed, device=device,
        )  # fmt: skip
        chunks = _chunks(images, test, prep.input_size)
        return np.concatenate([predict(net_s, x, prep, device=device).argmax(1) for x in chunks])

    protocol = SplitProtocol(
        [int(v) for v in as_list(cfg.n_per_class)], int(cfg.splits), seed=int(cfg.seed), test_per_class=test_cap,
        classes=images.classes,
    )  # fmt: skip
    recipes = HeadRecipes(SoftmaxRecipe(**cfg.softmax), svm_c=cfg.svm.C, scratch=scratch)
    rows = evaluate_heads(
        {cfg.layer: feats}, images.labels, heads, protocol, recipes, num_classes=len(images.classes),
        log=lambda line: print(line, flush=True),
    )  # fmt: skip
    keep = ("layer", "n_per_class", "split", "seed", "train_images", "test_images", "accuracy", "wall_time_s")
    return [
        {"dataset": cfg.dataset, "stand_in": stand_in, "head": r["head"], "pretrained": r["head"] != "scratch",
         **{k: r[k] for k in keep}}
        for r in rows
    ]  # fmt: skip


def pascal_rows(cfg, sets, feats, heads, stand_in) -> list[dict]:
    """Per-class AP (percent) of every head on the evaluation set, and a ``mean`` row per head."""
    train, test = sets
    f_train, f_test = feats
    rows = []
    for head in heads:
        start = time.perf_counter()
        if head == "softmax":
            # The paper's head: one exclusive label per image (the largest object).
            fc8 = fit_softmax(f_train, train.labels, len(train.classes), SoftmaxRecipe(**cfg.softmax), seed=cfg.seed)
            scores = head_scores(fc8, f_test)
        elif head == "multilabel":
            fc8 = fit_softmax(
                f_train, train.targets, len(train.classes), SoftmaxRecipe(**cfg.softmax), seed=cfg.seed,
                multilabel=True, ignore=train.ignore,
            )  # fmt: skip
            scores = head_scores(fc8, f_test)
        else:
            scores = fit_svm(f_train, train.targets, C=cfg.svm.C, ignore=train.ignore)(f_test)
        ap = 100 * per_class_ap(test.targets, scores, test.ignore)
        wall = round(time.perf_counter() - start, 3)
        common = {"dataset": cfg.dataset, "stand_in": stand_in, "head": head, "layer": cfg.layer}
        for k, name in enumerate(test.classes):
            positives = int(((test.targets[:, k] == 1) & ~test.ignore[:, k]).sum())
            rows.append({**common, "class": name, "ap": ap[k], "positives": positives, "wall_time_s": wall})
        rows.append({**common, "class": "mean", "ap": float(np.nanmean(ap)), "positives": None, "wall_time_s": wall})
        print(f"{head}: mAP {np.nanmean(ap):.1f}%", flush=True)
    return rows


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (over splits, ddof=1) per head and N."""
    grouped = rows.groupby(["dataset", "head", "pretrained", "n_per_class"], sort=False)["accuracy"]
    out = grouped.agg(accuracy="mean", std="std", splits="count").reset_index()
    return out.round({"accuracy": 2, "std": 2})


def run(cfg: DictConfig) -> dict:
    """Fit the heads ``cfg`` names; the caller's determinism flags and thread count come back afterwards."""
    check_config(cfg)  # bad values as one line, before seeding with them
    with seeded(cfg.seed, cfg.deterministic):
        return _run(cfg)


def _run(cfg: DictConfig) -> dict:
    kind, heads = check_choices(cfg)
    cfg, chosen = with_checkpoint(cfg)
    if chosen:
        print(f"zfviz transfer: checkpoint={cfg.checkpoint}, {chosen} (checkpoint= picks another)", flush=True)
    start = time.perf_counter()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    net, ckpt = model_from_checkpoint(cfg.checkpoint)
    cache = FeatureCache(cfg.features.cache_dir) if cfg.features.cache_dir else None
    prep = source_preprocess(ckpt, cfg.checkpoint, cfg.features.cache_dir)
    channels = 1 if ckpt["config"]["data"]["name"] == "fashion_mnist" else prep.in_chans
    sets, note, stand_in = load_sets(cfg, channels, ckpt)
    print(f"zfviz transfer: {note}", flush=True)
    model_key = file_sha256(cfg.checkpoint)
    feats = []
    if any(h != "scratch" for h in heads):
        for images in sets:
            feats.append(
                cached_features(
                    net, images, [cfg.layer], prep, model_key=model_key, cache=cache,
                    how=Extraction.from_config(cfg.features, device),
                )[cfg.layer]
            )  # fmt: skip
    else:
        feats = [None] * len(sets)
    if kind == "caltech":
        rows = pd.DataFrame(caltech_rows(cfg, sets[0], feats[0], ckpt, prep, heads, stand_in, device))
        summary = summarize(rows)
    else:
        rows = pd.DataFrame(pascal_rows(cfg, sets, feats, heads, stand_in))
        summary = rows[rows["class"] == "mean"][["dataset", "head", "ap"]].rename(columns={"ap": "map"})
    folder = Path(cfg.out_dir) if cfg.get("out_dir") else Path(HydraConfig.get().runtime.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "rows.csv", rows.to_csv(index=False))
    atomic_write_text(folder / "summary.csv", summary.to_csv(index=False))
    result = {
        "dataset": cfg.dataset, "stand_in": stand_in, "note": note, "checkpoint": str(cfg.checkpoint),
        "checkpoint_chosen": chosen,
        "checkpoint_sha256": model_key, "preprocess": prep.key(),
        "pretrained_on": {k: ckpt["config"]["data"].get(k) for k in ("name", "classes", "limit")},
        "target_classes": list(sets[-1].classes),
        "feature_cache": {"hits": cache.hits, "misses": cache.misses} if cache else None,
        "wall_time_s": round(time.perf_counter() - start, 2), **git_state(), "versions": versions(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }  # fmt: skip
    atomic_write_text(folder / "run.json", json.dumps(result, indent=2, default=str))
    with pd.option_context("display.width", 200):
        print(summary.to_string(index=False))
    print(f"wrote {folder}/rows.csv, summary.csv, run.json ({result['wall_time_s']:.0f} s)")
    return {**result, "rows": rows, "summary": summary, "out": str(folder)}


@hydra.main(config_path=CONFIG_DIR, config_name="transfer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    guarded(run, cfg)


if __name__ == "__main__":
    main()
