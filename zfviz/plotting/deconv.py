"""Figures of the deconvnet (Section 2.1): Fig. 2 (top 9), Fig. 4 (evolution), Fig. 6 (architecture).

Arrays in, a matplotlib ``Figure`` out. Grids of many small images are assembled as one mosaic
array per panel (one ``imshow``), which keeps hundreds of tiles fast to draw.
Projections are shown as the paper does: each one contrast-stretched on its own, zero at mid-gray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from zfviz.plotting import plt

GAP = 1.0  # white between tiles


def as_image_channels(projection: np.ndarray, channels: int) -> np.ndarray:
    """Sum a projection over colour channels when the data are gray repeated to 3 (chain rule of the repeat)."""
    projection = np.asarray(projection, dtype=np.float32)
    return projection.sum(axis=-3, keepdims=True) if channels == 1 else projection


def show_projection(tile: np.ndarray) -> np.ndarray:
    """(C, h, w) projection -> (h, w, 3) in [0, 1]: zero at 0.5, scaled to its own contrast.

    The scale is the 99.5th percentile of the magnitudes, not the maximum: a handful of very
    strong pixels would otherwise leave the rest of the pattern flat gray.
    """
    tile = np.asarray(tile, dtype=np.float32)
    magnitude = np.abs(tile)
    scale = float(np.percentile(magnitude, 99.5)) or float(magnitude.max())
    tile = 0.5 + 0.5 * tile / scale if scale > 0 else np.full_like(tile, 0.5)
    return _rgb(tile)


def show_image(tile: np.ndarray) -> np.ndarray:
    """(C, h, w) uint8 image -> (h, w, 3) in [0, 1]."""
    return _rgb(np.asarray(tile, dtype=np.float32) / 255.0)


def show_filter(tile: np.ndarray, scale: float) -> np.ndarray:
    """(C, h, w) filter -> (h, w, 3), with one ``scale`` for a whole bank so strengths stay comparable."""
    return _rgb(0.5 + 0.5 * np.asarray(tile, dtype=np.float32) / scale if scale > 0 else np.full_like(tile, 0.5))


def _rgb(tile: np.ndarray) -> np.ndarray:
    tile = np.clip(tile, 0.0, 1.0)
    if tile.shape[0] == 1:
        tile = np.repeat(tile, 3, axis=0)
    return tile[:3].transpose(1, 2, 0)


def resize(tile: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w, 3) tile to (size, size, 3)."""
    rows = np.arange(size) * tile.shape[0] // size
    cols = np.arange(size) * tile.shape[1] // size
    return tile[rows][:, cols]


def mosaic(tiles: Sequence[Sequence[np.ndarray | None]], gap: int = 1) -> np.ndarray:
    """Rows of equally sized (h, w, 3) tiles -> one image with ``gap`` white pixels between them; ``None`` is blank."""
    sample = next(t for row in tiles for t in row if t is not None)
    h, w = sample.shape[:2]
    ncols = max(len(row) for row in tiles)
    out = np.full((len(tiles) * (h + gap) - gap, ncols * (w + gap) - gap, 3), GAP, dtype=np.float32)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            if tile is not None:
                out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    return out


def square(items: list, ncols: int | None = None) -> list[list]:
    """``items`` in rows of ``ncols`` (default: a near-square grid); the last row may be short."""
    ncols = ncols or math.ceil(math.sqrt(len(items)))
    return [items[i : i + ncols] for i in range(0, len(items), ncols)]


def top9_block(projection: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """One map's (k, C, h, w) projections as a square grid, its patches as a grid beside it."""
    left = mosaic(square([show_projection(p) for p in projection]))
    right = mosaic(square([show_image(p) for p in patch]))
    gap = np.full((left.shape[0], max(2, left.shape[1] // 12), 3), GAP, dtype=np.float32)
    return np.concatenate([left, gap, right], axis=1)


def top9_figure(layers: dict[str, dict[str, np.ndarray]], title: str = "") -> Figure:
    """Fig. 2: per layer, a grid of maps; per map its top-k projections (left) and image patches (right).

    ``layers[name]`` holds ``projection`` (M, k, C, h, w), ``patch`` (M, k, C, h, w) and ``maps`` (M,).
    """
    panels = []
    for name, arrays in layers.items():
        blocks = [top9_block(p, q) for p, q in zip(arrays["projection"], arrays["patch"], strict=True)]
        size = max(b.shape[0] for b in blocks)
        panels.append((name, arrays, mosaic(square(blocks), gap=max(3, size // 10))))
    width = 9.0
    heights = [width * image.shape[0] / image.shape[1] + 0.3 for _, _, image in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(width, sum(heights) + 0.5), squeeze=False, height_ratios=heights,
        constrained_layout=True,
    )  # fmt: skip
    for ax, (name, arrays, image) in zip(axes[:, 0], panels, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_off()
        shown = ", ".join(str(int(m)) for m in arrays["maps"])
        k = arrays["projection"].shape[1]
        ax.set_title(f"{name}: maps {shown} (per map: top {k} projections | image patches)", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def evolution_figure(
    projections: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], epochs: Sequence[int], title: str = ""
) -> Figure:
    """Fig. 4: rows = maps, columns = epochs; each tile the strongest activation's (C, h, w) projection."""
    tile = 48
    rows = [[resize(show_projection(p), tile) for p in row] for row in projections]
    image = mosaic(rows, gap=2)
    width = max(4.5, 1.0 + 0.75 * len(epochs))  # room for the title when few epochs were saved
    fig, ax = plt.subplots(figsize=(width, 0.6 + 0.75 * len(rows)), constrained_layout=True)
    ax.imshow(image, interpolation="nearest")
    step = tile + 2
    ax.set_xticks([c * step + tile / 2 for c in range(len(epochs))], [f"epoch {e}" for e in epochs], fontsize=7)
    ax.set_yticks([r * step + tile / 2 for r in range(len(rows))], list(row_labels), fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8, wrap=True)
    return fig


def filter_bank(weight: np.ndarray) -> np.ndarray:
    """Layer-1 filters (F, C, kh, kw) as one mosaic, scaled together (a dominant filter stands out)."""
    scale = float(np.abs(weight).max())
    return mosaic(square([resize(show_filter(w, scale), 4 * max(w.shape[-2:])) for w in weight]), gap=2)


def architecture_figure(
    filters: dict[str, np.ndarray],
    projections: dict[str, np.ndarray],
    title: str = "",
    *,
    map_labels: dict[str, Sequence[str]] | None = None,
) -> Figure:
    """Fig. 6: layer-1 filter banks (one panel each, in a row) above layer-2 projections (one tile per
    map, each tile named by ``map_labels[name]``, default "map <i>"), the canvas sized to what it holds.

    ``projections[name]`` is (M, C, h, w): one projection per shown layer-2 map.
    """
    nf, npj = max(len(filters), 1), max(len(projections), 1)
    side = max((math.ceil(math.sqrt(len(p))) for p in projections.values()), default=1)
    fig = plt.figure(figsize=(max(3.2 * nf, 4.6 * npj), 3.6 + 4.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.6, 4.6])
    for ax, (name, weight) in zip(np.atleast_1d(top.subplots(1, nf)), filters.items(), strict=False):
        ax.imshow(filter_bank(weight), interpolation="nearest")
        ax.set_title(f"{name}: layer-1 filters", fontsize=9)
        ax.set_axis_off()
    top.suptitle("layer-1 filters (each net's filters scaled together: a dominant filter stands out)", fontsize=9)
    for sub, (name, proj) in zip(np.atleast_1d(bottom.subfigures(1, npj)), projections.items(), strict=False):
        labels = (map_labels or {}).get(name) or [f"map {i}" for i in range(len(proj))]
        axes = np.asarray(sub.subplots(side, side, squeeze=False))
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, tile, label in zip(axes.flat, proj, labels, strict=False):
            ax.imshow(show_projection(tile), interpolation="nearest")
            ax.set_title(label, fontsize=8, pad=2)
        sub.suptitle(
            f"{name}: layer-2 projections, each map at its strongest activation (tile: map, activation)", fontsize=9
        )
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


NET_NAMES = {"alexnet": "AlexNet", "zfnet": "ZFNet", "zfnet, no clipping": "ZFNet, no clipping",
             "zfnet, clipping": "ZFNet, clipping 0.1"}  # fmt: skip


def architecture_from_arrays(arrays: dict[str, np.ndarray], title: str = "Fig. 6: layers 1-2") -> Figure:
    """Fig. 6 from the arrays ``zfviz viz architecture`` keeps (its .npz): ``<net>/l1_filters`` per net;
    ``<net>/l2_projection``, ``<net>/l2_shown`` (the maps shown) and ``<net>/l2_values`` per compared net."""
    nets = list(dict.fromkeys(key.split("/")[0] for key in arrays))
    filters = {NET_NAMES.get(n, n): arrays[f"{n}/l1_filters"] for n in nets if f"{n}/l1_filters" in arrays}
    projections, labels = {}, {}
    for net in nets:
        if f"{net}/l2_projection" not in arrays:
            continue
        shown = np.asarray(arrays[f"{net}/l2_shown"], dtype=np.int64)
        values = np.asarray(arrays[f"{net}/l2_values"])
        projections[NET_NAMES.get(net, net)] = np.asarray(arrays[f"{net}/l2_projection"])[shown]
        labels[NET_NAMES.get(net, net)] = [f"map {m}: {values[m]:.1f}" for m in shown]
    return architecture_figure(filters, projections, title=title, map_labels=labels)


def projections_figure(
    images: np.ndarray, projections: np.ndarray, labels: Sequence[Sequence[str]], title: str = ""
) -> Figure:
    """Per image (row): the image, then the projections of several maps (labels per cell)."""
    n, m = projections.shape[:2]
    fig, axes = plt.subplots(n, m + 1, figsize=(1.6 * (m + 1), 1.7 * n), squeeze=False, constrained_layout=True)
    for i in range(n):
        axes[i, 0].imshow(show_image(images[i]), interpolation="nearest")
        axes[i, 0].set_title("image", fontsize=7)
        for j in range(m):
            axes[i, j + 1].imshow(show_projection(projections[i, j]), interpolation="nearest")
            axes[i, j + 1].set_title(labels[i][j], fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
