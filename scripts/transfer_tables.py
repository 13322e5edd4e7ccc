"""Write results/table4_<preset>.csv, table5_..., table6_... and the Fig. 9 plot from ``zfviz transfer`` runs,
each beside the paper's rows (Section 5.2).

usage: python scripts/transfer_tables.py --preset cpu --out results \
           --table4 RUN_DIR --table5 RUN_DIR --fig9 RUN_DIR --table6 RUN_DIR

Table 5 and Fig. 9 may name the same run (Fig. 9 is the paper's Caltech-256 sweep; Table 5 takes its
rows at 15, 30, 45 and 60 images per class). Any of the four may be left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from zfviz.errors import UserError
from zfviz.outputs import FIG9_TRANSFER, FIG9_TRANSFER_TABLE, FIG_TABLE6_AP, TABLE4, TABLE5, TABLE6, named
from zfviz.plotting.redraw import redraw
from zfviz.results import load_run, paper_table, run_source, write_table
from zfviz.script_main import script_main

# Our heads -> the paper's row of the same method; the SVM's paper numbers are Table 7's layer-7 SVM.
OURS = {
    "scratch": ("Non-pretrained convnet", "Non-pretrained convnet"),
    "softmax": ("Pretrained convnet, softmax on fc7", "ImageNet-pretrained convnet"),
    "svm": ("Pretrained convnet, linear SVM on fc7", None),
}
# Each paper table: its data set's name, and the Table 7 columns of the layer-7 SVM on it.
PAPER = {
    "table4_caltech101": ("Caltech-101", "caltech101_30_acc", "caltech101_30_std", 30),
    "table5_caltech256": ("Caltech-256", "caltech256_60_acc", "caltech256_60_std", 60),
}
TRANSFER = "zfviz transfer"  # what makes the runs this script reads
DINING_NOTE = "the paper prints Cow's values here for the two prior methods (a typo); their printed means imply about 68.6 and 75.2"


def source(run: dict, run_dir: str) -> dict:
    """A transfer run's provenance for a table's sidecar: ``run_source``'s, and the data and net it used."""
    keep = ("dataset", "note", "checkpoint", "checkpoint_sha256")
    return run_source(run, run_dir=run_dir, **{k: run.get(k) for k in keep})


def data_label(run: dict) -> str:
    """What a run's images are: the data set it names, or the stand-in that took its place (the digits stand in
    for Caltech-256 when its folder is absent, and ``dataset`` still names what it stands in for)."""
    return "stand-in: scikit-learn digits" if run.get("stand_in") else run["dataset"]


def fig9_table(run: dict, summary: pd.DataFrame) -> pd.DataFrame:
    """The run's summary with a ``data`` column beside ``dataset``: the images the accuracies were measured on."""
    table = summary.copy()
    table.insert(table.columns.get_loc("dataset") + 1, "data", data_label(run))
    return table


def caltech_table(run: dict, summary: pd.DataFrame, paper_name: str, ns: list[int]) -> pd.DataFrame:
    """The paper's rows (prior work first), then ours; ours carry the paper's value of the same method."""
    # Table 4's CSV names its columns acc_15_per_class; Table 5's acc_15.
    paper = paper_table(paper_name).rename(columns=lambda c: c.removesuffix("_per_class"))
    paper_data, t7_acc, t7_std, t7_n = PAPER[paper_name]
    acc_cols = [c for c in paper.columns if c.startswith("acc_")]
    std_cols = [c for c in paper.columns if c.startswith("std_")]
    missing = [n for n in ns if n not in set(summary["n_per_class"])]
    if missing:
        raise UserError(f"the run of {run['dataset']} has no results at {missing} images per class")
    ours_methods = {v[1] for v in OURS.values() if v[1]}
    rows = []
    for _, p in paper.iterrows():
        if p["method"] in ours_methods:
            continue
        row = {"method": p["method"], "data": f"paper: {paper_data}"}
        row.update({f"paper_{c}": p[c] for c in acc_cols + std_cols})
        rows.append(row)
    dataset = data_label(run)
    for head, (name, paper_method) in OURS.items():
        mine = summary[summary["head"] == head].set_index("n_per_class")
        if mine.empty:
            continue
        row = {"method": name, "data": dataset}
        for n in ns:
            row[f"acc_{n}"], row[f"std_{n}"] = mine.loc[n, "accuracy"], mine.loc[n, "std"]
        if paper_method is not None:
            p = paper.set_index("method").loc[paper_method]
            row.update({f"paper_{c}": p[c] for c in acc_cols + std_cols})
        else:
            t7 = paper_table("table7_feature_analysis")
            t7 = t7[(t7["classifier"] == "svm") & (t7["layer"] == 7)].iloc[0]
            row[f"paper_acc_{t7_n}"], row[f"paper_std_{t7_n}"] = t7[t7_acc], t7[t7_std]
            row["note"] = f"paper value: Table 7, linear SVM on layer 7 ({t7_n} per class)"
        rows.append(row)
    cols = ["method", "data"] + [f"{k}_{n}" for n in ns for k in ("acc", "std")]
    cols += [f"paper_{c}" for n in sorted({int(c.split("_")[1]) for c in acc_cols}) for c in (f"acc_{n}", f"std_{n}")]
    return pd.DataFrame(rows).reindex(columns=cols + ["note"])


def pascal_table(run: dict, rows: pd.DataFrame) -> pd.DataFrame:
    """Per-class AP of our heads beside the paper's Table 6, joined on the class name."""
    paper = paper_table("table6_pascal2012")
    paper["note"] = np.where(paper["class"] == "diningtable", DINING_NOTE, "")
    ours = rows.pivot_table(index="class", columns="head", values="ap", sort=False)
    ours.columns = [f"ours_{h}" for h in ours.columns]
    ours = ours.reset_index()
    if run.get("stand_in"):
        ours["class"] = ours["class"].map(lambda c: c if c == "mean" else f"digit {c}")
    table = paper.merge(ours, on="class", how="outer", sort=False)
    order = list(paper["class"][:-1]) + [c for c in ours["class"] if c not in set(paper["class"])] + ["mean"]
    table = table.set_index("class").loc[order].reset_index()
    table["note"] = table["note"].fillna("")
    if run.get("stand_in"):
        table.loc[table["class"] == "mean", "note"] = "paper: VOC 2012 test; ours: " + run["note"]
    ours_cols = [c for c in table.columns if c.startswith("ours_")]
    table[ours_cols] = table[ours_cols].round(2)
    return table[[c for c in table.columns if c != "note"] + ["note"]]


@script_main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", default="results")
    for name in ("table4", "table5", "fig9", "table6"):
        parser.add_argument(f"--{name}", metavar="RUN_DIR")
    ns = {"type": lambda text: [int(n) for n in text.split(",")], "metavar": "N,N,..."}
    parser.add_argument(
        "--table4-n", default=[15, 30], help="images per class of Table 4's columns (the paper's)", **ns
    )
    parser.add_argument("--table5-n", default=[15, 30, 45, 60], help="images per class of Table 5's columns", **ns)
    args = parser.parse_args()
    out = Path(args.out)
    if args.table4:
        run, summary = load_run(args.table4, "summary.csv", command=TRANSFER)
        table = caltech_table(run, summary, "table4_caltech101", args.table4_n)
        write_table(table, out / named(TABLE4, args.preset), sources=[source(run, args.table4)], wall_time_s=run["wall_time_s"])  # fmt: skip
        print(table.to_string(index=False), "\n")
    if args.table5:
        run, summary = load_run(args.table5, "summary.csv", command=TRANSFER)
        table = caltech_table(run, summary, "table5_caltech256", args.table5_n)
        write_table(table, out / named(TABLE5, args.preset), sources=[source(run, args.table5)], wall_time_s=run["wall_time_s"])  # fmt: skip
        print(table.to_string(index=False), "\n")
    if args.fig9:
        run, summary = load_run(args.fig9, "summary.csv", command=TRANSFER)
        write_table(fig9_table(run, summary), out / named(FIG9_TRANSFER_TABLE, args.preset), sources=[source(run, args.fig9)], wall_time_s=run["wall_time_s"])  # fmt: skip
        redraw(out, args.preset, FIG9_TRANSFER)  # the figure from the table just written
    if args.table6:
        run, rows = load_run(args.table6, "rows.csv", command=TRANSFER)
        table = pascal_table(run, rows)
        write_table(table, out / named(TABLE6, args.preset), sources=[source(run, args.table6)], wall_time_s=run["wall_time_s"])  # fmt: skip
        redraw(out, args.preset, FIG_TABLE6_AP)  # the figure from the table just written
        print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
