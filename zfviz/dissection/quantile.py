"""Per-unit activation thresholds for network dissection (Bau et al. 2017, Section 2.2), exact and streaming.

Network dissection binarizes unit k's activation maps at T_k, the level its activations exceed with
probability ``quantile`` (0.005) over the whole data set: the top 0.5% of all its values, every image,
every position. NetDissect keeps every activation of every image (memory-mapped) and calls
``np.percentile``; here the data set may be larger than memory, so the threshold is found in a few
streaming passes, in memory bounded by the number of units, whatever the number of images.

The method is a radix select on the float32 bit patterns. A float32 maps to a 32-bit integer key that
sorts as the float does (flip every bit of a negative value, set the sign bit of a positive one), so
the k-th smallest value is the k-th smallest key, and its key is found 11 bits at a time: pass 1
counts, per unit, the values under each of the 2048 values of the top 11 bits and picks the digit
whose cumulative count passes rank k; pass 2 does the same for the next 11 bits among the values
whose top bits match; pass 3 for the last 10. The key found is the value itself, so the result is
exact, not a histogram's approximation, and three passes suffice whatever the values are (a unit
that is zero on 99.9% of the positions, as a ReLU unit often is, needs no special case).

The threshold follows ``np.quantile(values, 1 - quantile)``'s default (method ``'linear'``): with n
values, the virtual index h = (n - 1)(1 - q) falls between the order statistics at floor(h) and
floor(h) + 1, and the result interpolates them the way numpy does, in float32 for float32 input, so
it is equal to numpy's bit for bit. Both order statistics are selected in the same three passes.

When a net's maps fit in memory (``zfviz.dissection.batches.Activations``), ``select_quantile``
finds the same two order statistics by selection (``torch.kthvalue`` among the values above a
bound read from a sample), several times faster than three radix passes, with the same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

DIGITS = (11, 11, 10)  # bits selected per pass, from the top: 32 in all
_SIGN = 1 << 31
_ALL = (1 << 32) - 1
_SAMPLE = 4096  # values sampled per unit by ``select_quantile`` to bound the tail it selects from

Passes = Callable[[], Iterable[Mapping[str, Tensor]]]


def unit_values(activations: Tensor) -> Tensor:
    """(N, K, ...) activations -> (K, N * ...) float32: every value of each unit, one row per unit."""
    k = activations.shape[1]
    return activations.detach().transpose(0, 1).reshape(k, -1).to(torch.float32)


def float_keys(values: Tensor) -> Tensor:
    """float32 -> int64 keys in [0, 2^32) that sort as the floats do (-0.0 just below +0.0)."""
    bits = values.contiguous().view(torch.int32).to(torch.int64) & _ALL
    return torch.where(bits >= _SIGN, _ALL - bits, bits + _SIGN)


def key_floats(keys: Tensor) -> Tensor:
    """The inverse of ``float_keys``: int64 keys -> float32 values."""
    bits = torch.where(keys >= _SIGN, keys - _SIGN, _ALL - keys)
    bits = torch.where(bits >= _SIGN, bits - (1 << 32), bits)  # as a signed 32-bit pattern
    return bits.to(torch.int32).view(torch.float32)


def _digit_counts(keys: Tensor, prefix: Tensor | None, done: int, bits: int) -> Tensor:
    """(K, 2^bits) counts of each unit's keys by the ``bits`` below the top ``done``, among the keys
    whose top ``done`` bits equal the unit's ``prefix`` (all keys when ``done`` is 0)."""
    units, shift = keys.shape[0], 32 - done - bits
    digit = (keys >> shift) & ((1 << bits) - 1)
    index = digit + (torch.arange(units, device=keys.device) << bits)[:, None]
    if done:
        index = index[(keys >> (32 - done)) == (prefix >> (32 - done))[:, None]]
    return torch.bincount(index.reshape(-1), minlength=units << bits).reshape(units, 1 << bits).cpu()


class _Select:
    """The radix select of one layer: ranks (per unit) found digit by digit over the passes."""

    def __init__(self) -> None:
        self.count = 0  # values per unit
        self.ranks: Tensor | None = None  # (R,) wanted order statistics (0-based), set after pass 1
        self.prefix: Tensor | None = None  # (K, R) key bits found so far
        self.rest: Tensor | None = None  # (K, R) rank within the keys that share the prefix
        self.counts: list[Tensor] = []

    def add(self, keys: Tensor, done: int, bits: int) -> None:
        if self.ranks is None:  # pass 1: every key counts, for every rank
            self.count += keys.shape[1]
            counts = [_digit_counts(keys, None, 0, bits)]
        else:
            counts, seen = [], {}
            for r in range(len(self.ranks)):
                prefix = self.prefix[:, r].to(keys.device)
                same = next((i for p, i in seen.items() if torch.equal(p, prefix)), None)
                counts.append(counts[same] if same is not None else _digit_counts(keys, prefix, done, bits))
                if same is None:
                    seen[prefix] = r
        self.counts = counts if not self.counts else [a + b for a, b in zip(self.counts, counts, strict=True)]

    def settle(self, ranks: Tensor, done: int, bits: int) -> None:
        """After a pass: the digit holding each rank, appended to the prefix."""
        if self.ranks is None:
            self.ranks = ranks
            units = self.counts[0].shape[0]
            self.prefix = torch.zeros(units, len(ranks), dtype=torch.int64)
            self.rest = ranks.expand(units, -1).clone()
            self.counts = self.counts * len(ranks)
        shift = 32 - done - bits
        for r, counts in enumerate(self.counts):
            below = counts.cumsum(dim=1)
            digit = (below <= self.rest[:, r : r + 1]).sum(dim=1)  # first digit whose cumulative count passes the rank
            before = torch.where(digit > 0, below.gather(1, (digit - 1).clamp(min=0)[:, None])[:, 0], 0)
            self.rest[:, r] -= before
            self.prefix[:, r] |= digit << shift
        self.counts = []


def top_quantile(passes: Passes, quantile: float = 0.005) -> dict[str, Tensor]:
    """Per unit of each layer, ``np.quantile(its values, 1 - quantile)`` (float32, shape (K,)).

    ``passes()`` starts one streaming pass over the data: an iterable of batches, each a mapping
    layer -> activations (N, K, ...), the same batches every time it is called; it is called three
    times (one per radix digit, see the module docstring). Memory: one batch, and 2048 counts per unit.
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    selects: dict[str, _Select] = {}
    p = 1 - quantile
    done, gamma = 0, {}
    for bits in DIGITS:
        for batch in passes():
            for layer, activations in batch.items():
                keys = float_keys(unit_values(activations))
                selects.setdefault(layer, _Select()).add(keys, done, bits)
        for layer, select in selects.items():
            ranks = select.ranks
            if ranks is None:
                low, high, gamma[layer] = _ranks(select.count, p)
                ranks = torch.tensor([low, high], dtype=torch.int64)
            select.settle(ranks, done, bits)
        done += bits
    if not selects:
        raise ValueError("no activations: passes() yielded no batch")
    return {layer: _interpolate(key_floats(s.prefix), gamma[layer]) for layer, s in selects.items()}


def _ranks(count: int, p: float) -> tuple[int, int, float]:
    """numpy's linear method: h = (n - 1) p falls between the order statistics floor(h) and floor(h) + 1
    (0-based; one of them when h is the last): (low, high, gamma = h - floor(h))."""
    h = (count - 1) * p
    low = min(math.floor(h), count - 1)
    high = low if h >= count - 1 else low + 1
    return low, high, float(h - math.floor(h))


def select_quantile(units: Iterable[Tensor], quantile: float = 0.005) -> Tensor:
    """Per unit, ``np.quantile(values, 1 - quantile)`` of its values (each a 1-D float32 tensor), when
    they are all in memory: the same order statistics and interpolation as ``top_quantile``, found by
    selection instead of three radix passes (``zfviz.dissection.batches`` keeps a net's maps when they
    fit). Equal to ``top_quantile`` and numpy, value for value; a -0.0 may come out as +0.0, which
    compares equal."""
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    out = []
    for values in units:
        values = values.reshape(-1).to(torch.float32)
        if not values.numel():
            raise ValueError("no activations: a unit has no values")
        low, high, gamma = _ranks(values.numel(), 1 - quantile)
        order = torch.stack(_order_pair(values, low, high))[None]
        out.append(_interpolate(order, gamma))
    if not out:
        raise ValueError("no activations: no unit given")
    return torch.cat(out)


def _order_pair(values: Tensor, low: int, high: int) -> tuple[Tensor, Tensor]:
    """The order statistics ``low`` and ``high`` (0-based, high <= low + 1) of ``values``, exact.

    A full ``kthvalue`` over millions of values is slow; for a top quantile the wanted values sit in
    a thin tail. A strided sample gives a bound under that tail; every value below the bound is
    below order statistic ``low`` when at least n - low values are at or above it (checked, not
    assumed), so selecting among the values at or above the bound gives the same order statistics.
    If the sample misleads, the check fails and the selection runs over every value."""
    n = values.numel()
    candidates, below = values, 0
    if n > 8 * _SAMPLE:
        sample = values[:: n // _SAMPLE]
        m = sample.numel()
        tail = m - math.floor(m * low / n)
        rank = m - 3 * tail - 16  # three times the sample's share of the tail, and a margin
        if rank > 0:
            bound = sample.kthvalue(rank).values
            keep = values >= bound
            count = int(keep.sum())
            if count >= n - low:
                candidates, below = values[keep], n - count
    i = low - below
    a = candidates.kthvalue(i + 1).values
    if high == low:
        return a, a
    if int((candidates <= a).sum()) > i + 1:  # a tie: the next order statistic is ``a`` again
        return a, a
    return a, candidates[candidates > a].min()


def _interpolate(order: Tensor, gamma: float) -> Tensor:
    """numpy's ``_lerp`` between the two order statistics (K, 2), in float32 as numpy computes it."""
    a, b = order[:, 0].numpy(), order[:, 1].numpy()
    diff = b - a
    out = a + diff * gamma
    if gamma >= 0.5:  # numpy's branch for the upper half, exact at gamma = 1
        out = b - diff * (1 - gamma)
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def quantile_in_memory(activations: Tensor, quantile: float = 0.005, chunk: int | None = None) -> Tensor:
    """``top_quantile`` over one tensor (N, K, ...) cut into batches of ``chunk`` images (all at once
    when None): what the streaming passes compute, for data that fits in memory."""
    size = chunk or len(activations)
    starts = range(0, len(activations), size)
    return top_quantile(lambda: ({"x": activations[i : i + size]} for i in starts), quantile)["x"]
