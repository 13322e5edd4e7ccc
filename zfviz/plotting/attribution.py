"""The figure of ``zfviz viz attribution``: each image beside its attribution map (issue 13).

Arrays in, a ``Figure`` out. Rows are images; the columns are the input and the map. A signed map
(gradients, relevance, projections) is summed over colour channels and drawn in a diverging colormap,
white at zero, red positive and blue negative, scaled to its own 99.5th percentile of magnitudes
(``attribution_grid.signed_map``, as the comparison figure draws it). A Grad-CAM map is non-negative
and coarse: it is laid over the image as a heatmap, as Selvaraju et al. (2017) show it. The scale
used has its colour bar under the maps.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from zfviz.plotting import plt
from zfviz.plotting.attribution_grid import FONT, colour_bars, draw_map
from zfviz.plotting.deconv import show_image


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
    fig = plt.figure(figsize=(2 * tile_inches + 1.0, tile_inches * n + 1.6), layout="constrained")
    top, bars = fig.subfigures(2, 1, height_ratios=[tile_inches * n, 0.9])
    axes = np.asarray(top.subplots(n, 2, squeeze=False))
    for i in range(n):
        picture = show_image(images[i])
        axes[i, 0].imshow(picture)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=FONT)
        draw_map(axes[i, 1], picture, maps[i], overlay)
    axes[0, 0].set_title("input", fontsize=FONT + 1)
    axes[0, 1].set_title(method.replace("_", " "), fontsize=FONT + 1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    colour_bars(bars, signed=not overlay, overlaid=overlay)
    if title:
        fig.suptitle(textwrap.fill(title, 50), fontsize=FONT + 2)
    return fig
