"""One reading of class targets (``zfviz.attribution.targets.class_targets``/``check_classes``): the
attribution methods, RISE, the occlusion sweep and the perturbation scores accept the same forms and
reject the same mistakes with the same line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zfviz.attribution import attribute
from zfviz.attribution.methods.rise import rise
from zfviz.attribution.occlusion import Occluder, occlusion
from zfviz.attribution.targets import class_targets
from zfviz.errors import UserError
from zfviz.evaluate.perturbation import deletion
from zfviz.viz.invariance import invariance


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)
    ).eval()


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return torch.equal(a["p_true"], b["p_true"])
    if isinstance(a, list):  # invariance's rows
        return a == b
    return torch.equal(a, b)


CALLS = {
    "rise": lambda model, x, t: rise(model, x, t, masks=4),
    "occlusion": lambda model, x, t: occlusion(model, x, t, Occluder(4, 4)),
    "deletion": lambda model, x, t: deletion(model, x, t, x.sum(dim=1), steps=2),
    "occlusion method": lambda model, x, t: attribute(model, x, t, "occlusion", window=4, stride=4),
    "invariance": lambda model, x, t: invariance(model, x, t, {"rotate": [0.0, 90.0]}, ("0",)),
}


@pytest.mark.parametrize("call", CALLS)
def test_every_perturbation_method_reads_class_targets_alike(call):
    model, x = net(), torch.randn(2, 3, 8, 8)
    run = CALLS[call]
    # an index, one per image as a list, a tuple or a tensor: the same maps
    maps = [run(model, x, t) for t in (3, [3, 3], (3, 3), torch.tensor([3, 3]))]
    for other in maps[1:]:
        assert _same(maps[0], other)
    for target, words in (
        (7, "7 is not a class of this net: it has classes 0..4"),
        ([1, -1], "-1 is not a class of this net: it has classes 0..4"),
        ([1, 2, 3], "one integer per image (2)"),
        (2.0, "must be an integer or one integer per image (2)"),
        (("conv1", 0), "must be a class of the model's output, not ('conv1', 0); give class indices"),
    ):
        with pytest.raises(UserError) as err:
            run(model, x, target)
        assert words in str(err.value) and "\n" not in str(err.value), (target, str(err.value))


def test_class_targets_expands_and_checks():
    assert class_targets(2, 3).tolist() == [2, 2, 2]
    assert class_targets([0, 4, 1], 3, classes=5).tolist() == [0, 4, 1]
    with pytest.raises(UserError, match=r"^occlusion target 5, 9 is not a class of this net: it has classes 0\.\.4$"):
        class_targets([5, 0, 9], 3, classes=5, what="occlusion target")
