"""VarGrad (Adebayo et al. 2018, "Local explanation methods for deep neural networks lack sensitivity to
parameter values"; also "Sanity checks for saliency maps"): the variance of the gradient under input noise.

SmoothGrad's noisy copies ``x + N(0, sigma^2)``, ``sigma = sigma * (max(x) - min(x))`` per image (the
convention of ``smoothgrad.py``), but the map is the variance of the target's gradient over the
``samples`` copies (over ``samples``, not ``samples - 1``: Captum's ``NoiseTunnel(nt_type="vargrad")``),
not its mean. Sample ``s`` adds ``sigma * torch.randn(inputs.shape)``, the ``s``-th draw of a CPU
``torch.Generator`` seeded with ``seed`` (nothing global is touched). Row ``s * N + n`` is image ``n``'s
copy ``s``; rows go through the net ``internal_batch_size`` at a time. Each chunk's mean and sum of
squared deviations are merged into the running ones (Chan et al. 1979) in float64, so the variance does
not lose its digits to ``E[g^2] - E[g]^2`` and the chunk size changes it only by float rounding. The
gradient starts from 1 at the target; a unit's strongest cell is fixed on the clean images
(``rows.row_targets``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zfviz.attribution.mechanism import backward
from zfviz.attribution.options import Option, number, optional, whole
from zfviz.attribution.registry import register_method
from zfviz.attribution.rows import default_rows, row_targets, take


class _Noise:
    """Sample ``s``'s noise for the whole batch, ``torch.randn(shape)`` drawn in order, each once."""

    def __init__(self, shape: torch.Size, seed: int) -> None:
        self.shape, self.drawn = shape, {}
        self.generator = torch.Generator().manual_seed(seed)

    def samples(self, first: int, last: int) -> Tensor:
        """The noise of samples ``first .. last - 1`` (asked for in order), stacked; earlier ones are let go."""
        while max(self.drawn, default=-1) + 1 < last:
            self.drawn[max(self.drawn, default=-1) + 1] = torch.randn(self.shape, generator=self.generator)
        self.drawn = {s: noise for s, noise in self.drawn.items() if s >= first}
        return torch.stack([self.drawn[s] for s in range(first, last)])


def _merge(count: Tensor, mean: Tensor, m2: Tensor, grads: Tensor, image: Tensor) -> None:
    """Chan et al.'s pairwise update: ``grads`` (rows of images ``image``) merged into the per-image
    ``count``, ``mean`` and sum of squared deviations ``m2``, in place (all float64)."""
    single = (1,) * (mean.dim() - 1)
    add = torch.bincount(image, minlength=len(mean)).to(mean)
    chunk_mean = torch.zeros_like(mean).index_add_(0, image, grads) / add.clamp(min=1).view(-1, *single)
    chunk_m2 = torch.zeros_like(mean).index_add_(0, image, (grads - chunk_mean[image]) ** 2)
    total = count + add
    delta = chunk_mean - mean
    mean.add_(delta * (add / total.clamp(min=1)).view(-1, *single))
    m2.add_(chunk_m2 + delta**2 * (count * add / total.clamp(min=1)).view(-1, *single))
    count.copy_(total)


@register_method(
    "vargrad",
    options=(
        Option("samples", whole(1), 10, "noisy copies per image"),
        Option("sigma", number(at_least=0), 0.15, "the noise's std as a fraction of each image's range"),
        Option("seed", whole(0), 0, "the noise's seed"),
        Option(
            "internal_batch_size", optional(whole(1)), None, "noisy images per forward/backward (null: ~2^22 values)"
        ),
    ),
)
def vargrad(
    model: nn.Module, inputs: Tensor, target, *, samples: int, sigma: float, seed: int, internal_batch_size: int | None
) -> Tensor:
    """VarGrad (Adebayo et al. 2018): the variance of the target's gradient over noisy copies of the inputs."""
    inputs = inputs.detach()
    n, rows = len(inputs), internal_batch_size or default_rows(inputs)
    dims = tuple(range(1, inputs.dim()))
    std = sigma * (inputs.amax(dim=dims, keepdim=True) - inputs.amin(dim=dims, keepdim=True))
    targets = row_targets(model, inputs, target, torch.arange(n).repeat(samples))
    noise = _Noise(inputs.shape, seed)
    count = torch.zeros(n, dtype=torch.float64, device=inputs.device)
    mean, m2 = (torch.zeros_like(inputs, dtype=torch.float64) for _ in range(2))
    for start in range(0, samples * n, rows):
        stop = min(start + rows, samples * n)
        first, last = start // n, -(-stop // n)  # the samples the chunk's rows belong to
        noisy = (inputs + std * noise.samples(first, last).to(inputs)).flatten(0, 1)
        noisy = noisy[start - first * n : stop - first * n]
        index = torch.arange(start, stop)
        grads = backward(model, noisy, take(targets, index)).inputs
        _merge(count, mean, m2, grads.double(), (index % n).to(inputs.device))
    return (m2 / samples).to(inputs.dtype)
