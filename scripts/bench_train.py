"""Benchmark: zfviz's training step against a bare PyTorch loop, against today's path, and GFLOP/s at 224 px.

1. images/s of ``zfviz.engine.train_one_epoch`` vs a bare ``forward / loss / backward / step`` loop
   over the same model, batch and data, alternated A B A B in this process; the ratio should be
   at least 0.95 (the engine's bookkeeping must cost under 5%).
2. Old vs new (issue 17): the same net with ``nn.LocalResponseNorm``, NCHW maps and glibc's default
   memory reuse (the path before issue 17) against ours (``zfviz.models.LocalResponseNorm``,
   channels-last, ``zfviz.cpu_memory.reuse_freed_memory``), and the new path with one lever taken away at a time
   (what each bought), interleaved, under ``zfviz train``'s determinism flag. Both presets, ZFNet and
   AlexNet; images/s, ratios, each path's peak resident memory while it trains, and how far the weights
   of three steps of the two paths are apart. Goals: 1.5x at the cpu preset, 1.25x at the paper preset.
3. At the paper preset the old and the new step's achieved GFLOP/s (3 x the forward multiply-adds x 2)
   against this machine's float32 matmul peak measured here (goal 0.40).

The nets are built from ``configs/`` (``_bench.preset_model``).

usage: python scripts/bench_train.py [--batches 10] [--repeats 3] [--paper-batch 8] [--paper-steps 2] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
from pathlib import Path

import torch
import torch.nn.functional as F
from _bench import interleaved, preset_model, ratio_line
from torch import nn

from zfviz import engine
from zfviz.engine import build_optimizer, train_one_epoch
from zfviz.utils import seeded

OPTIM = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False, "schedule": "constant"}


class Cfg(dict):
    __getattr__ = dict.__getitem__


def make_batches(n: int, batch: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
        for _ in range(n)
    ]


def bare_loop(model: nn.Module, batches, optimizer) -> None:
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def engine_loop(model: nn.Module, batches, optimizer) -> None:
    train_one_epoch(model, batches, optimizer, device=torch.device("cpu"), progress=False)


def old_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with PyTorch's contrast normalization, as ``build_model`` made it before issue 17."""
    old = copy.deepcopy(model)
    for name, module in model.named_children():
        if isinstance(module, nn.LocalResponseNorm):
            setattr(old, name, nn.LocalResponseNorm(module.size, module.alpha, module.beta, module.k))
    return old


def path(model: nn.Module, batches, *, channels_last: bool, reuse_memory: bool):
    """A training pass of ``train_one_epoch`` over ``batches`` with the levers given (the model is its own copy)."""
    model = copy.deepcopy(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer, _, _ = build_optimizer(model, Cfg(OPTIM), len(batches), 1)

    def run() -> nn.Module:
        with contextlib.ExitStack() as stack:
            if not reuse_memory:  # glibc's own thresholds, as before issue 17
                stack.enter_context(_patched(engine, "reuse_freed_memory", lambda device: contextlib.nullcontext()))
            train_one_epoch(model, batches, optimizer, device=torch.device("cpu"), channels_last=channels_last,
                            progress=False)  # fmt: skip
        return model

    return run


@contextlib.contextmanager
def _patched(owner, name, value):
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


def peak_rss_mb(fn) -> float:
    """Peak resident memory while ``fn`` runs, above the resident memory before it (Linux /proc; else NaN)."""
    status = Path("/proc/self/status")
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # what an earlier path freed is not counted as in use
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak, to the current size
        before = _status_kb(status, "VmRSS")
    except OSError:
        fn()
        return float("nan")
    fn()
    return (_status_kb(status, "VmHWM") - before) / 1024


def _status_kb(status: Path, key: str) -> int:
    line = next(line for line in status.read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1])


def weight_gap(model: nn.Module, batches) -> float:
    """max |w_new - w_old| / max |w_old| after the same steps on the old and the new path."""
    runs = []
    for m, fast in ((old_model(model), False), (model, True)):
        torch.manual_seed(0)  # the same dropout masks
        runs.append(path(m, batches, channels_last=fast, reuse_memory=fast)().state_dict())
    old, new = runs
    return max(float((new[k] - old[k]).abs().max() / old[k].abs().max().clamp_min(1e-12)) for k in old)


def old_vs_new(preset: str, name: str, batch: int, steps: int, rounds: int, levers: bool) -> dict:
    """Section 2 for one net: images/s of every path, peak memory, weight gap; returns the rates."""
    classes = 10 if preset == "cpu" else 1000
    model = preset_model(preset, name, classes)
    size = model.input_size
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, classes, (batch,), generator=gen))
               for _ in range(steps)]  # fmt: skip
    paths = {
        "old": path(old_model(model), batches, channels_last=False, reuse_memory=False),
        "new": path(model, batches, channels_last=True, reuse_memory=True),
    }
    if levers:
        paths["new - our LRN"] = path(old_model(model), batches, channels_last=True, reuse_memory=True)
        paths["new - channels_last"] = path(model, batches, channels_last=False, reuse_memory=True)
        paths["new - memory reuse"] = path(model, batches, channels_last=True, reuse_memory=False)
    peaks = {label: peak_rss_mb(fn) for label, fn in paths.items()}  # also the warm-up
    timings = interleaved(paths, rounds)
    rates = {label: steps * batch / timings.median(label) for label in paths}
    print(f"{preset} preset {name} ({size} px), batch {batch}, {steps} steps x {rounds} rounds (medians):")
    for label in paths:
        print(f"  {label:20s} {rates[label]:8.2f} img/s  x{rates[label] / rates['old']:.2f} of old   "
              f"peak RSS +{peaks[label]:7.1f} MB")  # fmt: skip
    print(f"  weights after {min(steps, 3)} steps, old vs new: max gap {weight_gap(model, batches[:3]):.2e} of max |w|")
    goal = ">= 1.5" if preset == "cpu" else ">= 1.25"
    print(ratio_line(f"new/old {preset} {name}", rates["new"] / rates["old"], goal))
    return rates


def forward_macs(model: nn.Module, size: int) -> int:
    """Multiply-adds of one forward pass of one image, counted from the conv and linear layers."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output[0].numel() * k
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / interleaved({"matmul": lambda: a @ b}, repeats).best("matmul") / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper-batch", type=int, default=8)
    parser.add_argument("--paper-steps", type=int, default=2)
    parser.add_argument("--no-levers", action="store_true", help="only old and new, not each lever taken away")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 batches, 1 repeat, a tiny paper batch")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.repeats, args.paper_batch, args.paper_steps = 2, 1, 2, 1
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    # 1. engine overhead at the cpu preset
    model = preset_model("cpu", num_classes=10)
    size = model.input_size
    optimizer, _, _ = build_optimizer(model, Cfg(OPTIM), args.batches, 1)
    batches = make_batches(args.batches, 128, size)
    engine_loop(model, batches[:3], optimizer)  # warm-up
    timings = interleaved(
        {"bare": lambda: bare_loop(model, batches, optimizer), "zfviz": lambda: engine_loop(model, batches, optimizer)},
        args.repeats,
    )
    images = sum(len(y) for _, y in batches)
    b, o = images / timings.median("bare"), images / timings.median("zfviz")
    print(f"cpu preset ZFNet ({size} px), batch 128, {args.batches} batches x {args.repeats} repeats (medians):")
    print(f"  bare loop   {b:8.1f} img/s")
    print(f"  zfviz       {o:8.1f} img/s")
    print(ratio_line("zfviz/bare", o / b, ">= 0.95"))

    # 2. old vs new path, both presets; 3. the paper preset's achieved GFLOP/s against the matmul peak
    with seeded(0, deterministic=True):  # as zfviz train runs (deterministic: true)
        for name in ("zfnet", "alexnet"):
            old_vs_new("cpu", name, 128, args.batches, args.repeats, not args.no_levers)
        peak = matmul_peak()
        for name in ("zfnet", "alexnet"):
            rates = old_vs_new("paper", name, args.paper_batch, args.paper_steps, args.repeats, False)
            model = preset_model("paper", name, 1000)
            macs = forward_macs(model, model.input_size)
            print(f"paper preset {name}: {macs / 1e9:.3f} GMAC forward per image; matmul peak {peak:.1f} GFLOP/s"
                  " (2048^2 float32)")  # fmt: skip
            for label in ("old", "new"):
                achieved = rates[label] * 3 * 2 * macs / 1e9  # backward ~ 2x forward
                print(f"  {label:4s} {achieved:7.1f} GFLOP/s")
                print(ratio_line(f"achieved/peak {name} {label}", achieved / peak, ">= 0.40" if label == "new" else ""))


if __name__ == "__main__":
    main()
