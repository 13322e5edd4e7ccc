"""What the ``scripts/bench_*.py`` benchmarks share: the nets they time and how they time them.

The nets are built from the same configs ``zfviz train`` composes (``configs/preset/<preset>.yaml``
over ``configs/model/<name>.yaml``), so a benchmark times the model the presets train, not a copy
of its numbers. Timing runs the compared methods in turn, A B A B ..., in this one process, so a
burst of load on shared cores hits every method alike; ratios come from the same rounds.

Every ratio a benchmark states goes through ``ratio``: it prints the verdict line and keeps the figure. With
``--out DIR`` (``out_argument``), ``Bench.write`` puts them in ``DIR/<script>.csv`` (``bench_deconv.csv``: one
row per ratio line, ``name, value, unit, baseline, ratio, goal``, where ``ratio = value / baseline`` and the
name says what the two are) with its sidecar: the machine (CPU, cores, torch threads), the 1-minute load
average at the start and at the end, the commit and whether the tree was clean, the command line and the
script's settings. ``make bench`` runs every benchmark so, into ``results/``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from zfviz.checkpoint import model_from_checkpoint
from zfviz.commands import CONFIG_DIR
from zfviz.models import build_model
from zfviz.pipeline import load_average
from zfviz.results import write_csv, write_meta
from zfviz.utils import cpu_model

COLUMNS = ["name", "value", "unit", "baseline", "ratio", "goal"]
# The figures this process's ratio lines stated, in order: the rows ``Bench.write`` writes (a process runs one
# benchmark).
FIGURES: list[dict] = []


def preset_model(preset: str = "cpu", name: str = "zfnet", num_classes: int = 10, *overrides: str) -> nn.Module:
    """Model ``name`` as ``zfviz train model=<name> preset=<preset> <overrides>`` builds it (train mode)."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}", f"preset={preset}", *overrides])
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    return build_model(kwargs.pop("name"), num_classes=num_classes, **kwargs)


@dataclass
class Timings:
    """Seconds per round of each method (wall and process CPU), and each method's last result."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)

    def best(self, label: str) -> float:
        return min(self.wall[label])

    def median(self, label: str) -> float:
        return statistics.median(self.wall[label])

    def best_cpu(self, label: str) -> float:
        return min(self.cpu[label])


def figures_model(name: str, quick: bool, runs: Path = Path("runs/figures/cpu")) -> tuple[nn.Module, bool]:
    """The cpu preset's trained ``name`` from ``make figures``' run folder, in eval mode; random weights
    when it is not there or ``quick`` (the second value says which)."""
    checkpoint = runs / name / "checkpoint.pt"
    trained = checkpoint.is_file() and not quick
    model = model_from_checkpoint(checkpoint)[0] if trained else preset_model("cpu", name)
    return model.eval(), trained


def interleaved(methods: dict[str, Callable[[], object]], rounds: int) -> Timings:
    """Run every method once per round, in turn (A B A B ...), ``rounds`` times; time each call."""
    timings = Timings({label: [] for label in methods}, {label: [] for label in methods})
    for _ in range(rounds):
        for label, fn in methods.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            timings.results[label] = fn()
            timings.wall[label].append(time.perf_counter() - start)
            timings.cpu[label].append(time.process_time() - start_cpu)
    return timings


def ratio_line(name: str, value: float, goal: str = "") -> str:
    """The line a benchmark's verdict is read from (and ``tests/test_bench_scripts.py`` looks for)."""
    return f"  ratio {name} = {value:.3f}" + (f"   (goal {goal})" if goal else "")


def ratio(name: str, value: float, baseline: float, unit: str, goal: str = "") -> float:
    """Print the verdict line ``ratio <name> = value / baseline`` and keep the figure for ``Bench.write``.

    ``name`` says what ``value`` and ``baseline`` are, numerator first ("Captum time / zfviz time": value is
    Captum's seconds); ``unit`` is theirs (s, img/s, GFLOP/s)."""
    value, baseline = float(value), float(baseline)
    FIGURES.append(dict(zip(COLUMNS, (name, value, unit, baseline, value / baseline, goal), strict=True)))
    print(ratio_line(name, value / baseline, goal))
    return value / baseline


def out_argument(parser: argparse.ArgumentParser) -> None:
    """``--out DIR``: also write the figures to ``DIR/<script>.csv`` with its sidecar (``Bench.write``)."""
    parser.add_argument(
        "--out", default=None, help="a folder: also write its ratios to <out>/<script>.csv with a .meta.json sidecar"
    )


def load_1min() -> float | None:
    """The 1-minute load average (None where the system has none): the one ``make figures`` records too."""
    averages = load_average()
    return averages[0] if averages else None


@dataclass(frozen=True)
class Bench:
    """One benchmark run: its script, and the load and the clock when it began (``Bench.begin(__file__)``)."""

    script: Path
    load_at_start: float | None
    started: float

    @classmethod
    def begin(cls, script: str) -> Bench:
        return cls(Path(script), load_1min(), time.perf_counter())

    def write(
        self, out: str | Path | None, settings: dict, stem: str | None = None, notes: dict | None = None
    ) -> Path | None:
        """``out/<stem>.csv`` (every ``ratio`` of this process, atomically; ``stem``: the script's name) and its
        ``.meta.json``; nothing without ``out``. ``settings``: the script's arguments as the run used them
        (after ``--quick``); ``notes``: what the run found that is no ratio (a lever that failed, the CPU's
        instructions), in the sidecar under ``notes``."""
        if out is None:
            return None
        path = Path(out) / f"{stem or self.script.stem}.csv"
        write_csv(pd.DataFrame(FIGURES, columns=COLUMNS), path)
        write_meta(
            path,
            table=path.name,
            sources=[{"script": f"scripts/{self.script.name}", "timing": "interleaved rounds in one process"}],
            wall_time_s=round(time.perf_counter() - self.started, 2),
            cpu=cpu_model(),
            cores=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
            load_1min_at_start=self.load_at_start,
            load_1min_at_end=load_1min(),
            settings=settings,
            **({"notes": notes} if notes else {}),
        )
        print(f"wrote {path}")
        return path
