"""Write results/table3_<preset>.csv and its bar figure from finished ``zfviz ablate`` runs.

usage: python scripts/table3.py --preset cpu --out results ABLATE_RUN_DIR [ABLATE_RUN_DIR ...]

Each ABLATE_RUN_DIR holds the ``variants.json`` a ``zfviz ablate`` run wrote (one folder for
``experiment=table3``, or every job folder of a ``-m`` sweep).
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from zfviz.ablation import read_manifests, table3
from zfviz.errors import UserError
from zfviz.plotting.ablation import ablation_bars
from zfviz.results import load_run, save_figure, write_table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", default="results")
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    try:
        entries = read_manifests(args.runs)
        df = table3(entries)
        sources = []
        for entry in entries:
            summary, _ = load_run(entry["cache_dir"])
            sources.append(
                {
                    "variant": entry["variant"],
                    **{k: summary[k] for k in ("git_sha", "git_dirty", "wall_time_s", "config")},
                }
            )
    except UserError as err:
        print(f"table3: error: {err}", file=sys.stderr)
        return 2
    write_table(df, f"{args.out}/table3_{args.preset}.csv", sources=sources, wall_time_s=float(df["wall_time_s"].sum()))
    title = f"Table 3 ablations, {args.preset} preset ({df['dataset'].iloc[0]}, {int(df['epochs'].iloc[0])} epochs)"
    save_figure(ablation_bars(df, title=title), f"{args.out}/fig_table3_{args.preset}.png")
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        cols = ["variant", "parameters", "train_top1_err", "val_top1_err", "val_top5_err", "paper_val_top1_err"]
        print(df[cols].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
