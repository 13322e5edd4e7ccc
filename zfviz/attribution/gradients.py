"""Integrated gradients, SmoothGrad, Grad-CAM and guided Grad-CAM: the gradient methods of issue 13.

- ``integrated_gradients`` (Sundararajan et al. 2017, "Axiomatic attribution for deep networks"):
  ``(x - x') * integral_0^1 dF(x' + a (x - x'))/dx da``, the gradient integrated along the straight
  path from a baseline ``x'`` to the input, so the attributions add up to ``F(x) - F(x')``
  (completeness). The integral is a quadrature: Gauss-Legendre nodes (``integration="gausslegendre"``,
  the default, as Captum's) or the trapezoid rule on evenly spaced points (``"riemann_trapezoid"``).
  The ``steps * N`` scaled inputs go through the net ``internal_batch_size`` rows at a time; the
  chunk size changes a map only by float rounding.
- SmoothGrad (Smilkov et al. 2017), the ``smooth`` wrapper ``attribute`` puts around any gradient
  method when ``smooth_samples``/``smooth_sigma`` are given: the method's map averaged over noisy
  copies ``x + N(0, sigma^2)``, ``sigma = smooth_sigma * (max(x) - min(x))`` per image -- the
  paper's noise level, a fraction of the input's range.
- ``gradcam`` (Selvaraju et al. 2017): at a conv layer's map ``A`` (``N x K x h x w``), the weights
  ``alpha_k = mean_ij dy/dA_kij`` and the map ``ReLU(sum_k alpha_k A_k)``, bilinearly upsampled to
  the input (``upsample=False`` keeps the layer's grid). The default layer is the last conv layer's
  rectified output (``relu5`` on our nets, ``layer4`` on a ResNet), the layer the paper uses.
- ``guided_gradcam`` (the same paper): guided backprop times the upsampled Grad-CAM map.

Every gradient starts from 1 at the target (its gradient, not its score); targets are as
``zfviz.attribution.targets`` reads them. A unit target's strongest cell (``position=None``) is
found once on the clean inputs and kept for every scaled or noisy copy, so all of them explain
the same unit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.activations import Capture, evaluating, hooks, resolve
from zfviz.attribution.composites import GUIDED_BACKPROP
from zfviz.attribution.core import backward, register_method
from zfviz.attribution.targets import parse_target, seed_backward, strongest
from zfviz.errors import UserError

QUADRATURES = ("gausslegendre", "riemann_trapezoid")
BASELINES = ("zero", "mean")
# Default rows (scaled or noisy images) per forward/backward: 2^22 input values, 27 images at 224 px
# (a few GB of resnet50 activations), 341 at 64 px. It bounds memory and never changes the result.
CHUNK_VALUES = 2**22


def default_rows(inputs: Tensor) -> int:
    return max(1, CHUNK_VALUES // max(1, inputs[0].numel()))


Method = Callable[..., Tensor]  # fn(model, inputs, target, **options) -> Tensor shaped like inputs


def quadrature(steps: int, integration: str = "gausslegendre") -> tuple[Tensor, Tensor]:
    """Nodes ``a_s`` in [0, 1] and weights ``w_s`` with ``sum_s w_s f(a_s) ~ integral_0^1 f(a) da``."""
    if integration not in QUADRATURES:
        raise UserError(f"unknown integration {integration!r}; choose one of: {', '.join(QUADRATURES)}")
    least = 2 if integration == "riemann_trapezoid" else 1
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < least:
        raise UserError(f"steps must be an integer >= {least} for {integration}, got {steps!r}")
    if integration == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]: map to [0, 1]
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
    weights[[0, -1]] /= 2
    return torch.linspace(0, 1, steps, dtype=torch.float64), weights


def make_baseline(inputs: Tensor, baseline: Tensor | float | str) -> Tensor:
    """The reference input ``x'``: a tensor broadcastable to ``inputs``, a number (every pixel),
    ``"zero"``, or ``"mean"`` (each image's per-channel mean: a flat image of its average colour).
    A black image depends on the net's preprocessing, so it is given as a tensor or a number."""
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
    raise UserError(f"unknown baseline {baseline!r}; give a tensor, a number, or one of: {', '.join(BASELINES)}")


def _positive(name: str, value, default: int) -> int:
    value = default if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


def row_targets(model: nn.Module, inputs: Tensor, target, image: Tensor):
    """The target of each row of a stacked batch, row ``r`` being a copy of ``inputs[image[r]]``.

    A unit's strongest cell is fixed here, on the clean ``inputs``, so every copy explains the same
    unit (recomputed per copy, it would wander along the integration path or with the noise).
    """
    parsed = parse_target(model, target, len(inputs))
    if parsed.layer is None:
        return parsed.channel[image]
    position = parsed.position
    if position is None:
        with evaluating(model), Capture(model, [parsed.layer], stop=True) as capture, torch.no_grad():
            capture(inputs)
        maps = capture.outputs[parsed.layer]
        if maps.dim() != 4:
            raise UserError(f"unit targets need a 2-D or 4-D layer output, {parsed.layer} gives {maps.dim()}-D")
        rows = torch.arange(len(inputs), device=maps.device)
        position = strongest(maps[rows, parsed.channel.to(maps.device)]).cpu()
    return (parsed.layer, parsed.channel[image], position if isinstance(position, str) else position[image])


@register_method("integrated_gradients", gradient=True)
def integrated_gradients(
    model: nn.Module,
    inputs: Tensor,
    target,
    *,
    steps: int = 50,
    baseline: Tensor | float | str = 0.0,
    integration: str = "gausslegendre",
    internal_batch_size: int | None = None,
) -> Tensor:
    """Integrated gradients of ``target`` (Sundararajan et al. 2017), shaped like ``inputs``.

    Row ``s * N + n`` of the ``steps * N`` scaled inputs is image ``n`` at node ``a_s``; rows go
    through one forward/backward ``internal_batch_size`` at a time (default: ``default_rows``).
    """
    alphas, weights = quadrature(steps, integration)
    inputs = inputs.detach()
    base = make_baseline(inputs, baseline)
    delta = inputs - base
    n, rows = len(inputs), _positive("internal_batch_size", internal_batch_size, default_rows(inputs))
    every = torch.arange(n).repeat(steps)
    targets = row_targets(model, inputs, target, every)
    single = (1,) * (inputs.dim() - 1)
    alphas, weights = alphas.to(inputs).view(-1, 1, *single), weights.to(inputs)
    total = torch.zeros_like(inputs)
    for start in range(0, steps * n, rows):
        stop = min(start + rows, steps * n)
        first, last = start // n, -(-stop // n)  # the steps the chunk's rows belong to
        # Broadcast, not gathered by row: every step of the chunk for all images, then the chunk's rows.
        scaled = (base + alphas[first:last] * delta).flatten(0, 1)[start - first * n : stop - first * n]
        index = torch.arange(start, stop, device=inputs.device)
        grads = backward(model, scaled, _take(targets, index.cpu())).inputs
        # One weighted sum per chunk (Captum's way); chunking changes a map only by float rounding.
        total.index_add_(0, index % n, grads * weights[index // n].view(-1, *single))
    return delta * total


def _take(targets, index: Tensor):
    """Rows ``index`` of per-row targets from ``row_targets``."""
    if isinstance(targets, Tensor):
        return targets[index]
    layer, channel, position = targets
    return (layer, channel[index], position if isinstance(position, str) else position[index])


def smooth(
    method: Method,
    model: nn.Module,
    inputs: Tensor,
    target,
    *,
    smooth_samples: int = 10,
    smooth_sigma: float = 0.15,
    smooth_seed: int | None = 0,
    smooth_batch: int | None = None,
    **options,
) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017): ``method`` averaged over ``smooth_samples`` noisy inputs.

    Sample ``s`` adds ``sigma * torch.randn(inputs.shape)``, the ``s``-th draw of a CPU generator
    seeded with ``smooth_seed`` (``None``: a fresh seed), with ``sigma = smooth_sigma * (max - min)``
    of each image: the paper's noise level as a fraction of the input range (it suggests 0.1-0.2).
    ``smooth_batch`` noisy copies of the batch go through ``method`` in one call (default: about
    ``default_rows`` rows); it changes the result only within float tolerance. The option is
    ``smooth_seed``, not ``seed``: the deconvnet's ``seed`` says where its backward pass starts.
    """
    samples = _positive("smooth_samples", smooth_samples, 10)
    if not isinstance(smooth_sigma, (int, float)) or isinstance(smooth_sigma, bool) or smooth_sigma < 0:
        raise UserError(f"smooth_sigma must be a number >= 0 (a fraction of the input range), got {smooth_sigma!r}")
    inputs = inputs.detach()
    n = len(inputs)
    per = _positive("smooth_batch", smooth_batch, max(1, default_rows(inputs) // max(n, 1)))
    generator = torch.Generator()
    if smooth_seed is None:
        generator.seed()
    else:
        generator.manual_seed(smooth_seed)
    dims = tuple(range(1, inputs.dim()))
    sigma = smooth_sigma * (inputs.amax(dim=dims, keepdim=True) - inputs.amin(dim=dims, keepdim=True))
    every = torch.arange(n).repeat(min(per, samples))
    targets = row_targets(model, inputs, target, every)
    total = None
    for start in range(0, samples, per):
        count = min(per, samples - start)
        noise = torch.stack([torch.randn(inputs.shape, generator=generator) for _ in range(count)]).to(inputs)
        noisy = (inputs + sigma * noise).flatten(0, 1)  # sample-major: row s * N + n
        maps = method(model, noisy, _take(targets, torch.arange(count * n)), **options)
        for part in maps.reshape(count, n, *maps.shape[1:]):  # samples summed in order, whatever the chunking
            total = part.clone() if total is None else total + part
    return total / samples


def layer_gradient(model: nn.Module, inputs: Tensor, target, path: str) -> tuple[Tensor, Tensor]:
    """The output ``A`` of module ``path`` and the gradient of the target wrt it (seed 1).

    Grad-CAM needs nothing below the layer, so the forward hook hands the rest of the net a copy of
    a detached ``A``: the backward stops there (half the work of ``core.backward(wrt=...)`` on
    resnet18, the same as Captum's), and a later in-place op cannot touch the ``A`` we keep.
    """
    parsed = parse_target(model, target, len(inputs))
    found: dict[str, Tensor] = {}

    def cut(_module, _inputs, output):
        if "layer" in found:  # a module called twice: its first call, as Capture does
            return None
        if not isinstance(output, Tensor):
            raise UserError(f"layer {path!r} returns {type(output).__name__}, not one tensor; name another layer")
        found["layer"] = output.detach().requires_grad_(True)
        return found["layer"].clone()

    def keep(_module, _inputs, output):
        found.setdefault("target", output)

    pairs = [(path, cut)] + ([(parsed.layer, keep)] if parsed.layer is not None else [])
    with evaluating(model), hooks(model, pairs), torch.enable_grad():
        out = model(inputs.detach())
        point = out if parsed.layer is None else found.get("target")
        if "layer" not in found or point is None:
            missing = path if "layer" not in found else parsed.layer
            raise UserError(f"layer {missing!r} is never called by the model's forward pass")
        grad_seed, _ = seed_backward(point, parsed, "one")
        (grad,) = torch.autograd.grad(point, found["layer"], grad_seed, allow_unused=True)
    if grad is None:
        what = "the model's output" if parsed.layer is None else f"the unit of {parsed.layer}"
        raise UserError(f"the target ({what}) does not depend on layer {path!r}; name a layer below it")
    return found["layer"].detach(), grad


@register_method("gradcam")
def gradcam(
    model: nn.Module,
    inputs: Tensor,
    target,
    *,
    layer: str | None = None,
    meaning: str = "rectified",
    upsample: bool = True,
    relu: bool = True,
) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017), ``N x 1 x H x W`` at the input's size (``upsample=False``:
    the layer's ``h x w``). ``layer`` resolves with ``meaning`` (``"rectified"``: ``conv5`` is read
    after its ReLU, ``layer4`` is itself); ``None`` is the last conv layer's. ``relu=False`` keeps
    the negative evidence the paper's ReLU removes."""
    path = resolve(model, layer, meaning)
    acts, grads = layer_gradient(model, inputs, target, path)
    return _cam(path, acts, grads, inputs, upsample=upsample, relu=relu)


def _cam(path: str, acts: Tensor, grads: Tensor, inputs: Tensor, *, upsample: bool, relu: bool) -> Tensor:
    """Grad-CAM's map from layer ``path``'s output ``acts`` and the target's gradient there."""
    if acts.dim() != 4:
        raise UserError(
            f"Grad-CAM needs a conv layer's map (N x C x H x W), but {path!r} gives shape {tuple(acts.shape)}; "
            "name a conv layer or block"
        )
    weights = grads.mean(dim=(2, 3), keepdim=True)  # alpha_k: the global-average-pooled gradient
    cam = (weights * acts).sum(dim=1, keepdim=True)
    if relu:
        cam = F.relu(cam)
    if upsample and cam.shape[2:] != inputs.shape[2:]:
        cam = F.interpolate(cam, size=tuple(inputs.shape[2:]), mode="bilinear", align_corners=False)
    return cam


@register_method("guided_gradcam", supports=GUIDED_BACKPROP.supports)
def guided_gradcam(
    model: nn.Module, inputs: Tensor, target, *, layer: str | None = None, meaning: str = "rectified"
) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times the upsampled Grad-CAM map,
    shaped like ``inputs`` (the one-channel map weights every input channel alike).

    One forward pass serves both: the plain gradient at the layer first, then guided backprop over
    the same graph (``backward(plain_wrt=True)``), where two calls would run the net twice.
    """
    path = resolve(model, layer, meaning)
    result = backward(model, inputs, target, composite=GUIDED_BACKPROP, wrt=path, plain_wrt=True)
    return result.inputs * _cam(path, result.layer, result.layer_grad, inputs, upsample=True, relu=True)
