"""Activation maximization figures (issue 14): rows of synthesized images, one tile per target.

Each tile is stretched to its own range (min to max): a maximized image's pattern is the point, and
images of different parameterizations and units differ in contrast by orders of magnitude. The caption
under a tile names its target and says how strongly the image drives it against the strongest real
image (``ratio_caption``); a target no real image drives above 0 has no such yardstick, and says so.
Tiles are grouped by layer (a header over each group) so a reader finds a layer's units side by side.
Arrays in, a ``Figure`` out; ``results.save_figure`` writes it.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from zfviz.plotting import plt
from zfviz.plotting.bounded import cap, record
from zfviz.plotting.bounded import caption as with_notes

FONT = 8  # points: the smallest text of the figure (issue 27: readable at 100 %)


def stretched(tile: np.ndarray) -> np.ndarray:
    """(C, h, w) image -> (h, w, 3) in [0, 1], its minimum black and its maximum white."""
    tile = np.asarray(tile, dtype=np.float32)
    low, high = float(tile.min()), float(tile.max())
    tile = (tile - low) / (high - low) if high > low else np.full_like(tile, 0.5)
    if tile.shape[0] == 1:
        tile = np.repeat(tile, 3, axis=0)
    return tile[:3].transpose(1, 2, 0)


def ratio_caption(activation: float, real: float) -> str:
    """``activation / real`` as "3.4x" (two decimals below 1, never "-0.00x"), or "real <= 0" when no real
    image drives the target above 0: the ratio then means nothing (and is NaN in the table)."""
    if not (math.isfinite(real) and real > 0 and math.isfinite(activation)):
        return "real <= 0"
    value = activation / real
    text = f"{value:.1f}" if abs(value) >= 1 else f"{value:.2f}"
    return ("0.00" if float(text) == 0 else text) + "x"


def maximize_grid(
    rows: Mapping[str, Sequence[tuple[np.ndarray, str, str]]],
    *,
    title: str = "",
    tile_inches: float = 0.8,
) -> Figure:
    """``rows``: row label -> [(image C x H x W, group, caption), ...]; tiles of one group (a layer) are
    adjacent, and the first row's order of groups heads the columns. Rows may differ in length."""
    labels = list(rows)
    width, note = cap(
        max((len(tiles) for tiles in rows.values()), default=1), "targets", kept="the table beside it holds all"
    )
    rows = {label: list(tiles)[:width] for label, tiles in rows.items()}
    fig, axes = plt.subplots(
        len(labels), width, figsize=(tile_inches * width + 1.4, (tile_inches + 0.45) * len(labels) + 1.2),
        squeeze=False, layout="constrained",
    )  # fmt: skip
    for i, label in enumerate(labels):
        for j in range(width):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j >= len(rows[label]):
                ax.axis("off")
                continue
            image, group, caption = rows[label][j]
            ax.imshow(stretched(image))
            ax.set_xlabel(caption, fontsize=FONT, labelpad=2)
            if i == 0 and (j == 0 or rows[label][j - 1][1] != group):
                ax.set_title(group, fontsize=FONT + 1, loc="left", fontweight="bold")
        axes[i, 0].set_ylabel(label, fontsize=FONT + 1)
    if title or note:
        wrap = max(60, int(width * tile_inches * 13))
        fig.suptitle(with_notes(textwrap.fill(title, wrap), [textwrap.fill(note, wrap)]), fontsize=FONT + 2)
    return record(fig, [note])
