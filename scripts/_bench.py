"""What the ``scripts/bench_*.py`` benchmarks share: the nets they time and how they time them.

The nets are built from the same configs ``zfviz train`` composes (``configs/preset/<preset>.yaml``
over ``configs/model/<name>.yaml``), so a benchmark times the model the presets train, not a copy
of its numbers. Timing runs the compared methods in turn, A B A B ..., in this one process, so a
burst of load on shared cores hits every method alike; ratios come from the same rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from zfviz.checkpoint import model_from_checkpoint
from zfviz.commands import CONFIG_DIR
from zfviz.models import build_model


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
