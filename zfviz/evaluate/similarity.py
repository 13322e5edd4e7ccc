"""How alike two maps are: rank correlation and SSIM, the measures of the sanity checks (issue 16).

Adebayo et al. 2018 ("Sanity checks for saliency maps") compare the map of a trained net
with the map of a progressively randomized one by Spearman's rank correlation and by the structural
similarity index. Both ignore a map's scale, which differs between methods and between a trained and
a randomized net:

- ``spearman``: Pearson's correlation of the ranks of the flattened maps, equal values sharing
  their average rank (as ``scipy.stats.spearmanr``); NaN where a map is constant (no ranking).
- ``ssim`` (Wang et al. 2004, "Image quality assessment: from error visibility to structural
  similarity", Section III.C): the mean over windows of
  ``(2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))`` with an 11 x 11
  Gaussian window of sigma 1.5, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, over the windows wholly
  inside the map (the paper's reference code, ``filter2(..., 'valid')``). A map smaller than 11
  pixels on a side gets the largest odd window that fits. With ``data_range=None`` each map is first
  scaled to [0, 1] by its own minimum and maximum (a constant map becomes 0) and L = 1; a given
  ``data_range`` is L for the maps as they are.

Both compute in float64 (rank ties and the variances' cancellations are exact there) and return
float32, one value per pair of maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zfviz.errors import UserError

WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03


def _pair(a: Tensor, b: Tensor, least_dims: int) -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise UserError("maps to compare must be tensors")
    if a.shape != b.shape or a.dim() < least_dims:
        raise UserError(f"maps to compare must have one shape, N x H x W, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.detach().double(), b.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise UserError("maps to compare contain NaN or infinite values; pass finite maps")
    return a, b


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..P of each row of ``x`` (N x P), ties sharing the average of the ranks they span."""
    ordered = torch.sort(x, dim=1).values
    below = torch.searchsorted(ordered, x, right=False)  # values strictly smaller
    upto = torch.searchsorted(ordered, x, right=True)  # values smaller or equal
    return (below + upto + 1).double() / 2  # the mean of ranks below + 1 .. upto


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of each pair of maps ``a[i]``, ``b[i]``, flattened: a tensor of N."""
    a, b = _pair(a, b, 2)
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    return ((ra * rb).sum(dim=1) / (ra.norm(dim=1) * rb.norm(dim=1))).float()


def gaussian_window(size: int, sigma: float = SIGMA) -> Tensor:
    """The ``size`` x ``size`` Gaussian weights (summing to 1) SSIM averages over, float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return torch.outer(g, g) / g.sum() ** 2


def _unit(x: Tensor) -> Tensor:
    low = x.amin(dim=(1, 2), keepdim=True)
    span = x.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1), torch.zeros_like(x))


def ssim(a: Tensor, b: Tensor, *, data_range: float | None = None) -> Tensor:
    """Structural similarity of each pair of N x H x W maps (module docstring): a tensor of N."""
    a, b = _pair(a, b, 3)
    if a.dim() != 3:
        raise UserError(f"SSIM compares N x H x W maps, got shape {tuple(a.shape)}")
    if data_range is None:
        a, b, data_range = _unit(a), _unit(b), 1.0
    elif not data_range > 0:
        raise UserError(f"data_range must be positive (the maps' value range), got {data_range!r}")
    side = min(WINDOW, *a.shape[1:])
    side -= 1 - side % 2  # odd, so the window has a centre
    g = gaussian_window(side)[None, None]
    mean = lambda x: F.conv2d(x[:, None], g)[:, 0]  # noqa: E731  weighted mean over each valid window
    mu_a, mu_b = mean(a), mean(b)
    var_a, var_b = mean(a * a) - mu_a**2, mean(b * b) - mu_b**2
    cov = mean(a * b) - mu_a * mu_b
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    index = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.mean(dim=(1, 2)).float()
