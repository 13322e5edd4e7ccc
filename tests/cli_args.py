"""Command lines the CLI tests share (imported as ``tests.cli_args``)."""

from __future__ import annotations

from pathlib import Path


def train_args(fmnist_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """A short ``zfviz train`` on the tiny Fashion-MNIST fixture: 256 training images / batch 32 = 8 steps
    per epoch, so checkpoints every step or two and, with dropout on, an RNG state that matters."""
    return [
        "train",
        "debug=fast",
        f"data.root={fmnist_dir}",
        "trainer.batch_size=32",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
