"""Figures of the deconvnet (Section 2.1): Fig. 2 (top 9), Fig. 4 (evolution), Fig. 6 (architecture).

Arrays in, a matplotlib ``Figure`` out. Grids of many small images are assembled as one mosaic
array per panel (one ``imshow``), which keeps hundreds of tiles fast to draw.
Projections are shown as the paper does, zero at mid-gray: each contrast-stretched on its own, or (Fig. 2)
each map's top 9 stretched together. A figure draws at most ``bounded.MAX_ROWS`` images, maps or top
activations along a side and ``bounded.MAX_PANELS`` layers, and says in its title what it left out (the
.npz beside it keeps them all).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from zfviz.plotting import plt
from zfviz.plotting.bounded import MAX_PANELS, MAX_ROWS, cap, caption, record, spread

GAP = 1.0  # white between tiles


def as_image_channels(projection: np.ndarray, channels: int) -> np.ndarray:
    """Sum a projection over colour channels when the data are gray repeated to 3 (chain rule of the repeat)."""
    projection = np.asarray(projection, dtype=np.float32)
    return projection.sum(axis=-3, keepdims=True) if channels == 1 else projection


def show_projection(tile: np.ndarray, scale: float | None = None) -> np.ndarray:
    """(C, h, w) projection -> (h, w, 3) in [0, 1]: zero at 0.5, ``scale`` (default: the tile's own
    ``contrast_scale``) at black and white."""
    tile = np.asarray(tile, dtype=np.float32)
    scale = contrast_scale(tile) if scale is None else scale
    tile = 0.5 + 0.5 * tile / scale if scale > 0 else np.full_like(tile, 0.5)
    return _rgb(tile)


def contrast_scale(projections: np.ndarray) -> float:
    """The magnitude shown at full black or white: the 99.5th percentile of the nonzero magnitudes.

    A percentile, not the maximum: a handful of very strong pixels would otherwise leave the rest of
    the pattern flat grey. Nonzero only: a deep layer's projection is zero outside the few pixels that
    drive the map, and counting those zeros would put the percentile on the faintest strokes' floor.
    """
    magnitude = np.abs(np.asarray(projections, dtype=np.float32))
    nonzero = magnitude[magnitude > 0]
    return float(np.percentile(nonzero, 99.5)) if nonzero.size else 0.0


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
    """One map's (k, C, h, w) projections as a square grid, its patches as a grid beside it.

    The k projections share one contrast scale, as in the paper's Fig. 2: their strengths stay comparable
    within the map, and a map whose projections are weak next to another map's is still shown at full contrast.
    """
    scale = contrast_scale(projection)
    left = mosaic(square([show_projection(p, scale) for p in projection]))
    right = mosaic(square([show_image(p) for p in patch]))
    gap = np.full((left.shape[0], max(2, left.shape[1] // 12), 3), GAP, dtype=np.float32)
    return np.concatenate([left, gap, right], axis=1)


def top9_figure(layers: dict[str, dict[str, np.ndarray]], title: str = "") -> Figure:
    """Fig. 2: per layer, a grid of maps; per map its top-k projections (left) and image patches (right).

    ``layers[name]`` holds ``projection`` (M, k, C, h, w), ``patch`` (M, k, C, h, w) and ``maps`` (M,). The
    first ``MAX_PANELS`` layers, ``MAX_ROWS`` maps of each and ``MAX_ROWS`` activations of each map are drawn.
    """
    shown, layer_note = cap(len(layers), "layers", MAX_PANELS)
    names = list(layers)[:shown]
    _, map_note = cap(max(len(layers[n]["maps"]) for n in names), "maps per layer")
    k, k_note = cap(max(layers[n]["projection"].shape[1] for n in names), "top activations per map")
    panels = []
    for name in names:
        arrays = {key: value[:MAX_ROWS] for key, value in layers[name].items()}  # its first maps
        blocks = [top9_block(p[:k], q[:k]) for p, q in zip(arrays["projection"], arrays["patch"], strict=True)]
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
        maps = ", ".join(str(int(m)) for m in arrays["maps"])
        top = min(k, arrays["projection"].shape[1])
        ax.set_title(f"{name}: maps {maps} (per map: top {top} projections, one contrast scale, grey = 0 | "
                     "image patches)", fontsize=9)  # fmt: skip
    notes = [layer_note, map_note, k_note]
    if title or any(notes):
        fig.suptitle(caption(title, notes))
    return record(fig, notes)


def evolution_figure(
    projections: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], epochs: Sequence[int], title: str = ""
) -> Figure:
    """Fig. 4: rows = maps, columns = epochs; each tile the strongest activation's (C, h, w) projection.
    The first ``MAX_ROWS`` maps are drawn, at ``MAX_ROWS`` epochs at most, the first and last among them."""
    tile = 48
    shown, note = cap(len(projections), "maps")
    columns, epoch_note = spread(len(epochs), "epochs")
    epochs = [epochs[c] for c in columns]
    rows = [[resize(show_projection(row[c]), tile) for c in columns] for row in projections[:shown]]
    image = mosaic(rows, gap=2)
    width = max(4.5, 1.0 + 0.75 * len(epochs))  # room for the title when few epochs were saved
    fig, ax = plt.subplots(figsize=(width, 0.6 + 0.75 * len(rows)), constrained_layout=True)
    ax.imshow(image, interpolation="nearest")
    step = tile + 2
    ax.set_xticks([c * step + tile / 2 for c in range(len(epochs))], [f"epoch {e}" for e in epochs], fontsize=7)
    ax.set_yticks([r * step + tile / 2 for r in range(len(rows))], list(row_labels)[:shown], fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title or note or epoch_note:
        ax.set_title(caption(title, [note, epoch_note]), fontsize=8, wrap=True)
    return record(fig, [note, epoch_note])


def filter_bank(weight: np.ndarray, ncols: int | None = None) -> np.ndarray:
    """Layer-1 filters (F, C, kh, kw) as one mosaic, scaled together (a dominant filter stands out)."""
    scale = float(np.abs(weight).max())
    return mosaic(square([resize(show_filter(w, scale), 4 * max(w.shape[-2:])) for w in weight], ncols), gap=2)


FIGURE_WIDTH = 12.0  # inches: two nets side by side, as the paper sets them
FILTER_HEIGHT, TILE = 3.4, 1.3  # inches: a filter bank's row; one layer-2 projection tile (with its label)
PROJECTION_COLS = 4


def _shown(ax, tile: np.ndarray, vmax: float):
    """An (h, w, 3) tile in [0, 1] (0.5 = zero) drawn in the units -vmax..vmax: gray tiles as a colour-mapped
    image a colour bar can name, colour tiles as they are (their bar then stands for each channel)."""
    if np.array_equal(tile[..., 0], tile[..., 1]) and np.array_equal(tile[..., 0], tile[..., 2]):
        values = vmax * (2.0 * tile[..., 0] - 1.0)
        return ax.imshow(values, cmap="gray", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.imshow(tile, interpolation="nearest")
    return plt.cm.ScalarMappable(norm=plt.Normalize(-vmax, vmax), cmap="gray")


def _bar(cell, ax, mappable, label: str, ticks=None, ticklabels=None) -> None:
    """A grey colour bar from black through mid-grey (zero) to white, as the tiles are drawn."""
    bar = cell.colorbar(mappable, ax=ax, shrink=0.85, pad=0.02)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=8)
    if ticks is not None:
        bar.set_ticks(ticks, labels=ticklabels)


def _columns(count: int) -> int:
    """Columns for ``count`` tiles: a divisor (full rows) a little wider than square, else about 5:4."""
    root = math.sqrt(count)
    return next((d for d in range(math.ceil(root), math.floor(2 * root) + 1) if count % d == 0), math.ceil(1.25 * root))


def _filters_cell(cell, name: str, weight: np.ndarray) -> None:
    weight = np.asarray(weight, dtype=np.float32)
    ax = cell.subplots()
    scale = float(np.abs(weight).max())
    mappable = _shown(ax, filter_bank(weight, _columns(len(weight))), scale)
    ax.set_axis_off()
    f, c, kh, kw = weight.shape
    ax.set_title(f"{name}: {f} layer-1 filters, {kh}x{kw}", fontsize=9)
    what = "weight, each colour channel" if c == 3 else "weight"
    _bar(cell, ax, mappable, f"{what} (one scale for the net's bank)")


def _projections_cell(cell, name: str, proj: np.ndarray, labels: Sequence[str]) -> None:
    """One mosaic (one image, one colour bar), each tile's label in the white above it."""
    tiles = [show_projection(tile) for tile in proj]
    h, w = tiles[0].shape[:2]
    gap = max(2, h // 4)  # room for a label at 8 pt above each tile
    image = mosaic(square(tiles, PROJECTION_COLS), gap=gap)
    image = np.concatenate([np.full((gap, image.shape[1], 3), GAP, dtype=np.float32), image])
    ax = cell.subplots()
    mappable = _shown(ax, image, 1.0)
    ax.set_axis_off()
    for k, label in enumerate(labels[: len(tiles)]):
        row, col = divmod(k, PROJECTION_COLS)
        ax.text(col * (w + gap) + w / 2, row * (h + gap) + gap - 1, label, fontsize=8, ha="center", va="bottom")
    ax.set_title(f"{name}: layer-2 projections (tile: map, its strongest activation)", fontsize=9)
    _bar(cell, ax, mappable, "projection, each tile scaled to its own\n99.5th percentile |value|; grey = 0",
         ticks=[-1, 0, 1], ticklabels=["-scale", "0", "+scale"])  # fmt: skip


def architecture_figure(
    filters: dict[str, np.ndarray],
    projections: dict[str, np.ndarray],
    title: str = "",
    *,
    map_labels: dict[str, Sequence[str]] | None = None,
) -> Figure:
    """Fig. 6, two nets a row as the paper sets them: the layer-1 filters of the nets whose layer 2 is
    shown (AlexNet, ZFNet), their layer-2 projections (one tile per map, named by ``map_labels[name]``,
    default "map <i>"), then the other nets' layer-1 filters in pairs (without, with clipping).

    ``projections[name]`` is (M, C, h, w): one projection per shown layer-2 map; the first ``MAX_ROWS`` of
    them and the first ``MAX_PANELS`` other nets are drawn.
    """
    _, map_note = cap(max((len(p) for p in projections.values()), default=0), "layer-2 maps per net")
    projections = {name: p[:MAX_ROWS] for name, p in projections.items()}
    compared = [n for n in filters if n in projections]
    others = [n for n in filters if n not in projections]
    shown, net_note = cap(len(others), "nets with layer-1 filters alone", MAX_PANELS, "the table beside it holds all")
    others = others[:shown]
    rows = [("filters", compared), ("projections", list(projections))]
    rows += [("filters", others[i : i + 2]) for i in range(0, len(others), 2)]
    rows = [(kind, names) for kind, names in rows if names]
    side = max((math.ceil(len(p) / PROJECTION_COLS) for p in projections.values()), default=1)
    heights = [TILE * side + 0.5 if kind == "projections" else FILTER_HEIGHT for kind, _ in rows]
    heading = caption(title, [map_note, net_note])
    fig = plt.figure(figsize=(FIGURE_WIDTH, sum(heights) + 0.4 * len(heading.splitlines())), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(rows), 1, height_ratios=heights))
    for sub, (kind, names) in zip(subs, rows, strict=True):
        for cell, name in zip(np.atleast_1d(sub.subfigures(1, 2)), names, strict=False):
            if kind == "filters":
                _filters_cell(cell, name, filters[name])
            else:
                labels = (map_labels or {}).get(name) or [f"map {i}" for i in range(len(projections[name]))]
                _projections_cell(cell, name, projections[name], labels)
    if heading:
        fig.suptitle(heading, fontsize=10)
    return record(fig, [map_note, net_note])


NET_NAMES = {"alexnet": "AlexNet", "zfnet": "ZFNet", "zfnet, no clipping": "ZFNet, no clipping",
             "zfnet, clipping": "ZFNet, clipping 0.1"}  # fmt: skip


def net_name(key: str) -> str:
    """A net's name in the figure: ``NET_NAMES``'s, keeping a ``, run <i>`` suffix (one of several seeds)."""
    base, run, rest = key.partition(", run ")
    return NET_NAMES.get(base, base) + (f", run {rest}" if run else "")


def architecture_from_arrays(arrays: dict[str, np.ndarray], title: str = "Fig. 6: layers 1-2") -> Figure:
    """Fig. 6 from the arrays ``zfviz viz architecture`` keeps (its .npz): ``<net>/l1_filters`` per net;
    ``<net>/l2_projection``, ``<net>/l2_shown`` (the maps shown) and ``<net>/l2_values`` per compared net."""
    nets = list(dict.fromkeys(key.split("/")[0] for key in arrays))
    filters = {net_name(n): arrays[f"{n}/l1_filters"] for n in nets if f"{n}/l1_filters" in arrays}
    projections, labels = {}, {}
    for net in nets:
        if f"{net}/l2_projection" not in arrays:
            continue
        shown = np.asarray(arrays[f"{net}/l2_shown"], dtype=np.int64)
        values = np.asarray(arrays[f"{net}/l2_values"])
        projections[net_name(net)] = np.asarray(arrays[f"{net}/l2_projection"])[shown]
        labels[net_name(net)] = [f"map {m}: {values[m]:.1f}" for m in shown]
    return architecture_figure(filters, projections, title=title, map_labels=labels)


def projections_figure(
    images: np.ndarray, projections: np.ndarray, labels: Sequence[Sequence[str]], title: str = ""
) -> Figure:
    """Per image (row): the image, then the projections of several maps (labels per cell); the first
    ``MAX_ROWS`` images and ``MAX_ROWS`` maps of each are drawn."""
    n, row_note = cap(len(projections), "images")
    m, map_note = cap(projections.shape[1], "maps per image")
    fig, axes = plt.subplots(n, m + 1, figsize=(1.6 * (m + 1), 1.7 * n), squeeze=False, constrained_layout=True)
    for i in range(n):
        axes[i, 0].imshow(show_image(images[i]), interpolation="nearest")
        axes[i, 0].set_title("image", fontsize=7)
        for j in range(m):
            axes[i, j + 1].imshow(show_projection(projections[i, j]), interpolation="nearest")
            axes[i, j + 1].set_title(labels[i][j], fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    if title or row_note or map_note:
        fig.suptitle(caption(title, [row_note, map_note]), fontsize=9)
    return record(fig, [row_note, map_note])
