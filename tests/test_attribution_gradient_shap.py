"""Gradient SHAP (Lundberg & Lee 2017): Captum's ``GradientShap`` as the oracle, run on the very draws ours
made, an exact value on a linear model, and the properties (chunking, seed, one-line mistakes).

The oracle: Captum draws its baselines with ``np.random.choice``, its noise with ``torch.normal`` and
its path points with ``np.random.uniform`` from the global generators; ours from one seeded
``torch.Generator``. So the test hands Captum our draws (those three calls patched for the duration
of its call, each checked to be made once with the arguments Captum's recipe implies) and then
compares the maps: the same math on the same numbers, through another implementation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import GradientShap
from torch import nn

from zfviz.attribution import attribute
from zfviz.attribution.methods.gradient_shap import draws
from zfviz.errors import UserError
from zfviz.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = {"atol": 1e-6, "rtol": 1e-4}  # other kernels, another summation order: float32 noise only


def small_zfnet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=64, init="kaiming").eval()
    with torch.no_grad():  # non-zero biases: a zero-bias ReLU net is homogeneous, which hides errors
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.uniform_(-0.1, 0.1)
    return model


def small_resnet() -> nn.Module:  # batch norm and in-place ReLUs
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def captum_with_our_draws(monkeypatch, model, inputs, target, baselines, samples, stdevs, seed) -> torch.Tensor:
    """Captum's Gradient SHAP, its three random calls answered with ``draws(...)``'s numbers."""
    n, shape = len(inputs), tuple(inputs.shape[1:])
    index, noise, alpha = draws(n, samples, shape, len(baselines), seed)
    calls = []

    def choice(count, size):
        assert (count, size) == (len(baselines), n * samples)
        calls.append("choice")
        return index.numpy()

    def normal(mean, std):
        assert mean == 0 and std.shape == (n * samples, *shape) and bool((std == stdevs).all())
        calls.append("normal")
        return stdevs * noise

    def uniform(low, high, size):
        assert (low, high, size) == (0.0, 1.0, n * samples)
        calls.append("uniform")
        return alpha.numpy()

    with monkeypatch.context() as patch:
        patch.setattr(np.random, "choice", choice)
        patch.setattr(np.random, "uniform", uniform)
        patch.setattr(torch, "normal", normal)
        got = GradientShap(model).attribute(inputs, baselines, n_samples=samples, stdevs=stdevs, target=target)
    assert sorted(calls) == ["choice", "normal", "uniform"]  # every random number came from our draws
    return got


@pytest.mark.parametrize(
    "net, size, chunk",
    [(small_zfnet, 64, None), (small_zfnet, 64, 3), (small_resnet, 32, None)],
)
def test_equals_captum_gradient_shap_on_the_same_draws(monkeypatch, net, size, chunk):
    model = net()
    inputs, target = torch.randn(3, 3, size, size), torch.tensor([1, 4, 7])
    baselines = torch.randn(5, 3, size, size) * 0.5
    ours = attribute(
        model, inputs, target, "gradient_shap",
        baselines=baselines, samples=4, stdevs=0.2, seed=11, internal_batch_size=chunk,
    )  # fmt: skip
    theirs = captum_with_our_draws(monkeypatch, model, inputs, target, baselines, samples=4, stdevs=0.2, seed=11)
    assert ours.shape == inputs.shape and ours.abs().max() > 0
    torch.testing.assert_close(ours, theirs, **TOL)


def test_a_linear_model_from_one_baseline_is_input_minus_baseline_times_the_weights():
    """F(x) = w . x has gradient w everywhere, so without noise every draw gives (x - b) * w."""
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    x, b = torch.randn(2, 3, 4, 4), torch.randn(1, 3, 4, 4)
    got = attribute(linear, x, [0, 1], "gradient_shap", baselines=b, samples=7)
    want = (x - b) * linear[1].weight[[0, 1]].view(2, 3, 4, 4)
    torch.testing.assert_close(got, want.detach(), atol=1e-6, rtol=1e-5)
    constant = attribute(linear, x, [0, 1], "gradient_shap", baselines=0.5, samples=3)  # one constant baseline
    torch.testing.assert_close(constant, ((x - 0.5) * linear[1].weight[[0, 1]].view(2, 3, 4, 4)).detach(), **TOL)


def test_seed_fixes_the_draws_and_the_chunk_size_does_not_change_the_map():
    model, x = small_zfnet(), torch.randn(2, 3, 64, 64)
    options = {"baselines": torch.randn(4, 3, 64, 64), "samples": 5, "stdevs": 0.1}
    one = attribute(model, x, [2, 3], "gradient_shap", **options, seed=3)
    torch.testing.assert_close(
        attribute(model, x, [2, 3], "gradient_shap", **options, seed=3, internal_batch_size=2), one
    )
    assert not torch.allclose(attribute(model, x, [2, 3], "gradient_shap", **options, seed=4), one)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"samples": 0}, r"samples=0 is not valid for gradient_shap: give a whole number >= 1"),
        ({"stdevs": -0.1}, r"stdevs=-0.1 is not valid for gradient_shap: give a finite number >= 0"),
        ({"baselines": "zero"}, r"baselines=zero is not valid for gradient_shap"),
        ({"baselines": torch.zeros(2, 3, 8, 8)}, r"baselines of shape \(2, 3, 8, 8\) are not K inputs shaped"),
        ({"steps": 4}, r"steps is not an option of gradient_shap; its options: samples, stdevs, baselines, seed"),
    ],
)
def test_mistakes_are_one_line(options, message):
    with pytest.raises(UserError, match=message) as err:
        attribute(small_zfnet(), torch.randn(1, 3, 64, 64), 0, "gradient_shap", **options)
    assert "\n" not in str(err.value)
