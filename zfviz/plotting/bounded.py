"""How much of a request a figure draws (issue 29): rows and columns that grow with what a user asks for
(images, maps, layers, transforms) are capped, and the figure says so; the arrays and tables beside it keep
every value.

``n=2000`` images were a 4,000-inch figure of 4,000 axes that matplotlib spent minutes and gigabytes laying
out; ``maps=256`` would be 257 columns of axes, and a title listing 256 map indices. No reader uses such a
figure: each figure draws the first ``MAX_ROWS`` rows (tiles: an image, a map) and the first ``MAX_PANELS``
panels (a grid of its own: a layer of top 9s, a net), and ``cap`` writes the caption's note. The note is
kept on the figure too (``notes``), so ``results.save_figure`` prints it beside the file it writes: on
stdout where the command prints its line, once for every figure, whoever draws it.
"""

from __future__ import annotations

from collections.abc import Iterable

from matplotlib.figure import Figure

MAX_ROWS = 16  # tiles along a side: at 2 inches a row and 120 dpi, about 4,000 px
MAX_PANELS = 6  # panels that are each a grid of tiles (one per layer, per net): about 9 inches each
_NOTES = "zfviz_capped"  # the attribute of a Figure holding its notes


def cap(total: int, what: str, limit: int = MAX_ROWS, kept: str = "the arrays beside it hold all") -> tuple[int, str]:
    """How many of ``total`` ``what`` (plural: "images") a figure draws, and the note that says so (""
    when it draws them all): ``the first 16 of 2000 images shown; the arrays beside it hold all 2000``
    (``kept=""``: nothing beside it keeps the rest, and the note says only what was shown)."""
    if total <= limit:
        return total, ""
    note = f"the first {limit} of {total} {what} shown"
    return limit, f"{note}; {kept} {total}" if kept else note


def spread(total: int, what: str, limit: int = MAX_ROWS) -> tuple[list[int], str]:
    """For a sequence whose ends matter (epochs of training): which of ``total`` to draw, at most ``limit``
    evenly spread with the first and the last among them, and the note that says so ("" for all)."""
    if total <= limit:
        return list(range(total)), ""
    picked = sorted({round(i * (total - 1) / (limit - 1)) for i in range(limit)})
    return picked, f"{len(picked)} of {total} {what} shown, evenly spread; the arrays beside it hold all {total}"


def caption(title: str, notes: Iterable[str]) -> str:
    """``title`` with each non-empty note on a line of its own under it."""
    return "\n".join(part for part in (title, *notes) if part)


def record(fig: Figure, notes: Iterable[str]) -> Figure:
    """Keep the non-empty ``notes`` on ``fig`` (``notes``) and return it."""
    setattr(fig, _NOTES, [*getattr(fig, _NOTES, []), *(note for note in notes if note)])
    return fig


def notes(fig: Figure) -> list[str]:
    """What ``fig`` left out of its request, one note per capped row or column (``record``); [] if nothing."""
    return list(getattr(fig, _NOTES, []))
