"""Regularized network inversion (Mahendran and Vedaldi 2015) and the reconstruction measures.

What does a layer keep of an image? Mahendran and Vedaldi answer by optimization: starting from
noise, find the image x whose representation phi(x) at the layer matches the real image's phi0,
under priors that keep x natural (their eq. 1-5):

    x* = argmin_x  ||phi(x) - phi0||^2 / ||phi0||^2  +  lambda_a R_a(x)  +  lambda_TV R_TV(x)

The data term is normalized by ||phi0||^2, so it is 1 at x = 0's features of the same size and the
same lambdas serve every layer and image. The priors are normalized by the range of the image, as
in their IJCV paper (Section 3.3, "balancing the different terms"): with ``b`` the typical size of
one input value (the paper's B, per channel here) and V = b / 6.5 the typical difference between
neighbouring pixels of a natural image,

    R_a(x) = sum |x|^a / (C H W b^a)        R_TV(x) = TV^beta(x) / (C H W V^beta)

so each is about 1 for an image of natural range and smoothness, whatever its size. Our nets read
inputs standardized with the training pixels' mean and std, so ``b = 1`` is the default; a net fed
raw mean-subtracted pixels (the paper preset, about [-128, 128]) wants ``b`` near 128 / 2.

Optimization: Adam on x (the papers use momentum SGD; Adam needs no per-layer learning rate). The
objective is the sum of the per-image objectives and Adam's update is elementwise, so image k's
reconstruction never depends on the other images of the batch. The start is one seeded noise
image shared by the batch for the same reason. Gray data repeated to the net's channels lie on the
line where the channels are equal; ``color`` (``parameterization.data_color``) optimizes one gray
channel copied to all, so the reconstruction stays there instead of keeping the start's colored
noise in the directions the net barely sees (``PixelParam``, the same mechanism as maximization's).

Measures (the papers' and the survey's): ``normalized_error`` ||x* - x|| / ||x|| and ``psnr``, per
image, on PIXELS: the caller undoes the data set's normalization first (``to_pixels``), so the
numbers mean the same for any input scaling and compare with the learned decoders' (``decoder.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zfviz.activations import Meaning, evaluating, hooks, resolve
from zfviz.errors import UserError
from zfviz.reconstruction.parameterization import PixelParam
from zfviz.reconstruction.regularizers import lp_norm, total_variation
from zfviz.schedules import cosine

NATURAL_VARIATION = 6.5  # M&V: neighbouring pixels of natural images differ by about B / 6.5
# The TV weight by depth (the k-th conv/linear layer and what follows it): 0.005 * 4^(k-1), at most 0.2.
# Low layers keep nearly everything and a strong prior only blurs; high layers are under-determined
# and a weak prior leaves noise that matches the features. On the cpu preset ZFNet (8 test images,
# 200 steps): conv1 error 0.05 at 0.005 vs 0.35 at 0.2; fc6 0.82 at 0.005 vs 0.76 at 0.2.
TV_FIRST, TV_GROWTH, TV_MAX = 0.005, 4.0, 0.2
# Adam's eps: at PyTorch's 1e-8 a pixel whose gradient is ~1e-10 (a flat background) moves lr / 100 on
# the sign of a rounding error, and an image's result then depends on its batch (0.07 apart after
# 30 steps); at 1e-6, 1e-5 of a step, and the results agree to 1e-5. Real gradients are >= 1e-5.
EPS = 1e-6


@dataclass
class Inversion:
    """Reconstructions (N, C, H, W, model input space) and the objective at every step (steps, N)."""

    images: Tensor
    trace: Tensor


class _Reached(Exception):
    """Raised by the hook once the layer ran: nothing above it is needed."""


def layer_features(model: nn.Module, x: Tensor, path: str) -> Tensor:
    """The output of module ``path`` (a resolved path) for ``x``, WITH its autograd graph.

    ``zfviz.activations.Capture`` keeps detached copies; inversion needs the gradient, so the hook
    here keeps the output as it is and stops the forward pass there. The caller sets eval mode.
    """
    found: dict[str, Tensor] = {}

    def keep(_module, _inputs, output) -> None:
        found["out"] = output[0] if isinstance(output, tuple) else output
        raise _Reached

    with hooks(model, [(path, keep)]):
        try:
            model(x)
        except _Reached:
            pass
    if "out" not in found:
        raise UserError(f"layer {path!r} is never called by the model's forward pass")
    return found["out"]


def objective_terms(
    x: Tensor, features: Tensor, target: Tensor, *, alpha: float, beta: float, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per image (N each): the normalized feature error, R_a and R_TV of the module docstring."""
    n, c, h, w = x.shape
    data = (features - target).flatten(1).square().sum(1) / target.flatten(1).square().sum(1).clamp_min(1e-12)
    size = c * h * w
    r_a = lp_norm(x / scale, alpha) / size
    r_tv = total_variation(x / (scale / NATURAL_VARIATION), beta) / size
    return data, r_a, r_tv


def tv_weight(model: nn.Module, path: str) -> float:
    """The default TV weight for module ``path``: by the number k of conv/linear layers up to it (see TV_FIRST)."""
    k = 0
    for name, module in model.named_modules():
        k += isinstance(module, (nn.Conv2d, nn.Linear))
        if name == path:
            break
    return min(TV_MAX, TV_FIRST * TV_GROWTH ** max(0, k - 1))


@dataclass(frozen=True)
class Regularizer:
    """Mahendran & Vedaldi's R(x): ``lambda_a`` times the alpha-norm (exponent ``alpha``) plus
    ``lambda_tv`` times total variation^``beta`` (None: by depth, ``tv_weight``), both normalized by
    ``scale`` (the module docstring's b)."""

    lambda_a: float = 1e-5
    alpha: float = 6.0
    lambda_tv: float | None = None
    beta: float = 2.0
    scale: float = 1.0


@dataclass(frozen=True)
class Descent:
    """The optimization: ``steps`` of Adam with step ``lr``, cosine-annealed to 0, from ``init_std``
    times one N(0, 1) image drawn from ``seed``."""

    steps: int = 200
    lr: float = 0.1
    init_std: float = 0.1
    seed: int = 0


def invert(
    model: nn.Module,
    images: Tensor,
    layer: str,
    *,
    meaning: Meaning = "rectified",
    regularizer: Regularizer | None = None,
    descent: Descent | None = None,
    color: Tensor | None = None,
) -> Inversion:
    """Reconstruct ``images`` (model inputs, N x C x H x W) from their representation at ``layer``.

    ``layer`` is a name of the layer vocabulary (``conv1`` .. ``fc8`` on our nets) read in
    ``meaning`` (default: after its ReLU, what the next layer is given); the objective is the
    representation's distance plus the ``regularizer``, minimized as ``descent`` says (defaults:
    ``Regularizer()``, ``Descent()``). The model is left as it was: eval mode only inside the call,
    and the gradient is taken with respect to x alone (no parameter's ``.grad`` is written).
    ``color`` (C x C'): optimize C' latent channels mixed into the image's C, e.g. ``data_color``'s
    ones for gray data (every channel of the result equal); None: channels free.
    """
    reg, descent = regularizer or Regularizer(), descent or Descent()
    steps, lr, alpha, beta, scale, lambda_a = descent.steps, descent.lr, reg.alpha, reg.beta, reg.scale, reg.lambda_a
    lambda_tv = reg.lambda_tv
    if steps < 1:
        raise UserError(f"steps={steps} is not valid; give 1 or more optimization steps")
    path = resolve(model, layer, meaning)
    lambda_tv = tv_weight(model, path) if lambda_tv is None else float(lambda_tv)
    if min(lambda_a, lambda_tv) < 0 or scale <= 0:
        raise UserError("lambda_a and lambda_tv must be >= 0 and scale > 0")
    images = images.detach()
    if color is not None and (color.dim() != 2 or color.shape[0] != images.shape[1]):
        raise UserError(f"color is {tuple(color.shape)}: give a {images.shape[1]} x C' basis (image channels first)")
    color = None if color is None else color.to(images)
    gen = torch.Generator().manual_seed(int(descent.seed))
    latent = (images.shape[1] if color is None else color.shape[1], *images.shape[2:])
    start = descent.init_std * torch.randn(latent, generator=gen).to(images)
    start = start if color is None else torch.einsum("ck,khw->chw", color, start)
    param = PixelParam(start.expand_as(images), color=color)
    opt = torch.optim.Adam(param.params(), lr=lr, eps=EPS)
    trace = torch.empty(steps, len(images))
    with evaluating(model):
        with torch.no_grad():
            target = layer_features(model, images, path).detach()
        with torch.enable_grad():
            for step in range(steps):
                for group in opt.param_groups:
                    group["lr"] = lr * cosine(step, steps)
                x = param.image()
                data, r_a, r_tv = objective_terms(
                    x, layer_features(model, x, path), target, alpha=alpha, beta=beta, scale=scale
                )
                per_image = data + lambda_a * r_a + lambda_tv * r_tv
                trace[step] = per_image.detach().cpu()
                grads = torch.autograd.grad(per_image.sum(), param.params())
                for p, grad in zip(param.params(), grads, strict=True):
                    p.grad = grad
                opt.step()
    return Inversion(param.image().detach(), trace)


def to_pixels(x: Tensor, mean: Tensor | float, std: Tensor | float, data_range: float = 255.0) -> Tensor:
    """Model inputs back to pixels, ``x * std + mean``, clipped to [0, data_range]: the image one sees."""
    return (x * std + mean).clamp(0, data_range)


def normalized_error(x_star: Tensor, x: Tensor) -> Tensor:
    """||x* - x|| / ||x|| per image (N): the papers' normalized reconstruction error (pixels in, see the
    module docstring)."""
    diff = (x_star - x).flatten(1).norm(dim=1)
    return diff / x.flatten(1).norm(dim=1).clamp_min(1e-12)


def psnr(x_star: Tensor, x: Tensor, data_range: float = 255.0) -> Tensor:
    """Peak signal-to-noise ratio per image (N), in dB: 10 log10(range^2 / mean squared error)."""
    mse = (x_star - x).flatten(1).square().mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-20))
