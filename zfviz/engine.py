"""The shared training and evaluation engine (Section 3 of the paper: how the nets are trained).

Plain functions: ``train_one_epoch``, ``evaluate`` and ``fit``. The paper's filter clipping is an
explicit step after each update (``clip_filter_rms``), switched by a flag.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zfviz.checkpoint import save_checkpoint
from zfviz.utils import atomic_write_text


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


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    scheduler=None,
    clip_rms: float | None = None,
    desc: str = "train",
    progress: bool = True,
) -> dict:
    """One pass over ``loader``; ``scheduler`` (if given) steps after every batch."""
    model.train()
    total_loss, wrong, seen = 0.0, 0, 0
    start = time.perf_counter()
    # In a log file (no terminal) a bar redrawn ten times a second is noise: redraw every 10 s.
    interval = 0.1 if sys.stderr.isatty() else 10.0
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True, mininterval=interval)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step} of {desc}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if clip_rms is not None:
            clip_filter_rms(model, clip_rms)
        if scheduler is not None:
            scheduler.step()
        n = len(y)
        total_loss += loss.item() * n
        wrong += int((logits.argmax(1) != y).sum())
        seen += n
        if progress and step % 10 == 0:
            bar.set_postfix(
                loss=f"{total_loss / seen:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=False
            )
    elapsed = time.perf_counter() - start
    return {"train_loss": total_loss / seen, "train_top1_err": 100 * wrong / seen, "img_per_s": seen / elapsed}


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device, progress: bool = False) -> dict:
    """Loss and top-1/top-5 error (in percent) over ``loader``."""
    model.eval()
    total_loss, wrong1, wrong5, seen = 0.0, 0, 0, 0
    for x, y in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        w1, w5 = _topk_errors(logits, y)
        wrong1, wrong5, seen = wrong1 + w1, wrong5 + w5, seen + len(y)
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

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        step_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    elif schedule == "plateau":
        # The paper anneals by hand "when the validation error plateaus"; AlexNet divided by 10.
        epoch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=optim_cfg.get("factor", 0.1), patience=optim_cfg.get("patience", 3)
        )
    elif schedule != "constant":
        raise ValueError(f"unknown schedule {schedule!r}")
    return optimizer, step_sched, epoch_sched


def _metrics_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    optim_cfg,
    *,
    epochs: int,
    device: torch.device,
    out_dir: str | Path,
    config: dict,
    clip_rms: float | None = None,
    save_epochs=(),
    progress: bool = True,
) -> list[dict]:
    """Train for ``epochs``; after each epoch write ``metrics.csv`` and ``checkpoint.pt`` atomically."""
    out_dir = Path(out_dir)
    model.to(device)
    optimizer, step_sched, epoch_sched = build_optimizer(model, optim_cfg, len(train_loader), epochs)
    rows: list[dict] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(
            model, train_loader, optimizer, device=device, scheduler=step_sched, clip_rms=clip_rms,
            desc=f"epoch {epoch}/{epochs}", progress=progress,
        )  # fmt: skip
        val = evaluate(model, val_loader, device=device)
        if epoch_sched is not None:
            epoch_sched.step(val["val_top1_err"])
        row = {"epoch": epoch, "lr": lr, **train, **val, "wall_time_s": time.perf_counter() - start}
        rows.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
        atomic_write_text(out_dir / "metrics.csv", _metrics_csv(rows))
        save_checkpoint(out_dir / "checkpoint.pt", model, config, epoch, rows[-1])
        if epoch in set(save_epochs):
            save_checkpoint(out_dir / f"checkpoint_epoch{epoch}.pt", model, config, epoch, rows[-1])
        if progress:
            tqdm.write(
                f"epoch {epoch}: train loss {train['train_loss']:.4f}, val top-1 {val['val_top1_err']:.2f}%, "
                f"top-5 {val['val_top5_err']:.2f}%, {train['img_per_s']:.0f} img/s"
            )
    return rows
