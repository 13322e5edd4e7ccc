"""The image priors of ``zfviz.reconstruction.regularizers``: values and gradients against hand
formulas and brute force, each transform's defining property, seeds that repeat."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from zfviz.errors import UserError
from zfviz.reconstruction.regularizers import (
    BlurEvery,
    ClipContribution,
    ClipNorm,
    Decay,
    Jitter,
    RandomRotate,
    RandomScale,
    affine,
    blur,
    lp_norm,
    mean_image_init,
    total_variation,
)


def tv_brute(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Mahendran & Vedaldi's eq. 5 by loops, the missing neighbour of the last row/column counted as equal."""
    n, c, h, w = x.shape
    out = []
    for k in range(n):
        total = x.new_zeros(())
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    dx = x[k, ch, i, j + 1] - x[k, ch, i, j] if j + 1 < w else x.new_zeros(())
                    dy = x[k, ch, i + 1, j] - x[k, ch, i, j] if i + 1 < h else x.new_zeros(())
                    total = total + (dx * dx + dy * dy) ** (beta / 2)
        out.append(total)
    return torch.stack(out)


@pytest.mark.parametrize("beta", [1.0, 1.5, 2.0, 3.0])
def test_total_variation_and_its_gradient_equal_brute_force(beta):
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    ours = total_variation(x, beta)
    brute = tv_brute(x, beta)
    assert torch.allclose(ours, brute, rtol=1e-12)  # same sums in another order: rounding only
    g_ours = torch.autograd.grad(ours.sum(), x)[0]
    g_brute = torch.autograd.grad(brute.sum(), x)[0]
    assert torch.allclose(g_ours, g_brute, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: total_variation(t, beta), (x.detach().requires_grad_(),))


def test_tv2_gradient_is_the_hand_formula():
    """beta = 2: d/dx_ij = 2 (x_ij - x_i,j+1) + 2 (x_ij - x_i,j-1) + the same vertically, where the neighbour exists."""
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(total_variation(x).sum(), x)[0][0, 0]
    v = x.detach()[0, 0]
    want = torch.zeros_like(v)
    want[:, :-1] += 2 * (v[:, :-1] - v[:, 1:])
    want[:, 1:] += 2 * (v[:, 1:] - v[:, :-1])
    want[:-1, :] += 2 * (v[:-1, :] - v[1:, :])
    want[1:, :] += 2 * (v[1:, :] - v[:-1, :])
    assert torch.allclose(grad, want, rtol=1e-12, atol=1e-12)


def test_flat_images_cost_nothing_and_have_finite_gradients():
    x = torch.full((1, 3, 6, 6), 0.7, dtype=torch.float64, requires_grad=True)
    for beta in (1.0, 2.0):
        value = total_variation(x, beta)
        (grad,) = torch.autograd.grad(value.sum(), x)
        assert value.item() == 0 and torch.equal(grad, torch.zeros_like(grad))  # beta=1: 0, not NaN
    step = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    step[..., 2] = 1.0  # one vertical edge: 3 pixels with |dx| = 1
    assert total_variation(step, 1.0).item() == 3 and total_variation(step, 2.0).item() == 3


def test_lp_norm_and_its_gradient():
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    for p in (1.0, 2.0, 6.0):
        value = lp_norm(x, p)
        assert torch.allclose(value, (x.detach().abs() ** p).sum(dim=(1, 2, 3)), rtol=1e-12)
        (grad,) = torch.autograd.grad(value.sum(), x)
        assert torch.allclose(grad, p * x.detach().abs() ** (p - 1) * x.detach().sign(), rtol=1e-12)
    with pytest.raises(UserError):
        lp_norm(x, 0)


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + k) for k in range(n)]


def test_jitter_rolls_each_image_within_its_range_and_repeats():
    x = torch.randn(4, 2, 7, 7)
    out = Jitter(2)(x, gens(4))
    for k in range(4):
        rolls = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(out[k], torch.roll(x[k], (dy, dx), dims=(-2, -1)))]  # fmt: skip
        assert len(rolls) == 1
    assert torch.equal(out, Jitter(2)(x, gens(4)))
    # image k's shift depends on its generator only, not on the other images of the batch
    assert torch.equal(Jitter(2)(x[2:3], gens(4)[2:3]), out[2:3])
    assert torch.equal(Jitter(0)(x, gens(4)), x)


def test_affine_turns_and_keeps():
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    one, zero = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    assert torch.allclose(affine(x, one, zero), x, atol=1e-12)  # identity up to bilinear rounding
    turned = affine(x, one, torch.full((2,), math.pi / 2, dtype=torch.float64))
    # a quarter turn maps pixel centres onto pixel centres: exactly a rot90
    assert min((turned - torch.rot90(x, k, dims=(-2, -1))).abs().max() for k in (1, 3)) < 1e-12
    zoom = affine(x, torch.full((2,), 2.0, dtype=torch.float64), zero)
    assert torch.allclose(zoom[..., 2:4, 2:4].mean(), x[..., 2:4, 2:4].mean(), atol=0.5)


def test_random_scale_and_rotation_repeat_and_stay_in_range():
    x = torch.rand(3, 1, 9, 9)
    for transform in (RandomScale(0.8, 1.2), RandomRotate(10)):
        a, b = transform(x, gens(3)), transform(x, gens(3))
        assert torch.equal(a, b) and not torch.equal(a, transform(x, gens(3, seed=5)))
        assert a.min() >= x.min() - 1e-6 and a.max() <= x.max() + 1e-6  # bilinear, border repeated: no new values
    assert torch.allclose(RandomRotate(0)(x, gens(3)), x, atol=1e-6)
    assert torch.allclose(RandomScale(1, 1)(x, gens(3)), x, atol=1e-6)


def test_decay_and_blur_every_k_steps():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.equal(Decay(0.1)(x, 0), x * 0.9)
    op = BlurEvery(1.0, every=3)
    assert torch.equal(op(x, 0), x) and torch.equal(op(x, 1), x) and not torch.equal(op(x, 2), x)
    oracle = np.stack(
        [[ndimage.gaussian_filter(c, 1.0, mode="nearest", truncate=3.0) for c in img] for img in x.numpy()]
    )
    assert np.allclose(op(x, 2).numpy(), oracle, atol=1e-12)  # scipy: same kernel radius, same border rule
    assert torch.allclose(blur(torch.full_like(x, 3.0), 2.0), torch.full_like(x, 3.0), atol=1e-12)


def test_clipping_zeroes_the_weakest_pixels():
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4).expand(1, 2, 4, 4).clone()
    clipped = ClipNorm(50)(x, 0)
    assert torch.equal(clipped[0, 0] == 0, x[0, 0] <= 8)  # the 8 pixels of smallest norm
    assert torch.equal(clipped[clipped != 0], x[clipped != 0])
    grad = torch.ones_like(x)
    grad[..., 0, :] = 100.0  # row 0 has the smallest pixels but the largest contribution |x * grad|
    kept = ClipContribution(25)(x, 0, grad)
    contribution = (x * grad).sum(1)[0]
    assert torch.equal(kept[0, 0] == 0, contribution < torch.quantile(contribution.flatten(), 0.25))
    assert (kept[0, :, 0] != 0).all() and (kept[0, :, 1] == 0).all()
    with pytest.raises(ValueError):
        ClipContribution(25)(x, 0)


def test_mean_image_init():
    images = torch.randn(5, 3, 4, 4)
    start = mean_image_init(images, 3)
    assert start.shape == (3, 3, 4, 4) and torch.equal(start[1], images.mean(0))
    noisy = mean_image_init(images, 3, noise=0.1, generators=gens(3))
    assert torch.equal(noisy, mean_image_init(images, 3, noise=0.1, generators=gens(3)))
    assert 0.05 < (noisy - start).std() < 0.2
