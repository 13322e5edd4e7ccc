"""The image priors of activation maximization and inversion, each on its own (issue 14).

Three kinds, as the survey (seed 004) sorts them:

- penalties, added to the objective and differentiated with it: total variation
  (``total_variation``, Mahendran & Vedaldi 2015, eq. 4-5), the alpha-norm (``lp_norm``, their eq. 3;
  Simonyan et al. 2014's L2 is ``p=2``);
- random transforms of the image before the forward pass, so a result must survive them (Mordvintsev
  et al. 2015's jitter; Olah et al. 2017's "transformation robustness": ``Jitter``, ``RandomScale``,
  ``RandomRotate``);
- steps applied to the image after each gradient step (Yosinski et al. 2015, Section 3):
  ``Decay`` (L2 decay), ``BlurEvery`` (Gaussian blur every k steps), ``ClipNorm`` and
  ``ClipContribution`` (pixels of small norm or small contribution set to zero);

and ``mean_image_init`` (Nguyen et al. 2016's start from the mean image). Everything works on a batch
(N, C, H, W) and returns per-image values. Randomness comes from ``torch.Generator``s, one per image
or one for the batch: with one per image, image k's draws do not depend on the other images, so
K targets optimized in one batch get the transforms K single runs would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zfviz.errors import UserError

Generators = torch.Generator | Sequence[torch.Generator]


def total_variation(x: Tensor, beta: float = 2.0) -> Tensor:
    """TV^beta per image (shape N): sum over channels and pixels of ((dx^2 + dy^2))^(beta/2).

    ``dx = x[i, j+1] - x[i, j]`` and ``dy = x[i+1, j] - x[i, j]`` (Mahendran & Vedaldi 2015, eq. 5).
    The last column has no right neighbour and the last row none below: their missing difference is
    taken as 0 (the image extended by replicating its border), so every pixel has one term and a
    constant image costs 0. Where both differences are 0 the term and its gradient are 0 (for
    ``beta < 2`` the derivative of s^(beta/2) at s = 0 is infinite; 0 is a subgradient there).
    """
    if beta <= 0:
        raise UserError(f"total variation needs beta > 0, got {beta}")
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))  # zero difference in the last column
    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))  # and in the last row
    s = dx.square() + dy.square()
    positive = s > 0
    terms = torch.where(positive, torch.where(positive, s, torch.ones_like(s)).pow(beta / 2), torch.zeros_like(s))
    return terms.flatten(1).sum(dim=1)


def lp_norm(x: Tensor, p: float = 6.0) -> Tensor:
    """||x||_p^p per image (shape N): the sum of |x|^p over channels and pixels (Mahendran & Vedaldi's
    alpha-norm, alpha = 6, keeps the image in range without a hard bound; ``p=2`` is L2 decay's penalty)."""
    if p <= 0:
        raise UserError(f"the Lp norm needs p > 0, got {p}")
    return x.abs().pow(p).flatten(1).sum(dim=1)


def _per_image(generators: Generators, n: int) -> list[torch.Generator]:
    """One generator per image: the given list (one each), or the single generator shared in order."""
    if isinstance(generators, torch.Generator):
        return [generators] * n
    generators = list(generators)
    if len(generators) != n:
        raise ValueError(f"{len(generators)} generators for {n} images; give one per image or one in all")
    return generators


def _uniform(generators: Generators, n: int, low: float, high: float) -> Tensor:
    """n draws from U(low, high), image k's from its own generator (cpu, float64 for exact repeats)."""
    draws = [torch.rand((), generator=g, dtype=torch.float64) for g in _per_image(generators, n)]
    return low + (high - low) * torch.stack(draws)


# --- random transforms before the forward pass (differentiable) -----------------------------------


class Jitter:
    """Shift each image by a random (dy, dx) in [-pixels, pixels], wrapping around (Mordvintsev et al.
    2015; Olah et al. 2017): a pattern that depends on exact pixel positions stops paying off."""

    def __init__(self, pixels: int):
        if pixels < 0:
            raise UserError(f"jitter needs pixels >= 0, got {pixels}")
        self.pixels = int(pixels)

    def __call__(self, x: Tensor, generators: Generators) -> Tensor:
        if self.pixels == 0:
            return x
        shifts = []
        for g in _per_image(generators, len(x)):
            dy, dx = torch.randint(-self.pixels, self.pixels + 1, (2,), generator=g).tolist()
            shifts.append((dy, dx))
        return torch.stack([torch.roll(img, shifts=s, dims=(-2, -1)) for img, s in zip(x, shifts, strict=True)])


def affine(x: Tensor, scale: Tensor, angle: Tensor) -> Tensor:
    """Each image zoomed by ``scale`` and turned by ``angle`` (radians) about its centre, bilinear,
    the border pixels repeated outside it (no black corners for the net to react to)."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class RandomScale:
    """Zoom each image by a random factor in [low, high] (Olah et al. 2017's scale robustness)."""

    def __init__(self, low: float = 0.9, high: float = 1.1):
        if not 0 < low <= high:
            raise UserError(f"random scale needs 0 < low <= high, got {low}, {high}")
        self.low, self.high = float(low), float(high)

    def __call__(self, x: Tensor, generators: Generators) -> Tensor:
        scale = _uniform(generators, len(x), self.low, self.high)
        return affine(x, scale, torch.zeros_like(scale))


class RandomRotate:
    """Turn each image by a random angle in [-degrees, degrees] (Olah et al. 2017's rotation robustness)."""

    def __init__(self, degrees: float = 5.0):
        if degrees < 0:
            raise UserError(f"random rotation needs degrees >= 0, got {degrees}")
        self.degrees = float(degrees)

    def __call__(self, x: Tensor, generators: Generators) -> Tensor:
        angle = _uniform(generators, len(x), -self.degrees, self.degrees) * (math.pi / 180)
        return affine(x, torch.ones_like(angle), angle)


# --- steps on the image after each gradient step (Yosinski et al. 2015) ---------------------------


class Decay:
    """L2 decay: x <- (1 - rate) x after every step (Yosinski et al.'s theta_decay); it pulls pixels
    that do not help the objective back to 0, the data mean in the model's normalized input space."""

    def __init__(self, rate: float):
        if not 0 <= rate < 1:
            raise UserError(f"decay needs a rate in [0, 1), got {rate}")
        self.rate = float(rate)

    def __call__(self, x: Tensor, step: int, grad: Tensor | None = None) -> Tensor:
        return x * (1 - self.rate)


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalized 1-D Gaussian, radius ceil(3 sigma) (cpu, float32)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of every channel, border pixels repeated; ``sigma=0`` returns ``x``."""
    if sigma <= 0:
        return x
    kernel = gaussian_kernel(sigma).to(x)
    r, c = len(kernel) // 2, x.shape[1]
    y = F.pad(x, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class BlurEvery:
    """Gaussian blur of width ``sigma`` every ``every`` steps (Yosinski et al.'s theta_b_width,
    theta_b_every): high frequencies the net is blind to do not pile up between blurs."""

    def __init__(self, sigma: float, every: int = 4):
        if sigma < 0 or every < 1:
            raise UserError(f"blur needs sigma >= 0 and every >= 1, got sigma={sigma}, every={every}")
        self.sigma, self.every = float(sigma), int(every)

    def __call__(self, x: Tensor, step: int, grad: Tensor | None = None) -> Tensor:
        return blur(x, self.sigma) if (step + 1) % self.every == 0 else x


def _below_percentile(score: Tensor, percentile: float) -> Tensor:
    """Per image, the pixels (N, 1, H, W) whose ``score`` is below its ``percentile`` (0..100) over pixels."""
    flat = score.flatten(1)
    cut = torch.quantile(flat, percentile / 100, dim=1, keepdim=True)
    return (flat < cut).reshape(score.shape)


class ClipNorm:
    """Zero the pixels whose norm over channels is below the ``percentile``-th of the image (Yosinski
    et al.'s theta_n_pct): only the strongest pixels stay, a sparse image."""

    def __init__(self, percentile: float):
        if not 0 <= percentile <= 100:
            raise UserError(f"norm clipping needs a percentile in [0, 100], got {percentile}")
        self.percentile = float(percentile)

    def __call__(self, x: Tensor, step: int, grad: Tensor | None = None) -> Tensor:
        norm = x.norm(dim=1, keepdim=True)
        return x.masked_fill(_below_percentile(norm, self.percentile), 0.0)


class ClipContribution:
    """Zero the pixels of small contribution (Yosinski et al.'s theta_c_pct): a pixel's contribution
    is the first-order change of the objective if it were set to 0, |sum over channels of x * grad|;
    those below the ``percentile``-th of the image are set to 0. Needs the step's gradient."""

    def __init__(self, percentile: float):
        if not 0 <= percentile <= 100:
            raise UserError(f"contribution clipping needs a percentile in [0, 100], got {percentile}")
        self.percentile = float(percentile)

    def __call__(self, x: Tensor, step: int, grad: Tensor | None = None) -> Tensor:
        if grad is None:
            raise ValueError("contribution clipping needs the gradient of the objective with respect to the image")
        contribution = (x * grad).sum(dim=1, keepdim=True).abs()
        return x.masked_fill(_below_percentile(contribution, self.percentile), 0.0)


# --- initialization -------------------------------------------------------------------------------


def mean_image_init(images: Tensor, count: int, noise: float = 0.0, generators: Generators | None = None) -> Tensor:
    """``count`` copies of the mean of ``images`` (model inputs, N x C x H x W), each plus N(0, noise^2)
    drawn from its generator: Nguyen et al. 2016's start from the mean image, which puts the
    optimization where real images are rather than at a random point."""
    images = images if images.is_floating_point() else images.float()
    mean = images.mean(dim=0, keepdim=True).expand(count, *images.shape[1:]).clone()
    if noise > 0:
        if generators is None:
            raise ValueError("noise needs generators")
        draws = [torch.randn(images.shape[1:], generator=g) for g in _per_image(generators, count)]
        mean = mean + noise * torch.stack(draws).to(mean)
    return mean
