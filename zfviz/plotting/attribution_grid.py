"""The taxonomy paper's comparison figure (FeatureVis style): the same images under every method.

One panel per net, stacked (so the figure is as wide as one net's methods, not all of them): rows are
images, columns the input and one attribution method each, so a column compares images and a row
compares methods. Arrays in, a ``Figure`` out; ``results.save_figure`` writes it.

Three scales, each used with its colour bar; each method's maps get the one that fits them (issue 29). A
signed map (gradients, relevance, projections) is summed over colour channels and shown as
``zfviz.plotting.deconv`` shows a projection: on a diverging scale centred at 0 (white), scaled to its own
contrast (the 99.5th percentile of its magnitudes), red positive and blue negative; one scale per map, as
the methods' units differ. A method whose maps are all non-negative (RISE's expected scores, a magnitude)
is drawn on a sequential scale from 0 to its maximum: on the diverging scale its large baseline would be
one uniform red. A non-negative coarse map (Grad-CAM) is scaled to its maximum and laid over its image on
a sequential scale, as Selvaraju et al. (2017) show it.

A figure shows at most ``bounded.MAX_ROWS`` images of ``bounded.MAX_PANELS`` nets and says so when it
shows fewer than it was given: a thousand rows would be a PNG tens of thousands of pixels tall that
matplotlib spends minutes and gigabytes laying out, and no reader can use.
"""

from __future__ import annotations

import textwrap
from collections.abc import Collection, Mapping, Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from zfviz.plotting import plt
from zfviz.plotting.bounded import MAX_PANELS, cap, caption, record
from zfviz.plotting.deconv import show_image

FONT = 8  # points: the smallest text of the figure (issue 27)
# The scales, by name: (colormap, what the colour bar says, the bar's low end).
SCALES = {
    "signed": ("bwr", "signed maps: map / its 99.5th percentile of |map| (red: for the class, blue: against)", -1.0),
    "positive": ("viridis", "non-negative maps: map / its maximum, from 0", 0.0),
    "heat": ("jet", "maps over the image (non-negative): map / its maximum", 0.0),
}
HEAT_ALPHA = 0.5


def signed_map(tile: np.ndarray) -> np.ndarray:
    """(C, h, w) attribution -> (h, w) in [-1, 1]: channels summed, scaled by its 99.5th percentile."""
    tile = np.asarray(tile, dtype=np.float32).sum(axis=0)
    magnitude = np.abs(tile)
    scale = float(np.percentile(magnitude, 99.5)) or float(magnitude.max())
    return np.clip(tile / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(tile)


def heat(tile: np.ndarray) -> np.ndarray:
    """(C, h, w) non-negative map -> (h, w) in [0, 1], channels summed, scaled to its maximum."""
    tile = np.asarray(tile, dtype=np.float32).sum(axis=0)
    top = float(tile.max())
    return np.clip(tile / top, 0.0, 1.0) if top > 0 else np.zeros_like(tile)


def scale_of(maps: np.ndarray, overlay: bool) -> str:
    """The scale that fits one method's ``maps`` (all its images): ``heat`` over the image (``overlay``),
    ``positive`` if no value is negative, else ``signed``."""
    if overlay:
        return "heat"
    return "positive" if float(np.min(maps)) >= 0 else "signed"


def draw_map(ax, picture: np.ndarray, tile: np.ndarray, scale: str) -> None:
    """One map on ``ax`` on its ``scale`` (a key of ``SCALES``): ``heat`` over ``picture``, else alone."""
    cmap = SCALES[scale][0]
    if scale == "heat":
        ax.imshow(picture)
        ax.imshow(heat(tile), cmap=cmap, alpha=HEAT_ALPHA, vmin=0.0, vmax=1.0)
    elif scale == "positive":
        ax.imshow(heat(tile), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(signed_map(tile), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")


def colour_bars(fig, used: Collection[str]) -> None:
    """On ``fig`` (a figure or a subfigure of its own), one horizontal colour bar per scale ``used``, side by
    side in ``SCALES``' order, each labelled with what it means."""
    scales = [SCALES[name] for name in SCALES if name in used]
    if not scales:
        return
    for cax, (cmap, label, low) in zip(np.atleast_1d(fig.subplots(1, len(scales))), scales, strict=True):
        bar = fig.colorbar(ScalarMappable(Normalize(low, 1.0), cmap), cax=cax, orientation="horizontal")
        bar.set_label(textwrap.fill(label, 60), fontsize=FONT)
        bar.ax.tick_params(labelsize=FONT)


def attribution_grid(
    panels: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]],
    row_labels: Sequence[str],
    *,
    overlaid: Collection[str] = (),
    title: str = "",
    tile_inches: float = 1.05,
) -> Figure:
    """``panels``: net name -> (uint8 images ``N x C x H x W``, method -> maps ``N x C' x H x W``).

    Every panel must hold the same ``N`` images (``row_labels``, one per row); methods are columns in
    the order given; the methods in ``overlaid`` are non-negative and drawn over the image, every other
    method on the scale its maps fit (``scale_of``). The first ``MAX_ROWS`` images of the first
    ``MAX_PANELS`` nets are drawn (``bounded.cap``); the title says what was left out.
    """
    shown_nets, net_note = cap(len(panels), "nets", MAX_PANELS, kept="")
    names = list(panels)[:shown_nets]
    n, note = cap(len(row_labels), "images", kept="")
    columns = max(1 + len(maps) for _, maps in panels.values())
    height = tile_inches * n + 0.9
    fig = plt.figure(figsize=(tile_inches * columns + 1.4, height * len(names) + 1.6), layout="constrained")
    *subfigs, bars = fig.subfigures(len(names) + 1, 1, height_ratios=[height] * len(names) + [0.9])
    used = set()
    for sub, name in zip(subfigs, names, strict=True):
        images, maps = panels[name]
        if len(images) != len(row_labels) or any(len(m) != len(row_labels) for m in maps.values()):
            raise ValueError(f"panel {name}: every method needs one map per row ({len(row_labels)})")
        scales = {method: scale_of(m, method in overlaid) for method, m in maps.items()}
        used |= set(scales.values())
        axes = np.asarray(sub.subplots(n, columns, squeeze=False))
        sub.suptitle(name, fontsize=FONT + 3, fontweight="bold")
        for i in range(n):
            picture = show_image(images[i])
            axes[i, 0].imshow(picture)
            axes[i, 0].set_ylabel(textwrap.fill(row_labels[i], 14), fontsize=FONT)
            for j, (method, m) in enumerate(maps.items(), start=1):
                draw_map(axes[i, j], picture, m[i], scales[method])
                if i == 0:
                    over = " (over the image)" if method in overlaid else ""
                    axes[i, j].set_title(textwrap.fill(method.replace("_", " ") + over, 13), fontsize=FONT)
        axes[0, 0].set_title("input", fontsize=FONT)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[:, 1 + len(maps) :].flat:
            ax.axis("off")
    colour_bars(bars, used)
    if title or note or net_note:
        fig.suptitle(caption(title, [note, net_note]), fontsize=FONT + 3)
    return record(fig, [note, net_note])
