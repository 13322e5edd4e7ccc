"""A unit's concept label in the atlas (issue 26): network dissection's (Bau et al. 2017), where it has one.

Two sources: a dissection run now over a Broden-layout folder (``zfviz.dissection.dissect`` on the atlas's
layers that have a spatial map, as ``zfviz viz dissect`` runs it), or a table one wrote before
(``results/dissection_<preset>.csv``: columns net, layer, unit, concept, category, iou, threshold, detector;
the rows of one ``net``). Either way a unit is labelled only where it is a detector of its concept (its IoU
reaches the dissection's threshold): a unit's best concept alone, at an IoU of a few hundredths, says
nothing. Where a table holds several detector rows of one unit, the one of highest IoU is its label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from torch import Tensor, nn

from zfviz.dissection import dissect
from zfviz.errors import UserError

COLUMNS = ("net", "layer", "unit", "concept", "category", "iou", "detector")

Labels = dict[tuple[str, int], dict]  # (layer, unit) -> {"label", "category", "iou"}


def detector_labels(table: pd.DataFrame) -> Labels:
    """Each detector unit of ``table`` (columns layer, unit, concept, category, iou, detector) with its
    highest-IoU detector row: ``{"label", "category", "iou"}``."""
    detector = table["detector"].astype(str).str.lower().isin(("true", "1"))
    rows = table[detector].sort_values("iou", ascending=False, kind="stable")
    rows = rows.drop_duplicates(["layer", "unit"])
    return {
        (str(r.layer), int(r.unit)): {"label": str(r.concept), "category": str(r.category), "iou": float(r.iou)}
        for r in rows.itertuples()
    }


def read_labels(path: str | Path, net: str) -> Labels:
    """The labels of ``net``'s units in a dissection table at ``path`` (``detector_labels`` of its rows
    whose ``net`` column is ``net``); a missing file, missing columns or no row of ``net`` is one line."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise UserError(f"labels={path}: cannot read it as a dissection table ({type(err).__name__})") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"labels={path}: no column {', '.join(missing)}; a dissection table has {', '.join(COLUMNS)}")
    mine = table[table["net"].astype(str) == net]
    if mine.empty:
        nets = ", ".join(sorted(table["net"].astype(str).unique())[:12])
        raise UserError(f"labels={path} has no rows of net {net!r} (labels_net=); its nets: {nets}")
    return detector_labels(mine)


def dissected_labels(
    model: nn.Module, folder: str | Path, layers: Sequence[str], prepare: Callable[[Tensor], Tensor]
) -> Labels:
    """Dissect ``layers`` (those with a spatial map) over the Broden-layout ``folder`` at ``zfviz viz
    dissect``'s defaults; ``prepare`` maps its uint8 images to the model's input (``dissection.resized``)."""
    if not Path(folder).expanduser().is_dir():
        raise UserError(f"concepts={folder}: no such folder; give a Broden-layout folder (index.csv, label.csv, ...)")
    return detector_labels(dissect(model, Path(folder).expanduser(), list(layers), prepare=prepare))
