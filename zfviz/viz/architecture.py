"""Numbers for what Fig. 6 (Section 4.1, architecture selection) shows by eye.

The paper reads three things off the pictures: (1) without filter clipping one layer-1 filter
dominates; (2) AlexNet's 11x11 stride-4 layer 1 has dead filters and extremely high frequencies,
ZFNet's 7x7 stride 2 does not; (3) AlexNet's layer-2 projections show aliasing artifacts. Here:

- ``rms_dominance``: the largest layer-1 filter RMS over the median one (1 = all equal).
- ``diverged``: a weight or a recorded training loss that is not a finite number. Every other measure
  of such a net describes a broken net, not its recipe: a table keeps the flag beside them, so a
  verdict never reads a NaN (or the last good checkpoint of a run that blew up) as a result.
- ``dead_fraction``: the share of maps whose rectified output never exceeds zero on a sample.
- ``alias_energy``: the share of a filter's spectral energy above the Nyquist frequency of its
  own output grid, ``1 / (2 * stride)`` cycles per pixel. A stride-s layer cannot represent that
  energy: it folds back as aliasing. Stride 4 leaves only frequencies below 1/8 alias-free.
- ``high_frequency_energy``: the share of a projection's (or image's) spectral energy above a
  cutoff; compared with the same number for the images, excess high frequency is artifact.

Spectra use the max-norm ``max(|fx|, |fy|)``: sampling on a square grid aliases along each axis
separately. Means are removed first, so a flat patch has no energy rather than all of it at 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


def filter_rms(weight: Tensor) -> Tensor:
    """RMS of each filter of an (F, C, kh, kw) bank (the quantity the paper clips at 0.1)."""
    return torch.as_tensor(weight).detach().flatten(1).pow(2).mean(dim=1).sqrt()


def rms_dominance(weight: Tensor) -> float:
    """Largest filter RMS over the median filter RMS; NaN when a weight is not finite (see ``diverged``)."""
    rms = filter_rms(weight)
    if not bool(torch.isfinite(rms).all()):
        return math.nan
    return float(rms.max() / rms.median().clamp_min(1e-12))


def diverged(parameters: Iterable[Tensor], losses: Iterable[float]) -> bool:
    """Whether training broke down: any parameter or recorded loss (None: not recorded) is not finite."""
    if any(not bool(torch.isfinite(p.detach()).all()) for p in parameters):
        return True
    return any(loss is not None and not math.isfinite(float(loss)) for loss in losses)


def dead_fraction(max_activation: Tensor, tol: float = 0.0) -> float:
    """Share of maps whose largest rectified activation over a sample is at most ``tol``; NaN if one is not finite."""
    if not bool(torch.isfinite(max_activation).all()):
        return math.nan  # a NaN map is neither dead nor alive: a diverged net's
    return float((max_activation <= tol).float().mean())


def _spectrum(x: Tensor, pad_to: int | None = None) -> tuple[Tensor, Tensor]:
    """Power of (..., h, w) tiles (means removed, channels summed over dim -3 if present) and max-norm |f|."""
    x = torch.as_tensor(x).detach().double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    h, w = (pad_to or x.shape[-2]), (pad_to or x.shape[-1])
    power = torch.fft.fft2(x, s=(h, w)).abs().pow(2)
    if power.dim() >= 4:
        power = power.sum(dim=-3)  # energy of all colour channels together
    fy = torch.fft.fftfreq(h, dtype=torch.float64).abs()[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64).abs()[None, :]
    return power, torch.maximum(fy, fx)


def energy_above(x: Tensor, cutoff: float, pad_to: int | None = None) -> Tensor:
    """Per tile of (..., [C,] h, w): the share of spectral energy at max(|fx|, |fy|) > ``cutoff`` cycles/pixel."""
    power, freq = _spectrum(x, pad_to)
    total = power.sum(dim=(-2, -1))
    high = (power * (freq > cutoff)).sum(dim=(-2, -1))
    return torch.where(total > 0, high / total.clamp_min(1e-300), torch.zeros_like(total)).float()


def alias_energy(weight: Tensor, stride: int, pad_to: int = 64) -> Tensor:
    """Per filter of an (F, C, kh, kw) bank: energy above the output grid's Nyquist, 1 / (2 * stride)."""
    return energy_above(weight, 1.0 / (2 * stride), pad_to=pad_to)


def high_frequency_energy(images: Tensor, cutoff: float = 0.25) -> Tensor:
    """Per image or projection of (N, [C,] h, w): energy above ``cutoff`` (default half the pixel Nyquist)."""
    return energy_above(images, cutoff)
