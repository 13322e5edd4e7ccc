"""The shared training and evaluation engine (Section 3 of the paper: how the nets are trained).

Plain functions: ``train_one_epoch``, ``evaluate`` and ``fit``. The paper's steps are explicit,
named lines behind flags: filter RMS clipping after every update (``clip_filter_rms``) and the
10-view test-time average (``evaluate`` on 5-D batches). ``fit`` never loses work: the full
training state is checkpointed atomically every epoch and every N steps (and on Ctrl-C, at the end
of the step under way), and a run resumed from any checkpoint reaches the same weights as one that
was never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zfviz.checkpoint import save_checkpoint
from zfviz.cpu_memory import reuse_freed_memory
from zfviz.distributed import DistInfo, all_reduce_sum
from zfviz.errors import Interrupted, UserError
from zfviz.schedules import cosine
from zfviz.utils import atomic_write_text, rng_state, set_rng_state


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class _Stop(Exception):
    """Raised at a step's end after the first Ctrl-C, once the checkpoint is saved."""


class _StopRequest:
    """While active, the first Ctrl-C asks training to stop at the end of the step under way (so the
    checkpoint saved there resumes exactly); a second one stops at once, as Python's default does.
    Either way the block ends in the ``Interrupted`` that ``interrupted()`` describes.

    Only in the main thread of a single process, and only over Python's own handler: DDP ranks would
    stop at different steps, and someone else's handler is theirs to keep.
    """

    def __init__(self, interrupted, enabled: bool = True) -> None:
        self.requested, self.interrupted = False, interrupted
        self.enabled = (
            enabled
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )

    def __enter__(self) -> _StopRequest:
        if self.enabled:
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, kind, err, tb) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        # After a Ctrl-C, a failure (not a UserError) is one it caused: a loader whose workers it stopped too.
        caused = self.requested and isinstance(err, Exception) and not isinstance(err, UserError)
        if isinstance(err, (_Stop, KeyboardInterrupt)) or caused:
            raise self.interrupted() from None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # os.write, not print: a handler may run in the middle of another print to stderr.
        note = "zfviz: stopping after this step (or epoch's evaluation) to save a checkpoint; Ctrl-C again stops now"
        os.write(2, f"\n{note}\n".encode())


def _position(epoch_done: int, step: int) -> str:
    """A checkpoint's place in words, from its ``epoch`` (completed epochs) and ``step`` fields."""
    return f"epoch {epoch_done}" if step == 0 else f"epoch {epoch_done + 1}, step {step}"


@torch.no_grad()
def clip_filter_rms(model: nn.Module, max_rms: float = 0.1) -> None:
    """Rescale every conv filter whose RMS exceeds ``max_rms`` back to ``max_rms`` (Section 3)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            w = module.weight
            rms = w.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            w.mul_(torch.where(rms > max_rms, max_rms / rms, torch.ones_like(rms)))


def _topk_errors(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of wrong predictions at each k (k capped at the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == target[:, None]
    return [int((~hit[:, : min(k, logits.shape[1])].any(dim=1)).sum()) for k in ks]


def _autocast(device: torch.device, amp: str | None):
    if not amp:
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    scheduler=None,
    clip_rms: float | None = None,
    amp: str | None = None,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    start_step: int = 0,
    partial: dict | None = None,
    step_hook=None,
    desc: str = "train",
    progress: bool = True,
) -> dict:
    """One pass over ``loader``; ``scheduler`` (if given) steps after every batch.

    To continue an epoch from a checkpoint, the loader is positioned with
    ``set_epoch(epoch, start_batch=start_step)`` (nothing before it is read or decoded), ``start_step``
    numbers the steps from there and ``partial`` restores the running sums.
    ``step_hook(step, partial)`` runs after every update (checkpointing, fault injection).
    """
    model.train()
    sums = dict(partial or {"loss": 0.0, "wrong": 0, "seen": 0})
    start, seen_before = time.perf_counter(), sums["seen"]
    # In a log file (no terminal) a bar redrawn ten times a second is noise: redraw every 10 s.
    interval = 0.1 if sys.stderr.isatty() else 10.0
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True, mininterval=interval)
    with reuse_freed_memory(device):
        for step, (x, y) in enumerate(bar, start=start_step):
            x, y = _to(x, device, channels_last), y.to(device, non_blocking=True)
            with _autocast(device, amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step + 1} of {desc}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if clip_rms is not None:
                clip_filter_rms(model, clip_rms)
            if scheduler is not None:
                scheduler.step()
            sums["loss"] += loss.item() * len(y)
            sums["wrong"] += int((logits.argmax(1) != y).sum())
            sums["seen"] += len(y)
            if progress and step % 10 == 0:
                rate = (sums["seen"] - seen_before) / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}", img_s=f"{rate:.0f}", refresh=False)
            if step_hook is not None:
                step_hook(step + 1, sums)
    elapsed = time.perf_counter() - start
    loss_sum, wrong, seen, fresh = all_reduce_sum(
        [sums["loss"], sums["wrong"], sums["seen"], sums["seen"] - seen_before], device
    )
    return {"train_loss": loss_sum / seen, "train_top1_err": 100 * wrong / seen, "img_per_s": fresh / elapsed}


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device, amp: str | None = None, progress: bool = False) -> dict:
    """Loss and top-1/top-5 error (percent). A 5-D batch (N, views, C, H, W) is scored by the
    average of the softmax over its views (the paper's 10-view test)."""
    model.eval()
    total_loss, wrong1, wrong5, seen = 0.0, 0, 0, 0
    for x, y in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        x, y = x.to(device), y.to(device)
        with _autocast(device, amp):
            if x.dim() == 5:
                n, views = x.shape[:2]
                probs = model(x.flatten(0, 1)).float().softmax(-1).view(n, views, -1).mean(1)
                logp = probs.clamp_min(1e-12).log()
            else:
                logp = model(x).float().log_softmax(-1)
        total_loss += F.nll_loss(logp, y, reduction="sum").item()
        w1, w5 = _topk_errors(logp, y)
        wrong1, wrong5, seen = wrong1 + w1, wrong5 + w5, seen + len(y)
    total_loss, wrong1, wrong5, seen = all_reduce_sum([total_loss, wrong1, wrong5, seen], device)
    return {"val_loss": total_loss / seen, "val_top1_err": 100 * wrong1 / seen, "val_top5_err": 100 * wrong5 / seen}


def build_optimizer(model: nn.Module, optim_cfg, steps_per_epoch: int, epochs: int):
    """SGD with momentum, and the learning-rate schedule named by ``optim_cfg.schedule``."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=optim_cfg.lr,
        momentum=optim_cfg.momentum,
        weight_decay=optim_cfg.weight_decay,
        nesterov=bool(optim_cfg.get("nesterov", False)),
    )
    schedule = optim_cfg.get("schedule", "constant")
    step_sched = epoch_sched = None
    if schedule == "cosine":
        total = max(1, steps_per_epoch * epochs)
        warmup = min(total - 1, round(optim_cfg.get("warmup_epochs", 0) * steps_per_epoch))

        step_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine(step, total, warmup))
    elif schedule == "plateau":
        # The paper anneals by hand "when the validation error plateaus"; AlexNet divided by 10.
        epoch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=optim_cfg.get("factor", 0.1), patience=optim_cfg.get("patience", 3)
        )
    elif schedule != "constant":
        raise UserError(f"unknown optim.schedule {schedule!r}; choose cosine, plateau or constant")
    return optimizer, step_sched, epoch_sched


def _metrics_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


@dataclass(frozen=True)
class Settings:
    """What ``fit`` reads from ``trainer.*``, read and checked once; the defaults are configs/train.yaml's."""

    epochs: int
    ckpt_every: int = 500  # also checkpoint every N steps inside an epoch (0: at epoch ends only)
    amp: str | None = None
    channels_last: bool = True
    clip_rms: float | None = None
    save_epochs: frozenset[int] = frozenset()
    eval_every: int = 1
    progress: bool = True

    @classmethod
    def from_config(cls, trainer_cfg) -> Settings:
        epochs = int(trainer_cfg.epochs)
        if epochs < 1:  # zero epochs would return no rows and leave a run that looks finished
            raise UserError(f"trainer.epochs={epochs} is not valid; train 1 epoch or more")
        eval_every = trainer_cfg.get("eval_every")
        eval_every = 1 if eval_every is None else int(eval_every)
        if eval_every < 1:
            raise UserError(f"trainer.eval_every={eval_every} is not valid; evaluate every 1 or more epochs")
        return cls(
            epochs=epochs,
            ckpt_every=int(trainer_cfg.get("ckpt_every_steps", cls.ckpt_every) or 0),
            amp=trainer_cfg.get("amp"),
            channels_last=bool(trainer_cfg.get("channels_last", cls.channels_last)),
            clip_rms=trainer_cfg.get("clip_rms"),
            save_epochs=frozenset(trainer_cfg.get("save_epochs") or ()),
            eval_every=eval_every,
            progress=bool(trainer_cfg.get("progress", True)),
        )


@dataclass
class Position:
    """Where a run stands: the rows so far, the epoch under way and the steps done in it."""

    rows: list[dict] = field(default_factory=list)
    epoch: int = 1  # the epoch under way (1-based)
    step: int = 0  # steps done in it
    partial: dict | None = None  # its running sums (and lr), when it was resumed mid-epoch
    global_step: int = 0


class Checkpoints:
    """A run's ``checkpoint.pt``: the whole training state (model, optimizer, schedulers, scaler, every RNG
    state, epoch, step, the epoch's running sums, the rows so far), written atomically by rank 0; where
    the newest one stands; ``checkpoint_epoch<N>.pt`` kept for the epochs asked for."""

    def __init__(self, out_dir: Path, model, optimizer, schedulers, scaler, *, config, device, dist_info) -> None:
        self.out_dir, self.path = out_dir, out_dir / "checkpoint.pt"
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.schedulers = dict(zip(("step_scheduler", "epoch_scheduler"), schedulers, strict=True))
        self.config, self.device, self.dist = config, device, dist_info
        self.saved: tuple[int, int] | None = None  # (completed epochs, steps) of the newest checkpoint.pt

    def restore(self, state: dict, steps_per_epoch: int) -> Position:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key, sched in self.schedulers.items():
            if sched is not None and state.get(key):
                sched.load_state_dict(state[key])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.device)
        partial = state.get("partial")
        if partial and not self.dist.is_main:  # the saved sums are every rank's: rank 0 carries them on
            partial = {**partial, "loss": 0.0, "wrong": 0, "seen": 0}
        self.saved = (state["epoch"], state["step"])
        return Position(list(state.get("rows", [])), state["epoch"] + 1, state["step"], partial,
                        state["epoch"] * steps_per_epoch + state["step"])  # fmt: skip

    def save(self, epoch: int, step: int, sums: dict | None, rows: list[dict]) -> None:
        """Checkpoint after ``epoch`` completed epochs and ``step`` steps of the next (with its ``sums``)."""
        if not _finite(self.model):
            raise TrainingDiverged(f"weights became non-finite at epoch {epoch + 1}, step {step}")
        if sums is not None and self.dist.enabled:  # the epoch's running sums over every rank, not rank 0's alone
            loss, wrong, seen = all_reduce_sum([sums["loss"], sums["wrong"], sums["seen"]], self.device)
            sums = {**sums, "loss": loss, "wrong": int(wrong), "seen": int(seen)}
        if not self.dist.is_main:
            return
        state = {
            "optimizer": self.optimizer.state_dict(),
            **{key: sched.state_dict() if sched else None for key, sched in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng_state(self.device),
            "step": step,
            "partial": dict(sums) if sums else None,
            "rows": rows,
        }
        save_checkpoint(self.path, self.model, self.config, epoch, rows[-1] if rows else None, extra=state)
        self.saved = (epoch, step)

    def keep_epoch(self, epoch: int, row: dict) -> None:
        if self.dist.is_main:
            save_checkpoint(self.out_dir / f"checkpoint_epoch{epoch}.pt", self.model, self.config, epoch, row)

    def interrupted(self, at: Position, epochs: int, steps_per_epoch: int) -> Interrupted:
        """The one line a stopped run ends with: where it stopped and which checkpoint resumes it."""
        if at.step == 0:
            where = f"after epoch {at.epoch - 1} of {epochs}"
        else:
            where = f"at epoch {at.epoch} of {epochs}, step {at.step} of {steps_per_epoch}"
        if self.saved is None:
            return Interrupted(f"interrupted {where}; no checkpoint had been written yet")
        kept = "checkpoint" if self.saved == (at.epoch - 1, at.step) else f"the checkpoint of {_position(*self.saved)}"
        return Interrupted(f"interrupted {where}; {kept} kept at {self.path}", self.out_dir)


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    optim_cfg,
    trainer_cfg,
    *,
    device: torch.device,
    out_dir: str | Path,
    config: dict,
    dist_info: DistInfo | None = None,
    resume_state: dict | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[dict]:
    """Train for ``trainer_cfg.epochs``; keep ``metrics.csv`` and ``checkpoint.pt`` current.

    ``checkpoint.pt`` (``Checkpoints``) is rewritten after every epoch and every ``trainer.ckpt_every_steps``
    steps; ``resume_state`` is such a checkpoint to continue from. ``on_step(global_step)`` runs after every
    update, once the step's checkpoint is written (the tests' fault injection).
    """
    out_dir, dist_info = Path(out_dir), dist_info or DistInfo()
    settings = Settings.from_config(trainer_cfg)
    epochs, steps = settings.epochs, len(train_loader)
    progress = settings.progress and dist_info.is_main
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if dist_info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer, step_sched, epoch_sched = build_optimizer(net, optim_cfg, steps, epochs)
    scaler = torch.amp.GradScaler("cuda") if settings.amp == "fp16" and device.type == "cuda" else None
    ckpt = Checkpoints(out_dir, model, optimizer, (step_sched, epoch_sched), scaler, config=config, device=device,
                       dist_info=dist_info)  # fmt: skip
    at = ckpt.restore(resume_state, steps) if resume_state is not None else Position()
    rows, wall_offset, start = at.rows, (at.rows[-1]["wall_time_s"] if at.rows else 0.0), time.perf_counter()

    def after_step(step: int, sums: dict, lr: float) -> None:
        at.step, at.global_step = step, at.global_step + 1
        if step < steps and (settings.ckpt_every and at.global_step % settings.ckpt_every == 0):
            ckpt.save(at.epoch - 1, step, {**sums, "lr": lr}, rows)
        if on_step is not None:
            on_step(at.global_step)
        if stop.requested and step < steps:  # at an epoch's last step: finish the epoch
            if ckpt.saved != (at.epoch - 1, step):
                ckpt.save(at.epoch - 1, step, {**sums, "lr": lr}, rows)
            raise _Stop

    # The allocator keeps freed buffers over the whole run, evaluations and checkpoints included (cpu_memory.py).
    stopping = _StopRequest(lambda: ckpt.interrupted(at, epochs, steps), enabled=not dist_info.enabled)
    with stopping as stop, reuse_freed_memory(device):
        for epoch in range(at.epoch, epochs + 1):
            at.epoch = epoch
            train_loader.set_epoch(epoch, start_batch=at.step)
            # The lr an epoch started with; an interrupted epoch saved it with its partial sums.
            lr = at.partial["lr"] if at.partial else optimizer.param_groups[0]["lr"]
            train = _train_epoch(net, train_loader, optimizer, step_sched, scaler, settings, at, device, ckpt.path,
                                 lambda step, sums, lr=lr: after_step(step, sums, lr), progress)  # fmt: skip
            at.partial = None  # at.step stays at the epoch's last step until it is checkpointed
            val = _evaluate_epoch(net, val_loader, epoch, settings, epoch_sched, device)
            if epoch_sched is not None:
                epoch_sched.step(val["val_top1_err"])
            row = {"epoch": epoch, "lr": lr, **train, **val, "wall_time_s": wall_offset + time.perf_counter() - start}
            rows.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
            ckpt.save(epoch, 0, None, rows)
            if dist_info.is_main:
                atomic_write_text(out_dir / "metrics.csv", _metrics_csv(rows))
            if epoch in settings.save_epochs:
                ckpt.keep_epoch(epoch, rows[-1])
            if progress:
                tqdm.write(
                    f"epoch {epoch}: train loss {train['train_loss']:.4f}, val top-1 {val['val_top1_err']:.2f}%, "
                    f"top-5 {val['val_top5_err']:.2f}%, {train['img_per_s']:.0f} img/s"
                )
            at.epoch, at.step = epoch + 1, 0
            if stop.requested and epoch < epochs:
                raise _Stop
    return rows


def _train_epoch(net, loader, optimizer, step_sched, scaler, settings, at, device, last, step_hook, progress) -> dict:
    """One epoch of ``fit`` from where ``at`` stands; a non-finite loss stops the run, naming the last checkpoint."""
    try:
        return train_one_epoch(
            net, loader, optimizer, device=device, scheduler=step_sched, clip_rms=settings.clip_rms, amp=settings.amp,
            scaler=scaler, channels_last=settings.channels_last, start_step=at.step, partial=at.partial,
            step_hook=step_hook, desc=f"epoch {at.epoch}/{settings.epochs}", progress=progress,
        )  # fmt: skip
    except FloatingPointError as err:
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint had been written"
        raise TrainingDiverged(f"{err} (epoch {at.epoch}); training stopped, {kept}") from None


def _evaluate_epoch(net, loader, epoch: int, settings: Settings, epoch_sched, device) -> dict:
    """The epoch's test-set errors. An epoch skipped by ``eval_every`` records NaN: evaluation never touches
    the weights or the RNG, so the trained net is the same; a plateau schedule needs every epoch's error."""
    if epoch_sched is not None or epoch == settings.epochs or epoch % settings.eval_every == 0:
        return evaluate(net, loader, device=device, amp=settings.amp)
    return dict.fromkeys(("val_loss", "val_top1_err", "val_top5_err"), float("nan"))
