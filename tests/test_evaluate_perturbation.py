"""Deletion, insertion and pixel flipping (issue 16): a linear model whose true contributions are known,
a brute-force per-step loop, scipy's Gaussian filter, hand values.

On a two-class linear model whose second logit is 0, the target's probability is sigmoid(w . x): deleting
(or inserting) pixels in the order of their exact contributions ``w x`` (gradient x input) gives the
lowest (highest) probability at every step of any order, so its AUC beats any other map's.

Batched forwards against one-image forwards: on CPU float32 a convolution over a batch may round
differently in the last bits than over one image, so probabilities are compared at atol 1e-6.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn
from torch.testing import assert_close

from zfviz.attribution import attribute
from zfviz.attribution.baselines import blur, make_baseline
from zfviz.errors import UserError
from zfviz.evaluate import curves, deletion, flipping_gap, insertion, pixel_flipping
from zfviz.evaluate.perturbation import auc, counts, ranks

PROB_TOL = dict(atol=1e-6, rtol=1e-5)

pytestmark = pytest.mark.usefixtures("one_thread")


def linear(c: int = 3, h: int = 6, w: int = 6) -> nn.Sequential:
    """Logits (w . x, 0): class 0's probability is sigmoid(w . x); class 1's weights are zero."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 2))
    with torch.no_grad():
        net[1].weight[1] = 0
        net[1].bias.zero_()
        net[1].weight[0] *= 3  # a wide probability range, so orders differ visibly
    return net


def small_convnet() -> nn.Sequential:
    layers = OrderedDict(
        conv1=nn.Conv2d(2, 4, 3, padding=1),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(4, 6, 3, padding=1),
        relu2=nn.ReLU(),
        flatten=nn.Flatten(),
        drop=nn.Dropout(0.5),
        fc8=nn.Linear(6 * 5 * 5, 5),
    )
    return nn.Sequential(layers)


def test_exact_contributions_beat_random_and_reversed_maps():
    net = linear()
    images = torch.randn(4, 3, 6, 6)
    for baseline in ("zero", "blur"):
        fill = make_baseline(images, baseline)
        # input x gradient at the difference from the baseline: the exact contribution of each pixel
        exact = attribute(net, images - fill, 0, "input_x_gradient").sum(dim=1)
        kw = dict(steps=36, baseline=baseline)
        best_del, best_ins = deletion(net, images, 0, exact, **kw), insertion(net, images, 0, exact, **kw)
        others = [-exact] + [torch.randn(4, 6, 6) for _ in range(5)]
        for other in others:
            assert (best_del < deletion(net, images, 0, other, **kw)).all()
            assert (best_ins > insertion(net, images, 0, other, **kw)).all()


def test_the_exact_map_is_lowest_at_every_step_of_deletion():
    """The greedy order is optimal pointwise, not just in area: the property the AUCs rest on."""
    net = linear(1, 4, 4)
    images = torch.randn(3, 1, 4, 4)
    exact = (net[1].weight[0].view(1, 4, 4) * images[:, 0]).detach()
    best = curves(net, images, 0, exact, steps=16, baseline="zero")
    for _ in range(5):
        other = curves(net, images, 0, torch.randn(3, 4, 4), steps=16, baseline="zero")
        assert (best <= other + 1e-7).all()


def brute_force(model, images, target, maps, *, steps, baseline, mode):
    """One forward per step per image, pixels swapped one by one in a Python-sorted order."""
    model.eval()
    fill = make_baseline(images, baseline)
    h, w = images.shape[2:]
    rows = []
    for i in range(len(images)):
        flat = maps[i].flatten().tolist()
        order = sorted(range(h * w), key=lambda p: (-flat[p], p))  # ties: earlier pixel first
        row = []
        for k in range(steps + 1):
            start, end = (images[i], fill[i]) if mode == "deletion" else (fill[i], images[i])
            x = start.clone()
            for p in order[: k * h * w // steps]:
                x[:, p // w, p % w] = end[:, p // w, p % w]
            with torch.no_grad():
                row.append(model(x[None]).softmax(dim=1)[0, target[i]].item())
        rows.append(row)
    return torch.tensor(rows)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_batched_curves_equal_a_per_step_loop(mode):
    net = small_convnet()
    images = torch.randn(2, 2, 10, 10)
    target = torch.tensor([3, 1])
    maps = torch.randint(0, 4, (2, 10, 10)).float()  # many ties
    got = curves(net, images, target, maps, mode=mode, steps=7, baseline="mean")
    want = brute_force(net, images, target, maps, steps=7, baseline="mean", mode=mode)
    assert_close(got, want, **PROB_TOL)


def test_batching_never_changes_a_curve():
    net = small_convnet().train()
    images = torch.randn(3, 2, 10, 10)
    target = torch.tensor([0, 4, 2])
    maps = torch.randn(3, 2, 10, 10)  # shaped like the images: summed over channels
    whole = curves(net, images, target, maps, steps=9, batch_size=256)
    assert_close(curves(net, images, target, maps, steps=9, batch_size=1), whole, **PROB_TOL)
    assert_close(curves(net, images, target, maps, steps=9, batch_size=7), whole, **PROB_TOL)
    one_by_one = torch.cat([curves(net, images[i : i + 1], int(target[i]), maps[i : i + 1], steps=9) for i in range(3)])
    assert_close(one_by_one, whole, **PROB_TOL)
    assert net.training and net.drop.training  # evaluated in eval mode (dropout off), flags given back


def test_curve_ends_are_the_image_and_the_baseline():
    net = small_convnet().eval()
    images, maps = torch.randn(2, 2, 10, 10), torch.randn(2, 10, 10)
    base = torch.randn(2, 10, 10)  # a baseline tensor broadcast over the images (C x H x W)
    probs = lambda x: net(x).softmax(dim=1)[:, 2].detach()  # noqa: E731
    gone = curves(net, images, 2, maps, mode="deletion", steps=4, baseline=base)
    added = curves(net, images, 2, maps, mode="insertion", steps=4, baseline=base)
    assert_close(gone[:, 0], probs(images), **PROB_TOL)
    assert_close(gone[:, -1], probs(base.expand_as(images)), **PROB_TOL)
    assert_close(added[:, 0], gone[:, -1], **PROB_TOL)
    assert_close(added[:, -1], gone[:, 0], **PROB_TOL)


def test_auc_counts_and_ranks_by_hand():
    assert_close(auc(torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])), torch.tensor([0.5, 1.0, 0.5]))
    assert counts(10, 4).tolist() == [0, 2, 5, 7, 10]
    tied = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert ranks(tied, "morf").tolist() == [[0, 2, 1, 3]]  # equal values: the earlier pixel first
    assert ranks(tied, "lerf").tolist() == [[2, 0, 3, 1]]


def test_baselines():
    images = torch.randn(2, 3, 9, 12)
    assert_close(make_baseline(images, "mean")[:, :, 4, 7], images.mean(dim=(2, 3)))
    assert (make_baseline(images, "zero") == 0).all()
    # scipy: sigma 5, radius int(1.0 * 5 + 0.5) = 5 (an 11-tap kernel), 'nearest' = border replication
    want = ndimage.gaussian_filter(images.double().numpy(), sigma=(0, 0, 5, 5), truncate=1.0, mode="nearest")
    assert_close(blur(images), torch.from_numpy(want).float(), atol=1e-5, rtol=1e-5)  # float32 sums of 121 terms


@pytest.mark.parametrize("name", ["zero", "mean", "blur", 0.25])
def test_one_baseline_vocabulary_for_scores_and_integrated_gradients(name):
    """Every baseline a user can name means the same image in the deletion score and in integrated gradients."""
    net, images = linear(), torch.randn(2, 3, 6, 6)
    given = make_baseline(images, name)
    assert given.shape == images.shape
    if not isinstance(name, str):
        assert (given == name).all()
    maps = torch.randn(2, 6, 6)
    assert torch.equal(
        curves(net, images, 1, maps, steps=4, baseline=name), curves(net, images, 1, maps, steps=4, baseline=given)
    )
    ig = attribute(net, images, 1, "integrated_gradients", steps=4, baseline=name)
    assert torch.equal(ig, attribute(net, images, 1, "integrated_gradients", steps=4, baseline=given))


def test_pixel_flipping_orders_and_gap():
    net = linear()
    images = torch.randn(3, 3, 6, 6)
    exact = (net[1].weight[0].view(3, 6, 6) * (images - make_baseline(images, "mean"))).sum(dim=1).detach()
    kw = dict(steps=12)
    lerf = pixel_flipping(net, images, 0, exact, order="lerf", **kw)
    assert_close(lerf, deletion(net, images, 0, -exact, baseline="mean", **kw))  # LeRF = MoRF of the negated map
    assert_close(pixel_flipping(net, images, 0, exact, **kw), deletion(net, images, 0, exact, baseline="mean", **kw))
    gap = flipping_gap(net, images, 0, exact, **kw)
    assert_close(gap, lerf - pixel_flipping(net, images, 0, exact, order="morf", **kw))
    assert (gap > 0).all()
    for _ in range(3):
        assert (gap > flipping_gap(net, images, 0, torch.randn(3, 6, 6), **kw)).all()


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(maps=torch.zeros(2, 5, 5)), "maps must be N x H x W = 2 x 6 x 6"),
        (dict(maps=torch.zeros(2, 2, 6, 6)), "maps must be N x H x W"),
        (dict(maps=torch.full((2, 6, 6), float("nan"))), "NaN"),
        (dict(baseline="grey"), "unknown baseline 'grey'"),
        (dict(baseline=torch.zeros(4, 6, 6)), "baseline of shape (4, 6, 6) does not broadcast to the inputs'"),
        (dict(steps=0), "steps must be an integer of at least 1"),
        (dict(steps=2.5), "steps must be an integer"),
        (dict(batch_size=0), "batch_size must be"),
        (dict(target=2), "target 2 is not a class of this net"),
        (dict(target=torch.tensor([0, 1, 1])), "one integer per image (2)"),
        (dict(images=torch.zeros(3, 6, 6)), "images must be an N x C x H x W tensor"),
        (dict(mode="erase"), "unknown mode 'erase'"),
    ],
)
def test_mistakes_are_one_line_user_errors(change, words):
    args = dict(images=torch.randn(2, 3, 6, 6), target=0, maps=torch.randn(2, 6, 6), steps=4) | change
    with pytest.raises(UserError) as err:
        curves(linear(), **args)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_unknown_flipping_order():
    with pytest.raises(UserError, match="unknown order 'top'"):
        pixel_flipping(linear(), torch.randn(1, 3, 6, 6), 0, torch.randn(1, 6, 6), order="top")


def test_maps_are_ordered_not_scaled():
    """A monotone transform of a map leaves every curve as it is (only the order matters)."""
    net = small_convnet().eval()
    images, maps = torch.randn(2, 2, 10, 10), torch.randn(2, 10, 10)
    a = curves(net, images, 1, maps, steps=5)
    assert_close(curves(net, images, 1, torch.exp(3 * maps) + 7, steps=5), a, atol=0, rtol=0)
    assert np.isfinite(a.numpy()).all()
