"""Feature invariance (Fig. 5): transforms against exact pixel operations, zero distance at the identity."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch.testing import assert_close

from zfviz.activations import features
from zfviz.commands.viz_invariance import run
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.viz.invariance import IDENTITY, invariance, sweep_values, transform

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny():
    return build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=64, init="kaiming").eval()


@pytest.mark.parametrize("kind", ["translate", "scale", "rotate"])
def test_the_identity_returns_the_images_untouched(kind):
    images = torch.randn(2, 3, 16, 16)
    assert transform(images, kind, IDENTITY[kind], background=-1.0) is images


def test_translation_by_whole_pixels_is_a_shift_with_background_entering():
    images = torch.randn(2, 3, 16, 16)
    moved = transform(images, "translate", 4 / 16, background=-2.0)  # 4 px down
    assert_close(moved[..., 4:, :], images[..., :12, :], atol=1e-5, rtol=0)
    assert_close(moved[..., :4, :], torch.full_like(moved[..., :4, :], -2.0), atol=1e-5, rtol=0)
    up = transform(images, "translate", -3 / 16)
    assert_close(up[..., :13, :], images[..., 3:, :], atol=1e-5, rtol=0)


def test_rotation_by_quarter_turns_moves_whole_pixels():
    images = torch.randn(1, 1, 12, 12)
    quarter = transform(images, "rotate", 90.0)
    assert_close(quarter, torch.rot90(images, k=1, dims=(2, 3)), atol=1e-5, rtol=0)
    assert_close(transform(images, "rotate", 180.0), images.flip(2, 3), atol=1e-5, rtol=0)


def test_scaling_zooms_about_the_centre():
    images = torch.zeros(1, 1, 16, 16)
    images[..., 6:10, 6:10] = 1.0  # a 4-px square in the middle
    zoomed = transform(images, "scale", 2.0, background=5.0)
    assert zoomed[..., 4:12, 4:12].min() > 0.5  # now about 8 px wide
    assert zoomed[..., :2, :].abs().max() < 1e-6  # zooming in brings no background in
    assert_close(transform(torch.full((1, 1, 8, 8), 3.0), "scale", 1.7), torch.full((1, 1, 8, 8), 3.0))


def test_sweeps_hit_the_identity_exactly():
    values = sweep_values({"min": -0.268, "max": 0.268, "steps": 13})
    assert len(values) == 13 and values[6] == 0.0 and values[0] == -0.268 and values[-1] == 0.268
    assert sweep_values({"min": 0, "max": 350, "steps": 36})[:3] == [0.0, 10.0, 20.0]


def test_distances_are_zero_at_the_identity_and_match_the_features():
    model = tiny()
    images = torch.randn(3, 3, 64, 64)
    target = torch.tensor([1, 2, 3])
    sweeps = {"translate": [0.0, 0.125], "scale": [1.0, 1.5], "rotate": [0.0, 90.0]}
    df = pd.DataFrame(invariance(model, images, target, sweeps, ("conv1", "fc7"), background=-0.5))
    assert len(df) == 3 * 6
    identity = df[df["amount"] == df["transform"].map(IDENTITY)]
    # Not == 0: the identity copies go up the net in a batch of 6, the originals in a batch of 3, and other
    # conv kernels may round differently (2e-6 on fc7 seen on AVX2); moved images are 1 or more away.
    assert (identity[["dist_conv1", "dist_fc7"]] < 1e-4).all().all()
    assert (df.loc[~df.index.isin(identity.index), "dist_fc7"] > 1e-3).all()
    clean = model(images).softmax(dim=1)[torch.arange(3), target]
    assert_close(torch.tensor(identity["p_true"].to_numpy()[:3], dtype=torch.float32), clean)
    # One moved case against features computed here.
    moved = transform(images, "rotate", 90.0)
    expected = (features(model, moved, ["fc7"])["fc7"] - features(model, images, ["fc7"])["fc7"]).norm(dim=1)
    got = df[(df["transform"] == "rotate") & (df["amount"] == 90.0)].sort_values("image")["dist_fc7"]
    assert_close(torch.tensor(got.to_numpy(), dtype=torch.float32), expected, rtol=1e-5, atol=1e-5)


def test_mistakes_are_user_errors():
    with pytest.raises(UserError, match="unknown transform 'shear'; choose one of: translate, scale, rotate"):
        transform(torch.zeros(1, 1, 4, 4), "shear", 1.0)
    with pytest.raises(UserError, match="scale factors must be positive"):
        transform(torch.zeros(1, 1, 4, 4), "scale", -1.0)


@pytest.mark.slow
def test_command_writes_the_csv_and_fig5(viz_config, tmp_path):
    cfg = viz_config("invariance", "viz.rotate.steps=4", "viz.scale.steps=3", "viz.translate.steps=3")
    run(cfg)
    df = pd.read_csv(tmp_path / "fig5_invariance.csv")
    assert len(df) == 5 * (4 + 3 + 3)
    assert {"index", "label", "transform", "amount", "dist_conv1", "dist_fc7", "p_true"} <= set(df.columns)
    # < 1e-4, not == 0: the identity copies and the originals are computed in batches of different sizes.
    assert (df[df["amount"] == df["transform"].map(IDENTITY)][["dist_conv1", "dist_fc7"]] < 1e-4).all().all()
    assert (tmp_path / "fig5_invariance.png").is_file() and (tmp_path / "fig5_invariance.meta.json").is_file()
