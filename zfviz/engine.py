"""The shared training and evaluation engine (Section 3 of the paper: how the nets are trained).

Plain functions: ``train_one_epoch``, ``evaluate`` and ``fit``. The paper's steps are explicit,
named lines behind flags: filter RMS clipping after every update (``clip_filter_rms``) and the
10-view test-time average (``evaluate`` on 5-D batches). ``fit`` never loses work: the full
training state is checkpointed atomically every epoch and every N steps (and on Ctrl-C, at the end
of the step under way), and a run resumed from any checkpoint reaches the same weights as one that
was never interrupted (the state and its checkpoints: ``zfviz.run_state``). What a step minimizes is a
``Task``: the nets' ``Classification`` by default, the learned decoders' squared error
(``zfviz.reconstruction.decoder``) on the same loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zfviz.cpu_memory import reuse_freed_memory
from zfviz.distributed import all_reduce_sum
from zfviz.errors import UserError
from zfviz.run_state import Checkpoints, Optimization, Position, Run, summed_over_ranks
from zfviz.schedules import cosine
from zfviz.validate import check_amp


class _HaltTraining(Exception):
    """Raised at a step's end after the first Ctrl-C, once the checkpoint is saved: the run halts there.
    (Not the forward pass stopped at a layer, which is ``zfviz.activations``' business.)"""


class _CtrlC:
    """While active, the first Ctrl-C asks training to halt at the end of the step under way (so the
    checkpoint saved there resumes exactly); a second one stops at once, as Python's default does.
    Either way the block ends in the ``Interrupted`` that ``interrupted()`` describes.

    Only in the main thread of a single process, and only over Python's own handler: DDP ranks would
    halt at different steps, and someone else's handler is theirs to keep.
    """

    def __init__(self, interrupted, enabled: bool = True) -> None:
        self.pressed, self.interrupted = False, interrupted
        self.enabled = (
            enabled
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )

    def __enter__(self) -> _CtrlC:
        if self.enabled:
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, kind, err, tb) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        # After a Ctrl-C, a failure (not a UserError) is one it caused: a loader whose workers it stopped too.
        caused = self.pressed and isinstance(err, Exception) and not isinstance(err, UserError)
        if isinstance(err, (_HaltTraining, KeyboardInterrupt)) or caused:
            raise self.interrupted() from None

    def _handle(self, signum, frame) -> None:
        self.pressed = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # os.write, not print: a handler may run in the middle of another print to stderr.
        note = "zfviz: stopping after this step (or epoch's evaluation) to save a checkpoint; Ctrl-C again stops now"
        os.write(2, f"\n{note}\n".encode())


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


class Task:
    """What a training step minimizes and what an epoch reports: the seam between ``fit`` and what it trains.

    ``loss(net, x, y)`` returns the batch's loss and its contribution to the epoch's running sums (plain
    numbers, summed over steps and, under DDP, over ranks); ``report(sums)`` turns the sums into the
    epoch's ``train_*`` columns; ``line(epoch, epochs, row)`` is the epoch's progress line.
    """

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def report(self, sums: dict) -> dict:
        raise NotImplementedError

    def line(self, epoch: int, epochs: int, row: dict) -> str:
        return f"epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f}"


class Classification(Task):
    """The paper's nets: cross-entropy on the logits (in float32 under autocast); the epoch's mean loss
    and top-1 error over its images."""

    def loss(self, net, x, y):
        logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"loss": loss.item() * len(y), "wrong": int((logits.argmax(1) != y).sum())}

    def report(self, sums):
        return {"train_loss": sums["loss"] / sums["seen"], "train_top1_err": 100 * sums["wrong"] / sums["seen"]}

    def line(self, epoch, epochs, row):
        return (
            f"epoch {epoch}: train loss {row['train_loss']:.4f}, val top-1 {row['val_top1_err']:.2f}%, "
            f"top-5 {row['val_top5_err']:.2f}%, {row['img_per_s']:.0f} img/s"
        )


CLASSIFICATION = Classification()


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
        epochs = int(trainer_cfg["epochs"])
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


# ``train_one_epoch`` alone (transfer heads, benchmarks): NCHW maps unless asked, no clipping, no bar.
ONE_EPOCH = Settings(epochs=1, channels_last=False, progress=False)


def train_one_epoch(
    model: nn.Module,
    loader,
    optim: Optimization | torch.optim.Optimizer,
    *,
    device: torch.device,
    settings: Settings = ONE_EPOCH,
    at: Position | None = None,
    step_hook: Callable[[int, dict], None] | None = None,
    task: Task = CLASSIFICATION,
) -> dict:
    """One pass over ``loader``; ``optim``'s step scheduler (if any) steps after every batch.

    To continue an epoch from a checkpoint, the loader is positioned with
    ``set_epoch(epoch, start_batch=at.step)`` (nothing before it is read or decoded), ``at.step``
    numbers the steps from there and ``at.partial`` restores the running sums.
    ``step_hook(step, sums)`` runs after every update (checkpointing, fault injection).
    """
    optim = optim if isinstance(optim, Optimization) else Optimization(optim)
    desc, at = ("train", Position()) if at is None else (f"epoch {at.epoch}/{settings.epochs}", at)
    model.train()
    sums = dict(at.partial or {"loss": 0.0, "seen": 0})
    start, seen_before = time.perf_counter(), sums["seen"]
    bar = _bar(loader, desc, settings)
    with reuse_freed_memory(device):
        for step, (x, y) in enumerate(bar, start=at.step):
            x, y = _to(x, device, settings.channels_last), y.to(device, non_blocking=True)
            with _autocast(device, settings.amp):
                loss, counts = task.loss(model, x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step + 1} of {desc}")
            optim.step(loss)
            if settings.clip_rms is not None:
                clip_filter_rms(model, settings.clip_rms)
            if optim.step_scheduler is not None:
                optim.step_scheduler.step()
            _add(sums, counts, len(y))
            if settings.progress and step % 10 == 0:
                rate = (sums["seen"] - seen_before) / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{task.report(sums)['train_loss']:.3f}", img_s=f"{rate:.0f}", refresh=False)
            if step_hook is not None:
                step_hook(step + 1, sums)
    elapsed = time.perf_counter() - start
    totals = summed_over_ranks({**sums, "fresh": sums["seen"] - seen_before}, device)
    return {**task.report(totals), "img_per_s": totals["fresh"] / elapsed}


def _bar(loader, desc: str, settings: Settings) -> tqdm:
    # In a log file (no terminal) a bar redrawn ten times a second is noise: redraw every 10 s.
    interval = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(loader, desc=desc, disable=not settings.progress, leave=False, dynamic_ncols=True, mininterval=interval)


def _add(sums: dict, counts: dict, images: int) -> None:
    for key, value in counts.items():
        sums[key] = sums.get(key, 0) + value
    sums["seen"] += images


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
    """``optim_cfg.optimizer`` (SGD with momentum, the default; or Adam, the decoders'), and the learning-rate
    schedule named by ``optim_cfg.schedule``: (optimizer, per-step scheduler, per-epoch scheduler)."""
    kind = optim_cfg.get("optimizer", "sgd")
    if kind == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=optim_cfg["lr"])
    elif kind == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=optim_cfg["lr"],
            momentum=optim_cfg["momentum"],
            weight_decay=optim_cfg["weight_decay"],
            nesterov=bool(optim_cfg.get("nesterov", False)),
        )
    else:
        raise UserError(f"unknown optim.optimizer {kind!r}; choose sgd or adam")
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


class _AfterStep:
    """What ``fit`` does after every update: the step's checkpoint (every ``ckpt_every`` steps, and before
    halting on Ctrl-C), then ``on_step``. An epoch's last step is left to the epoch's own checkpoint."""

    def __init__(self, ckpt: Checkpoints, at: Position, settings: Settings, steps: int, run: Run, ctrl_c: _CtrlC):
        self.ckpt, self.at, self.every, self.steps, self.on_step = ckpt, at, settings.ckpt_every, steps, run.on_step
        self.ctrl_c = ctrl_c
        self.lr = 0.0  # the lr the epoch under way started with, saved with its running sums

    def __call__(self, step: int, sums: dict) -> None:
        at = self.at
        at.step, at.global_step = step, at.global_step + 1
        inside = step < self.steps
        if inside and self.every and at.global_step % self.every == 0:
            self.ckpt.save(at.epoch - 1, step, {**sums, "lr": self.lr}, at.rows)
        if self.on_step is not None:
            self.on_step(at.global_step)
        if inside and self.ctrl_c.pressed:  # at an epoch's last step: finish it
            if self.ckpt.saved != (at.epoch - 1, step):
                self.ckpt.save(at.epoch - 1, step, {**sums, "lr": self.lr}, at.rows)
            raise _HaltTraining


def _placed(model: nn.Module, settings: Settings, run: Run) -> nn.Module:
    """``model`` on the run's device (channels-last if asked), wrapped for DDP when distributed."""
    model.to(run.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    if not run.dist_info.enabled:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[run.device.index] if run.device.type == "cuda" else None
    )


def _say_amp(amp: str | None, run: Run) -> None:
    """What ``trainer.amp`` does off CUDA, said once: fp16 is refused (``validate.check_amp``, also for
    in-process callers that skip the command's check); bf16 runs under CPU autocast."""
    check_amp(amp, run.device)
    if amp == "bf16" and run.device.type != "cuda" and run.dist_info.is_main:
        print(
            f"zfviz: trainer.amp=bf16 on {run.device.type}: PyTorch's {run.device.type} autocast, convolutions and "
            "linear layers computed in bfloat16, the weights kept in float32, no gradient scaler (bf16 needs none)",
            file=sys.stderr,
        )


def fit(
    model: nn.Module, train_loader, val_loader, optim_cfg, trainer_cfg, run: Run, task: Task = CLASSIFICATION
) -> list[dict]:
    """Train for ``trainer_cfg.epochs`` (a ``Settings`` or the ``trainer`` config); keep ``metrics.csv`` and
    ``checkpoint.pt`` in ``run.out_dir`` current; returns the epochs' rows.

    ``checkpoint.pt`` (``Checkpoints``) is rewritten after every epoch and every ``trainer.ckpt_every_steps``
    steps; ``run.resume_state`` is such a checkpoint to continue from. ``val_loader`` None: no evaluation.
    """
    settings = trainer_cfg if isinstance(trainer_cfg, Settings) else Settings.from_config(trainer_cfg)
    settings = dataclasses.replace(settings, progress=settings.progress and run.dist_info.is_main)
    net, steps = _placed(model, settings, run), len(train_loader)
    optim = Optimization(*build_optimizer(net, optim_cfg, steps, settings.epochs))
    _say_amp(settings.amp, run)
    if settings.amp == "fp16" and run.device.type == "cuda":
        optim.scaler = torch.amp.GradScaler("cuda")
    ckpt = Checkpoints(model, optim, run)
    at = ckpt.restore(run.resume_state, steps) if run.resume_state is not None else Position()
    ctrl_c = _CtrlC(lambda: ckpt.interrupted(at, settings.epochs, steps), enabled=not run.dist_info.enabled)
    after_step, clock = _AfterStep(ckpt, at, settings, steps, run, ctrl_c), _Clock(at.rows)
    # The allocator keeps freed buffers over the whole run, evaluations and checkpoints included (cpu_memory.py).
    with ctrl_c, reuse_freed_memory(run.device):
        for epoch in range(at.epoch, settings.epochs + 1):
            at.epoch = epoch
            train_loader.set_epoch(epoch, start_batch=at.step)
            # The lr an epoch started with; an interrupted epoch saved it with its partial sums.
            after_step.lr = at.partial["lr"] if at.partial else optim.optimizer.param_groups[0]["lr"]
            try:
                train = train_one_epoch(net, train_loader, optim, device=run.device, settings=settings, at=at,
                                        step_hook=after_step, task=task)  # fmt: skip
            except FloatingPointError as err:
                raise ckpt.diverged(err, at) from None
            at.partial = None  # at.step stays at the epoch's last step until it is checkpointed
            val = _evaluate_epoch(net, val_loader, epoch, settings, optim, run.device)
            row = {"epoch": epoch, "lr": after_step.lr, **train, **val, "wall_time_s": clock.now()}
            at.rows.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
            ckpt.epoch_done(epoch, at.rows, settings.save_epochs)
            if settings.progress:
                tqdm.write(task.line(epoch, settings.epochs, at.rows[-1]))
            at.epoch, at.step = epoch + 1, 0
            if ctrl_c.pressed and epoch < settings.epochs:
                raise _HaltTraining
    return at.rows


class _Clock:
    """A run's wall time so far, the interrupted runs it continues included."""

    def __init__(self, rows: list[dict]) -> None:
        self.offset, self.start = (rows[-1]["wall_time_s"] if rows else 0.0), time.perf_counter()

    def now(self) -> float:
        return self.offset + time.perf_counter() - self.start


def _evaluate_epoch(net, loader, epoch: int, settings: Settings, optim: Optimization, device) -> dict:
    """The epoch's test-set errors, then the plateau schedule's step. An epoch skipped by ``eval_every``
    records NaN: evaluation never touches the weights or the RNG, so the trained net is the same; a plateau
    schedule needs every epoch's error. No ``loader`` (a decoder's run): nothing to evaluate."""
    if loader is None:
        return {}
    sched = optim.epoch_scheduler
    if sched is None and epoch != settings.epochs and epoch % settings.eval_every != 0:
        return dict.fromkeys(("val_loss", "val_top1_err", "val_top5_err"), float("nan"))
    val = evaluate(net, loader, device=device, amp=settings.amp)
    if sched is not None:
        sched.step(val["val_top1_err"])
    return val
