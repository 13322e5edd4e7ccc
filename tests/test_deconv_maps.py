"""Several maps in one call and ``project_batches`` on the one mechanism's batched backward (issues 13, 17, 24).

Oracles: ``project`` one map at a time (the single-map path is ``attribute(..., "deconvnet")``,
itself checked against autograd and Captum in ``test_deconv.py``), and the chain inverter of
``tests/deconv_oracle.py`` (the paper's layer-by-layer inversion, independent of ``zfviz.attribution``).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tests.deconv_oracle import chain_batches, chain_project, strongest_start, unit_starts
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.viz.deconv import Units, project, project_batches


def small_zfnet() -> nn.Module:
    return build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=32, init="kaiming").eval()


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # The batched backward runs other batch sizes through the same kernels: float32 sums may differ
    # in the last bits, so 1e-5 of the projection's scale.
    assert expected.abs().sum() > 0, "a zero oracle proves nothing"
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial batch norms, so merging or skipping them would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize(
    ("layer", "norm"), [("conv3", "pass"), ("conv5", "backprop"), ("pool2", "pass"), ("fc6", "pass")]
)
@pytest.mark.usefixtures("one_thread")
def test_several_maps_equal_one_call_per_map(layer, norm):
    model = small_zfnet()
    x = torch.randn(3, 3, 64, 64)
    maps = [0, 5, 7, 5]  # a repeated map is projected twice
    many = project(model, x, layer, maps, norm=norm)
    assert many.shape == (3, 4, 3, 64, 64)
    one_by_one = torch.stack([project(model, x, layer, channel, norm=norm) for channel in maps], dim=1)
    assert_close(many, one_by_one)


@pytest.mark.usefixtures("one_thread")
def test_several_maps_at_chosen_positions_and_whole_maps():
    model = small_zfnet()
    x = torch.randn(2, 3, 64, 64)
    maps = (1, 4, 9)
    where = torch.tensor([[[0, 0], [1, 2], [2, 1]], [[2, 2], [0, 1], [1, 1]]])  # (N, K, 2)
    many = project(model, x, "conv3", maps, where)
    for k, channel in enumerate(maps):
        assert_close(many[:, k], project(model, x, "conv3", channel, where[:, k]))
    shared = project(model, x, "conv3", range(3), (1, 2))  # one cell for every image and map
    every = project(model, x, "conv3", [0, 2], torch.tensor([[0, 1], [2, 2]]))  # one cell per image
    whole = project(model, x, "conv3", [3, 6], "all")
    for k in range(3):
        assert_close(shared[:, k], project(model, x, "conv3", k, (1, 2)))
    assert_close(every[:, 1], project(model, x, "conv3", 2, torch.tensor([[0, 1], [2, 2]])))
    assert_close(whole[:, 1], project(model, x, "conv3", 6, "all"))


@pytest.mark.usefixtures("one_thread")
def test_several_maps_on_a_resnet_and_the_model_left_as_it_was(resnet18):
    x = torch.randn(2, 3, 64, 64)
    resnet18.train()
    inplace = [m for m in resnet18.modules() if getattr(m, "inplace", False)]
    weights = {k: v.clone() for k, v in resnet18.state_dict().items()}
    many = project(resnet18, x, "layer2", [3, 17, 60])
    for k, channel in enumerate((3, 17, 60)):
        assert_close(many[:, k], project(resnet18, x, "layer2", channel))
    with pytest.raises(UserError, match="channel of layer2 must lie in 0..127"):
        project(resnet18, x, "layer2", [3, 128])
    assert resnet18.training and all(m.training for m in resnet18.modules())
    assert hooks_left(resnet18) == 0 and all(m.inplace for m in inplace)
    assert all(torch.equal(v, weights[k]) for k, v in resnet18.state_dict().items())
    resnet18.eval()


@pytest.mark.usefixtures("one_thread")
def test_several_maps_mistakes_are_one_line_user_errors():
    model = small_zfnet()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(UserError, match=r"position must be \(y, x\), an \(2, 2\) or an \(2, 3, 2\) tensor"):
        project(model, x, "conv3", [0, 1, 2], torch.zeros(3, 2))
    with pytest.raises(UserError, match="inside the 3x3 map"):
        project(model, x, "conv3", [0, 1], (3, 0))
    with pytest.raises(UserError, match="norm mode"):
        project(model, x, "conv3", [0], norm="skip")
    bad = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LogSigmoid(), nn.Conv2d(4, 4, 1))
    with pytest.raises(UserError, match="deconvnet cannot handle 1 \\(LogSigmoid\\)"):
        project(bad, x, "2", [0, 1])
    assert hooks_left(bad) == 0 and hooks_left(model) == 0


def _collect(batches, n: int) -> torch.Tensor:
    got = None
    for rows, proj in batches:
        if got is None:
            got = torch.full((n, *proj.shape[1:]), float("nan"))
        assert torch.isnan(got[rows]).all(), "a projection was yielded twice"
        got[rows] = proj
    return got


@pytest.mark.parametrize(("name", "norm"), [("zfnet", "pass"), ("zfnet", "backprop"), ("alexnet", "pass")])
@pytest.mark.usefixtures("one_thread")
def test_project_batches_and_maps_equal_the_chain_inverter_on_our_nets(name, norm):
    """The paper's layer-by-layer inversion (the tests' own) gives the batched mechanism's projections."""
    model = build_model(name, num_classes=10, input_size=64, width=0.25, fc_dims=32, init="kaiming").eval()
    x = torch.randn(5, 3, 64, 64)
    image = torch.tensor([3, 0, 3, 1, 3, 4, 0, 3])
    channel = torch.tensor([0, 5, 7, 5, 2, 11, 1, 3])
    position = torch.tensor([[0, 0], [1, 2], [2, 2], [0, 1], [1, 0], [2, 1], [0, 0], [1, 1]])
    units = Units(image, channel, position)
    got = _collect(project_batches(model, x, "conv3", units, batch_size=4, norm=norm), 8)
    rows = torch.arange(8)
    chain = chain_project(model, x[image], "conv3", lambda act: unit_starts(act, rows, channel, position), norm)
    assert_close(got, chain)
    baseline = _collect(chain_batches(model, x, "conv3", (image, channel, position), 4, norm), 8)  # bench_deconv's
    assert_close(baseline, chain)
    maps = project(model, x, "conv5", [2, 9], norm=norm)
    for k, c in enumerate((2, 9)):
        assert_close(maps[:, k], chain_project(model, x, "conv5", strongest_start(c), norm))


@pytest.mark.usefixtures("one_thread")
def test_project_batches_takes_each_image_up_once_per_batch(resnet18):
    x = torch.randn(4, 3, 32, 32)
    image = torch.tensor([2, 0, 2, 2, 1, 0, 3])  # image 2 has 3 projections, 0 two, 1 and 3 one
    channel = torch.tensor([1, 3, 0, 9, 4, 4, 7])
    seen = []
    handle = resnet18.conv1.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    try:
        got = _collect(project_batches(resnet18, x, "layer1", Units(image, channel), batch_size=6), 7)
    finally:
        handle.remove()
    # Most projections first: image 2 (3 starts) with image 0 (2 <= 3 starts, 6 rows), then 1 and 3.
    assert seen == [2, 2]
    for j in range(7):
        one = project(resnet18, x[image[j] : image[j] + 1], "layer1", int(channel[j]))
        assert_close(got[j : j + 1], one)
    assert hooks_left(resnet18) == 0
