"""The pointing game and the energy inside the object mask (issue 16), on hand-made maps and masks."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from zfviz.errors import UserError
from zfviz.evaluate import energy_inside, pointing_game


def box(n: int, h: int, w: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    masks[:, top : top + height, left : left + width] = True
    return masks


def test_pointing_game_by_hand():
    masks = box(3, 5, 5, 1, 1, 2, 2)
    maps = torch.zeros(3, 5, 5)
    maps[0, 2, 2] = 1.0  # the peak on the object: a hit
    maps[1, 4, 4] = 1.0  # the peak off it: a miss
    maps[2, 1, 1] = maps[2, 0, 0] = 1.0  # tied peaks, one off the object: a miss
    assert pointing_game(maps, masks).tolist() == [True, False, False]
    assert not pointing_game(torch.ones(1, 5, 5), box(1, 5, 5, 0, 0, 5, 4)).item()  # a flat map cannot point
    assert pointing_game(torch.ones(1, 5, 5), box(1, 5, 5, 0, 0, 5, 5)).item()


def test_pointing_game_tolerance_is_a_euclidean_radius():
    masks = box(2, 7, 7, 3, 3, 1, 1)
    maps = torch.zeros(2, 7, 7)
    maps[0, 3, 5] = 1.0  # 2 px right of the object
    maps[1, 4, 4] = 1.0  # diagonal neighbour: sqrt(2) px away
    assert pointing_game(maps, masks, tolerance=1).tolist() == [False, False]
    assert pointing_game(maps, masks, tolerance=2).tolist() == [True, True]
    assert pointing_game(maps, masks).tolist() == [False, False]


def test_energy_inside_by_hand():
    maps = torch.tensor([[[2.0, -1.0], [1.0, 0.0]], [[-1.0, -2.0], [-3.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    masks = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 0]], [[1, 1], [1, 0]]])
    assert_close(energy_inside(maps, masks), torch.tensor([2 / 3, 0.0, 3 / 4]))  # no positive mass: 0


def test_maps_shaped_like_images_are_summed_over_channels():
    maps = torch.zeros(1, 3, 4, 4)
    maps[0, 0, 0, 0], maps[0, 1, 3, 3], maps[0, 2, 3, 3] = 3.0, 2.0, 2.0  # (3, 3) sums to 4 and wins
    masks = box(1, 4, 4, 2, 2, 2, 2)
    assert pointing_game(maps, masks).item()
    assert_close(energy_inside(maps, masks), torch.tensor([4 / 7]))


@pytest.mark.parametrize(
    "maps, masks, words",
    [
        (torch.zeros(2, 4, 4), box(2, 4, 5, 0, 0, 1, 1), "maps must be N x H x W = 2 x 4 x 5"),
        (torch.zeros(2, 4, 4), box(2, 4, 4, 0, 0, 1, 1)[0], "masks must be an N x H x W tensor"),
        (torch.zeros(2, 4, 4), box(2, 4, 4, 0, 0, 1, 1).long() * 2, "masks must be boolean"),
        (torch.zeros(2, 4, 4), box(2, 4, 4, 0, 0, 1, 1) & torch.tensor([True, False])[:, None, None], "image(s) 1"),
    ],
)
def test_mistakes_are_one_line_user_errors(maps, masks, words):
    for metric in (pointing_game, energy_inside):
        with pytest.raises(UserError) as err:
            metric(maps, masks)
        assert words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="tolerance"):
        pointing_game(torch.zeros(1, 4, 4), box(1, 4, 4, 0, 0, 1, 1), tolerance=-1)
