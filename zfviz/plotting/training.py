"""Training curves (the figure beside Table 2)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from zfviz.plotting import plt


def training_curves(histories: dict[str, pd.DataFrame], title: str = "") -> Figure:
    """Train loss and validation top-1/top-5 error per epoch, one line per model."""
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for i, (name, df) in enumerate(histories.items()):
        color = f"C{i}"
        ax_loss.plot(df["epoch"], df["train_loss"], color=color, label=f"{name} train")
        ax_loss.plot(df["epoch"], df["val_loss"], color=color, ls="--", label=f"{name} val")
        ax_err.plot(df["epoch"], df["val_top1_err"], color=color, label=f"{name} top-1")
        ax_err.plot(df["epoch"], df["val_top5_err"], color=color, ls=":", label=f"{name} top-5")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="validation error", yscale="log")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
