"""Result tables beside the paper's numbers, with a ``.meta.json`` provenance sidecar.

The paper's tables ship inside the package (``zfviz/paper_tables``), so every table we write
prints the published value next to ours.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import pandas as pd

from zfviz.errors import UserError
from zfviz.utils import atomic_path, atomic_write_text, command_line, git_state, hydra_command, versions

# Which row of the paper's Table 2 each of our models reproduces.
TABLE2_ROWS = {
    "zfnet": "ZFNet (Fig. 3), 1 convnet",
    "zfnet_b": "ZFNet-b (layers 3,4,5: 512,1024,512), 1 convnet (b)",
    "alexnet": "Replication of Krizhevsky et al., 1 convnet",
}


def paper_table(name: str) -> pd.DataFrame:
    """One of the paper's tables, e.g. ``paper_table("table2_imagenet")``."""
    with resources.files("zfviz.paper_tables").joinpath(f"{name}.csv").open() as f:
        return pd.read_csv(f)


def load_run(
    run_dir: str | Path, table: str = "metrics.csv", *, command: str = "zfviz train"
) -> tuple[dict, pd.DataFrame]:
    """A finished run: its ``run.json`` summary and one of its CSVs (a training run's ``metrics.csv``
    history by default; a ``zfviz transfer`` run's ``rows.csv`` or ``summary.csv``)."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "run.json"
    if not summary_path.is_file():
        raise UserError(f"{run_dir} holds no finished run (no run.json); run {command} first")
    return json.loads(summary_path.read_text()), pd.read_csv(run_dir / table)


def run_metrics(summary: dict, final) -> dict:
    """The columns every training-result table shares: data sizes, last epoch's errors, wall time."""
    return {
        "train_images": summary["train_images"],
        "test_images": summary["test_images"],
        "epochs": int(final["epoch"]),
        "train_top1_err": final["train_top1_err"],
        "val_top1_err": final["val_top1_err"],
        "val_top5_err": final["val_top5_err"],
        "wall_time_s": summary["wall_time_s"],
    }


def run_source(summary: dict, **label) -> dict:
    """A finished run's provenance for a table's sidecar: ``label``, git state, wall time, config."""
    return {**label, **{k: summary[k] for k in ("git_sha", "git_dirty", "wall_time_s", "config")}}


def runs_parser(doc: str) -> argparse.ArgumentParser:
    """The command line every table script shares: ``--preset``, ``--out`` and the run folders."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", default="results")
    parser.add_argument("runs", nargs="+")
    return parser


def table2(run_dirs: list[str | Path]) -> pd.DataFrame:
    """Our final-epoch errors beside the matching rows of the paper's Table 2 (ImageNet val)."""
    paper = paper_table("table2_imagenet").set_index("row")
    rows = []
    for run_dir in run_dirs:
        summary, history = load_run(run_dir)
        final = history.iloc[-1]
        paper_row = TABLE2_ROWS.get(summary["model"])
        cfg = summary["config"]
        rows.append(
            {
                "model": summary["model"],
                "preset": cfg.get("preset"),
                "dataset": summary["data"],
                "input_size": cfg["model"]["input_size"],
                "width": cfg["model"]["width"],
                "fc_dims": cfg["model"]["fc_dims"],
                "parameters": summary["parameters"],
                **run_metrics(summary, final),
                "paper_row": paper_row,
                "paper_val_top1_err": paper.loc[paper_row, "val_top1_err"] if paper_row else None,
                "paper_val_top5_err": paper.loc[paper_row, "val_top5_err"] if paper_row else None,
                "run_dir": str(run_dir),
            }
        )
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, path: str | Path, *, sources: list[dict], wall_time_s: float | None = None) -> None:
    """Write ``df`` as CSV and ``<path>.meta.json`` (git state, versions, the runs' configs)."""
    path = Path(path)
    write_csv(df, path)
    write_meta(path, table=path.name, sources=sources, wall_time_s=wall_time_s)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """``df`` as CSV at ``path``, atomically; its provenance is ``write_meta``'s job."""
    with atomic_path(Path(path)) as tmp:
        df.to_csv(tmp, index=False)


def write_meta(path: str | Path, *, sources: list[dict], wall_time_s: float | None = None, **fields) -> Path:
    """Write ``<path without suffix>.meta.json``: ``fields``, the command, git state, versions, wall time and
    ``sources``.

    One sidecar per stem, so ``fig5.csv`` and ``fig5.png`` share ``fig5.meta.json``. ``command`` is the
    command that made the file: a running Hydra app's job and overrides (``zfviz viz viz=top9 checkpoint=...``),
    else the ``command`` the caller names (a command's ``run(cfg)`` called in-process names itself), else this
    process's command line (``python scripts/table2.py --preset cpu ...``). Sidecars older than issue 27 have none.
    """
    command = hydra_command() or fields.pop("command", None) or command_line()
    meta = {
        **fields,
        "command": command,
        **git_state(),
        "versions": versions(),
        "wall_time_s": wall_time_s,
        "sources": sources,
    }
    target = Path(path).with_suffix(".meta.json")
    atomic_write_text(target, json.dumps(meta, indent=2, default=str))
    return target


def save_figure(fig, path: str | Path, dpi: int = 120, *, sources: list[dict] | None = None, **fields) -> None:
    """``fig`` at ``path``, atomically; with ``sources``, also its ``.meta.json`` (``write_meta``'s fields).
    What the figure left out of its request (``plotting.bounded``: the first 16 of 2000 images) is said on
    stdout, beside the file, as its caption says it."""
    from zfviz.plotting.bounded import notes  # imports pyplot: only once there is a figure

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip("."))
    for note in notes(fig):
        print(f"{path}: {note}")
    if sources is not None:
        write_meta(path, figure=path.name, sources=sources, **fields)
