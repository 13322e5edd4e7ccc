"""The figure of ``zfviz viz attribution``: each image beside its attribution map (issue 13).

Arrays in, a ``Figure`` out. Rows are images; the columns are the input and the map. A signed map
(gradients, relevance, projections) is summed over colour channels and drawn in a diverging colormap,
white at zero, red positive and blue negative, scaled to its own 99.5th percentile of magnitudes
(``attribution_grid.signed_map``, as the comparison figure draws it). A Grad-CAM map is non-negative
and coarse: it is laid over the image as a heatmap, as Selvaraju et al. (2017) show it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from zfviz.plotting import plt
from zfviz.plotting.attribution_grid import signed_map
from zfviz.plotting.deconv import show_image


def heat(tile: np.ndarray) -> np.ndarray:
    """(C, h, w) non-negative map -> (h, w) in [0, 1], channels summed, scaled to its maximum."""
    tile = np.asarray(tile, dtype=np.float32).sum(axis=0)
    top = float(tile.max())
    return np.clip(tile / top, 0.0, 1.0) if top > 0 else np.zeros_like(tile)


def attribution_figure(
    images: np.ndarray,
    maps: np.ndarray,
    row_labels: Sequence[str],
    *,
    method: str,
    overlay: bool = False,
    title: str = "",
    tile_inches: float = 2.0,
) -> Figure:
    """``images``: uint8 ``N x C x H x W``; ``maps``: ``N x C' x H x W`` (``C'`` 1 or ``C``), one per image.

    ``overlay``: draw each map as a heatmap over its image (Grad-CAM) instead of beside it, signed.
    """
    n = len(images)
    if len(maps) != n or len(row_labels) != n:
        raise ValueError(f"one map and one label per image: {n} images, {len(maps)} maps, {len(row_labels)} labels")
    fig = plt.figure(figsize=(2 * tile_inches + 0.4, tile_inches * n + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(n, 2, squeeze=False))
    for i in range(n):
        picture = show_image(images[i])
        axes[i, 0].imshow(picture)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
        if overlay:
            axes[i, 1].imshow(picture)
            axes[i, 1].imshow(heat(maps[i]), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
        else:
            axes[i, 1].imshow(signed_map(maps[i]), cmap="bwr", vmin=-1.0, vmax=1.0, interpolation="nearest")
    axes[0, 0].set_title("input", fontsize=9)
    axes[0, 1].set_title(method.replace("_", " "), fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
