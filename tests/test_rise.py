"""Randomized occlusion (RISE, Petsiuk et al. 2018) and the paper's occlusion as attribution methods:
hand-made models whose output depends on one known region, the paper's masks built here in numpy from
``MaskSet``'s random draws, a brute-force per-mask loop over them as the oracle, and the properties
(seed, batch size, the model left as it was)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from zfviz.attribution import attribute
from zfviz.attribution.methods.rise import MaskSet, rise
from zfviz.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: a second thread on busy cores only waits

REGION = (slice(4, 8), slice(10, 14))  # rows 4-7, columns 10-13 of a 16 x 16 image


class RegionNet(nn.Module):
    """Two classes; class 0's logit is ``gain`` times (the mean of the input over ``REGION``, after a
    1x1 conv averaging the channels so occlusion has a conv layer to read, minus ``center``);
    class 1's is 0."""

    def __init__(self, gain: float = 4.0, center: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.conv1.weight, 1 / 3)
        self.relu1 = nn.ReLU()
        self.gain, self.center = gain, center

    def forward(self, x):
        s = self.relu1(self.conv1(x))[:, 0, REGION[0], REGION[1]].mean(dim=(1, 2))
        return torch.stack([self.gain * (s - self.center), torch.zeros_like(s)], dim=1)


def tiny_conv_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
        nn.Dropout(0.5),
    )


def test_masks_mean_is_p_and_values_lie_in_0_1():
    """Bilinear upsampling of Bernoulli(p) grids keeps the expected value p; 2000 masks of 49 cells:
    the mean's standard error is about 0.0015, so 0.01 is six of them."""
    masks = MaskSet(2000, 7, 0.3, (64, 64), seed=0).masks()
    assert masks.shape == (2000, 64, 64)
    assert abs(float(masks.mean()) - 0.3) < 0.01
    assert float(masks.min()) >= 0.0 and float(masks.max()) <= 1.0
    assert ((masks > 0) & (masks < 1)).any()  # soft edges: the upsampling is bilinear, not nearest
    # the shifts move the grid by less than one cell (10 px at 64 / 7), and do move it
    shifts = MaskSet(2000, 7, 0.3, (64, 64), seed=0).shifts
    assert int(shifts.min()) == 0 and int(shifts.max()) == 9


def bilinear_index(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling with half-pixel centres (PyTorch's ``align_corners=False``): output pixel ``i`` reads
    ``src = (i + 0.5) * size_in / size_out - 0.5`` (0 below 0) between ``floor(src)`` and the next pixel."""
    src = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(int), size_in - 1)
    return low, np.minimum(low + 1, size_in - 1), src - low


def paper_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RISE's masks (Petsiuk et al. 2018, Sec. 3.2) from their random draws, in numpy float64: each
    Bernoulli grid (cells x cells) upsampled bilinearly to (cells + 1) cells of ceil(H / cells) pixels,
    then the H x W window at the mask's shift (dy, dx), drawn in [0, cell)."""
    grids = grids[:, 0].double().numpy()
    cells = grids.shape[-1]
    (h, w), out = size, []
    cell = (math.ceil(h / cells), math.ceil(w / cells))
    (y0, y1, fy), (x0, x1, fx) = (bilinear_index(cells, (cells + 1) * c) for c in cell)
    for grid, (dy, dx) in zip(grids, shifts.tolist(), strict=True):
        rows = grid[y0] * (1 - fy)[:, None] + grid[y1] * fy[:, None]
        up = rows[:, x0] * (1 - fx) + rows[:, x1] * fx
        out.append(up[dy : dy + h, dx : dx + w])
    return torch.from_numpy(np.stack(out))


@pytest.mark.parametrize(("count", "cells", "size"), [(50, 5, (20, 24)), (30, 7, (64, 64)), (20, 3, (12, 12))])
def test_masks_are_the_papers_upsampled_and_shifted_grids(count, cells, size):
    masks = MaskSet(count, cells, 0.4, size, seed=3)
    assert set(masks.grids.unique().tolist()) <= {0.0, 1.0} and masks.shifts.shape == (count, 2)
    # float32 interpolation weights against float64: within a few float32 rounding steps of values in [0, 1]
    torch.testing.assert_close(masks.masks().double(), paper_masks(masks.grids, masks.shifts, size), rtol=0, atol=1e-6)


def test_masks_do_not_depend_on_chunking():
    masks = MaskSet(50, 5, 0.5, (20, 24), seed=3)
    assert torch.equal(torch.cat([masks.masks(0, 17), masks.masks(17, 50)]), masks.masks())


def test_map_peaks_in_the_region_the_output_depends_on():
    """A steep class 0 (probability from 0 to 1 as half the region is kept) against RISE's Monte
    Carlo noise (about 0.5 x 0.5 / sqrt(600) / 0.5 = 0.02 per pixel)."""
    model = RegionNet(gain=20.0, center=0.5)
    x = torch.ones(2, 3, 16, 16)
    saliency = rise(model, x, 0, masks=600, cells=4, p=0.5, seed=0)
    assert saliency.shape == (2, 16, 16)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[REGION] = True
    for amap in saliency:
        assert inside.flatten()[amap.argmax()]
        assert float(amap[inside].mean()) > float(amap[~inside].mean()) + 0.05
    # class 1's probability falls where class 0's rises: its map is lowest inside the region
    assert inside.flatten()[rise(model, x, 1, masks=600, cells=4, seed=0)[0].argmin()]


def test_equals_a_brute_force_loop_over_masks():
    model = tiny_conv_net().eval()
    x = torch.randn(2, 3, 12, 12)
    target = torch.tensor([3, 1])
    draws = MaskSet(20, 3, 0.4, (12, 12), seed=5)  # only its random draws: the masks are built here
    masks = paper_masks(draws.grids, draws.shifts, (12, 12)).float()
    want = torch.zeros(2, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        for n in range(2):
            for mask in masks:
                prob = model(x[n : n + 1] * mask).softmax(dim=1)[0, target[n]]
                want[n] += float(prob) * mask.double()
    want /= 20 * 0.4
    got = rise(model, x, target, masks=20, cells=3, p=0.4, seed=5, batch_size=8)
    # one forward per masked copy against batched forwards: float32 sums in another order
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)


def test_seed_repeats_and_batch_size_does_not_change_the_map():
    model = tiny_conv_net().eval()
    x = torch.randn(2, 3, 12, 12)
    a = rise(model, x, 2, masks=40, cells=3, seed=7, batch_size=64)
    assert torch.equal(a, rise(model, x, 2, masks=40, cells=3, seed=7, batch_size=64))
    assert not torch.allclose(a, rise(model, x, 2, masks=40, cells=3, seed=8, batch_size=64))
    for batch_size in (3, 7, 40, 200):  # mask chunks (one short), one image per pass, both images
        b = rise(model, x, 2, masks=40, cells=3, seed=7, batch_size=batch_size)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)  # batched convs sum in another order


def test_model_is_left_as_it_was():
    model = tiny_conv_net().train()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 12, 12)
    first = rise(model, x, 0, masks=16, cells=3)
    assert torch.equal(first, rise(model, x, 0, masks=16, cells=3))  # eval mode inside: dropout is off
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_options_and_targets_are_one_line():
    model = tiny_conv_net().eval()
    x = torch.randn(1, 3, 12, 12)
    for options, match in (({"masks": 0}, "masks=0"), ({"p": 1.5}, "p=1.5"), ({"cells": 2.0}, "cells=2.0")):
        with pytest.raises(UserError, match=match):
            rise(model, x, 0, **options)
    with pytest.raises(UserError, match="0..4"):
        rise(model, x, 5, masks=4)
    with pytest.raises(UserError, match="class indices"):
        attribute(model, x, ("0", 1), "rise", masks=4)


def test_attribute_table_has_rise_and_occlusion():
    model = tiny_conv_net().eval()
    x = torch.randn(2, 3, 12, 12)
    got = attribute(model, x, torch.tensor([0, 4]), "rise", masks=30, cells=3, seed=2)
    assert torch.equal(got, rise(model, x, torch.tensor([0, 4]), masks=30, cells=3, seed=2)[:, None])
    assert attribute(model, x, 1, "occlusion", window=4, stride=2).shape == (2, 1, 12, 12)


def test_occlusion_map_is_the_probability_drop_of_the_covering_square():
    """Window 4, stride 4 on 16 x 16: each pixel is covered by one square. Only squares meeting
    ``REGION`` change class 0's logit, by -gain x (the region's pixels they cover) / 16."""
    model = RegionNet(gain=4.0)
    x = torch.ones(1, 3, 16, 16)
    amap = attribute(model, x, 0, "occlusion", window=4, stride=4)[0, 0]
    clean = torch.sigmoid(torch.tensor(4.0))
    want = torch.zeros(16, 16)
    for top in range(0, 16, 4):
        for left in range(0, 16, 4):
            covered = torch.zeros(16, 16, dtype=torch.bool)
            covered[top : top + 4, left : left + 4] = True
            inside = torch.zeros(16, 16, dtype=torch.bool)
            inside[REGION] = True
            kept = (inside & ~covered).sum() / 16
            want[top : top + 4, left : left + 4] = clean - torch.sigmoid(4.0 * kept)
    assert torch.allclose(amap, want, atol=1e-6)
    assert float(amap[REGION].min()) > 0 and float(amap[0:4, 0:4].abs().max()) == 0


def test_occlusion_map_with_overlapping_squares_averages_the_drops():
    model = tiny_conv_net().eval()
    x = torch.randn(1, 3, 12, 12)
    window, stride = 4, 2
    amap = attribute(model, x, 3, "occlusion", window=window, stride=stride)[0, 0]
    total, count = torch.zeros(12, 12), torch.zeros(12, 12)
    with torch.no_grad():
        clean = model(x).softmax(1)[0, 3]
        for top in range(0, 12 - window + 1, stride):
            for left in range(0, 12 - window + 1, stride):
                occluded = x.clone()
                occluded[..., top : top + window, left : left + window] = 0  # the grey square: the mean
                total[top : top + window, left : left + window] += clean - model(occluded).softmax(1)[0, 3]
                count[top : top + window, left : left + window] += 1
    assert torch.allclose(amap, total / count, atol=1e-6)


@pytest.mark.slow
def test_viz_attribution_command_runs_rise(viz_config):
    from zfviz.commands import viz_attribution

    cfg = viz_config("attribution", "viz.method=rise", "viz.n=2", "+viz.options={masks:8,batch_size:8}")
    result = viz_attribution.run(cfg)
    assert result["shape"] == [2, 1, 64, 64]
