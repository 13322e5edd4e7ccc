"""The deconvnet (Section 2.1): exact values on a hand-weighted net, autograd and Captum oracles."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from captum.attr import NeuronDeconvolution
from torch import nn

from tests.deconv_oracle import autograd_oracle as oracle
from tests.deconv_oracle import chain_project, strongest_start, unit_starts, unpool, whole_map_start
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.viz.deconv import Units, project, project_batches, project_with_values


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    # 1e-5 relative to the projection's scale: float32 sums in a different order differ in the last bits.
    scale = max(float(expected.abs().max()), 1e-12)
    assert expected.abs().sum() > 0, "a zero oracle proves nothing"
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def small_zfnet(norm: bool = True) -> nn.Sequential:
    model = build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=64, init="kaiming")
    if norm:
        return model.eval()
    kept = [(n, m) for n, m in model.named_children() if not isinstance(m, nn.LocalResponseNorm)]
    return nn.Sequential(OrderedDict(kept)).eval()


# --- the hand-weighted net -------------------------------------------------------------------------


def hand_net(conv2_weight, conv2_bias: float = 0.5) -> nn.Sequential:
    """conv1 (1x1, w=2, b=-1) -> ReLU -> 3x3/1 max pool (all four cells share one argmax) -> conv2 (2x2)."""
    conv1 = nn.Conv2d(1, 1, 1)
    conv2 = nn.Conv2d(1, 1, 2)
    with torch.no_grad():
        conv1.weight.fill_(2.0)
        conv1.bias.fill_(-1.0)
        conv2.weight.copy_(torch.tensor(conv2_weight, dtype=torch.float32).reshape(1, 1, 2, 2))
        conv2.bias.fill_(conv2_bias)
    layers = dict(conv1=conv1, relu1=nn.ReLU(), pool1=nn.MaxPool2d(3, 1), conv2=conv2, relu2=nn.ReLU())
    return nn.Sequential(OrderedDict(layers)).eval()


HAND_INPUT = torch.tensor([[0, 1, 0, 0], [0, 2, 3, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.float32)


def test_hand_weighted_net_gives_the_exact_projection():
    # relu1 = [[0,1,0,0],[0,3,5,0],[0,0,1,0],[0]*4]; every 3x3 window's max is the 5 at (1, 2), so
    # pool1 = 5 everywhere and conv2 = 5*(1 - 1 + 2 + 0) + 0.5 = 10.5. Down: 10.5 * W^T spreads
    # (10.5, -10.5, 21, 0) over the four pooled cells, unpooling adds them at (1, 2): 21, ReLU keeps
    # 21, conv1^T multiplies by 2: 42 at (1, 2) and zero elsewhere.
    x = HAND_INPUT.reshape(1, 1, 4, 4)
    proj, value, where = project_with_values(hand_net([[1, -1], [2, 0]]), x, "conv2", 0)
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 1, 2] = 42.0
    assert float(value) == 10.5 and where.tolist() == [[0, 0]]
    assert torch.equal(proj, expected)
    # With W = [[1, -3], [0, 0]] and bias 15, conv2 = 5 * (1 - 3) + 15 = 5; the shared switch collects
    # 5 - 15 = -10 and the deconvnet's ReLU zeroes it. An overwriting unpool (nn.MaxUnpool2d) would
    # keep one of the four values instead of their sum, and give 10 or -30 before the ReLU.
    net = hand_net([[1, -3], [0, 0]], conv2_bias=15.0)
    proj, value, _ = project_with_values(net, x, "relu2", 0)
    assert float(value) == 5.0 and torch.equal(proj, torch.zeros(1, 1, 4, 4))


def test_unpool_adds_contributions_of_cells_sharing_a_switch():
    x = HAND_INPUT.reshape(1, 1, 4, 4) * 2 - 1
    _, switches = F.max_pool2d(x, 3, 1, return_indices=True)
    signal = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    out = unpool(signal, switches, x.shape)
    assert out[0, 0, 1, 2] == 10.0 and out.sum() == 10.0
    assert F.max_unpool2d(signal, switches, 3, 1, output_size=(4, 4)).sum() < 10.0  # overwrites


@pytest.mark.parametrize("kernel", [2, 3])
def test_unpool_equals_max_unpool_when_pools_do_not_overlap(kernel):
    x = torch.randn(3, 5, 4 * kernel, 4 * kernel)
    pooled, switches = F.max_pool2d(x, kernel, kernel, return_indices=True)
    signal = torch.randn_like(pooled)
    expected = F.max_unpool2d(signal, switches, kernel, kernel, output_size=x.shape[-2:])
    assert torch.equal(unpool(signal, switches, x.shape), expected)


# --- oracles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["conv1", "pool1", "conv2", "conv3", "relu4", "conv5", "pool5", "fc6", "fc8"])
def test_zfnet_without_normalization_equals_the_autograd_oracle(layer):
    model = small_zfnet(norm=False)
    x = torch.randn(3, 3, 64, 64)
    channel = 5
    assert_close(project(model, x, layer, channel), oracle(model, x, layer, strongest_start(channel)))


@pytest.mark.parametrize("layer", ["conv2", "conv5"])
def test_whole_map_projection_equals_the_autograd_oracle(layer):
    model = small_zfnet(norm=False)
    x = torch.randn(2, 3, 64, 64)
    assert_close(project(model, x, layer, 7, position="all"), oracle(model, x, layer, whole_map_start(7)))


def test_normalization_layers_pass_through_by_default_or_backpropagate():
    model = small_zfnet(norm=True)
    x = torch.randn(2, 3, 64, 64)
    for norm in ("pass", "backprop"):
        expected = oracle(model, x, "conv3", strongest_start(2), lrn=norm)
        assert_close(project(model, x, "conv3", 2, norm=norm), expected)
    passed = project(model, x, "conv3", 2)
    assert not torch.allclose(passed, project(model, x, "conv3", 2, norm="backprop"))


def test_the_papers_alexnet_replication_with_lrn_before_pooling():
    model = build_model("alexnet", num_classes=10, input_size=64, width=0.25, fc_dims=64, init="kaiming").eval()
    x = torch.randn(2, 3, 64, 64)
    assert_close(project(model, x, "conv5", 1), oracle(model, x, "conv5", strongest_start(1)))


@pytest.fixture(scope="module")
def tv_alexnet():
    from torchvision.models import alexnet

    torch.manual_seed(0)
    return alexnet(weights=None).eval()  # random weights, in-place ReLUs, functional flatten


@pytest.mark.slow
@pytest.mark.parametrize(
    "size,layer",
    [(224, "features.10"), (224, "classifier.4"), (100, "classifier.1"), (100, "features.3")],
)
def test_torchvision_alexnet_equals_the_autograd_oracle(tv_alexnet, size, layer):
    # At 224 px the adaptive pool keeps 6x6 (identity); at 100 px it spreads 2x2 evenly over 6x6.
    x = torch.randn(1 if size == 224 else 2, 3, size, size)
    channel = 11
    assert_close(project(tv_alexnet, x, layer, channel), oracle(tv_alexnet, x, layer, strongest_start(channel)))
    assert hooks_left(tv_alexnet) == 0


@pytest.mark.slow
def test_torchvision_vgg16_equals_the_autograd_oracle():
    from torchvision.models import vgg16

    model = vgg16(weights=None).eval()
    x = torch.randn(1, 3, 48, 48)  # features end at 1x1: the adaptive pool spreads it over 7x7
    for layer in ("features.28", "classifier.0"):
        assert_close(project(model, x, layer, 3), oracle(model, x, layer, strongest_start(3)))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Captum announces its ReLU hooks on every call
def test_captum_neuron_deconvolution_agrees(tv_alexnet):
    net = tv_alexnet
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    x = torch.randn(2, 3, 224, 224)
    # conv5's ReLU, in a map active in both images: with a positive value, starting from 1 or from the value agree.
    layer = "features.11"
    with torch.no_grad():
        channel = int(net.features[:12](x).amax(dim=(2, 3)).min(dim=0).values.argmax())
    ours, values, where = project_with_values(net, x, layer, channel)
    assert (values > 0).all()
    deconv = NeuronDeconvolution(net, net.get_submodule(layer))
    try:
        for module in relus:
            module.inplace = False  # Captum's backward hooks refuse in-place modules
        for i in range(len(x)):
            y, w = where[i].tolist()
            theirs = deconv.attribute(x[i : i + 1], neuron_selector=(channel, y, w))
            # Captum starts the neuron from 1; the paper (and we) from its value.
            assert_close(ours[i : i + 1], theirs * values[i])
    finally:
        for module in relus:
            module.inplace = True


# --- properties and mistakes -----------------------------------------------------------------------


def test_batching_and_per_image_channels_do_not_change_a_projection():
    model = small_zfnet()
    x = torch.randn(4, 3, 64, 64)
    channels = torch.tensor([0, 3, 3, 9])
    batched = project(model, x, "conv4", channels)
    for i in range(4):
        single = project(model, x[i : i + 1], "conv4", int(channels[i]))
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", [pytest.param("pass", marks=pytest.mark.slow), "backprop"])  # ~5 s each
def test_many_projections_take_each_image_up_once_and_match_one_at_a_time(norm):
    model = small_zfnet()
    x = torch.randn(6, 3, 64, 64)
    image = torch.tensor([4, 1, 4, 0, 1, 4, 5, 1])
    channel = torch.tensor([0, 3, 7, 3, 3, 2, 1, 9])
    position = torch.tensor([[0, 0], [1, 2], [2, 2], [0, 1], [1, 2], [2, 0], [1, 1], [0, 2]])
    passes = {}
    ones = [project(model, x[image[j] : image[j] + 1], "conv3", int(channel[j]), position[j], norm=norm) for j in range(len(image))]  # fmt: skip
    for batch_size in (1, 3, 8):
        seen = []
        handle = model.conv1.register_forward_hook(lambda m, i, o, seen=seen: seen.append(len(i[0])))
        got = torch.full((len(image), 3, 64, 64), float("nan"))
        try:
            units = Units(image, channel, position)
            for rows, proj in project_batches(model, x, "conv3", units, batch_size=batch_size, norm=norm):
                assert torch.isnan(got[rows]).all(), "a projection was yielded twice"
                got[rows] = proj
        finally:
            handle.remove()
        passes[batch_size] = sum(seen)
        for j, one in enumerate(ones):
            torch.testing.assert_close(got[j : j + 1], one, rtol=1e-5, atol=1e-6)
    # A batch holds whole images with all their projections: the 4 distinct images go up the net once
    # each, whatever the batch size (batches of 3: images 1 | 4 | 0 5; of 8: 1 4 | 0 5).
    assert passes == {1: 4, 3: 4, 8: 4}


def test_a_chosen_position_equals_the_strongest_when_it_is_the_argmax():
    model = small_zfnet()
    x = torch.randn(2, 3, 64, 64)
    proj, _, where = project_with_values(model, x, "conv3", 4)
    assert torch.equal(project(model, x, "conv3", 4, position=where), proj)
    first = project(model, x[:1], "conv3", 4, position=tuple(where[0].tolist()))
    torch.testing.assert_close(first, proj[:1], rtol=1e-5, atol=1e-6)  # batch of 1 vs 2: other conv kernels


def test_hooks_are_gone_and_mode_restored_after_return_and_after_an_error():
    model = small_zfnet().train()
    model.drop6.eval()  # a part frozen in eval mode stays so
    x = torch.randn(1, 3, 64, 64)
    project(model, x, "conv2", 0)
    assert hooks_left(model) == 0 and model.training and model.conv1.training and not model.drop6.training
    bad = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LogSigmoid(), nn.Conv2d(4, 4, 1))
    with pytest.raises(UserError, match="deconvnet cannot handle 1 \\(LogSigmoid\\)"):
        project(bad, x, "2", 0)
    assert hooks_left(bad) == 0


def test_mistakes_are_one_line_user_errors():
    model = small_zfnet()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(UserError, match="unknown layer 'conv9'; choose one of: conv1, relu1"):
        project(model, x, "conv9", 0)
    with pytest.raises(UserError, match="channel of conv1 must lie in 0..23"):
        project(model, x, "conv1", 24)
    with pytest.raises(UserError, match="norm=skip is not valid for deconvnet"):
        project(model, x, "conv1", 0, norm="skip")
    with pytest.raises(UserError, match="position"):
        project(model, x, "conv1", 0, position="max")


def test_residual_nets_and_batch_norm_project_on_the_one_mechanism():
    """Not a chain: project and project_batches take attribution's deconvnet; autograd is the oracle."""
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        block[1].running_mean.uniform_(-0.5, 0.5)
        block[1].running_var.uniform_(0.5, 2.0)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.conv, self.relu = block, nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()

        def forward(self, x):
            h = self.block(x)
            return self.relu(self.conv(h) + h)

    model = Residual().eval()
    x = torch.randn(3, 3, 12, 12)
    assert_close(project(model, x, "relu", 2), oracle(model, x, "relu", strongest_start(2)))
    image, channel = torch.tensor([2, 0, 2]), torch.tensor([1, 3, 0])
    got = torch.empty(3, 3, 12, 12)
    for rows, proj in project_batches(model, x, "relu", Units(image, channel), batch_size=2):
        got[rows] = proj
    for j in range(3):
        one = project(model, x[image[j] : image[j] + 1], "relu", int(channel[j]))
        torch.testing.assert_close(got[j : j + 1], one, rtol=1e-5, atol=1e-6)  # batch of 1 vs 2: other kernels


@pytest.mark.parametrize("norm", ["pass", "backprop"])
def test_project_batches_equals_the_chain_inverter(norm):
    """Batched projections of units in a few images equal the paper's layer-by-layer inversion (tests' own)."""
    model = small_zfnet()
    x = torch.randn(5, 3, 64, 64)
    image = torch.tensor([3, 0, 3, 1, 3, 4])
    channel = torch.tensor([0, 5, 7, 5, 2, 11])
    position = torch.tensor([[0, 0], [1, 2], [2, 2], [0, 1], [1, 0], [2, 1]])
    got = torch.empty(len(image), 3, 64, 64)
    for rows, proj in project_batches(model, x, "conv3", Units(image, channel, position), batch_size=4, norm=norm):
        got[rows] = proj
    expected = chain_project(
        model, x[image], "conv3", lambda act: unit_starts(act, torch.arange(6), channel, position), norm
    )
    # conv backward vs conv_transpose2d, and other batch sizes: the same sums, maybe in another order.
    assert_close(got, expected)


# --- Fig. 6 numbers ----------------------------------------------------------------------------------


def test_architecture_numbers_on_hand_made_filters():
    from zfviz.viz.architecture import alias_energy, dead_fraction, high_frequency_energy, rms_dominance

    bank = torch.ones(4, 1, 2, 2) * torch.tensor([1.0, 1.0, 1.0, 3.0])[:, None, None, None]
    assert rms_dominance(bank) == pytest.approx(3.0)
    assert dead_fraction(torch.tensor([0.0, -1.0, 2.0, 0.5])) == 0.5
    x = torch.arange(64, dtype=torch.float64)
    slow = torch.cos(2 * torch.pi * x / 16).expand(64, 64)  # 1/16 cycle per pixel, along columns
    fast = torch.cos(2 * torch.pi * x * 3 / 8).expand(64, 64)  # 3/8 cycle per pixel
    mixed = (slow + fast)[None, None]
    assert float(alias_energy(mixed, stride=1)) == pytest.approx(0.0, abs=1e-12)  # nothing above 1/2
    assert float(alias_energy(mixed, stride=2)) == pytest.approx(0.5)  # 3/8 > 1/4 aliases, 1/16 does not
    assert float(alias_energy(slow[None, None], stride=4)) == pytest.approx(0.0, abs=1e-12)  # 1/16 < 1/8
    assert float(high_frequency_energy(fast.T[None])) == pytest.approx(1.0)  # along rows: the max-norm sees it
    assert float(high_frequency_energy(torch.full((1, 8, 8), 3.0))) == 0.0  # flat: no energy at all


def test_a_diverged_net_is_flagged_and_its_measures_are_nan_not_numbers():
    import math

    from zfviz.viz.architecture import dead_fraction, diverged, rms_dominance

    bank = torch.ones(4, 1, 2, 2)
    assert not diverged([bank], [2.3, None, 0.4])  # None: a loss not recorded (an epoch not evaluated)
    assert diverged([bank], [2.3, float("nan")]) and diverged([bank], [float("inf")])
    bank[2, 0, 1, 1] = float("nan")
    assert diverged([bank], []) and math.isnan(rms_dominance(bank))  # not a max over the finite filters
    assert math.isnan(dead_fraction(torch.tensor([0.0, float("nan"), 2.0])))  # not "1 of 3 dead"


def test_top9_block_scales_each_maps_projections_together():
    import numpy as np

    from zfviz.plotting.deconv import contrast_scale, top9_block

    assert contrast_scale(np.array([0.0, 0.0, 0.0, 2.0, -2.0])) == pytest.approx(2.0)  # zeros do not count
    assert contrast_scale(np.zeros(3)) == 0.0
    projection = np.zeros((4, 1, 3, 3), dtype=np.float32)
    projection[:, 0, 1, 1] = [4.0, 2.0, -4.0, 1.0]  # one pixel each, the second half as strong as the first
    patch = np.zeros((4, 1, 3, 3), dtype=np.uint8)
    block = top9_block(projection, patch)
    centres = [block[1, 1, 0], block[1, 5, 0], block[5, 1, 0], block[5, 5, 0]]  # 2 x 2 tiles, 1-px gaps
    scale = np.percentile([4.0, 2.0, 4.0, 1.0], 99.5)
    assert centres == pytest.approx([0.5 + 0.5 * v / scale for v in (4.0, 2.0, -4.0, 1.0)])
