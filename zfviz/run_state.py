"""What a training run is made of and where it stands (``zfviz.engine.fit``'s state and checkpointing).

``Run``: its folder, config, device and processes; ``Optimization``: what an update steps; ``Position``:
the epoch and step under way. ``Checkpoints`` writes the whole training state atomically (rank 0), restores it to a ``Position``, keeps
``metrics.csv`` and the epochs asked for, and words the one line a diverged or interrupted run ends with.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from zfviz.checkpoint import save_checkpoint
from zfviz.distributed import DistInfo, all_reduce_sum
from zfviz.errors import Interrupted, UserError
from zfviz.utils import atomic_write_text, rng_state, set_rng_state


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


@dataclass
class Optimization:
    """What an update steps besides the weights: the optimizer, its per-step and per-epoch schedules,
    and fp16's gradient scaler."""

    optimizer: torch.optim.Optimizer
    step_scheduler: object = None
    epoch_scheduler: object = None
    scaler: torch.amp.GradScaler | None = None

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()


@dataclass(frozen=True)
class Run:
    """Where and as what a run trains: its folder, the config saved in its checkpoints, its device and
    processes, the checkpoint it continues from, and ``on_step(global_step)``, run after every update once
    the step's checkpoint is written (the tests' fault injection)."""

    out_dir: Path
    config: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    dist_info: DistInfo = field(default_factory=DistInfo)
    resume_state: dict | None = None
    on_step: Callable[[int], None] | None = None
    preprocessing: dict | None = None  # what its checkpoints carry about the inputs (zfviz.data.trained)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))


@dataclass
class Position:
    """Where a run stands: the rows so far, the epoch under way and the steps done in it."""

    rows: list[dict] = field(default_factory=list)
    epoch: int = 1  # the epoch under way (1-based)
    step: int = 0  # steps done in it
    partial: dict | None = None  # its running sums (and lr), when it was resumed mid-epoch
    global_step: int = 0


def summed_over_ranks(sums: dict, device: torch.device) -> dict:
    """The running sums over every process (as they are when not distributed); counts stay integers."""
    keys = [key for key in sums if key != "lr"]
    totals = all_reduce_sum([sums[key] for key in keys], device)
    return {**sums, **{key: type(sums[key])(total) for key, total in zip(keys, totals, strict=True)}}


def _metrics_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def _position(epoch_done: int, step: int) -> str:
    """A checkpoint's place in words, from its ``epoch`` (completed epochs) and ``step`` fields."""
    return f"epoch {epoch_done}" if step == 0 else f"epoch {epoch_done + 1}, step {step}"


class Checkpoints:
    """A run's ``checkpoint.pt``: the whole training state (model, optimizer, schedulers, scaler, every RNG
    state, epoch, step, the epoch's running sums, the rows so far), written atomically by rank 0; where
    the newest one stands; ``checkpoint_epoch<N>.pt`` kept for the epochs asked for; ``metrics.csv``."""

    def __init__(self, model: nn.Module, optim: Optimization, run: Run) -> None:
        self.out_dir, self.path = run.out_dir, run.out_dir / "checkpoint.pt"
        self.model, self.optim = model, optim
        self.config, self.device, self.dist = run.config, run.device, run.dist_info
        self.preprocessing = run.preprocessing  # what a checkpoint says about its inputs
        self.saved: tuple[int, int] | None = None  # (completed epochs, steps) of the newest checkpoint.pt

    def _schedulers(self) -> dict:
        return {"step_scheduler": self.optim.step_scheduler, "epoch_scheduler": self.optim.epoch_scheduler}

    def restore(self, state: dict, steps_per_epoch: int) -> Position:
        self.model.load_state_dict(state["model"])
        self.optim.optimizer.load_state_dict(state["optimizer"])
        for key, sched in self._schedulers().items():
            if sched is not None and state.get(key):
                sched.load_state_dict(state[key])
        if self.optim.scaler is not None and state.get("scaler"):
            self.optim.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.device)
        partial = state.get("partial")
        if partial and not self.dist.is_main:  # the saved sums are every rank's: rank 0 carries them on
            partial = {key: value if key == "lr" else type(value)(0) for key, value in partial.items()}
        self.saved = (state["epoch"], state["step"])
        return Position(list(state.get("rows", [])), state["epoch"] + 1, state["step"], partial,
                        state["epoch"] * steps_per_epoch + state["step"])  # fmt: skip

    def save(self, epoch: int, step: int, sums: dict | None, rows: list[dict]) -> None:
        """Checkpoint after ``epoch`` completed epochs and ``step`` steps of the next (with its ``sums``)."""
        if not _finite(self.model):
            raise TrainingDiverged(f"weights became non-finite at epoch {epoch + 1}, step {step}")
        if sums is not None and self.dist.enabled:  # the epoch's running sums over every rank, not rank 0's alone
            sums = summed_over_ranks(sums, self.device)
        if not self.dist.is_main:
            return
        state = {
            "optimizer": self.optim.optimizer.state_dict(),
            **{key: sched.state_dict() if sched else None for key, sched in self._schedulers().items()},
            "scaler": self.optim.scaler.state_dict() if self.optim.scaler else None,
            "rng": rng_state(self.device),
            "step": step,
            "partial": dict(sums) if sums else None,
            "rows": rows,
        }
        row = rows[-1] if rows else None
        save_checkpoint(self.path, self.model, self.config, epoch, row, extra=state, preprocessing=self.preprocessing)
        self.saved = (epoch, step)

    def epoch_done(self, epoch: int, rows: list[dict], save_epochs: frozenset[int]) -> None:
        """The epoch's checkpoint, ``metrics.csv`` with its row, and ``checkpoint_epoch<N>.pt`` if asked for."""
        self.save(epoch, 0, None, rows)
        if not self.dist.is_main:
            return
        atomic_write_text(self.out_dir / "metrics.csv", _metrics_csv(rows))
        if epoch in save_epochs:
            path = self.out_dir / f"checkpoint_epoch{epoch}.pt"
            save_checkpoint(path, self.model, self.config, epoch, rows[-1], preprocessing=self.preprocessing)

    def diverged(self, err: FloatingPointError, at: Position) -> TrainingDiverged:
        """A non-finite loss stops the run, naming the last good checkpoint."""
        kept = f"the last good checkpoint is {self.path}" if self.path.exists() else "no checkpoint had been written"
        return TrainingDiverged(f"{err} (epoch {at.epoch}); training stopped, {kept}")

    def interrupted(self, at: Position, epochs: int, steps_per_epoch: int) -> Interrupted:
        """The one line a halted run ends with: where it stopped and which checkpoint resumes it."""
        if at.step == 0:
            where = f"after epoch {at.epoch - 1} of {epochs}"
        else:
            where = f"at epoch {at.epoch} of {epochs}, step {at.step} of {steps_per_epoch}"
        if self.saved is None:
            return Interrupted(f"interrupted {where}; no checkpoint had been written yet")
        kept = "checkpoint" if self.saved == (at.epoch - 1, at.step) else f"the checkpoint of {_position(*self.saved)}"
        return Interrupted(f"interrupted {where}; {kept} kept at {self.path}", self.out_dir)
