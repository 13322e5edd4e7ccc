"""The one cosine learning-rate schedule every optimization here follows (training, transfer heads,
decoders, inversion): a linear warm-up, then half a cosine from the peak to 0 (Loshchilov & Hutter 2017,
without restarts)."""

from __future__ import annotations

import math


def cosine(step: int, total: int, warmup: int = 0) -> float:
    """The factor on the peak learning rate at ``step`` (0-based) of ``total``: ``(step + 1) / (warmup + 1)``
    during the ``warmup`` steps, then ``0.5 * (1 + cos(pi * t))`` with ``t`` going from 0 towards 1."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
