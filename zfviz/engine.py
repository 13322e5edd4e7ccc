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
) -> list[dict]:
    """Train for ``trainer_cfg.epochs``; keep ``metrics.csv`` and ``checkpoint.pt`` current.

    ``checkpoint.pt`` holds model, optimizer, schedulers, RNG states, epoch, step and the metrics
    so far; it is rewritten after every epoch and every ``trainer_cfg.ckpt_every_steps`` steps
    (0 = epochs only). ``resume_state`` is such a checkpoint to continue from.
    """
    out_dir = Path(out_dir)
    dist_info = dist_info or DistInfo()
    epochs = int(trainer_cfg.epochs)
    if epochs < 1:  # zero epochs would return no rows and leave a run that looks finished
        raise UserError(f"trainer.epochs={epochs} is not valid; train 1 epoch or more")
    ckpt_every = int(trainer_cfg.get("ckpt_every_steps") or 0)
    fault_at = trainer_cfg.get("fault_at_step")
    amp = trainer_cfg.get("amp")
    channels_last = bool(trainer_cfg.get("channels_last", False))
    clip_rms = trainer_cfg.get("clip_rms")
    save_epochs = set(trainer_cfg.get("save_epochs") or ())
    eval_every = trainer_cfg.get("eval_every")
    eval_every = 1 if eval_every is None else int(eval_every)
    if eval_every < 1:
        raise UserError(f"trainer.eval_every={eval_every} is not valid; evaluate every 1 or more epochs")
    progress = bool(trainer_cfg.get("progress", True)) and dist_info.is_main

    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if dist_info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer, step_sched, epoch_sched = build_optimizer(net, optim_cfg, len(train_loader), epochs)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None

    rows: list[dict] = []
    done_epochs, start_step, partial = 0, 0, None
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        for sched, key in ((step_sched, "step_scheduler"), (epoch_sched, "epoch_scheduler")):
            if sched is not None and resume_state.get(key):
                sched.load_state_dict(resume_state[key])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        set_rng_state(resume_state["rng"], device)
        rows = list(resume_state.get("rows", []))
        done_epochs, start_step, partial = resume_state["epoch"], resume_state["step"], resume_state.get("partial")
        if partial and not dist_info.is_main:  # the saved sums are every rank's: rank 0 carries them on
            partial = {**partial, "loss": 0.0, "wrong": 0, "seen": 0}
    global_step = done_epochs * len(train_loader) + start_step
    wall_offset = rows[-1]["wall_time_s"] if rows else 0.0
    start = time.perf_counter()

    def checkpoint(path: Path, epoch: int, step: int, sums: dict | None) -> None:
        nonlocal saved
        if not _finite(model):
            raise TrainingDiverged(f"weights became non-finite at epoch {epoch + 1}, step {step}")
        if sums is not None and dist_info.enabled:  # the epoch's running sums over every rank, not rank 0's alone
            loss, wrong, seen = all_reduce_sum([sums["loss"], sums["wrong"], sums["seen"]], device)
            sums = {**sums, "loss": loss, "wrong": int(wrong), "seen": int(seen)}
        if not dist_info.is_main:
            return
        state = {
            "optimizer": optimizer.state_dict(),
            "step_scheduler": step_sched.state_dict() if step_sched else None,
            "epoch_scheduler": epoch_sched.state_dict() if epoch_sched else None,
            "scaler": scaler.state_dict() if scaler else None,
            "rng": rng_state(device),
            "step": step,
            "partial": dict(sums) if sums else None,
            "rows": rows,
        }
        save_checkpoint(path, model, config, epoch, rows[-1] if rows else None, extra=state)
        saved = (epoch, step)

    saved = (done_epochs, start_step) if resume_state is not None else None  # the newest checkpoint.pt
    at = (done_epochs + 1, start_step)  # the epoch under way and the steps done in it

    def interrupted() -> Interrupted:
        epoch, step = at
        if step == 0:
            where = f"after epoch {epoch - 1} of {epochs}"
        else:
            where = f"at epoch {epoch} of {epochs}, step {step} of {len(train_loader)}"
        if saved is None:
            return Interrupted(f"interrupted {where}; no checkpoint had been written yet")
        kept = "checkpoint" if saved == (epoch - 1, step) else f"the checkpoint of {_position(*saved)}"
        return Interrupted(f"interrupted {where}; {kept} kept at {out_dir / 'checkpoint.pt'}", out_dir)

    # The allocator keeps freed buffers over the whole run, evaluations and checkpoints included (cpu_memory.py).
    with _StopRequest(interrupted, enabled=not dist_info.enabled) as stop, reuse_freed_memory(device):
        for epoch in range(done_epochs + 1, epochs + 1):
            train_loader.set_epoch(epoch, start_batch=start_step)
            # The lr an epoch started with; an interrupted epoch saved it with its partial sums.
            lr = partial["lr"] if partial else optimizer.param_groups[0]["lr"]

            def step_hook(step: int, sums: dict, epoch: int = epoch, lr: float = lr) -> None:
                nonlocal global_step, at
                global_step, at = global_step + 1, (epoch, step)
                if ckpt_every and global_step % ckpt_every == 0 and step < len(train_loader):
                    checkpoint(out_dir / "checkpoint.pt", epoch - 1, step, {**sums, "lr": lr})
                if fault_at is not None and global_step == int(fault_at):
                    os.kill(os.getpid(), signal.SIGKILL)  # test-only fault injection: die as a crash would
                if stop.requested and step < len(train_loader):  # at an epoch's last step: finish the epoch
                    if saved != (epoch - 1, step):
                        checkpoint(out_dir / "checkpoint.pt", epoch - 1, step, {**sums, "lr": lr})
                    raise _Stop

            try:
                train = train_one_epoch(
                    net, train_loader, optimizer, device=device, scheduler=step_sched, clip_rms=clip_rms, amp=amp,
                    scaler=scaler, channels_last=channels_last, start_step=start_step, partial=partial,
                    step_hook=step_hook, desc=f"epoch {epoch}/{epochs}", progress=progress,
                )  # fmt: skip
            except FloatingPointError as err:
                last = out_dir / "checkpoint.pt"
                kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint had been written"
                raise TrainingDiverged(f"{err} (epoch {epoch}); training stopped, {kept}") from None
            start_step, partial = 0, None
            # An epoch skipped by eval_every records NaN errors: evaluation never touches the weights or the
            # RNG, so the trained net is the same; a plateau schedule needs every epoch's error.
            if epoch_sched is not None or epoch == epochs or epoch % eval_every == 0:
                val = evaluate(net, val_loader, device=device, amp=amp)
            else:
                val = dict.fromkeys(("val_loss", "val_top1_err", "val_top5_err"), float("nan"))
            if epoch_sched is not None:
                epoch_sched.step(val["val_top1_err"])
            wall = wall_offset + time.perf_counter() - start
            row = {"epoch": epoch, "lr": lr, **train, **val, "wall_time_s": wall}
            rows.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
            checkpoint(out_dir / "checkpoint.pt", epoch, 0, None)
            if dist_info.is_main:
                atomic_write_text(out_dir / "metrics.csv", _metrics_csv(rows))
                if epoch in save_epochs:
                    save_checkpoint(out_dir / f"checkpoint_epoch{epoch}.pt", model, config, epoch, rows[-1])
            if progress:
                tqdm.write(
                    f"epoch {epoch}: train loss {train['train_loss']:.4f}, val top-1 {val['val_top1_err']:.2f}%, "
                    f"top-5 {val['val_top5_err']:.2f}%, {train['img_per_s']:.0f} img/s"
                )
            at = (epoch + 1, 0)
            if stop.requested and epoch < epochs:
                raise _Stop
    return rows
