"""Table 7 of Zeiler & Fergus 2014 (Section 5.3, "Feature analysis"): how discriminative is each layer?

A linear SVM and a softmax are trained on the frozen features of one layer at a time (layers 1-7),
with the transfer protocol's splits: N training images per class drawn at random, the rest (or at
most ``test_per_class``) for testing, the mean of per-class accuracies, mean and std over splits.
The paper uses Caltech-101 at 30 per class and Caltech-256 at 60 per class; our N values are
printed beside those columns.

Features come from ``zfviz.features`` (extracted once per model, data set and layer, then cached):
conv layers are the output of their whole block (ReLU, pooling, normalization), average-pooled to
at most 6x6 cells; fc6/fc7 are the rectified outputs. Both heads are the transfer issue's
(``zfviz.transfer``): each feature vector is scaled to unit RMS first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from zfviz.data.imageset import ImageSet
from zfviz.features import LAYERS
from zfviz.results import paper_table
from zfviz.transfer import HeadRecipes, SplitProtocol, evaluate_heads

CLASSIFIERS = ("svm", "softmax")
# Which of the paper's columns our N per class sits beside.
PAPER_COLUMNS = {30: ("caltech101_30", "Caltech-101, 30/class"), 60: ("caltech256_60", "Caltech-256, 60/class")}


def fashion_mnist_images(root: str | None = None, split: str = "test", limit: int | None = None) -> ImageSet:
    """Fashion-MNIST's ``split`` as an ``ImageSet`` (one gray channel, resized on read).

    The default is the test split: images the cpu-preset nets never trained on.
    """
    from zfviz.data import fashion_mnist

    folder = fashion_mnist.locate(root)
    images, labels = fashion_mnist.load_split(folder, split, limit)
    return ImageSet.in_memory(
        images.numpy(), labels.numpy(), name=f"fashion_mnist_{split}", classes=fashion_mnist.CLASSES,
        source=str(folder),
    )  # fmt: skip


def layer_accuracies(
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    protocol: SplitProtocol,
    classifiers: Sequence[str] = CLASSIFIERS,
    recipes: HeadRecipes | None = None,
) -> pd.DataFrame:
    """One row per (classifier, layer, N, split): the mean per-class accuracy (%) on that split's test set.

    The transfer protocol (``zfviz.transfer.evaluate_heads``): the splits of ``protocol`` are the
    same for every layer and classifier, so layers are compared on the same images; ``recipes``: how
    the softmax and the SVM train (the ``softmax`` and ``svm`` sections of the transfer config).
    """
    bad = [name for name in classifiers if name not in CLASSIFIERS]
    if bad:
        raise ValueError(f"unknown classifier {bad[0]!r}; choose from {CLASSIFIERS}")
    rows = evaluate_heads(features, labels, classifiers, protocol, recipes)
    columns = {"head": "classifier", "layer": "layer", "n_per_class": "n_per_class", "split": "split",
               "features": "features", "accuracy": "accuracy"}  # fmt: skip
    return pd.DataFrame(rows)[list(columns)].rename(columns=columns)


def table7(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over splits per (classifier, layer, N), beside the paper's value for that layer.

    The paper's columns: Caltech-101 at 30/class beside our N = 30, Caltech-256 at 60/class beside
    N = 60; the paper has no layer-6 row and no softmax rows for layers 1-4 (left empty).
    """
    paper = paper_table("table7_feature_analysis").set_index(["classifier", "layer"])
    grouped = rows.groupby(["classifier", "layer", "n_per_class"], sort=False)
    summary = grouped.agg(
        features=("features", "first"),
        accuracy_mean=("accuracy", "mean"),
        accuracy_std=("accuracy", "std"),  # sample std (ddof 1), as the transfer tables
        splits=("split", "nunique"),
    ).reset_index()
    summary.insert(2, "layer_index", [LAYERS.index(layer) + 1 for layer in summary["layer"]])
    paper_cols = {"paper_dataset": [], "paper_accuracy": [], "paper_std": []}
    for _, row in summary.iterrows():
        column, dataset = PAPER_COLUMNS.get(int(row["n_per_class"]), (None, None))
        key = (row["classifier"], int(row["layer_index"]))
        found = column is not None and key in paper.index
        paper_cols["paper_dataset"].append(dataset)
        paper_cols["paper_accuracy"].append(paper.loc[key, f"{column}_acc"] if found else None)
        paper_cols["paper_std"].append(paper.loc[key, f"{column}_std"] if found else None)
    for name, values in paper_cols.items():
        summary[name] = values
    order = {name: i for i, name in enumerate(CLASSIFIERS)}
    summary = summary.sort_values(
        ["n_per_class", "classifier", "layer_index"], key=lambda c: c.map(order) if c.name == "classifier" else c
    )
    return summary.reset_index(drop=True)
