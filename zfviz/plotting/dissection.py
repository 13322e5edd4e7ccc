"""Network dissection's figure (Bau et al. 2017; issue 15): how many units of each layer detect a
concept, per net and per concept category. A table in, a ``Figure`` out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import ScaledTranslation

from zfviz.dissection import detector_counts
from zfviz.plotting import plt

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
CATEGORIES = ("color", "object", "part", "material", "scene", "texture")  # Broden's order
NO_LAYER = "0.8"  # the grey of a cell whose net has no such layer


def count_panel(ax, counts: Mapping[str, pd.DataFrame], categories: Sequence[str], iou: float = 0.04) -> None:
    """A nets x layers grid: each cell its detector count, with the count per category written out
    (c3 o1: three color and one object detectors); grey where the net has no such layer (a Table 3
    variant with that layer removed), said in a legend under the panel when there is such a cell."""
    grid = np.full((len(counts), len(LAYERS)), np.nan)
    for r, table in enumerate(counts.values()):
        for layer, row in table.iterrows():
            c = LAYERS.index(layer)
            grid[r, c] = row[list(categories)].sum()
            parts = " ".join(f"{cat[0]}{int(row[cat])}" for cat in categories if row[cat])
            ax.text(c, r, f"{int(grid[r, c])}" + (f"  ({parts})" if parts else ""), ha="center", va="center",
                    fontsize=8)  # fmt: skip
    top = max(4.0, float(np.nanmax(grid)) * 1.6) if np.isfinite(grid).any() else 4.0
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="Blues", aspect="auto", vmin=0, vmax=top)
    ax.set_facecolor(NO_LAYER)
    ax.set_xticks(range(len(LAYERS)), LAYERS, fontsize=8)
    ax.set_yticks(range(len(counts)), list(counts), fontsize=8)
    ax.set_xlabel("layer", fontsize=9)
    ax.set_ylabel("net", fontsize=9)
    ax.set_title(
        f"detectors (units with IoU >= {iou:g} for a concept) per layer; "
        + ", ".join(f"{cat[0]} = {cat}" for cat in categories),
        fontsize=9,
    )
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    bar.set_label("detectors in the layer", fontsize=8)
    bar.ax.tick_params(labelsize=8)
    if np.isnan(grid).any():  # below the x label, whatever the panel's height (an offset in points, not axes)
        below = ax.transAxes + ScaledTranslation(0, -34 / 72, ax.figure.dpi_scale_trans)
        ax.legend(handles=[Patch(color=NO_LAYER, label="grey: the net has no such layer (removed in Table 3)")],
                  loc="upper left", bbox_to_anchor=(0.0, 0.0), bbox_transform=below, fontsize=8,
                  frameon=False)  # fmt: skip


def dissection_counts(table: pd.DataFrame, title: str = "") -> Figure:
    """The count grid of ``dissection_<preset>.csv`` (net, layer, unit, concept, category, iou, threshold,
    detector), one row per net in table order."""
    found = set(table["category"].dropna())
    categories = [c for c in CATEGORIES if c in found] + sorted(found - set(CATEGORIES))
    counts = {net: detector_counts(rows, categories) for net, rows in table.groupby("net", sort=False)}
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(counts) + 2.2), layout="constrained")
    count_panel(ax, counts, categories)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
