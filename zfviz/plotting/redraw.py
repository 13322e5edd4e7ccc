"""Redraw the figures whose data live in ``results/`` from those files alone (issue 27): no run folder,
no checkpoint, no training.

usage: python -m zfviz.plotting.redraw --results results [--preset cpu] [--only fig_table3_cpu.png ...]
(without --only: every figure but ``PARTIAL``'s, whose data hold less than make figures draws)

Each figure is one function of its data files (``DRAWN``: figure -> the files it reads, the drawing).
The scripts that compute those files call ``redraw`` on them after writing, so ``make figures`` and
``make redraw`` draw the same picture. Each PNG gets a sidecar saying it was drawn from the data files,
naming them and the commit that drew it; where the figure shares its sidecar with its data (one
``<stem>.meta.json`` per stem), the data's provenance is kept and a ``redrawn`` entry added.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from zfviz.errors import UserError
from zfviz.outputs import (
    DISSECTION,
    EVALUATION,
    FIG6_ARCHITECTURE,
    FIG6_ARCHITECTURE_ARRAYS,
    FIG6_ARCHITECTURE_FIGURE,
    FIG7_OCCLUSION,
    FIG7_OCCLUSION_ARRAYS,
    FIG9_TRANSFER,
    FIG9_TRANSFER_TABLE,
    FIG_DISSECTION,
    FIG_RANDOMIZATION,
    FIG_TABLE3,
    FIG_TABLE6_AP,
    FIG_TRANSFER_WITHIN,
    TABLE3,
    TABLE3_REPEAT,
    TABLE3_SEED1,
    TABLE6,
    TRANSFER_WITHIN,
    named,
)
from zfviz.plotting import plt
from zfviz.plotting.ablation import ablation_bars, reruns_this_table, seed_spread
from zfviz.plotting.deconv import architecture_from_arrays
from zfviz.plotting.dissection import dissection_counts
from zfviz.plotting.evaluation import randomization_summary
from zfviz.plotting.occlusion import OcclusionMaps, occlusion_figure
from zfviz.plotting.transfer import accuracy_vs_examples, ap_bars, stand_ins_side_by_side
from zfviz.results import paper_table, save_figure, write_meta
from zfviz.script_main import script_main
from zfviz.utils import atomic_write_text, git_state


@dataclass(frozen=True)
class Data:
    """The data files of one figure in ``folder``, by their ``zfviz.outputs`` patterns, at ``preset``."""

    folder: Path
    preset: str

    def path(self, pattern: str) -> Path:
        return self.folder / named(pattern, self.preset)

    def csv(self, pattern: str) -> pd.DataFrame:
        return pd.read_csv(self.path(pattern))

    def meta(self, pattern: str) -> dict:
        sidecar = self.path(pattern).with_suffix(".meta.json")
        return json.loads(sidecar.read_text()) if sidecar.is_file() else {}

    def source(self, pattern: str, key: str, default=None):
        """``key`` of the first run the data file's sidecar names (its ``sources``), else ``default``."""
        sources = self.meta(pattern).get("sources") or [{}]
        return sources[0].get(key, default)


def table3(data: Data) -> Figure:
    """Table 3's bars, each with the range of its val error over every run of it the folder holds."""
    table = data.csv(TABLE3)
    reruns = [data.csv(p) for p in (TABLE3_SEED1, TABLE3_REPEAT) if data.path(p).is_file()]
    reruns = [x for x in reruns if reruns_this_table(table, x)]  # a rerun of an earlier Table 3 is not its spread
    what = "this run (seed 0) and its reruns (another seed, the same seed again): see their sidecars"
    spread = seed_spread(table, *reruns, what=what) if reruns else None
    title = (
        f"Table 3 ablations, {data.preset} preset ({table['dataset'].iloc[0]}, {int(table['epochs'].iloc[0])} epochs)"
    )
    return ablation_bars(table, title=title, spread=spread)


def stand_in_note(data: Data, pattern: str) -> str:
    note = str(data.source(pattern, "note") or "")
    return "digits stand-in" if "digits" in note else str(data.source(pattern, "dataset", ""))


def fig9(data: Data) -> Figure:
    summary = data.csv(FIG9_TRANSFER_TABLE)
    title = f"ours: {stand_in_note(data, FIG9_TRANSFER_TABLE)} ({data.preset} preset)"
    return accuracy_vs_examples(summary, paper_table("table5_caltech256"), title=title)


def chance_ap(data: Data) -> tuple[pd.Series | None, str]:
    """Each class's AP by chance (its positive rate on the test set, %) and where that rate comes from:
    the digits stand-in's canvases rebuilt from the seed and sizes its sidecar records (no download)."""
    config = data.source(TABLE6, "config") or {}
    if "load_digits" not in str(data.source(TABLE6, "note", "")) or "canvases" not in config:
        return None, ""
    from zfviz.data.digits import digit_canvases  # the stand-in only: torch and scikit-learn's digits

    sizes = config["canvases"]
    _, test = digit_canvases(int(sizes["train"]), int(sizes["test"]), seed=int(config.get("seed", 0)))
    rate = 100.0 * np.asarray(test.targets, dtype=np.float64).mean(axis=0)
    chance = pd.Series(rate, index=[f"digit {c}" for c in test.classes])
    chance["mean"] = float(rate.mean())
    return chance, f"\n(on the {len(test.targets)} test canvases, rebuilt from seed {config.get('seed', 0)})"


def table6_ap(data: Data) -> Figure:
    table = data.csv(TABLE6)
    heads = [c for c in table.columns if c.startswith("ours_")]
    rows = table.melt(id_vars="class", value_vars=heads, var_name="head", value_name="ap").dropna(subset=["ap"])
    rows["head"] = rows["head"].str.removeprefix("ours_")
    chance, note = chance_ap(data)
    title = f"per-class AP, {data.source(TABLE6, 'dataset', '')} {'stand-in' if chance is not None else ''}".strip()
    return ap_bars(rows, title=title, chance=chance, chance_note=note)


def transfer_within(data: Data) -> Figure:
    table = data.csv(TRANSFER_WITHIN)
    panels = {}
    for name, part in table.groupby("stand_in", sort=False):
        first = part.iloc[0]
        panels[f"{name}\npretrained on {first['pretrained_on']}\n-> {first['transfer_to']}"] = part
    return stand_ins_side_by_side(panels, title=f"Fig. 9's comparison in two stand-ins ({data.preset} preset)")


def randomization(data: Data) -> Figure:
    title = (
        "Cascading randomization (Adebayo et al. 2018), every layer re-initialized: "
        f"how much each method's map changes ({data.preset} preset)"
    )
    return randomization_summary(data.csv(EVALUATION), title=title)


def dissection(data: Data) -> Figure:
    table = data.csv(DISSECTION)
    title = (
        f"Network dissection on the concept set, {data.preset} preset ({len(table)} units); "
        "the strongest units' images: scripts/dissection_figure.py (needs the nets)"
    )
    return dissection_counts(table, title=title)


def fig7(data: Data) -> Figure:
    arrays = dict(np.load(data.path(FIG7_OCCLUSION_ARRAYS)))
    meta = data.meta(FIG7_OCCLUSION_ARRAYS)
    v, config = meta.get("config", {}).get("viz", {}), meta.get("config", {})
    labels = arrays.pop("labels").tolist()
    origins, _ = arrays.pop("origins"), arrays.pop("images")
    # the square's side as the sweep used it (sized to the objects: the .npz keeps it), else as configured
    window = int(arrays.pop("window", v.get("window", origins[1] - origins[0] if len(origins) > 1 else 1)))
    objects, frac = arrays.pop("object_boxes", None), float(arrays.pop("object_frac", np.nan))
    sweep = OcclusionMaps(arrays, origins, window, str(v.get("layer", "feature")), objects=objects)
    sized = "" if np.isnan(frac) else f" ({frac:g} of the objects' median side)"
    title = (
        f"Occlusion, {window}-px {v.get('fill', '')} square{sized}, stride {v.get('stride', '?')} "
        f"({config.get('model', {}).get('name', 'net')})\nrows: test images {list(map(int, _))}, "
        "their class and clean p on the left; panels (a) input and (c) projections need the net (zfviz viz occlusion)"
    )
    return occlusion_figure(None, sweep, _class_names(config, max(labels) + 1), labels, title=title)


def _class_names(config: dict, count: int) -> Sequence[str]:
    if config.get("data", {}).get("name") == "fashion_mnist":
        from zfviz.data.fashion_mnist import class_names

        classes = config["data"].get("classes")
        return class_names(tuple(classes) if classes else None)
    return [f"class {c}" for c in range(count)]


def fig6(data: Data) -> Figure:
    return architecture_from_arrays(dict(np.load(data.path(FIG6_ARCHITECTURE_ARRAYS))))


# figure -> (its data files, the drawing); a figure whose stem is its data's shares that sidecar.
DRAWN: dict[str, tuple[tuple[str, ...], Callable[[Data], Figure]]] = {
    FIG_TABLE3: ((TABLE3, TABLE3_SEED1, TABLE3_REPEAT), table3),
    FIG_TABLE6_AP: ((TABLE6,), table6_ap),
    FIG9_TRANSFER: ((FIG9_TRANSFER_TABLE,), fig9),
    FIG_TRANSFER_WITHIN: ((TRANSFER_WITHIN,), transfer_within),
    FIG_RANDOMIZATION: ((EVALUATION,), randomization),
    FIG_DISSECTION: ((DISSECTION,), dissection),
    FIG7_OCCLUSION: ((FIG7_OCCLUSION_ARRAYS,), fig7),
    FIG6_ARCHITECTURE_FIGURE: ((FIG6_ARCHITECTURE_ARRAYS, FIG6_ARCHITECTURE), fig6),
}
# Figures whose data files hold less than make figures draws (the input images, the projections, the per-step
# maps): redrawn only when named with --only, so a plain redraw never replaces make figures' fuller picture.
PARTIAL = frozenset({FIG_RANDOMIZATION, FIG_DISSECTION, FIG7_OCCLUSION})
COMMAND = "python -m zfviz.plotting.redraw"


def redraw(results: str | Path, preset: str, figure: str) -> Path:
    """Draw ``figure`` (a ``zfviz.outputs`` pattern of ``DRAWN``) from its data files in ``results``,
    save it there with its sidecar, and return its path."""
    data = Data(Path(results), preset)
    patterns, draw = DRAWN[figure]
    present = [p for p in patterns if data.path(p).is_file()]
    files = [named(p, preset) for p in present]
    if patterns[0] not in present:
        raise UserError(f"{data.path(patterns[0])} is missing: it is the data {named(figure, preset)} is drawn from")
    fig = draw(data)
    path = data.path(figure)
    entry = {
        "drawn_from": files,
        "command": f"{COMMAND} --results {results} --preset {preset} --only {path.name}",
        **git_state(),
    }
    sidecar = path.with_suffix(".meta.json")
    shared = any(Path(f).stem == path.stem for f in files)
    save_figure(fig, path)
    plt.close(fig)
    if shared:  # the data's sidecar: keep its provenance, add how the figure was drawn
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        meta["redrawn"] = {"figure": path.name, **entry}
        atomic_write_text(sidecar, json.dumps(meta, indent=2, default=str))
    else:
        sources = [{"file": named(p, preset), **{k: data.meta(p).get(k) for k in ("git_sha", "git_dirty")}}
                   for p in present]  # fmt: skip
        write_meta(
            path, figure=path.name, table=files[0], sources=sources, note="drawn from the data files alone", **entry
        )
    return path


@script_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="the folder of the data files and figures")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--only", nargs="+", default=[], metavar="FIGURE", help="these figures (file names) only")
    args = parser.parse_args(argv)
    chosen = {named(p, args.preset): p for p in DRAWN}
    unknown = sorted(set(args.only) - set(chosen))
    if unknown:
        raise UserError(f"--only: {', '.join(unknown)} is not redrawn from data; choose from {', '.join(chosen)}")
    for name, pattern in chosen.items():
        wanted = name in args.only if args.only else pattern not in PARTIAL
        if not wanted:
            continue
        print(f"redraw: {redraw(args.results, args.preset, pattern)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
