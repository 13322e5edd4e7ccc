"""Correspondence analysis (Table 1, Fig. 8): the sign-change score on hand-made effects, boxes, the command."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from zfviz.commands.viz_correspondence import run, table1
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.viz.correspondence import (
    Draws,
    aligned_pool,
    check_box,
    correspondence,
    occlude_boxes,
    random_boxes,
    sign_change,
)

PARTS = {"toe": [40, 2, 16, 16], "heel": [44, 46, 16, 16]}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny():
    return build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=64, init="kaiming").eval()


def test_identical_occlusion_effects_score_zero():
    eps = torch.randn(1, 300).expand(5, 300)
    assert sign_change(eps) == 0.0


def test_independent_random_signs_score_one_half():
    assert sign_change(torch.randn(5, 200_000)) == pytest.approx(0.5, abs=0.005)


def test_hand_made_signs_give_the_mean_over_pairs():
    # Rows disagree in 2, 4 and 2 of 4 places: (0.5 + 1 + 0.5) / 3 over the unordered pairs.
    eps = torch.tensor([[1.0, 2, 3, 4], [1, 2, -3, -4], [-1, -2, -3, -4]])
    assert sign_change(eps) == pytest.approx(2 / 3)
    # A zero (a unit that stays off in both images) is its own sign: it differs from + and -.
    assert sign_change(torch.tensor([[0.0, 1], [1, 1]])) == pytest.approx(0.5)


def test_occlude_boxes_fills_exactly_the_box():
    images = torch.randn(2, 3, 10, 12)
    fill = torch.full((3, 10, 12), 7.0)
    boxes = torch.tensor([[1, 2, 3, 4], [6, 0, 4, 12]])
    out = occlude_boxes(images, boxes, fill)
    expected = images.clone()
    expected[0, :, 1:4, 2:6] = 7.0
    expected[1, :, 6:10, 0:12] = 7.0
    assert torch.equal(out, expected)


def test_random_boxes_lie_inside_the_image():
    boxes = random_boxes(500, (64, 48), (16, 10), torch.Generator().manual_seed(0))
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + 16 <= 64).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + 10 <= 48).all()
    assert boxes[:, 0].unique().numel() > 30  # they do move around


def test_aligned_pool_prefers_images_near_the_class_mean():
    images = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    images[2] = 255  # an outlier of class 1
    labels = torch.tensor([1, 0, 1, 1, 0, 1])
    assert sorted(aligned_pool(images, labels, 1, 3).tolist()) == [0, 3, 5]
    with pytest.raises(UserError, match="class 7 has 0 images"):
        aligned_pool(images, labels, 7, 3)


def test_the_same_image_occluded_in_the_same_place_scores_zero_and_random_places_do_not():
    model = tiny()
    pool = torch.randn(1, 3, 64, 64).expand(6, -1, -1, -1)  # perfectly "aligned" images
    rows = correspondence(model, pool, PARTS, torch.zeros(3, 64, 64), Draws(k=5, count=3, seed=1))
    df = pd.DataFrame(rows)
    assert len(df) == 3 * 3 * 2  # draws x (parts + random) x layers
    assert (df[df["part"] != "random"]["score"] == 0).all()
    assert (df[df["part"] == "random"]["score"] > 0).all()
    again = pd.DataFrame(correspondence(model, pool, PARTS, torch.zeros(3, 64, 64), Draws(k=5, count=3, seed=1)))
    pd.testing.assert_frame_equal(df, again)  # seeded


def test_table1_has_the_papers_shape_and_values_beside():
    rows = [
        {"draw": d, "part": p, "layer": layer, "score": s + d * 0.01}
        for d in range(3)
        for p, s in (("toe", 0.1), ("heel", 0.2), ("random", 0.3))
        for layer in ("conv5", "fc7")
    ]
    table = table1(rows, ["conv5", "fc7"])
    assert table["occluded_part"].tolist() == ["toe", "heel", "random"]
    assert table["layer5_mean"].tolist() == pytest.approx([0.11, 0.21, 0.31])
    assert table["layer7_std"].tolist() == pytest.approx([0.01] * 3)
    assert table["paper_part"].tolist() == ["right_eye", "left_eye", "random"]
    assert table["paper_layer5_mean"].tolist() == pytest.approx([0.067, 0.069, 0.107])


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: check_box([60, 0, 16, 16], (64, 64), "part 'toe'"), r"part 'toe' \[60, 0, 16, 16\] is not inside"),
        (lambda: check_box([1, 2, 3], (64, 64)), r"must be \[top, left, height, width\]"),
        (lambda: sign_change(torch.randn(1, 5)), "at least 2"),
    ],
)
def test_bad_boxes_are_user_errors(call, message):
    with pytest.raises(UserError, match=message):
        call()


def test_random_is_reserved_and_k_must_fit_the_pool():
    pool, fill = torch.randn(4, 3, 64, 64), torch.zeros(3, 64, 64)
    with pytest.raises(UserError, match="'random' is the name of the random-box row"):
        correspondence(tiny(), pool, {"random": [0, 0, 4, 4]}, fill)
    with pytest.raises(UserError, match="k=5 images per draw must be between 2 and the pool's 4"):
        correspondence(tiny(), pool, PARTS, fill, Draws(k=5))


@pytest.mark.slow
def test_command_writes_table1_and_fig8(viz_config, tmp_path):
    cfg = viz_config("correspondence", "viz.class_index=3", "viz.draws=2")
    run(cfg)
    table = pd.read_csv(tmp_path / "table1.csv")
    assert table["occluded_part"].tolist() == ["toe", "heel", "shaft", "random"]
    assert ((table["layer5_mean"] >= 0) & (table["layer5_mean"] <= 1)).all()
    assert (tmp_path / "table1.meta.json").is_file() and (tmp_path / "fig8_correspondence.png").is_file()
