"""Activation maximization figures (issue 14): rows of synthesized images, one tile per target.

Each tile is stretched to its own range (min to max): a maximized image's pattern is the point, and
images of different parameterizations and units differ in contrast by orders of magnitude. The caption
under a tile says how strongly the image drives its target against the strongest real image.
Arrays in, a ``Figure`` out; ``results.save_figure`` writes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from zfviz.plotting import plt


def stretched(tile: np.ndarray) -> np.ndarray:
    """(C, h, w) image -> (h, w, 3) in [0, 1], its minimum black and its maximum white."""
    tile = np.asarray(tile, dtype=np.float32)
    low, high = float(tile.min()), float(tile.max())
    tile = (tile - low) / (high - low) if high > low else np.full_like(tile, 0.5)
    if tile.shape[0] == 1:
        tile = np.repeat(tile, 3, axis=0)
    return tile[:3].transpose(1, 2, 0)


def maximize_grid(
    rows: Mapping[str, Sequence[tuple[np.ndarray, str]]], *, title: str = "", tile_inches: float = 0.85
) -> Figure:
    """``rows``: row label -> [(image C x H x W, caption), ...]; rows may differ in length."""
    labels = list(rows)
    width = max((len(tiles) for tiles in rows.values()), default=1)
    fig, axes = plt.subplots(
        len(labels), width, figsize=(tile_inches * width + 1.2, (tile_inches + 0.25) * len(labels) + 0.6),
        squeeze=False, layout="constrained",
    )  # fmt: skip
    for i, label in enumerate(labels):
        for j in range(width):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j >= len(rows[label]):
                ax.axis("off")
                continue
            image, caption = rows[label][j]
            ax.imshow(stretched(image))
            ax.set_xlabel(caption, fontsize=5)
        axes[i, 0].set_ylabel(label, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
