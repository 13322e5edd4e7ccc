"""The reference input a method compares the image with: one vocabulary for every user of a baseline.

Integrated gradients start their path there (Sundararajan et al. 2017), Gradient SHAP draws from a
set of them, and the perturbation scores of ``zfviz.evaluate`` show it where a pixel is deleted (or
not yet inserted; Petsiuk et al. 2018). A baseline is a tensor (broadcast to the images), a number
(every value), or a name:

- ``"zero"``: zeros of the model's input space (after normalization: the data set's mean pixel);
- ``"mean"``: each image's per-channel mean, a flat image of its average colour;
- ``"blur"``: a Gaussian blur of the image (kernel 11, sigma 5, as RISE's insertion substrate).

A black image depends on the net's preprocessing, so it is given as a tensor or a number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zfviz.errors import UserError

BASELINES = ("blur", "mean", "zero")
# RISE's insertion substrate: a Gaussian blur of kernel 11 and sigma 5 (Petsiuk et al.'s code, klen=11, nsig=5).
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0


def blur(images: Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> Tensor:
    """Each channel of ``images`` (N x C x H x W) convolved with a ``kernel`` x ``kernel`` Gaussian of ``sigma``.

    Separable; the border is extended by replication (RISE pads with zeros, which darkens the border
    toward zero; replication keeps its colour and works on images smaller than the kernel).
    """
    x = torch.arange(kernel, dtype=torch.float32, device=images.device) - (kernel - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).to(images.dtype)
    c, pad = images.shape[1], kernel // 2
    out = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    out = F.conv2d(out, g.view(1, 1, 1, kernel).expand(c, 1, 1, kernel), groups=c)
    return F.conv2d(out, g.view(1, 1, kernel, 1).expand(c, 1, kernel, 1), groups=c)


def make_baseline(inputs: Tensor, baseline: Tensor | float | str) -> Tensor:
    """The baseline (module docstring) shaped like ``inputs``, detached, in their dtype and device."""
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.detach().to(inputs), inputs.shape)
        except RuntimeError:
            raise UserError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to the inputs' {tuple(inputs.shape)}"
            ) from None
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    if baseline == "zero":
        return torch.zeros_like(inputs)
    if baseline == "mean" and inputs.dim() > 2:
        return inputs.mean(dim=tuple(range(2, inputs.dim())), keepdim=True).expand_as(inputs)
    if baseline == "blur" and inputs.dim() == 4:
        return blur(inputs)
    raise UserError(f"unknown baseline {baseline!r}; give a tensor, a number, or one of: {', '.join(BASELINES)}")
