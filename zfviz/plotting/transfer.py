"""Fig. 9: accuracy against the number of training images per class, pretrained vs non-pretrained
(Section 5.2), and the per-class AP bars beside Table 6."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from zfviz.plotting import plt

LABELS = {
    "softmax": "pretrained, softmax on fc7",
    "svm": "pretrained, linear SVM on fc7",
    "scratch": "non-pretrained (trained from scratch)",
    "multilabel": "pretrained, one sigmoid per class",
}


def accuracy_vs_examples(summary: pd.DataFrame, paper: pd.DataFrame | None = None, title: str = "") -> Figure:
    """Left: ``summary`` (head, n_per_class, accuracy, std) as one line per head with +-std bars.
    Right, when ``paper`` (Table 5: method, acc_N, std_N) is given: the paper's Caltech-256 rows."""
    panels = 2 if paper is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4), constrained_layout=True, squeeze=False)
    ax = axes[0, 0]
    _heads(ax, summary)
    ax.set(xlabel="training images per class", ylabel="mean per-class accuracy (%)", title=title or "ours")
    if paper is not None:
        ax2 = axes[0, 1]
        ns = sorted(int(c.split("_")[1]) for c in paper.columns if c.startswith("acc_"))
        for i, row in paper.reset_index(drop=True).iterrows():
            acc = np.array([row[f"acc_{n}"] for n in ns], dtype=float)
            std = np.nan_to_num(np.array([row.get(f"std_{n}", np.nan) for n in ns], dtype=float))
            ax2.errorbar(ns, acc, yerr=std, marker="s", ms=4, capsize=3, color=f"C{i + 4}", label=row["method"])
        ax2.set(xlabel="training images per class", ylabel="mean per-class accuracy (%)",
                title="the paper: Caltech-256 (Table 5)")  # fmt: skip
    for a in axes.flat:
        a.set_ylim(0, 100)
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc="lower right")
    return fig


def _heads(ax, summary: pd.DataFrame) -> None:
    """One line per head of ``summary`` (head, n_per_class, accuracy, std), +-std bars, a colour per head."""
    colours = {h: f"C{i}" for i, h in enumerate(LABELS)}
    for head, df in summary.groupby("head", sort=False):
        df = df.sort_values("n_per_class")
        std = df["std"].fillna(0).to_numpy()
        ax.errorbar(df["n_per_class"], df["accuracy"], yerr=std, marker="o", ms=4, capsize=3,
                    color=colours.get(head), label=LABELS.get(head, head))  # fmt: skip


def stand_ins_side_by_side(panels: dict[str, pd.DataFrame], title: str = "") -> Figure:
    """Fig. 9's plot once per stand-in (panel title -> summary), on one y axis: the cross-domain and
    the within-domain analogue next to each other, each head the same colour in both."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), constrained_layout=True,
                             squeeze=False, sharey=True)  # fmt: skip
    for ax, (name, summary) in zip(axes[0], panels.items(), strict=True):
        _heads(ax, summary)
        ax.set(xlabel="training images per class", ylim=(0, 100))
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0, 0].set_ylabel("mean per-class accuracy (%)")
    if title:
        fig.suptitle(title)
    return fig


def ap_bars(rows: pd.DataFrame, title: str = "") -> Figure:
    """Per-class AP (rows: head, class, ap), one bar group per class, the mean last."""
    heads = list(dict.fromkeys(rows["head"]))
    classes = list(dict.fromkeys(rows["class"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(classes) * len(heads) / 2 + 3), 3.8), constrained_layout=True)
    width = 0.8 / len(heads)
    x = np.arange(len(classes))
    for i, head in enumerate(heads):
        ap = rows[rows["head"] == head].set_index("class").reindex(classes)["ap"]
        ax.bar(x + (i - (len(heads) - 1) / 2) * width, ap, width, label=LABELS.get(head, head), color=f"C{i}")
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 12 else 0, ha="right" if len(classes) > 12 else "center")
    ax.set(ylabel="average precision (%)", ylim=(0, 100), title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: VOC APs reach the top
    return fig
