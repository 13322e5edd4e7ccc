"""Reconstructions beside their originals (issue 14: network inversion, regularized and learned).

Laid out by matplotlib's constrained layout: the title sits above the column titles and the row labels
(methods, right-aligned beside the first column) inside the figure, however long (issue 29).
"""

from __future__ import annotations

import textwrap

import numpy as np

from zfviz.plotting import plt
from zfviz.plotting.bounded import cap, caption, record

FONT = 8  # points: the smallest text of the figure (issue 27: readable at 100 %)


def _tile(image: np.ndarray, data_range: float) -> np.ndarray:
    """(C, H, W) pixels -> (H, W) or (H, W, 3) in [0, 1]; gray repeated to 3 channels shows as gray."""
    image = np.clip(np.asarray(image, dtype=np.float32) / data_range, 0, 1)
    if image.shape[0] == 1 or np.allclose(image, image[:1]):
        return image[0]
    return image[:3].transpose(1, 2, 0)


def _draw_row(row, original: np.ndarray, recons: list[np.ndarray | None], i: int, data_range: float) -> None:
    """One row: image ``i``'s original, then its reconstruction from each layer (None: left blank)."""
    row[0].imshow(_tile(original, data_range), cmap="gray", vmin=0, vmax=1)
    for ax, images in zip(row[1:], recons, strict=True):
        if images is not None:
            ax.imshow(_tile(images[i], data_range), cmap="gray", vmin=0, vmax=1)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def reconstruction_panels(
    panels: list[tuple[str, np.ndarray, dict[tuple[str, str], np.ndarray]]],
    layers: list[str],
    methods: list[str],
    *,
    data_range: float = 255.0,
    title: str | None = None,
):
    """One panel per net, side by side: per image, one row per method; columns the original, then
    the reconstruction from each layer. ``panels``: (name, originals N x C x H x W pixels,
    {(method, layer): reconstructions, same shape}). Missing (method, layer) pairs stay blank."""
    n, note = cap(len(panels[0][1]), "images", kept="the table beside it holds the errors of all")
    rows, cols = n * len(methods), 1 + len(layers)
    tile = 0.62
    fig, axes = plt.subplots(
        rows, cols * len(panels), figsize=(tile * cols * len(panels) + 1.2, tile * rows + 1.1), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for p, (name, originals, recon) in enumerate(panels):
        for i in range(n):
            for m, method in enumerate(methods):
                r = i * len(methods) + m
                row = axes[r, p * cols : (p + 1) * cols]
                _draw_row(row, originals[i], [recon.get((method, layer)) for layer in layers], i, data_range)
                if m == 0 and i == 0:
                    row[0].set_title(f"{name}\noriginal", fontsize=FONT)
                if p == 0:
                    row[0].set_ylabel(method, fontsize=FONT, rotation=0, ha="right", va="center")
                if r == 0:
                    for c, layer in enumerate(layers, start=1):
                        row[c].set_title(layer, fontsize=FONT)
        for ax in axes[:, p * cols : (p + 1) * cols].flat:
            _bare(ax)
    if title or note:  # wrapped to the figure's width (about 12 characters of 9 pt per inch)
        wrap = int(fig.get_figwidth() * 12)
        fig.suptitle(caption(textwrap.fill(title or "", wrap), [textwrap.fill(note, wrap)]), fontsize=FONT + 1)
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.02, hspace=0.02)
    return record(fig, [note])
