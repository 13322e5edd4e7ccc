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
# A point whose mean falls this many points below both neighbours along N is a split whose training
# diverged (one split far below the others), not a trend: it is ringed, with its std.
DIVERGED_DIP = 10.0


def accuracy_vs_examples(summary: pd.DataFrame, paper: pd.DataFrame | None = None, title: str = "") -> Figure:
    """Left: ``summary`` (head, n_per_class, accuracy, std) as one line per head with +-std bars.
    Right, when ``paper`` (Table 5: method, acc_N, std_N) is given: the paper's Caltech-256 rows."""
    panels = 2 if paper is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4), constrained_layout=True, squeeze=False)
    ax = axes[0, 0]
    _heads(ax, summary)
    ax.set(xlabel="training images per class", ylabel="mean per-class accuracy (%)", title=title or "ours")
    ax.set_xlabel(f"training images per class\n{bars_note(summary)}", fontsize=9)
    if paper is not None:
        ax2 = axes[0, 1]
        ns = sorted(int(c.split("_")[1]) for c in paper.columns if c.startswith("acc_"))
        for i, row in paper.reset_index(drop=True).iterrows():
            acc = np.array([row[f"acc_{n}"] for n in ns], dtype=float)
            std = np.nan_to_num(np.array([row.get(f"std_{n}", np.nan) for n in ns], dtype=float))
            ax2.errorbar(ns, acc, yerr=std, marker="s", ms=4, capsize=3, color=f"C{i + 4}", label=row["method"])
        ax2.set(ylabel="mean per-class accuracy (%)", title="the paper: Caltech-256 (Table 5)")
        ax2.set_xlabel("training images per class\nbars: +-1 std as the paper prints it", fontsize=9)
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
        for _, point in diverged(df).iterrows():
            ax.scatter(point["n_per_class"], point["accuracy"], s=220, facecolors="none", edgecolors="red", lw=1.5,
                       zorder=5)  # fmt: skip
            ax.annotate(f"a split diverged?\n(std {point['std']:.0f})", (point["n_per_class"], point["accuracy"]),
                        xytext=(14, -30), textcoords="offset points", ha="left", fontsize=8, color="red")  # fmt: skip


def diverged(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of one head's curve (sorted by N) whose mean lies ``DIVERGED_DIP`` points below both neighbours."""
    acc = df["accuracy"].to_numpy(dtype=float)
    dip = np.zeros(len(acc), dtype=bool)
    if len(acc) > 2:
        dip[1:-1] = (acc[1:-1] < acc[:-2] - DIVERGED_DIP) & (acc[1:-1] < acc[2:] - DIVERGED_DIP)
    return df[dip]


def bars_note(summary: pd.DataFrame) -> str:
    """What an error bar is: the std over the run's splits (each a fresh draw of the training images)."""
    splits = sorted({int(s) for s in summary["splits"].dropna()}) if "splits" in summary else []
    count = "/".join(map(str, splits)) if splits else "the"
    return (
        f"bars: +-1 std over {count} splits (each its own draw of the training images)\n"
        f"red ring: a mean > {DIVERGED_DIP:.0f} points below both neighbours"
    )


def stand_ins_side_by_side(panels: dict[str, pd.DataFrame], title: str = "") -> Figure:
    """Fig. 9's plot once per stand-in (panel title -> summary), on one y axis: the cross-domain and
    the within-domain analogue next to each other, each head the same colour in both."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), constrained_layout=True,
                             squeeze=False, sharey=True)  # fmt: skip
    for ax, (name, summary) in zip(axes[0], panels.items(), strict=True):
        _heads(ax, summary)
        ax.set(ylim=(0, 100))
        ax.set_xlabel(f"training images per class\n{bars_note(summary)}", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0, 0].set_ylabel("mean per-class accuracy (%)")
    if title:
        fig.suptitle(title)
    return fig


def ap_bars(rows: pd.DataFrame, title: str = "", chance: pd.Series | None = None, chance_note: str = "") -> Figure:
    """Per-class AP (rows: head, class, ap), one bar group per class, the mean last. ``chance`` (class ->
    AP in %, the mean included): a class's AP by chance, its positive rate, drawn as a black tick per
    class and named in the legend with ``chance_note`` (where the rate comes from)."""
    heads = list(dict.fromkeys(rows["head"]))
    classes = list(dict.fromkeys(rows["class"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(classes) * len(heads) / 2 + 3), 3.8), constrained_layout=True)
    width = 0.8 / len(heads)
    x = np.arange(len(classes))
    for i, head in enumerate(heads):
        ap = rows[rows["head"] == head].set_index("class").reindex(classes)["ap"]
        ax.bar(x + (i - (len(heads) - 1) / 2) * width, ap, width, label=LABELS.get(head, head), color=f"C{i}")
    if chance is not None:
        at = chance.reindex(classes).to_numpy(dtype=float)
        ax.hlines(at, x - 0.45, x + 0.45, color="k", lw=1.5, zorder=4,
                  label=f"chance: the class's positive rate{chance_note}")  # fmt: skip
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 12 else 0, ha="right" if len(classes) > 12 else "center")
    ax.set(ylabel="average precision (%)", xlabel="class (mean: over the classes)", ylim=(0, 100), title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: VOC APs reach the top
    return fig
