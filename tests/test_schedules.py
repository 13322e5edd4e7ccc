"""The one cosine schedule (zfviz/schedules.py): its values by hand, and the four optimizations that use it."""

from __future__ import annotations

import math

import pytest
import torch

from zfviz.schedules import cosine


def test_cosine_by_hand():
    assert cosine(0, 10) == 1.0 and cosine(5, 10) == pytest.approx(0.5) and cosine(10, 10) == pytest.approx(0.0)
    # warm-up: (step + 1) / (warmup + 1), then the cosine starts at the peak
    assert [cosine(s, 10, warmup=3) for s in range(3)] == [0.25, 0.5, 0.75]
    assert cosine(3, 10, warmup=3) == 1.0 and cosine(10, 10, warmup=3) == pytest.approx(0.0, abs=1e-12)
    assert cosine(4, 4, warmup=4) == 1.0  # total == warmup: no division by zero


def test_halving_the_peak_first_or_last_gives_the_same_bits():
    # The decoder and the inversion used lr * 0.5 * (1 + cos): multiplying by 0.5 is exact, so lr * cosine()
    # is the same float (their learning rates, and so their results, did not move by a bit).
    for lr in (0.002, 0.1, 0.05, 1 / 3):
        for step in range(0, 200, 7):
            old = lr * 0.5 * (1 + math.cos(math.pi * step / 200))
            assert lr * cosine(step, 200) == old


def test_the_engine_schedule_is_the_cosine():
    from omegaconf import OmegaConf

    from zfviz.engine import build_optimizer

    cfg = OmegaConf.create({"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "schedule": "cosine", "warmup_epochs": 1})
    optimizer, sched, _ = build_optimizer(torch.nn.Linear(2, 2), cfg, steps_per_epoch=4, epochs=3)
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    assert seen == pytest.approx([0.1 * cosine(s, 12, 4) for s in range(12)])
