"""SmoothGrad (Smilkov et al. 2017): any gradient method averaged over noisy copies of its inputs.

Not a method of its own but a wrapper ``attribute`` puts around any method registered with
``gradient=True`` when ``smooth_samples`` or ``smooth_sigma`` is given: the method's map averaged
over copies ``x + N(0, sigma^2)``, ``sigma = smooth_sigma * (max(x) - min(x))`` per image -- the
paper's noise level, a fraction of the input's range (it suggests 0.1-0.2). Its options are
declared here, once, and belong to every gradient method.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from zfviz.attribution.options import Option, number, optional, whole
from zfviz.attribution.rows import default_rows, row_targets, take

SMOOTH_OPTIONS = (
    Option("smooth_samples", whole(1), 10, "noisy copies averaged (given, or smooth_sigma, turns SmoothGrad on)"),
    Option("smooth_sigma", number(at_least=0), 0.15, "the noise's std as a fraction of each image's range"),
    Option("smooth_seed", optional(whole(0)), 0, "the noise's seed (null: a fresh one)"),
    Option("smooth_batch", optional(whole(1)), None, "noisy copies of the batch per call (null: ~2^22 values)"),
)
SMOOTH_KEYS = tuple(option.name for option in SMOOTH_OPTIONS)


def smooth(
    method: Callable[..., Tensor],
    model: nn.Module,
    inputs: Tensor,
    target,
    *,
    smooth_samples: int,
    smooth_sigma: float,
    smooth_seed: int | None,
    smooth_batch: int | None,
    **options,
) -> Tensor:
    """``method`` averaged over ``smooth_samples`` noisy inputs.

    Sample ``s`` adds ``sigma * torch.randn(inputs.shape)``, the ``s``-th draw of a CPU generator
    seeded with ``smooth_seed`` (``None``: a fresh seed). ``smooth_batch`` noisy copies of the batch
    go through ``method`` in one call (default: about ``default_rows`` rows); it changes the result
    only within float tolerance. ``smooth_seed`` is a random seed like every ``seed``; it carries the
    ``smooth_`` prefix of SmoothGrad's options, so a wrapped method's own ``seed`` keeps its name.
    """
    inputs = inputs.detach()
    n = len(inputs)
    per = max(1, default_rows(inputs) // max(n, 1)) if smooth_batch is None else smooth_batch
    generator = torch.Generator()
    if smooth_seed is None:
        generator.seed()
    else:
        generator.manual_seed(smooth_seed)
    dims = tuple(range(1, inputs.dim()))
    sigma = smooth_sigma * (inputs.amax(dim=dims, keepdim=True) - inputs.amin(dim=dims, keepdim=True))
    every = torch.arange(n).repeat(min(per, smooth_samples))
    targets = row_targets(model, inputs, target, every)
    total = None
    for start in range(0, smooth_samples, per):
        count = min(per, smooth_samples - start)
        noise = torch.stack([torch.randn(inputs.shape, generator=generator) for _ in range(count)]).to(inputs)
        noisy = (inputs + sigma * noise).flatten(0, 1)  # sample-major: row s * N + n
        maps = method(model, noisy, take(targets, torch.arange(count * n)), **options)
        for part in maps.reshape(count, n, *maps.shape[1:]):  # samples summed in order, whatever the chunking
            total = part.clone() if total is None else total + part
    return total / smooth_samples
