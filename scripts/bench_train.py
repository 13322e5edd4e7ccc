"""Benchmark: zfviz's training step against a bare PyTorch loop, and achieved GFLOP/s at 224 px.

1. images/s of ``zfviz.engine.train_one_epoch`` vs a bare ``forward / loss / backward / step`` loop
   over the same model, batch and data, alternated A B A B in this process; the ratio should be
   at least 0.95 (the engine's bookkeeping must cost under 5%).
2. At the paper preset (Fig. 3 ZFNet, 224 px) the training step's achieved GFLOP/s (3 x the
   forward multiply-adds x 2) against this machine's float32 matmul peak measured here.

The nets are the cpu and paper presets' ZFNet, built from ``configs/`` (``_bench.preset_model``).

usage: python scripts/bench_train.py [--batches 20] [--repeats 3] [--paper-batch 16] [--quick]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _bench import interleaved, preset_model, ratio_line
from torch import nn

from zfviz.engine import build_optimizer, train_one_epoch

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
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper-batch", type=int, default=16)
    parser.add_argument("--paper-steps", type=int, default=3)
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

    # 2. the paper preset's achieved GFLOP/s against the matmul peak
    model = preset_model("paper", num_classes=1000)
    size = model.input_size
    optimizer, _, _ = build_optimizer(model, Cfg(OPTIM), args.paper_steps, 1)
    macs = forward_macs(model, size)
    batches = make_batches(args.paper_steps, args.paper_batch, size)
    engine_loop(model, batches[:1], optimizer)  # warm-up
    step = interleaved({"engine": lambda: engine_loop(model, batches, optimizer)}, 1)
    rate = args.paper_steps * args.paper_batch / step.best("engine")
    achieved = rate * 3 * 2 * macs / 1e9  # backward ~ 2x forward
    peak = matmul_peak()
    print(f"paper preset ZFNet at {size} px: {macs / 1e9:.3f} GMAC forward per image, batch {args.paper_batch}")
    print(f"  training       {rate:8.2f} img/s = {achieved:7.1f} GFLOP/s")
    print(f"  matmul peak    {peak:8.1f} GFLOP/s (2048^2 float32)")
    print(ratio_line("achieved/peak", achieved / peak))


if __name__ == "__main__":
    main()
