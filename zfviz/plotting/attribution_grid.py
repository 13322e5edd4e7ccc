"""The taxonomy paper's comparison figure (FeatureVis style): the same images under every method.

Rows are images, columns the input and one attribution method each; several nets sit side by side,
one panel each, so a column compares methods and a row compares what the nets look at. Arrays in,
a ``Figure`` out; ``results.save_figure`` writes it.

Every map is summed over colour channels (a heatmap per image, as Captum and Zennit show them) and
then shown as ``zfviz.plotting.deconv`` shows a projection: zero at the middle of the scale (white),
scaled to its own contrast (the 99.5th percentile of its magnitudes), red positive and blue
negative. One scale per map: the methods' units differ (gradients, relevance, activations).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from zfviz.plotting import plt
from zfviz.plotting.deconv import show_image


def signed_map(tile: np.ndarray) -> np.ndarray:
    """(C, h, w) attribution -> (h, w) in [-1, 1]: channels summed, scaled by its 99.5th percentile."""
    tile = np.asarray(tile, dtype=np.float32).sum(axis=0)
    magnitude = np.abs(tile)
    scale = float(np.percentile(magnitude, 99.5)) or float(magnitude.max())
    return np.clip(tile / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(tile)


def attribution_grid(
    panels: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]],
    row_labels: Sequence[str],
    *,
    title: str = "",
    tile_inches: float = 0.9,
) -> Figure:
    """``panels``: net name -> (uint8 images ``N x C x H x W``, method -> maps ``N x C' x H x W``).

    Every panel must hold the same ``N`` images (``row_labels``, one per row); methods are columns
    in the order given.
    """
    names = list(panels)
    n = len(row_labels)
    columns = [1 + len(panels[name][1]) for name in names]
    fig = plt.figure(
        figsize=(tile_inches * (sum(columns) + 0.4 * len(names)), tile_inches * n + 0.8), layout="constrained"
    )
    subfigs = np.atleast_1d(fig.subfigures(1, len(names), width_ratios=columns))
    for sub, name in zip(subfigs, names, strict=True):
        images, maps = panels[name]
        if len(images) != n or any(len(m) != n for m in maps.values()):
            raise ValueError(f"panel {name}: every method needs one map per row ({n})")
        axes = np.asarray(sub.subplots(n, 1 + len(maps), squeeze=False))
        sub.suptitle(name, fontsize=10)
        for i in range(n):
            axes[i, 0].imshow(show_image(images[i]))
            axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
            for j, (method, m) in enumerate(maps.items(), start=1):
                axes[i, j].imshow(signed_map(m[i]), cmap="bwr", vmin=-1.0, vmax=1.0, interpolation="nearest")
                if i == 0:
                    axes[i, j].set_title(textwrap.fill(method.replace("_", " "), 12), fontsize=7)
        axes[0, 0].set_title("input", fontsize=7)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
