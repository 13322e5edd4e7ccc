"""Write results/table2_<preset>.csv and the training-curve figure from finished ``zfviz train`` runs.

usage: python scripts/table2.py --preset cpu --out results RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys

import pandas as pd

from zfviz.outputs import TABLE2, TRAINING_CURVES, named
from zfviz.plotting.training import training_curves
from zfviz.results import load_run, run_source, runs_parser, save_figure, table2, write_table
from zfviz.script_main import script_main


@script_main
def main() -> int:
    args = runs_parser(__doc__).parse_args()
    df = table2(args.runs)
    sources = []
    histories: dict[str, pd.DataFrame] = {}
    for run_dir in args.runs:
        summary, history = load_run(run_dir)
        histories[summary["model"]] = history
        sources.append(run_source(summary, model=summary["model"]))
    write_table(
        df, f"{args.out}/{named(TABLE2, args.preset)}", sources=sources, wall_time_s=float(df["wall_time_s"].sum())
    )
    fig = training_curves(histories, title=f"Training curves, {args.preset} preset ({df['dataset'].iloc[0]})")
    save_figure(
        fig, f"{args.out}/{named(TRAINING_CURVES, args.preset)}", sources=sources, table=named(TABLE2, args.preset)
    )
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.drop(columns=["run_dir"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
