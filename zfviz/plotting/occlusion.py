"""Figures of the classifier probes: Fig. 7 (occlusion), Fig. 8 (correspondence), Fig. 5 (invariance).

Arrays in, a matplotlib ``Figure`` out. Images come as (C, H, W) pixel values (0..255, any float),
deconvnet projections as raw (C, H, W) arrays; tiles are drawn with the deconvnet figures' helpers.
A figure draws at most ``bounded.MAX_ROWS`` images (rows, or curves) and occluded parts or examples,
and ``bounded.MAX_PANELS`` layers, and says in its title what it left out; the arrays and tables beside
it keep every value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from zfviz.plotting import plt
from zfviz.plotting.bounded import MAX_PANELS, MAX_ROWS, cap, caption, record
from zfviz.plotting.deconv import mosaic, show_image, show_projection, square

TRANSFORM_TITLES = {
    "translate": "vertical translation (px)",
    "scale": "scale factor",
    "rotate": "rotation (degrees)",
}


def _heatmap(ax, values: np.ndarray, origins: np.ndarray, window: int, size: int, **kw):
    """A map over occluder positions, placed in image pixels: each cell at its occluder's centre."""
    step = float(origins[1] - origins[0]) if len(origins) > 1 else float(window)
    lo, hi = origins[0] + window / 2 - step / 2, origins[-1] + window / 2 + step / 2
    im = ax.imshow(values, extent=(lo, hi, hi, lo), interpolation="nearest", **kw)
    ax.set(xlim=(0, size), ylim=(size, 0), xticks=[], yticks=[])
    return im


@dataclass(frozen=True)
class OcclusionMaps:
    """What a sweep gives the figure: ``maps`` (``zfviz.attribution.occlusion.occlusion``'s arrays,
    (N, rows, cols) each), the occluder's top-left ``origins`` along an axis, its side ``window``,
    the ``layer`` whose map panel (b) totals and, if known, each image's ``objects`` box (N, 4: top,
    left, height, width) that the square was sized to."""

    maps: dict[str, np.ndarray]
    origins: np.ndarray
    window: int
    layer: str
    objects: np.ndarray | None = None


@dataclass(frozen=True)
class Projections:
    """Panel (c): ``tiles`` (N, k, C, H, W), the map projected for the unoccluded image then k - 1
    occluded ones; ``boxes[i][k]`` tile k's occluder top-left corner (None: unoccluded)."""

    tiles: np.ndarray
    titles: Sequence[str] = ()
    boxes: Sequence[Sequence[tuple[int, int] | None]] = ()


def occlusion_figure(
    images: np.ndarray | None,
    sweep: OcclusionMaps,
    class_names: Sequence[str],
    labels: Sequence[int],
    projections: Projections | None = None,
    *,
    occluded: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """The paper's 5-panel row per image: (a) input, (b) map total, (c) projections, (d) p(true), (e) top class.

    Without ``projections`` panel (c) is left out; without ``images`` (the maps alone, as their .npz
    keeps them) panel (a). ``occluded``: each image occluded where p(true) is lowest, shown in (a) in
    place of the plain image. The first ``MAX_ROWS`` images are drawn.
    """
    maps, origins, window = sweep.maps, sweep.origins, sweep.window
    n, note = cap(len(maps["p_true"]), "images")
    size = images.shape[-1] if images is not None else int(origins[-1] + window)
    panels = (["a"] if images is not None else []) + ["b"] + (["c"] if projections is not None else []) + ["d", "e"]
    fig, axes = plt.subplots(n, len(panels), figsize=(3.3 * len(panels), 3.0 * n), squeeze=False)
    for i in range(n):
        row = dict(zip(panels, axes[i], strict=True))
        if images is not None:
            _input_panel(row["a"], images[i] if occluded is None else occluded[i], sweep, i, occluded is not None)
            row["a"].set_title(f"(a) {class_names[labels[i]]}, p={maps['p_true_clean'][i]:.2f}", fontsize=9)
        else:
            row["b"].set_ylabel(f"{class_names[labels[i]]}, p={maps['p_true_clean'][i]:.2f}", fontsize=9)
        im = _heatmap(row["b"], maps["feature_activation"][i], origins, window, size, cmap="viridis")
        _colorbar(fig, im, row["b"], f"{sweep.layer} map total")
        row["b"].set_title(f"(b) {sweep.layer} map {int(maps['channel'][i])}: total", fontsize=9)
        if projections is not None:
            _projection_panel(row["c"], projections, i, window, size)
        im = _heatmap(row["d"], maps["p_true"][i], origins, window, size, cmap="magma", vmin=0, vmax=1)
        _colorbar(fig, im, row["d"], "p(true class)")
        row["d"].set_title("(d) p(true class)", fontsize=9)
        _top_class_panel(fig, row["e"], sweep, i, class_names, size)
    if title or note:
        fig.suptitle(caption(title, [note]), fontsize=10)
    fig.tight_layout()
    return record(fig, [note])


def _colorbar(fig, im, ax, label: str) -> None:
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=8)


def _input_panel(ax, image: np.ndarray, sweep: OcclusionMaps, i: int, outline: bool) -> None:
    ax.imshow(show_image(image))
    if sweep.objects is not None:  # the object's box, which the square was sized to
        top, left, height, width = (int(v) for v in sweep.objects[i])
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), width, height, fill=False, ec="c", lw=1, ls="--"))
    if outline:  # outline the square it shows: where p(true) is lowest
        p_true, origins = sweep.maps["p_true"], sweep.origins
        r, c = divmod(int(p_true[i].argmin()), p_true.shape[2])
        ax.add_patch(Rectangle((origins[c] - 0.5, origins[r] - 0.5), sweep.window, sweep.window, fill=False, ec="r",
                               lw=1.2))  # fmt: skip
    ax.set(xticks=[], yticks=[])


def _projection_panel(ax, projections: Projections, i: int, window: int, size: int) -> None:
    tiles = [show_projection(tile) for tile in projections.tiles[i]]
    cols = 2 if len(tiles) > 2 else len(tiles)
    ax.imshow(mosaic(square(tiles, cols), gap=2))
    for k, box in enumerate(projections.boxes[i] if len(projections.boxes) else []):
        if box is not None:
            y0, x0 = (k // cols) * (size + 2) + box[0], (k % cols) * (size + 2) + box[1]
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), window, window, fill=False, ec="k", lw=1))
    ax.set(xticks=[], yticks=[])
    ax.set_title("(c) " + " / ".join(projections.titles), fontsize=8)


def _top_class_panel(fig, ax, sweep: OcclusionMaps, i: int, class_names, size: int) -> None:
    """(e): the most probable class at each occluder position. Where one class wins everywhere (the net
    keeps its answer wherever the square sits) the colours would be one flat patch: the panel then
    shows that class's probability instead, with a colour bar of its range, and says so."""
    top_class, origins, window = sweep.maps["top_class"][i], sweep.origins, sweep.window
    present = np.unique(top_class)
    if len(present) == 1:
        prob = sweep.maps["top_prob"][i]
        im = _heatmap(ax, prob, origins, window, size, cmap="cividis")
        _colorbar(fig, im, ax, f"p({class_names[int(present[0])]})")
        ax.set_title(f"(e) top class: {class_names[int(present[0])]} at every\nposition; its p "
                     f"{prob.min():.3f}-{prob.max():.3f}", fontsize=8)  # fmt: skip
        ax.set_xlabel(f"the only class that wins: {class_names[int(present[0])]}", fontsize=8)
        return
    # Colours for the classes that occur here only, so 1000-class maps stay readable.
    codes = np.searchsorted(present, top_class)
    palette = plt.get_cmap("tab10" if len(present) <= 10 else "tab20").colors
    cmap = ListedColormap([palette[k % len(palette)] for k in range(len(present))])
    _heatmap(ax, codes, origins, window, size, cmap=cmap, vmin=-0.5, vmax=len(present) - 0.5)
    handles = [Patch(color=cmap(k), label=class_names[int(c)]) for k, c in enumerate(present[:20])]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
              title="class", title_fontsize=8)  # fmt: skip
    ax.set_title(f"(e) most probable class ({len(present)} win somewhere)", fontsize=9)


def correspondence_figure(images: np.ndarray, occluded: dict[str, np.ndarray], title: str = "") -> Figure:
    """Fig. 8: one row per image, the original then each occluded version (parts, then random); the first
    ``MAX_ROWS`` images, each in at most ``MAX_ROWS`` columns, are drawn."""
    shown, column_note = cap(len(occluded), "occluded versions", MAX_ROWS - 1, kept="the table beside it scores all")
    columns = {"original": images, **dict(list(occluded.items())[:shown])}
    k, note = cap(len(images), "images", kept="")
    fig, axes = plt.subplots(k, len(columns), figsize=(1.6 * len(columns), 1.6 * k + 0.4), squeeze=False)
    for j, (name, stack) in enumerate(columns.items()):
        for i in range(k):
            axes[i, j].imshow(show_image(stack[i]))
            axes[i, j].set(xticks=[], yticks=[])
        axes[0, j].set_title(name.replace("_", " "), fontsize=9)
    if title or note or column_note:
        fig.suptitle(caption(title, [note, column_note]), fontsize=10)
    fig.tight_layout()
    return record(fig, [note, column_note])


def invariance_figure(
    rows: pd.DataFrame,
    examples: dict[str, list[tuple[float, np.ndarray]]],
    layers: Sequence[str],
    image_names: Sequence[str],
    height: int,
    title: str = "",
) -> Figure:
    """Fig. 5: one row per transform; columns: examples, distance at ``layers[0]``, at ``layers[1]``, p(true).

    Translations are given as fractions of the image ``height`` and drawn in pixels, as in the paper. The
    first ``MAX_PANELS`` layers, ``MAX_ROWS`` images (curves) and ``MAX_ROWS`` examples are drawn.
    """
    shown, layer_note = cap(len(layers), "layers", MAX_PANELS, kept="the table beside it holds all")
    layers = list(layers)[:shown]
    shown, image_note = cap(len(image_names), "images", kept="the table beside it holds all")
    image_names = list(image_names)[:shown]
    shown, example_note = cap(max(len(e) for e in examples.values()), "examples per transform", kept="")
    kinds = list(examples)
    fig, axes = plt.subplots(len(kinds), 2 + len(layers), figsize=(4.0 * (2 + len(layers)), 3.2 * len(kinds)))
    axes = np.atleast_2d(axes)
    for r, kind in enumerate(kinds):
        scale = height if kind == "translate" else 1
        _examples_panel(axes[r, 0], examples[kind][:shown], kind, scale)
        df = rows[rows["transform"] == kind]
        columns = [f"dist_{layer}" for layer in layers] + ["p_true"]
        ylabels = [f"Euclidean distance, {layer}" for layer in layers] + ["p(true class)"]
        for c, (column, ylabel) in enumerate(zip(columns, ylabels, strict=True)):
            ax = axes[r, c + 1]
            for i, name in enumerate(image_names):
                part = df[df["image"] == i].sort_values("amount")
                ax.plot(part["amount"] * scale, part[column], marker=".", ms=3, label=name)
            ax.set(xlabel=TRANSFORM_TITLES.get(kind, kind), ylabel=ylabel)
            ax.grid(alpha=0.3)
            if column == "p_true":
                ax.set_ylim(-0.02, 1.02)
        if r == 0:
            axes[r, -1].legend(fontsize=7)
    notes = [layer_note, image_note, example_note]
    if title or any(notes):
        fig.suptitle(caption(title, notes))
    fig.tight_layout()
    return record(fig, notes)


def _examples_panel(ax, examples: list[tuple[float, np.ndarray]], kind: str, scale: float) -> None:
    """A transform's examples side by side, titled with their amounts (``scale``: drawn in pixels)."""
    ax.imshow(mosaic([[show_image(img) for _, img in examples]], gap=2))
    ax.set(xticks=[], yticks=[])
    ax.set_title(", ".join(f"{a * scale:.3g}" for a, _ in examples), fontsize=8)
    ax.set_ylabel(kind)
