"""The cascading-randomization figure (Adebayo et al. 2018, Fig. 2 and 4; issue 16).

Top: one image's map per method (rows) as the net's layers are re-initialized from the top down
(columns: the trained net, then fc8 random, fc8 and fc7 random, ... every layer random). Each map is
shown as its magnitude (channels summed, then absolute, as Adebayo et al.'s main figures), stretched
from its own 1st to 99th percentile: a method that explains the model loses its structure as the columns go right.
Bottom: the mean Spearman rank correlation between each method's trained and randomized maps, per
cascade step, over the images the caller says (``images``); a curve that stays near 1 is a method whose
maps do not depend on the weights. The random map's curve is 1 by construction: a dotted reference line.
Arrays in, a ``Figure`` out; ``results.save_figure`` writes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from zfviz.plotting import plt
from zfviz.plotting.deconv import show_image

# The "random" method's map ignores the net, so it is the same map before and after randomization: its
# similarity is 1.0 by construction, a reference line for the others, never a method to rank.
REFERENCE = "random"
REFERENCE_LABEL = "random map: 1.0 by construction (reference, not a method)"


def magnitude(amap: np.ndarray) -> np.ndarray:
    """(h, w) map -> |map| stretched from its 1st to its 99th percentile onto [0, 1] (a map whose
    magnitudes all sit on an offset, as RISE's do, shows its structure, not its offset)."""
    amap = np.abs(np.asarray(amap, dtype=np.float32))
    low, high = (float(v) for v in np.percentile(amap, [1, 99]))
    if high <= low:
        high = float(amap.max())
    return np.clip((amap - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(amap)


def randomization_figure(
    image: np.ndarray,
    maps: Mapping[str, Sequence[np.ndarray]],
    steps: Sequence[str],
    curves: Mapping[str, Sequence[float]],
    *,
    images: int = 1,
    title: str = "",
    tile_inches: float = 0.75,
) -> Figure:
    """``image``: uint8 (C, h, w), the explained image; ``maps``: method -> one (h, w) map per step of
    ``steps`` (``"none"`` first: the trained net); ``curves``: method -> mean Spearman per step over
    ``images`` test images. ``REFERENCE``'s curve is drawn as a labelled reference line, not a method."""
    methods = list(maps)
    for method in methods:
        if len(maps[method]) != len(steps):
            raise ValueError(f"{method}: one map per cascade step ({len(steps)}), got {len(maps[method])}")
    cols = 1 + len(steps)
    fig = plt.figure(figsize=(tile_inches * cols + 2.4, tile_inches * len(methods) + 4.0), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[tile_inches * len(methods) + 0.4, 3.4])
    _map_grid(top, image, maps, steps)
    _curves(bottom.subplots(), curves, steps, images)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _map_grid(sub, image: np.ndarray, maps: Mapping[str, Sequence[np.ndarray]], steps: Sequence[str]) -> None:
    """One row per method: the image, then its map at each cascade step, with the maps' colour bar."""
    axes = np.asarray(sub.subplots(len(maps), 1 + len(steps), squeeze=False))
    labels = ["trained" if s == "none" else f"+{s}" for s in steps]
    for row, (method, row_maps) in enumerate(maps.items()):
        axes[row, 0].imshow(show_image(image))
        name = f"{method}\n(reference)" if method == REFERENCE else method
        axes[row, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
        for col, amap in enumerate(row_maps, start=1):
            axes[row, col].imshow(magnitude(amap), cmap="magma", vmin=0, vmax=1)
            if row == 0:
                axes[row, col].set_title(labels[col - 1], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    sub.suptitle("maps of 1 test image as the layers are re-initialized, cumulatively from the top", fontsize=9)
    bar = sub.colorbar(ScalarMappable(Normalize(0, 1), "magma"), ax=axes, shrink=0.5, aspect=30)
    bar.set_label("|map|, from its 1st (0) to its 99th percentile (1)", fontsize=8)
    bar.ax.tick_params(labelsize=8)


def _curves(ax, curves: Mapping[str, Sequence[float]], steps: Sequence[str], images: int) -> None:
    """Each method's mean Spearman per step; the random map as a dotted reference line."""
    colors = plt.get_cmap("tab10")
    methods = [m for m in curves if m != REFERENCE]
    for i, method in enumerate(methods):  # past ten methods the colours repeat with another marker
        ax.plot(range(len(steps)), curves[method], marker="os^D"[i // 10 % 4], markersize=4, color=colors(i % 10),
                label=method, zorder=3)  # fmt: skip
    if REFERENCE in curves:  # 1.0 by construction: a yardstick under the methods, not the least sensitive one
        ax.plot(range(len(steps)), curves[REFERENCE], color="0.3", ls=":", lw=1.5, label=REFERENCE_LABEL, zorder=2)
    ax.set_xticks(range(len(steps)), ["trained", *[f"+{s}" for s in steps[1:]]], fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    noun = "image" if images == 1 else "images"
    ax.set_ylabel(f"Spearman (|trained|, |randomized|)\nmean over {images} test {noun}", fontsize=8)
    ax.set_xlabel("layers re-initialized, cumulatively from the top", fontsize=8)
    ax.axhline(0, color="gray", linewidth=0.5)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def randomization_summary(table: pd.DataFrame, title: str = "") -> Figure:
    """Each method's similarity between its maps from the trained and the fully randomized net, with its
    interval, one panel per net. ``table``: ``evaluation_<preset>.csv`` (net, method, metric, mean,
    ci_low, ci_high, n), its randomization_spearman and randomization_ssim rows; the number of images
    is each row's n, said on its label. The random map is a dotted reference line at its value."""
    rows = table[table["metric"].isin(RANDOMIZATION_METRICS)]
    nets = list(dict.fromkeys(rows["net"]))
    fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets), 5.2), squeeze=False, sharey=True,
                             layout="constrained")  # fmt: skip
    for ax, net in zip(axes[0], nets, strict=True):
        _summary_panel(ax, rows[rows["net"] == net])
        ax.set_title(net, fontsize=10)
    axes[0, 0].set_ylabel("method (n: images explained)", fontsize=9)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


RANDOMIZATION_METRICS = {
    "randomization_spearman": "Spearman rank correlation",
    "randomization_ssim": "SSIM",
}


def _summary_panel(ax, rows: pd.DataFrame) -> None:
    methods = [m for m in dict.fromkeys(rows["method"]) if m != REFERENCE]
    y = np.arange(len(methods))[::-1]
    for k, (metric, name) in enumerate(RANDOMIZATION_METRICS.items()):
        part = rows[rows["metric"] == metric].set_index("method")
        at = part.reindex(methods)
        offset = 0.15 * (1 - 2 * k)
        ax.errorbar(at["mean"], y + offset, xerr=[at["mean"] - at["ci_low"], at["ci_high"] - at["mean"]],
                    fmt="o", ms=4, capsize=2, color=f"C{k}", label=f"{name} (95% interval over images)")  # fmt: skip
    reference = rows[rows["method"] == REFERENCE]["mean"]
    if len(reference):  # the same value under both measures: one line
        ax.axvline(float(reference.iloc[0]), color="0.4", ls=":", lw=1.2, label=REFERENCE_LABEL)
    n = rows[rows["method"] != REFERENCE].groupby("method")["n"].min().reindex(methods)
    ax.set_yticks(y, [f"{m} (n={int(c)})" for m, c in zip(methods, n, strict=True)], fontsize=8)
    ax.axvline(0, color="0.3", lw=0.6)
    ax.set_xlabel("similarity of |map| trained vs every layer randomized\n(lower: the map depends on the weights)",
                  fontsize=9)  # fmt: skip
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
