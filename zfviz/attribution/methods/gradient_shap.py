"""Gradient SHAP (Lundberg & Lee 2017, "A unified approach to interpreting model predictions"), as
Captum's ``GradientShap`` computes it: SHAP values approximated by expected gradients.

Per image, ``samples`` draws, each of a baseline ``b`` taken uniformly from the ``baselines``
distribution (K reference inputs), Gaussian noise ``e ~ N(0, stdevs^2)`` on the input (``x~ = x + e``)
and a point ``a ~ U(0, 1)`` on the straight path from ``b`` to ``x~``; the map is the mean over the
draws of ``(x~ - b) * dF(a x~ + (1 - a) b)/dx``. In expectation (``stdevs=0``) it is integrated
gradients averaged over the baselines, so the attributions add up to ``F(x) - E_b F(b)``.

The draws come from a ``torch.Generator`` seeded with ``seed`` (nothing global is touched), in
Captum's layout: row ``n * samples + s`` is image ``n``'s draw ``s``. The rows go through the net
``internal_batch_size`` at a time; that changes a map only by float rounding. The gradient starts
from 1 at the target; a unit's strongest cell is fixed on the clean images (``rows.row_targets``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zfviz.attribution.mechanism import backward
from zfviz.attribution.options import TENSOR, Option, either, number, optional, whole
from zfviz.attribution.registry import register_method
from zfviz.attribution.rows import default_rows, row_targets, take
from zfviz.errors import UserError


def draws(n: int, samples: int, shape: tuple[int, ...], count: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(baseline index, standard normal noise, path point)`` for each of the ``n * samples`` rows."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(count, (n * samples,), generator=generator)
    noise = torch.randn((n * samples, *shape), generator=generator)
    alpha = torch.rand(n * samples, generator=generator, dtype=torch.float64)
    return index, noise, alpha


def reference_set(inputs: Tensor, baselines: Tensor | float) -> Tensor:
    """The baseline distribution as a (K, C, H, W) tensor: K given inputs, or one constant image."""
    if not isinstance(baselines, Tensor):
        return torch.full((1, *inputs.shape[1:]), float(baselines), dtype=inputs.dtype, device=inputs.device)
    if baselines.shape == inputs.shape[1:]:
        baselines = baselines[None]
    if baselines.dim() != inputs.dim() or baselines.shape[1:] != inputs.shape[1:] or len(baselines) == 0:
        raise UserError(
            f"baselines of shape {tuple(baselines.shape)} are not K inputs shaped {tuple(inputs.shape[1:])}"
        )
    return baselines.detach().to(inputs)


@register_method(
    "gradient_shap",
    options=(
        Option("samples", whole(1), 5, "draws (baseline, noise, path point) per image"),
        Option("stdevs", number(at_least=0), 0.0, "the std of the Gaussian noise added to the input"),
        Option("baselines", either(number(), TENSOR), 0.0, "the baseline distribution: K inputs, or one constant"),
        Option("seed", whole(0), 0, "the draws' seed"),
        Option("internal_batch_size", optional(whole(1)), None, "rows per forward/backward (null: ~2^22 values)"),
    ),
)
def gradient_shap(
    model: nn.Module,
    inputs: Tensor,
    target,
    *,
    samples: int,
    stdevs: float,
    baselines: Tensor | float,
    seed: int,
    internal_batch_size: int | None,
) -> Tensor:
    """Gradient SHAP (Lundberg & Lee 2017): expected gradients from random baselines, shaped like ``inputs``."""
    inputs = inputs.detach()
    base = reference_set(inputs, baselines)
    n = len(inputs)
    index, noise, alpha = draws(n, samples, tuple(inputs.shape[1:]), len(base), seed)
    image = torch.arange(n).repeat_interleave(samples)
    targets = row_targets(model, inputs, target, image)
    single = (1,) * (inputs.dim() - 1)
    total = torch.zeros_like(inputs)
    rows = internal_batch_size or default_rows(inputs)
    for start in range(0, n * samples, rows):
        r = torch.arange(start, min(start + rows, n * samples))
        noisy = inputs[image[r]] + stdevs * noise[r].to(inputs)
        b, a = base[index[r].to(base.device)], alpha[r].to(inputs).view(-1, *single)
        grads = backward(model, a * noisy + (1 - a) * b, take(targets, r)).inputs
        total.index_add_(0, image[r].to(inputs.device), (noisy - b) * grads)
    return total / samples
