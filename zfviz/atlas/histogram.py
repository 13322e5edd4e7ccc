"""Per-unit histograms over a stream of batches, exact and independent of the batches' size and order.

Each unit's histogram has ``BINS`` equal bins over ``[0, R)`` while the unit has seen no negative
value, else over ``[-R, R)``, where ``R = 2**exponent`` is the smallest power of two above every
absolute value seen (at least ``2**MIN_EXPONENT``). A value's bin is ``floor(v / width)`` (plus
``BINS/2`` on a signed range): ``width`` is a power of two, so the division is exact and the bin a
function of the value and the range alone. When a batch widens the range, adjacent bins merge in
pairs (each old bin lies inside one new bin), so the counts are those of binning every value at the
final range: one pass, no first pass for the range, and no dependence on where the batches split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BINS = 32  # a power of two (the width stays one) divisible by 4 (a signed range's merge keeps 0 an edge)
MIN_EXPONENT = -16  # a dead unit's range: [0, 2**-16)


@dataclass
class Histograms:
    """Per unit (rows), ``BINS`` counts; the range is ``[-R, R)`` where ``signed`` else ``[0, R)``."""

    counts: Tensor  # (units, BINS) int64
    exponent: Tensor  # (units,) int64: R = 2**exponent
    signed: Tensor  # (units,) bool

    @classmethod
    def empty(cls, units: int) -> Histograms:
        return cls(
            torch.zeros(units, BINS, dtype=torch.long),
            torch.full((units,), MIN_EXPONENT, dtype=torch.long),
            torch.zeros(units, dtype=torch.bool),
        )

    def ranges(self) -> Tensor:
        """(units, 2): each unit's ``[low, high)``."""
        high = torch.ldexp(torch.ones(len(self.exponent), dtype=torch.float64), self.exponent)
        return torch.stack([torch.where(self.signed, -high, 0.0), high], dim=1)

    def add(self, values: Tensor) -> None:
        """Count ``values`` (images, units), widening each unit's range first where they need it."""
        values = values.detach().double().cpu()  # float32 activations are exact in float64
        magnitude = values.abs().amax(dim=0)
        needed = torch.frexp(magnitude).exponent.long()  # 2**e > |v| strictly; 0 for 0
        needed = torch.where(magnitude > 0, needed, MIN_EXPONENT)
        self._widen(torch.maximum(self.exponent, needed), self.signed | (values < 0).any(dim=0))
        self.counts.scatter_add_(1, self._bins(values).T, torch.ones_like(values, dtype=torch.long).T)

    def _bins(self, values: Tensor) -> Tensor:
        scaled = torch.ldexp(values, (BINS.bit_length() - 1) - self.exponent - self.signed.long())
        return (scaled.floor().long() + torch.where(self.signed, BINS // 2, 0)).clamp(0, BINS - 1)

    def _widen(self, exponent: Tensor, signed: Tensor) -> None:
        """Merge bins in pairs until every unit's range is ``(exponent, signed)``."""
        turn = signed & ~self.signed  # [0, R) -> [-R, R): each pair lands in the upper half
        self._merge(turn, BINS // 2)
        self.signed = self.signed | turn
        while (grow := self.exponent < exponent).any():
            # Doubling R: [0, R) pairs fill the lower half; [-R, R) pairs the middle, 0 staying an edge.
            self._merge(grow & ~self.signed, 0)
            self._merge(grow & self.signed, BINS // 4)
            self.exponent = self.exponent + grow.long()

    def _merge(self, rows: Tensor, shift: int) -> None:
        if not rows.any():
            return
        target = torch.arange(BINS) // 2 + shift
        merged = torch.zeros_like(self.counts[rows]).index_add_(1, target, self.counts[rows])
        self.counts[rows] = merged
