"""Integrated gradients (Sundararajan et al. 2017, "Axiomatic attribution for deep networks").

``(x - x') * integral_0^1 dF(x' + a (x - x'))/dx da``: the gradient integrated along the straight
path from a baseline ``x'`` to the input, so the attributions add up to ``F(x) - F(x')``
(completeness). The integral is a quadrature: Gauss-Legendre nodes (``integration="gausslegendre"``,
the default, as Captum's) or the trapezoid rule on evenly spaced points (``"riemann_trapezoid"``).
The ``steps * N`` scaled inputs go through the net ``internal_batch_size`` rows at a time; the chunk
size changes a map only by float rounding. The gradient starts from 1 at the target; a unit
target's strongest cell (``position=None``) is found once on the clean inputs and kept for every
scaled copy, so all of them explain the same unit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from zfviz.attribution.baselines import BASELINES, make_baseline
from zfviz.attribution.mechanism import backward
from zfviz.attribution.options import TENSOR, Option, choice, either, number, optional, whole
from zfviz.attribution.registry import register_method
from zfviz.attribution.rows import default_rows, row_targets, take
from zfviz.errors import UserError

QUADRATURES = ("gausslegendre", "riemann_trapezoid")
# Steps past this buy nothing a map can show and cost what no run should: each step is a forward and a
# backward pass of every image (Captum's default is 50), Gauss-Legendre's n nodes already integrate
# polynomials of degree 2n - 1 exactly, and numpy finds the nodes as the eigenvalues of an n x n matrix
# (O(n^2) memory, O(n^3) time: a hundred thousand steps asked for tens of GiB).
MAX_STEPS = 1000


def quadrature(steps: int, integration: str) -> tuple[Tensor, Tensor]:
    """Nodes ``a_s`` in [0, 1] and weights ``w_s`` with ``sum_s w_s f(a_s) ~ integral_0^1 f(a) da``
    (``steps`` and ``integration`` as declared; the trapezoid needs both ends)."""
    if integration == "riemann_trapezoid" and steps < 2:
        raise UserError(f"steps={steps} is not valid for riemann_trapezoid: give a whole number >= 2")
    if integration == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]: map to [0, 1]
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
    weights[[0, -1]] /= 2
    return torch.linspace(0, 1, steps, dtype=torch.float64), weights


@register_method(
    "integrated_gradients",
    gradient=True,
    options=(
        Option("steps", whole(1, MAX_STEPS), 50, "quadrature nodes on the path (riemann_trapezoid: 2 or more)"),
        Option("baseline", either(number(), choice(*BASELINES), TENSOR), 0.0, "the path's start x'"),
        Option("integration", choice(*QUADRATURES), "gausslegendre", "the quadrature rule"),
        Option(
            "internal_batch_size", optional(whole(1)), None, "scaled images per forward/backward (null: ~2^22 values)"
        ),
    ),
)
def integrated_gradients(
    model: nn.Module,
    inputs: Tensor,
    target,
    *,
    steps: int,
    baseline: Tensor | float | str,
    integration: str,
    internal_batch_size: int | None,
) -> Tensor:
    """Integrated gradients of ``target`` (Sundararajan et al. 2017), shaped like ``inputs``.

    Row ``s * N + n`` of the ``steps * N`` scaled inputs is image ``n`` at node ``a_s``; rows go
    through one forward/backward ``internal_batch_size`` at a time (default: ``default_rows``).
    """
    alphas, weights = quadrature(steps, integration)
    inputs = inputs.detach()
    base = make_baseline(inputs, baseline)
    delta = inputs - base
    n, rows = len(inputs), default_rows(inputs) if internal_batch_size is None else internal_batch_size
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
        grads = backward(model, scaled, take(targets, index.cpu())).inputs
        # One weighted sum per chunk (Captum's way); chunking changes a map only by float rounding.
        total.index_add_(0, index % n, grads * weights[index // n].view(-1, *single))
    return delta * total
