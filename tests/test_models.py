"""Every registered model: layer sizes, parameter counts, output shape, gradients, surgery."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zfviz.errors import UserError
from zfviz.models import build_model, list_models, register_model

PARAMS_1000 = {"zfnet": 62_357_608, "zfnet_b": 107_627_624, "alexnet": 62_378_344}
# Spatial size after conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5 at 224 px (Fig. 3).
SIZES_224 = {
    "zfnet": [110, 55, 26, 13, 13, 13, 13, 6],
    "zfnet_b": [110, 55, 26, 13, 13, 13, 13, 6],
    "alexnet": [55, 27, 27, 13, 13, 13, 13, 6],
}
PAPER_LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]


def spatial_sizes(model: nn.Module, size: int) -> dict[str, int]:
    out, x = {}, torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    with torch.no_grad():
        for name, module in model.named_children():
            x = module(x)
            if x.dim() == 4:
                out[name] = x.shape[-1]
    return out


def test_registry_lists_the_papers_models():
    assert set(PARAMS_1000) <= set(list_models())


@pytest.mark.parametrize("name", sorted(PARAMS_1000))
def test_parameter_count_at_1000_classes(name):
    with torch.device("meta"):  # shapes only: 100M parameters would cost memory and init time
        model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS_1000[name]


@pytest.mark.parametrize("name", sorted(SIZES_224))
def test_layer_sizes_at_224(name):
    with torch.device("meta"):  # the full-width net, shapes only: meta tensors run the layers without arithmetic
        sizes = spatial_sizes(build_model(name, num_classes=10), 224)
    order = ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]
    assert [sizes[k] for k in order] == SIZES_224[name]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size,width,fc", [pytest.param(224, 1.0, 4096, marks=pytest.mark.slow), (64, 0.25, 512)])
def test_forward_backward_every_parameter_gets_a_gradient(name, size, width, fc):
    if size == 224 and name == "zfnet_b":
        fc = 256  # keeps this test light; the 224 px geometry is the same as zfnet's
    model = build_model(name, num_classes=7, input_size=size, width=width, fc_dims=fc)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", list_models())
def test_paper_names_reach_the_layers(name):
    model = build_model(name, num_classes=10, input_size=64, width=0.25, fc_dims=64)
    for layer in PAPER_LAYERS:
        expected = nn.Conv2d if layer.startswith("conv") else nn.Linear
        assert isinstance(model.get_submodule(layer), expected)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 7 and not any(r.inplace for r in relus)


def test_zf_normalizes_after_pooling_and_alexnet_before():
    with torch.device("meta"):
        zf = [n for n, _ in build_model("zfnet").named_children()][:4]
        alex = [n for n, _ in build_model("alexnet").named_children()][:4]
    assert zf == ["conv1", "relu1", "pool1", "norm1"]
    assert alex == ["conv1", "relu1", "norm1", "pool1"]


def test_paper_init_is_normal_with_std_1e_2_and_zero_bias():
    # A narrow net: fc6 still has 2.4M weights, enough to pin the std to 1e-4.
    w = build_model("zfnet", width=0.25, fc_dims=1024, init="paper").get_submodule("fc6")
    assert abs(w.weight.std().item() - 1e-2) < 1e-4
    assert w.bias.abs().max().item() == 0


@pytest.mark.parametrize(
    "drop,missing,fc8_in",
    [
        (["conv3", "conv4"], {"conv3", "conv4"}, 4096),
        (["fc7"], {"fc7"}, 4096),
        (["fc6", "fc7"], {"fc6", "fc7"}, 256 * 6 * 6),
        (["conv3", "conv4", "fc6", "fc7"], {"conv3", "conv4", "fc6", "fc7"}, 256 * 6 * 6),
    ],
)
def test_dropping_layers_rewires_the_net(drop, missing, fc8_in):
    with torch.device("meta"):  # the full-width net, shapes only
        model = build_model("zfnet", num_classes=10, drop=drop)
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 10)
    names = {n for n, _ in model.named_children()}
    assert not (missing & names)
    assert model.get_submodule("fc8").in_features == fc8_in


def test_dropping_conv3_conv4_connects_conv2_to_conv5():
    with torch.device("meta"):
        model = build_model("zfnet", num_classes=10, drop=["conv3", "conv4"])
    assert model.get_submodule("conv5").in_channels == model.get_submodule("conv2").out_channels


@pytest.mark.parametrize("bad", [["fc9"], ["conv1"], ["fc8"]])
def test_dropping_an_undroppable_layer_is_a_user_error(bad):
    with pytest.raises(UserError, match="droppable layers are: conv3, conv4, fc6, fc7"):
        build_model("zfnet", drop=bad)


@pytest.mark.parametrize("drop", [["fc6", "fc6"], ["conv4", "fc7", "conv4"]])
def test_a_repeated_drop_entry_is_a_one_line_user_error(drop):
    # build_model itself refuses (zfviz train reaches it without ablation.normalize_drop).
    with pytest.raises(UserError, match=f"^drop names {drop[0]} twice; droppable layers are: conv3, conv4, fc6, fc7$"):
        build_model("zfnet", num_classes=10, input_size=64, width=0.1, fc_dims=8, drop=drop)


def test_unknown_model_names_the_choices():
    with pytest.raises(UserError, match="alexnet, zfnet, zfnet_b"):
        build_model("vgg99")


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("zfnet")(lambda **kw: nn.Identity())


def test_too_small_input_is_a_user_error():
    with pytest.raises(UserError, match="too small"):
        build_model("zfnet", input_size=8)
