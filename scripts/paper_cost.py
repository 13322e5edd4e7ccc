"""Write results/paper_cost.csv: what ``make figures PRESET=paper`` costs, stage by stage, before it starts (issue 25).

Per stage of the Makefile: the images it pushes through a net (forward, or forward and backward), the
FLOPs counted on the paper preset's nets, the training step's images/s measured on this CPU (ZFNet and
AlexNet at 224 px, batch ``--batch``, ``--steps`` steps after a warm-up step, ``--threads`` torch
threads), and the hours that projects to here and on 1 and 8 GPUs (``zfviz.cost``). The sidecar
``paper_cost.meta.json`` names the CPU, the commit, the command, the GPU basis and what was read.

usage: python scripts/paper_cost.py [--out results] [--no-measure]
       [--gpu "NVIDIA A100 SXM"] [--precision fp32] [--peak-tflops 19.5] [--utilization 0.4] [--gpus 8] [--scaling 0.9]
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from zfviz.cost import (
    Basis,
    Counter,
    measure_train,
    paper_model_cfg,
    paper_stages,
    rows,
    sources,
    total_lines,
    with_readme_table,
)
from zfviz.outputs import PAPER_COST
from zfviz.pipeline import machine
from zfviz.results import write_csv, write_meta
from zfviz.utils import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results")
    parser.add_argument("--no-measure", action="store_true", help="leave the CPU columns empty (no training steps)")
    parser.add_argument("--readme", type=Path, help="only rewrite this file's cost table from the CSV in --out")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the measurement (make figures: cores / JOBS)"
    )
    for field in dataclasses.fields(Basis):  # the GPU basis: --gpu, --precision, --peak-tflops, ...
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    basis = Basis(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Basis)})
    if args.readme:
        atomic_write_text(
            args.readme, with_readme_table(args.readme.read_text(), pd.read_csv(Path(args.out) / PAPER_COST))
        )
        print(f"wrote the cost table into {args.readme}")
        return 0
    count = Counter(paper_model_cfg())
    stages = paper_stages(count)
    measured, load = None, None
    if not args.no_measure:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").is_file() else None
        try:
            measured = measure_train(count, batch=args.batch, steps=args.steps)
        finally:
            torch.set_num_threads(threads)
    df = rows(stages, basis, measured, count)
    path = Path(args.out) / PAPER_COST
    write_csv(df, path)
    measurement = None if measured is None else {
        "img_per_s": {k: round(v, 3) for k, v in measured.items()}, "batch": args.batch, "steps": args.steps,
        "warmup_steps": 1, "threads": args.threads, "input_size": count.size, "loadavg_before": load,
        "gflop_per_image_train": {k: count(k, "train") / 1e9 for k in measured},
    }  # fmt: skip
    write_meta(path, table=path.name, sources=sources(), wall_time_s=round(time.perf_counter() - start, 2),
               command=shlex.join(["python", "scripts/paper_cost.py", *(sys.argv[1:] if argv is None else argv)]),
               machine=machine(), basis=dataclasses.asdict(basis),
               cpu_measurement=measurement)  # fmt: skip
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 40):
        print(df.drop(columns=["what", "basis"]).to_string(index=False))
    print("\n".join(total_lines(df, f"wrote {path}")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
