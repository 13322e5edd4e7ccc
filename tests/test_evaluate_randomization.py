"""Cascading randomization, Spearman and SSIM (issue 16): scipy's spearmanr and a plain numpy SSIM loop as
oracles, a model-independent map that must fail the sanity check, gradient maps that must not.

``spearman``/``ssim`` compute in float64 and return float32, so they are compared with the oracles at
float32's precision (atol 1e-6).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.testing import assert_close

from zfviz.attribution import attribute
from zfviz.errors import UserError
from zfviz.evaluate import cascading_randomization, randomizable, randomization_scores, spearman, ssim

F32 = dict(atol=1e-6, rtol=1e-6)

pytestmark = pytest.mark.usefixtures("one_thread")


def net() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 4, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 4, 3, padding=1),
            bn2=nn.BatchNorm2d(4),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            drop=nn.Dropout(0.5),
            fc8=nn.Linear(4 * 8 * 8, 3),
        )
    )


def image_itself(model, images, target):
    """A 'method' that ignores the model: the first channel of the image."""
    return images[:, 0]


def saliency(model, images, target):
    return attribute(model, images, target, "saliency")


def test_spearman_equals_scipy_with_ties():
    a = torch.randint(0, 4, (5, 3, 4)).float()  # 12 values from 4 levels: ties everywhere
    b = torch.randint(0, 3, (5, 3, 4)).float() + 0.5 * a
    want = [stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic for i in range(5)]
    assert_close(spearman(a, b), torch.tensor(want, dtype=torch.float32), **F32)
    x = torch.randn(2, 30)
    assert_close(spearman(x, x**3), torch.ones(2), **F32)  # a monotone map of itself
    assert_close(spearman(x, -x), -torch.ones(2), **F32)
    assert torch.isnan(spearman(torch.ones(1, 5), torch.randn(1, 5))).all()  # scipy: nan for a constant input


def ssim_reference(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5, L: float = 1.0) -> float:
    """Wang et al. 2004 written out: Gaussian-weighted statistics of every window wholly inside, then the mean."""
    r = (window - 1) // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    g = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    g /= g.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    values = []
    for i in range(a.shape[0] - window + 1):
        for j in range(a.shape[1] - window + 1):
            pa, pb = a[i : i + window, j : j + window], b[i : i + window, j : j + window]
            ma, mb = (g * pa).sum(), (g * pb).sum()
            va, vb = (g * (pa - ma) ** 2).sum(), (g * (pb - mb) ** 2).sum()
            cov = (g * (pa - ma) * (pb - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def unit(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())


def test_ssim_equals_a_plain_loop():
    a = torch.rand(3, 14, 15)
    b = 0.6 * a + 0.4 * torch.rand(3, 14, 15)
    b[2] = torch.roll(a[2], shifts=2, dims=1)  # a shifted copy
    want = [ssim_reference(unit(a[i].double().numpy()), unit(b[i].double().numpy())) for i in range(3)]
    assert_close(ssim(a, b), torch.tensor(want, dtype=torch.float32), **F32)
    raw = [ssim_reference(a[i].double().numpy(), b[i].double().numpy(), L=2.0) for i in range(3)]
    assert_close(ssim(a, b, data_range=2.0), torch.tensor(raw, dtype=torch.float32), **F32)
    small_a, small_b = torch.rand(1, 6, 8), torch.rand(1, 6, 8)  # smaller than 11: the largest odd window, 5
    want = ssim_reference(unit(small_a[0].double().numpy()), unit(small_b[0].double().numpy()), window=5)
    assert_close(ssim(small_a, small_b), torch.tensor([want], dtype=torch.float32), **F32)


def test_ssim_by_hand():
    a = torch.rand(2, 12, 12)
    assert_close(ssim(a, a), torch.ones(2), **F32)
    assert_close(ssim(a, 5 * a - 2), torch.ones(2), **F32)  # scaled to [0, 1] each: the same map
    assert_close(ssim(torch.full((1, 12, 12), 3.0), torch.zeros(1, 12, 12)), torch.ones(1), **F32)  # both flat
    assert (ssim(a, 1 - a) < 0).all()  # inverted structure: negative covariance


def test_a_map_that_ignores_the_model_fails_the_sanity_check():
    model, images = net().eval(), torch.randn(3, 1, 8, 8)
    steps = cascading_randomization(model, images, 0, image_itself)
    assert [name for name, _ in steps] == ["none", "fc8", "bn2", "conv2", "conv1"]
    for _, maps in steps[1:]:
        scores = randomization_scores(steps[0][1], maps)
        assert_close(scores["spearman"], torch.ones(3), **F32)
        assert_close(scores["ssim"], torch.ones(3), **F32)


def test_gradient_maps_change():
    model, images = net().eval(), torch.randn(4, 1, 8, 8)
    steps = cascading_randomization(model, images, 1, saliency)
    assert_close(steps[0][1], saliency(model, images, 1).sum(dim=1))  # "none" is the model's own map
    for name, maps in steps[1:]:
        scores = randomization_scores(steps[0][1], maps)
        assert (scores["spearman"] < 0.9).all(), name
    assert randomization_scores(steps[0][1], steps[-1][1])["spearman"].abs().mean() < 0.5


def test_the_cascade_is_cumulative_seeded_and_leaves_the_model_alone():
    model = net().train()
    model.conv1.weight.requires_grad_(False)
    with torch.no_grad():
        model.bn2.weight.uniform_(0.5, 2.0)  # as if trained: its reset (weight 1) is then a change
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def record(m, images, target):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        assert not m.training  # explained in eval mode
        return images[:, 0]

    images = torch.randn(2, 1, 8, 8)
    rng = torch.get_rng_state()
    cascading_randomization(model, images, 0, record, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the global random state is untouched
    order = ["fc8", "bn2", "conv2", "conv1"]
    for step, state in enumerate(seen):
        for i, layer in enumerate(order):
            same = torch.equal(state[f"{layer}.weight"], before[f"{layer}.weight"])
            assert same == (i >= step), (step, layer)  # the top `step` layers are random, the rest trained
    again = []
    cascading_randomization(model, images, 0, lambda m, x, t: again.append(m.state_dict()) or x[:, 0], seed=3)
    assert all(torch.equal(again[-1][k], seen[-1][k]) for k in before)  # the same seed, the same weights
    assert model.training and not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_model_is_unchanged_when_explain_raises():
    model = net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def failing(m, images, target):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("explain broke")
        return images[:, 0]

    with pytest.raises(RuntimeError, match="explain broke"):
        cascading_randomization(model, torch.randn(2, 1, 8, 8), 0, failing)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_chosen_layers_and_mistakes():
    model, images = net(), torch.randn(2, 1, 8, 8)
    assert randomizable(model) == ["fc8", "bn2", "conv2", "conv1"]
    steps = cascading_randomization(model, images, 0, image_itself, layers=["fc8", "conv1"])
    assert [name for name, _ in steps] == ["none", "fc8", "conv1"]
    for layers, words in ((["relu1"], "cannot randomize relu1"), ("fc8", "a list of layer names"),
                          (["fc8", "fc8"], "twice")):  # fmt: skip
        with pytest.raises(UserError, match=words):
            cascading_randomization(model, images, 0, image_itself, layers=layers)
    with pytest.raises(UserError, match="explain's maps must be N x H x W"):
        cascading_randomization(model, images, 0, lambda m, x, t: x[:, 0, :4])
    with pytest.raises(UserError, match="one shape"):
        spearman(torch.zeros(2, 3, 3), torch.zeros(2, 3, 4))
    with pytest.raises(UserError, match="N x H x W"):
        ssim(torch.zeros(2, 9), torch.zeros(2, 9))
