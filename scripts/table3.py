"""Write results/table3_<preset>.csv and its bar figure from finished ``zfviz ablate`` runs.

usage: python scripts/table3.py --preset cpu --out results ABLATE_RUN_DIR [ABLATE_RUN_DIR ...]

Each ABLATE_RUN_DIR holds the ``variants.json`` a ``zfviz ablate`` run wrote (one folder for
``experiment=table3``, or every job folder of a ``-m`` sweep).

``--repeat DIR [DIR ...]`` names the folders of a second run of the same variants (another
``cache_dir``): results/table3_<preset>_repeat.csv then sets each row's two runs side by side, the
yardstick for which gaps between rows are findings and which are run-to-run noise.
``--repeat-name seed1`` names that file table3_<preset>_seed1.csv instead (a run with another seed).
"""

from __future__ import annotations

import re
import sys

import pandas as pd

from zfviz.ablation import read_manifests, repeat_table, table3
from zfviz.errors import UserError
from zfviz.outputs import FIG_TABLE3, TABLE3, TABLE3_RERUN, named
from zfviz.plotting.redraw import redraw
from zfviz.results import load_run, run_source, runs_parser, write_table
from zfviz.script_main import script_main


def provenance(entries: list[dict]) -> list[dict]:
    return [run_source(load_run(e["cache_dir"])[0], variant=e["variant"]) for e in entries]


@script_main
def main() -> int:
    parser = runs_parser(__doc__)
    parser.add_argument("--repeat", nargs="+", default=[], metavar="DIR", help="a second run of the same variants")
    parser.add_argument("--repeat-name", default="repeat", help="writes table3_<preset>_<name>.csv (e.g. seed1)")
    args = parser.parse_args()
    if not re.fullmatch(r"[\w-]+", args.repeat_name):
        raise UserError(f"--repeat-name must be letters, digits, - or _, got {args.repeat_name!r}")
    entries = read_manifests(args.runs)
    df = table3(entries)
    sources = provenance(entries)
    repeats = read_manifests(args.repeat) if args.repeat else []
    again = repeat_table(df, table3(repeats)) if repeats else None
    write_table(
        df, f"{args.out}/{named(TABLE3, args.preset)}", sources=sources, wall_time_s=float(df["wall_time_s"].sum())
    )
    if again is not None:
        path = f"{args.out}/{named(TABLE3_RERUN, args.preset, name=args.repeat_name)}"
        write_table(again, path, sources=sources + provenance(repeats))
        print(again.drop(columns=["run_dir", "run_dir_repeat"]).to_string(index=False))
        print(
            f"table3: |val top-1 diff| max {again['val_top1_diff'].abs().max():.2f}, "
            f"mean {again['val_top1_diff'].abs().mean():.2f} points over {len(again)} variants"
        )
    redraw(args.out, args.preset, FIG_TABLE3)  # the figure from the files just written (and any reruns there)
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        cols = ["variant", "parameters", "train_top1_err", "val_top1_err", "val_top5_err", "paper_val_top1_err"]
        print(df[cols].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
