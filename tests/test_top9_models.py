"""Fig. 2's top 9 on torchvision nets (issue 13, "any model"): residual nets and batch norm go through the
one mechanism, the patches through the graph-walked receptive fields. Oracle: ``project`` of each
kept activation alone, cropped where the receptive field says, and the stored image under it."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from zfviz.viz.deconv import project_with_values
from zfviz.viz.receptive_field import crop, receptive_field
from zfviz.viz.top9 import Explainer, ordered_batches, project_top, top_activations


def _prepare(batch: torch.Tensor) -> torch.Tensor:
    return (batch.float() - 120.0) / 60.0


def _net(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    if hasattr(model, "classifier"):
        model.classifier = nn.Identity()  # never reached from the examined layers: a cheaper net
    return model.eval()


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("name", "layer", "size"),
    [("resnet18", "layer2", 64), ("resnet18", "layer1.1.conv1", 64), ("vgg11_bn", "features.14", 32),
     ("alexnet", "features.6", 64)],
)  # fmt: skip
def test_top9_on_torchvision_nets_matches_single_projections_and_patches(name, layer, size):
    model = _net(name)
    model.train()  # the search and projections run in eval mode and leave the flags alone
    stored = torch.randint(0, 256, (12, 3, size, size), dtype=torch.uint8)
    top = top_activations(model, ordered_batches(stored, _prepare, 5), [layer], k=3)[layer]
    maps = [1, 7]
    out = project_top(model, layer, top, stored, _prepare, maps=maps, how=Explainer(batch_size=4))
    assert model.training and all(m.training for m in model.modules())
    field = receptive_field(model, layer, (3, size, size))
    h, w = field.window
    assert out.projection.shape == (2, 3, 3, h, w) and out.patch.shape == (2, 3, 3, h, w)
    for m, channel in enumerate(maps):
        for r in range(3):
            i = int(top.image[channel, r])
            full, value, where = project_with_values(model, _prepare(stored[i : i + 1]), layer, channel)
            assert torch.equal(where[0], top.position[channel, r])
            torch.testing.assert_close(value[0], top.values[channel, r])
            corner = torch.tensor([field.window_at(*where[0].tolist())])
            assert full.abs().sum() > 0
            # One image alone against a batch of several: same kernels, other batch sizes.
            torch.testing.assert_close(out.projection[m, r], crop(full, corner, (h, w))[0], rtol=1e-5, atol=1e-6)
            y, x = corner[0].tolist()
            assert torch.equal(out.patch[m, r], stored[i, :, y : y + h, x : x + w])
