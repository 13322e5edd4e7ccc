"""The figure of ``zfviz viz attribution``: each image beside its attribution map (issue 13).

Arrays in, a ``Figure`` out. Rows are images; the columns are the input and the map. The maps are drawn
on the scale that fits them (``attribution_grid.scale_of``, as the comparison figure draws them): a signed
map (gradients, relevance, projections) is summed over colour channels and drawn in a diverging colormap,
white at zero, red positive and blue negative, scaled to its own 99.5th percentile of magnitudes; a method
whose maps are all non-negative (RISE) on a sequential scale from 0 to each map's maximum. A Grad-CAM map is
non-negative and coarse: it is laid over the image as a heatmap, as Selvaraju et al. (2017) show it. The
scale used has its colour bar under the maps.

At most ``bounded.MAX_ROWS`` images are drawn (issue 29: 2,000 images were a 4,000-inch figure of 4,000 axes
that matplotlib never finished laying out); the figure then says, under its title, how many it shows of how many.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from zfviz.plotting import plt
from zfviz.plotting.attribution_grid import FONT, colour_bars, draw_map, scale_of
from zfviz.plotting.bounded import MAX_ROWS, cap, record
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
    max_rows: int = MAX_ROWS,
) -> Figure:
    """``images``: uint8 ``N x C x H x W``; ``maps``: ``N x C' x H x W`` (``C'`` 1 or ``C``), one per image.

    ``overlay``: draw each map as a heatmap over its image (Grad-CAM) instead of beside it. The first
    ``max_rows`` images are drawn; the scale is chosen from all ``N`` maps.
    """
    n = len(images)
    if len(maps) != n or len(row_labels) != n:
        raise ValueError(f"one map and one label per image: {n} images, {len(maps)} maps, {len(row_labels)} labels")
    scale = scale_of(maps, overlay)
    rows, note = cap(n, "images", max_rows)
    fig = plt.figure(figsize=(2 * tile_inches + 1.0, tile_inches * rows + 1.6), layout="constrained")
    top, bars = fig.subfigures(2, 1, height_ratios=[tile_inches * rows, 0.9])
    axes = np.asarray(top.subplots(rows, 2, squeeze=False))
    for i in range(rows):
        picture = show_image(images[i])
        axes[i, 0].imshow(picture)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=FONT)
        draw_map(axes[i, 1], picture, maps[i], scale)
    axes[0, 0].set_title("input", fontsize=FONT + 1)
    axes[0, 1].set_title(method.replace("_", " "), fontsize=FONT + 1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    colour_bars(bars, {scale})
    caption = "\n".join(textwrap.fill(part, 50) for part in (title, note) if part)
    if caption:
        fig.suptitle(caption, fontsize=FONT + 2)
    return record(fig, [note])
