"""Write results/transfer_within_<preset>.csv and fig_transfer_within_<preset>.png: Fig. 9's comparison
(Section 5.2) at the cpu preset in its two stand-ins, side by side.

usage: python scripts/transfer_within.py --preset cpu --out results --within RUN_DIR --cross RUN_DIR_OR_CSV

- within-domain (``zfviz transfer experiment=within``): a net pretrained on five Fashion-MNIST classes,
  moved to the other five: new classes of the same kind of images, which is what the paper's claim is about
  (ImageNet -> Caltech-256: pretrained features beat a net trained from scratch, by most at few images).
- cross-domain (``experiment=fig9``, ``--cross`` its run folder or its ``fig9_transfer_<preset>.csv``):
  the net trained on all of Fashion-MNIST, moved to scikit-learn's digits.

Each row is one (stand-in, head, images per class) with the mean and std over splits, and for the
pretrained heads the gain over the scratch net at the same number of images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from zfviz.data.fashion_mnist import class_names
from zfviz.errors import UserError
from zfviz.outputs import FIG_TRANSFER_WITHIN, TRANSFER_WITHIN, named
from zfviz.plotting.redraw import redraw
from zfviz.results import load_run, run_source, write_table
from zfviz.script_main import script_main

TRANSFER = "zfviz transfer"
COLUMNS = ["stand_in", "pretrained_on", "transfer_to", "head", "pretrained", "n_per_class", "accuracy", "std",
           "splits", "scratch_accuracy", "gain_over_scratch"]  # fmt: skip


def _classes(name: str | None, classes) -> str:
    """``Fashion-MNIST: Trouser, Coat, ...`` for a list of Fashion-MNIST class indices; the data set otherwise."""
    if name != "fashion_mnist":
        return str(name)
    if not classes:
        return "Fashion-MNIST (all 10 classes)"
    return "Fashion-MNIST: " + ", ".join(class_names(tuple(classes)))


def within_source(run_dir: str) -> tuple[pd.DataFrame, dict, str, str]:
    """The within-domain run: (summary, provenance, what the net was pretrained on, what it moved to)."""
    run, summary = load_run(run_dir, "summary.csv", command=f"{TRANSFER} experiment=within")
    if run.get("dataset") != "fashion_mnist":
        raise UserError(f"--within {run_dir} is a run of {run.get('dataset')}, not the within-domain "
                        "fashion_mnist transfer (zfviz transfer experiment=within)")  # fmt: skip
    keep = ("dataset", "note", "checkpoint", "checkpoint_sha256", "pretrained_on")
    source = run_source(run, run_dir=run_dir, **{k: run.get(k) for k in keep})
    pretrained_on = run.get("pretrained_on") or {}
    target = "Fashion-MNIST: " + ", ".join(run.get("target_classes") or ["?"])
    return summary, source, _classes(pretrained_on.get("name"), pretrained_on.get("classes")), target


def cross_source(path: str) -> tuple[pd.DataFrame, dict, str, str]:
    """The cross-domain sweep, from its run folder or from the table transfer_tables.py wrote of it."""
    if Path(path).is_dir():
        run, summary = load_run(path, "summary.csv", command=f"{TRANSFER} experiment=fig9")
        keep = ("dataset", "note", "checkpoint", "checkpoint_sha256")
        source = run_source(run, run_dir=path, **{k: run.get(k) for k in keep})
    elif Path(path).is_file():
        summary = pd.read_csv(path)
        meta_path = Path(path).with_suffix(".meta.json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        source = {"table": str(path), "sources": meta.get("sources", [])}
    else:
        raise UserError(f"--cross {path}: no such run folder or CSV; run {TRANSFER} experiment=fig9 first")
    note = json.dumps(source, default=str)
    target = "scikit-learn digits" if "load_digits" in note else str(summary["dataset"].iloc[0])
    return summary, source, _classes("fashion_mnist", None), target


def side_by_side(stand_ins: dict[str, tuple[pd.DataFrame, str, str]]) -> pd.DataFrame:
    """One table of every stand-in's summary, each pretrained row beside the scratch net at its N."""
    parts = []
    for name, (summary, pretrained_on, transfer_to) in stand_ins.items():
        missing = {"scratch", "softmax", "svm"} - set(summary["head"])
        if "scratch" in missing or missing == {"softmax", "svm"}:
            raise UserError(f"the {name} run has no {' or '.join(sorted(missing))} head: it cannot compare "
                            "pretrained against scratch; run it with head=[softmax,svm,scratch]")  # fmt: skip
        scratch = summary[summary["head"] == "scratch"].set_index("n_per_class")["accuracy"]
        df = summary.copy()
        df["stand_in"], df["pretrained_on"], df["transfer_to"] = name, pretrained_on, transfer_to
        df["scratch_accuracy"] = df["n_per_class"].map(scratch)
        df["gain_over_scratch"] = (df["accuracy"] - df["scratch_accuracy"]).where(df["head"] != "scratch").round(2)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)[COLUMNS]


def headline(table: pd.DataFrame) -> str:
    """Pretrained (best head) against scratch at the fewest and the most images per class, per stand-in."""
    lines = []
    for name, df in table.groupby("stand_in", sort=False):
        for n in (df["n_per_class"].min(), df["n_per_class"].max()):
            at = df[df["n_per_class"] == n].set_index("head")["accuracy"]
            best = at.drop("scratch").idxmax()
            lines.append(f"{name}, {n}/class: pretrained ({best}) {at[best]:.1f}% vs scratch {at['scratch']:.1f}%")
    return "\n".join(lines)


@script_main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", default="results")
    parser.add_argument("--within", required=True, metavar="RUN_DIR")
    parser.add_argument("--cross", required=True, metavar="RUN_DIR_OR_CSV")
    args = parser.parse_args()
    out = Path(args.out)
    within, within_prov, w_from, w_to = within_source(args.within)
    cross, cross_prov, c_from, c_to = cross_source(args.cross)
    table = side_by_side({"cross-domain": (cross, c_from, c_to), "within-domain": (within, w_from, w_to)})
    sources = [cross_prov, within_prov]
    table_name, figure = named(TRANSFER_WITHIN, args.preset), named(FIG_TRANSFER_WITHIN, args.preset)
    write_table(table, out / table_name, sources=sources)
    redraw(out, args.preset, FIG_TRANSFER_WITHIN)  # the figure from the table just written
    print(headline(table))
    print(f"wrote {out}/{table_name} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
