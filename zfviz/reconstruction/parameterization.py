"""What the optimizer changes when it synthesizes an image (issue 14).

The same objective climbs differently depending on which numbers gradient ascent moves:

- ``PixelParam``: the pixels themselves (Erhan et al. 2009; Simonyan et al. 2014), kept inside the
  valid input range by clamping after every step (projected gradient ascent);
- ``FourierParam``: the image's spectrum, scaled by 1/frequency, in decorrelated color channels
  (Olah et al. 2017, "Feature Visualization", Preconditioning and Parameterization). Gradient steps
  on a 1/f-scaled spectrum favour low frequencies, so the images lose the high-frequency noise pixel
  ascent produces; within the bounds, a sigmoid squashes the image into range (as their sigmoid does);
- ``GeneratorParam``: the code h of a generator G, image = G(h) (Nguyen et al. 2016, the deep
  generator network prior): only images G can draw are reachable. Our G is a learned decoder of fc6
  (``zfviz.reconstruction.decoder``, Dosovitskiy & Brox 2016), so h lives in fc6's space.

Color decorrelation. Olah et al. move each pixel's colors along the principal axes of the data's
color covariance, scaled by their standard deviations (``color_basis``). Our cpu-preset inputs are
Fashion-MNIST's gray repeated to 3 channels: the covariance has rank 1, its one axis is (1, 1, 1),
and the other two directions never occur in the data. ``color_basis`` keeps only the axes the data
use, so for these inputs the Fourier image has ONE latent channel copied to all three, and the
synthesized images stay gray like the data (a color the net never saw would be off-distribution).

The same basis ties the channels of ``PixelParam`` and of the pixel inversion (``invert.py``): pixels
optimized per channel drift apart where the net barely separates the channels, and gray data come back
colored; with ``color`` a C x C' basis the parameter is C' latent channels mixed into C. ``data_color``
decides from a checkpoint's data: a column of ones (one gray channel copied to all) when the data are
gray, None (independent channels) otherwise. The Python API ties only when given ``color``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

Bounds = tuple[float, float] | None


def color_basis(images: Tensor | None, channels: int = 3, rank_tol: float = 1e-6) -> Tensor:
    """The C x C' matrix mapping C' decorrelated latent channels to the C image channels.

    Its columns are the principal axes of ``images``' channel covariance (N x C x H x W, model inputs)
    times their standard deviations, for the C' axes whose variance is above ``rank_tol`` times the
    largest; scaled so the largest per-channel variance a white latent gives is 1. ``None``: identity.
    Gray data repeated to 3 channels give C' = 1 and the column (1, 1, 1).
    """
    if images is None:
        return torch.eye(channels)
    pixels = images.detach().double().transpose(0, 1).reshape(images.shape[1], -1)
    cov = torch.cov(pixels)
    values, vectors = torch.linalg.eigh(cov)
    keep = values > rank_tol * values.max().clamp_min(1e-30)
    basis = vectors[:, keep] * values[keep].sqrt()
    basis = basis / basis.norm(dim=1).max().clamp_min(1e-30)  # a channel's variance: its row's squared norm
    return basis.float()


def data_color(loader) -> Tensor | None:
    """The basis that keeps images like ``loader``'s data: ones (C, 1) when its images are one gray
    channel repeated to the model's C channels and normalized alike in every channel (Fashion-MNIST at
    the cpu preset), so a model input is gray exactly when its channels are equal; else None.

    With per-channel statistics that differ, gray pixels are not equal inputs: None, channels untied."""
    stored = getattr(loader.images, "shape", None)
    channels = int(getattr(loader, "channels", 0))
    if stored is None or len(stored) != 4 or stored[1] != 1 or channels < 2:
        return None
    stats = [torch.as_tensor(s) for s in (loader.mean, loader.std)]  # (1, C, 1, 1), or (1, C, H, W), or scalars
    stats = [s if s.dim() == 4 else s.reshape(1, -1, 1, 1) for s in stats]
    alike = all(bool((s == s[:, :1]).all()) for s in stats)
    return torch.ones(channels, 1) if alike else None


def _mix(color: Tensor | None, latent: Tensor) -> Tensor:
    return latent if color is None else torch.einsum("ck,nkhw->nchw", color, latent)


def _unmix(color: Tensor | None, image: Tensor) -> Tensor:
    """The latent whose mix is nearest ``image`` (least squares: for a column of ones, the channels' mean)."""
    return image if color is None else torch.einsum("kc,nchw->nkhw", torch.linalg.pinv(color.to(image.dtype)), image)


def _squash(z: Tensor, bounds: Bounds) -> Tensor:
    if bounds is None:
        return z
    low, high = bounds
    return low + (high - low) * torch.sigmoid(z)


def _unsquash(x: Tensor, bounds: Bounds, margin: float = 1e-4) -> Tensor:
    """The inverse of ``_squash``; pixels on the bound move ``margin`` of the range inside (logit is finite)."""
    if bounds is None:
        return x
    low, high = bounds
    p = ((x - low) / (high - low)).clamp(margin, 1 - margin)
    return torch.logit(p)


class PixelParam:
    """The image is the parameter; ``bounds`` (low, high) in the model's input space clamp it after each step.

    ``color`` (C x C', e.g. ``data_color``'s ones): the parameter is C' latent channels and the image
    their mix, so a gray basis keeps every channel of the image equal. None: each channel is free.
    """

    def __init__(self, init: Tensor, bounds: Bounds = None, color: Tensor | None = None):
        self.bounds = bounds
        self.color = None if color is None else color.to(init.device, init.dtype)
        self.x = _unmix(self.color, init.detach()).clone().requires_grad_(True)
        self.project()

    def params(self) -> list[Tensor]:
        return [self.x]

    def image(self) -> Tensor:
        return _mix(self.color, self.x)

    def set_image(self, image: Tensor) -> None:
        with torch.no_grad():
            self.x.copy_(_unmix(self.color, image))
        self.project()

    def project(self) -> None:
        if self.bounds is None:
            return
        with torch.no_grad():
            if self.color is None:
                self.x.clamp_(*self.bounds)
            else:  # clamp the image, then back to the nearest latent (for a gray basis: exactly the clamped gray)
                self.x.copy_(_unmix(self.color, self.image().clamp(*self.bounds)))


def spectrum_scale(height: int, width: int, decay_power: float = 1.0) -> Tensor:
    """1 / |f|^decay_power for the rfft2 frequencies of an H x W image, |f| floored at 1/max(H, W)
    so the constant term gets the weight of the lowest frequency (Olah et al. 2017); divided by its
    root mean square, so a white spectrum of std s gives pixels of std about s (``norm="ortho"``) and a
    step of the optimizer moves the image about as much as the same step on the pixels would."""
    fy = torch.fft.fftfreq(height).reshape(-1, 1)
    fx = torch.fft.rfftfreq(width).reshape(1, -1)
    freq = (fy.square() + fx.square()).sqrt().clamp_min(1.0 / max(height, width))
    scale = freq.pow(-decay_power)
    return scale / scale.square().mean().sqrt()


class FourierParam:
    """image = squash(M @ irfft2(scale * spectrum)): a 1/f-scaled spectrum per latent color channel,
    mixed into image channels by the color basis M (``color_basis``), squashed into ``bounds``.

    ``spectrum`` is (N, C', H, W//2+1) complex, stored as a real tensor (..., 2) for the optimizer.
    ``from_image`` inverts the map, so ``FourierParam.from_image(x, ...).image()`` is ``x`` (within
    the bounds, for an ``x`` in the span of M).
    """

    def __init__(self, spectrum: Tensor, image_size: tuple[int, int], color: Tensor, bounds: Bounds = None,
                 decay_power: float = 1.0):  # fmt: skip
        self.size, self.bounds = tuple(image_size), bounds
        self.color = color.to(spectrum.device, spectrum.dtype)
        self.scale = spectrum_scale(*self.size, decay_power).to(spectrum.device, spectrum.dtype)
        self.spectrum = spectrum.detach().clone().requires_grad_(True)

    @classmethod
    def from_image(cls, x: Tensor, color: Tensor, bounds: Bounds = None, decay_power: float = 1.0) -> FourierParam:
        """The parameter whose image is ``x`` (N, C, H, W)."""
        param = cls(x.new_zeros(1), tuple(x.shape[-2:]), color, bounds, decay_power)
        param.spectrum = param._spectrum_of(x).requires_grad_(True)
        return param

    def _spectrum_of(self, x: Tensor) -> Tensor:
        latent = _unmix(self.color, _unsquash(x.detach(), self.bounds))
        spectrum = torch.fft.rfft2(latent, norm="ortho") / self.scale.to(latent.dtype)
        return torch.view_as_real(spectrum).contiguous()

    def params(self) -> list[Tensor]:
        return [self.spectrum]

    def image(self) -> Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        latent = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        return _squash(_mix(self.color, latent), self.bounds)

    def set_image(self, image: Tensor) -> None:
        """Move the parameter to the one whose image is ``image`` (after a step on the pixels: blur, clipping)."""
        with torch.no_grad():
            self.spectrum.copy_(self._spectrum_of(image))

    def project(self) -> None:
        pass  # the sigmoid keeps the image in its bounds


class GeneratorParam:
    """image = generator(code) (Nguyen et al. 2016): the code is the parameter, the generator is fixed.

    ``code_bounds`` (low, high) clamp the code after each step: Nguyen et al. keep fc6 codes in the
    range real images give them (non-negative after the ReLU, below a multiple of their spread), so the
    generator is only asked to draw from codes like those it was trained on.
    """

    def __init__(self, generator: nn.Module, code: Tensor, code_bounds: Bounds = None):
        self.generator, self.code_bounds = generator, code_bounds
        self.code = code.detach().clone().requires_grad_(True)
        self.project()

    def params(self) -> list[Tensor]:
        return [self.code]

    def image(self) -> Tensor:
        return self.generator(self.code)

    def set_image(self, image: Tensor) -> None:
        raise NotImplementedError("the generator's image cannot be set; only its code moves")

    def project(self) -> None:
        if self.code_bounds is not None:
            with torch.no_grad():
                self.code.clamp_(*self.code_bounds)
