"""Transfer to other data sets with the layers 1-7 of a pretrained net kept fixed (Section 5.2).

- Splits: ``n`` training images per class drawn at random (seeded), the rest (or at most
  ``test_per_class``) for testing, as in Tables 4-5; every split is its own seed.
- Heads on frozen features: a new softmax (the paper's fc8) trained with SGD, or a linear SVM
  (scikit-learn's ``LinearSVC``, one-vs-rest). Both see each feature vector scaled to unit RMS
  (divided by its root mean square): a per-image rescaling that needs no statistics of the tiny
  training sets of Fig. 9 and keeps one learning rate and one C right for 64 or 4096 features.
- PASCAL (Table 6): the same softmax on one label per image (the paper's choice), a multi-label
  head (one sigmoid per class, binary cross-entropy) and per-class linear SVMs.
- The non-pretrained baseline: the same architecture, every layer re-initialized, trained on the
  target training images with the shared engine (same input scaling as the pretrained arm).
- Metrics: mean of per-class accuracies; per-class average precision and its mean.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.data.tensor_loader import TensorLoader
from zfviz.engine import Optimization, build_optimizer, train_one_epoch
from zfviz.errors import UserError
from zfviz.schedules import cosine

# --- splits ------------------------------------------------------------------------------------


def split_per_class(
    labels: np.ndarray,
    n_train: int,
    *,
    seed: int,
    test_per_class: int | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): ``n_train`` per class, then the rest or ``test_per_class``.

    A class with fewer than ``n_train + 1`` images is a UserError naming it.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        if len(members) < n_train + 1:
            name = classes[k] if classes is not None else str(k)
            raise UserError(
                f"class {name!r} has {len(members)} images: too few for {n_train} training images per class plus a test image"
            )
        members = rng.permutation(members)
        train.append(members[:n_train])
        rest = members[n_train:]
        test.append(rest if test_per_class is None else rest[:test_per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# --- metrics -----------------------------------------------------------------------------------


def mean_per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The mean over the classes present in ``y_true`` of each class's accuracy (Tables 4, 5)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean([np.mean(y_pred[y_true == k] == k) for k in np.unique(y_true)]))


def average_precision(y_true: np.ndarray, scores: np.ndarray, *, interpolated: bool = True) -> float:
    """Area under the precision-recall curve of one class; NaN when it has no positive.

    Tied scores form one threshold. ``interpolated`` (VOC 2010 onwards, hence VOC 2012) replaces
    each precision by the best precision at any higher recall before summing over the recall
    steps; ``interpolated=False`` is the plain step sum, scikit-learn's ``average_precision_score``.
    """
    y_true, scores = np.asarray(y_true, dtype=bool), np.asarray(scores, dtype=np.float64)
    positives = int(y_true.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    y_sorted, s_sorted = y_true[order], scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tp = np.cumsum(y_sorted)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / positives
    if interpolated:
        precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(steps * precision))


def per_class_ap(targets: np.ndarray, scores: np.ndarray, ignore: np.ndarray | None = None, **kw) -> np.ndarray:
    """AP of every class (column); entries marked in ``ignore`` (VOC "difficult") are left out."""
    out = []
    for k in range(targets.shape[1]):
        keep = np.ones(len(targets), dtype=bool) if ignore is None else ~ignore[:, k]
        out.append(average_precision(targets[keep, k], scores[keep, k], **kw))
    return np.asarray(out)


# --- heads on frozen features ------------------------------------------------------------------


def unit_rms(features: np.ndarray) -> np.ndarray:
    """Each row divided by its root mean square (all-zero rows stay zero)."""
    features = np.asarray(features, dtype=np.float32)
    rms = np.sqrt(np.mean(features**2, axis=1, keepdims=True))
    return features / np.maximum(rms, 1e-12)


@contextlib.contextmanager
def one_thread():
    """Run tiny ops (a linear head on a few hundred vectors) on one thread: two OpenMP threads
    spinning on a shared, busy machine made them about 40 times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class SoftmaxRecipe:
    """How a softmax head is trained: ``steps`` of SGD on ``batch_size`` features, ``lr`` with cosine
    decay, ``momentum`` and ``weight_decay`` (the ``softmax:`` section of the transfer config)."""

    steps: int = 500
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4


def fit_softmax(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    recipe: SoftmaxRecipe | None = None,
    *,
    seed: int = 0,
    multilabel: bool = False,
    ignore: np.ndarray | None = None,
) -> nn.Linear:
    """A new fc8 trained as ``recipe`` says (SGD, momentum, cosine decay) on fixed features; zero-initialized.

    ``multilabel``: ``labels`` is multi-hot (N, C) and the loss is a sigmoid cross-entropy per
    class, with the ``ignore`` entries weighted 0. Otherwise ``labels`` are class indices.
    """
    recipe = recipe or SoftmaxRecipe()
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(unit_rms(features))
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32 if multilabel else torch.long)
    weight = torch.ones_like(y) if not multilabel or ignore is None else torch.from_numpy(~ignore).float()
    head = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s, recipe.steps))
    with one_thread():
        for idx in _batches(len(x), min(recipe.batch_size, len(x)), recipe.steps, gen):
            logits = head(x[idx])
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(logits, y[idx], weight=weight[idx])
            else:
                loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterator[Tensor]:
    """``steps`` batches of indices into ``n`` rows: passes over a fresh permutation, a short tail dropped."""
    order, cursor = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        yield order[cursor : cursor + batch_size]
        cursor += batch_size


@torch.no_grad()
def head_scores(head: nn.Linear, features: np.ndarray) -> np.ndarray:
    return head(torch.from_numpy(unit_rms(features))).numpy()


def fit_svm(features: np.ndarray, labels: np.ndarray, *, C: float = 1.0, ignore: np.ndarray | None = None):
    """Linear SVM(s) on fixed features: one-vs-rest over class indices, or one per column of a
    multi-hot (N, C) ``labels`` (``ignore`` entries left out of that class's training set).
    Returns ``scores(features) -> (N, C)`` decision values."""
    from sklearn.svm import LinearSVC

    x = unit_rms(features)
    labels = np.asarray(labels)

    def make() -> LinearSVC:
        return LinearSVC(C=C, max_iter=20_000, random_state=0)

    if labels.ndim == 1:
        svm = make().fit(x, labels)
        classes = svm.classes_

        def scores(f: np.ndarray) -> np.ndarray:
            d = svm.decision_function(unit_rms(f))
            return np.stack([-d, d], axis=1) if len(classes) == 2 else d

        return scores
    svms = []
    for k in range(labels.shape[1]):
        keep = np.ones(len(x), dtype=bool) if ignore is None else ~ignore[:, k]
        column = labels[keep, k]
        svms.append(make().fit(x[keep], column) if 0 < column.sum() < len(column) else float(column.mean() or -1))

    def multi_scores(f: np.ndarray) -> np.ndarray:
        f = unit_rms(f)
        return np.stack(
            [s.decision_function(f) if hasattr(s, "decision_function") else np.full(len(f), s) for s in svms], 1
        )

    return multi_scores


# --- the protocol: splits x heads --------------------------------------------------------------


@dataclass(frozen=True)
class SplitProtocol:
    """The splits of Tables 4, 5, 7 and Fig. 9: for each N of ``n_per_class``, ``splits`` draws of N
    training images per class (split ``s`` with seed ``seed + s``), the rest (at most
    ``test_per_class``) for testing; ``classes``: the class names, for a class too small to split."""

    n_per_class: Sequence[int]
    splits: int
    seed: int = 0
    test_per_class: int | None = None
    classes: Sequence[str] | None = None


@dataclass(frozen=True)
class HeadRecipes:
    """How each head is trained: the softmax's ``softmax`` recipe, the SVM's ``svm_c``; the
    non-pretrained head reads images, not features: ``scratch(train, test, seed)`` returns its
    predicted classes of the test images."""

    softmax: SoftmaxRecipe = SoftmaxRecipe()
    svm_c: float = 1.0
    scratch: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None


def _predict(
    head: str, feats, labels: np.ndarray, split: tuple[np.ndarray, np.ndarray], num_classes: int,
    recipes: HeadRecipes, seed: int,
) -> np.ndarray:  # fmt: skip
    """``head``'s predicted classes of the test images of ``split`` (train, test), trained on its train images."""
    train, test = split
    if head == "softmax":
        fc8 = fit_softmax(feats[train], labels[train], num_classes, recipes.softmax, seed=seed)
        return head_scores(fc8, feats[test]).argmax(1)
    if head == "svm":
        # LinearSVC's columns are its classes_ in sorted order: every class is in each split.
        return fit_svm(feats[train], labels[train], C=recipes.svm_c)(feats[test]).argmax(1)
    if head == "scratch":
        return recipes.scratch(train, test, seed)
    raise ValueError(f"unknown head {head!r}; choose from softmax, svm, scratch")


def evaluate_heads(
    features: Mapping[str, np.ndarray | None],
    labels: np.ndarray,
    heads: Sequence[str],
    protocol: SplitProtocol,
    recipes: HeadRecipes | None = None,
    *,
    num_classes: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """One row per (N, split, layer, head): the mean per-class accuracy (%) on that split's test images.

    The splits of ``protocol``; split ``s``'s seed also seeds its softmax head, and the split is the
    same for every layer and head, so they are compared on the same images. ``features`` maps a
    layer to its (N, D) frozen features; the scratch head's row has layer None. ``log`` gets one
    line per split.
    """
    recipes = recipes or HeadRecipes()
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if "scratch" in heads and (recipes.scratch is None or len(features) != 1):
        raise ValueError("the scratch head needs a scratch() trainer and exactly one layer")
    rows: list[dict] = []
    for n in protocol.n_per_class:
        for split in range(protocol.splits):
            split_seed = protocol.seed + split
            train, test = split_per_class(
                labels, n, seed=split_seed, test_per_class=protocol.test_per_class, classes=protocol.classes
            )
            first = len(rows)
            for layer, feats in features.items():
                for head in heads:
                    start = time.perf_counter()
                    pred = _predict(head, feats, labels, (train, test), num_classes, recipes, split_seed)
                    rows.append(
                        {"head": head, "layer": None if head == "scratch" else layer, "n_per_class": n,
                         "split": split, "seed": split_seed, "train_images": len(train), "test_images": len(test),
                         "features": None if feats is None or head == "scratch" else feats.shape[1],
                         "accuracy": 100 * mean_per_class_accuracy(labels[test], pred),
                         "wall_time_s": round(time.perf_counter() - start, 3)}
                    )  # fmt: skip
            if log is not None:
                log(f"N={n} split {split}: " + ", ".join(f"{r['head']} {r['accuracy']:.1f}%" for r in rows[first:]))
    return rows


# --- the non-pretrained baseline ---------------------------------------------------------------


@dataclass(frozen=True)
class ScratchRecipe:
    """How the non-pretrained net trains: ``epochs`` passes capped at ``max_steps`` updates (Fig. 9
    goes from 1 to 60 images per class), ``batch_size``, the optimizer config ``optim_cfg``, random
    horizontal ``flip`` and translation by up to ``crop_pad`` pixels."""

    epochs: int
    max_steps: int
    batch_size: int
    optim_cfg: Any
    flip: bool = True
    crop_pad: int = 0


def train_scratch(
    build, images: torch.Tensor, labels: np.ndarray, prep, recipe: ScratchRecipe, *, seed: int, device="cpu"
) -> nn.Module:
    """``build()`` a freshly initialized net and train all of it on ``images`` (uint8, at input size) as ``recipe`` says."""
    torch.manual_seed(seed)
    model = build().to(device)
    mean, std = [m / 255 for m in prep.mean], [s / 255 for s in prep.std]
    batch_size = min(recipe.batch_size, len(labels))
    loader = TensorLoader(
        images, torch.as_tensor(labels), batch_size, mean=mean, std=std, channels=prep.in_chans,
        shuffle=True, flip=recipe.flip, crop_pad=recipe.crop_pad, seed=seed,
    )  # fmt: skip
    epochs = max(1, min(recipe.epochs, recipe.max_steps // len(loader)))
    optimizer, step_sched, _ = build_optimizer(model, recipe.optim_cfg, len(loader), epochs)
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        train_one_epoch(model, loader, Optimization(optimizer, step_sched), device=torch.device(device))
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, prep, *, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Logits (N, C) of ``model`` on uint8 ``images``."""
    model.eval()
    out = [model(prep(images[i : i + batch_size]).to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()
