"""Layer names and activation capture (zfviz.activations): resolution on our nets and torchvision's,
hooks that always go away, captured outputs against a manual forward, and occlusion's default layer
on nets that have no ``conv5``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torchvision import models

from zfviz.activations import Capture, layer_names, resolve, stream
from zfviz.attribution.occlusion import Occluder, occlusion
from zfviz.errors import UserError
from zfviz.features import layer_outputs
from zfviz.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def ours(name: str = "zfnet", **kw) -> nn.Sequential:
    return build_model(name, num_classes=10, input_size=64, width=0.25, fc_dims=64, init="kaiming", **kw).eval()


def on_meta(name: str) -> nn.Module:
    """A torchvision net without weights: names and module types are all resolution needs."""
    with torch.device("meta"):
        return getattr(models, name)()


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "net,layer,output,rectified,block",
    [
        ("zfnet", "conv1", "conv1", "relu1", "norm1"),  # pool then norm
        ("alexnet", "conv1", "conv1", "relu1", "pool1"),  # norm then pool
        ("zfnet", "conv3", "conv3", "relu3", "relu3"),
        ("zfnet", "conv5", "conv5", "relu5", "pool5"),
        ("zfnet", None, "conv5", "relu5", "pool5"),  # the default: the last conv layer
        ("zfnet", "fc6", "fc6", "relu6", "relu6"),  # drop6 is not part of the block
        ("zfnet", "fc8", "fc8", "fc8", "fc8"),
        ("zfnet", "pool2", "pool2", "pool2", "pool2"),  # not a conv/linear: itself in every meaning
    ],
)
def test_paper_names_on_our_nets(net, layer, output, rectified, block):
    model = ours(net)
    assert [resolve(model, layer, m) for m in ("output", "rectified", "block")] == [output, rectified, block]


def test_the_defaults_keep_todays_meanings():
    """Occlusion's conv5 was relu5, the features' blocks ended at the last relu/pool/norm child."""
    for model in (ours("zfnet"), ours("alexnet"), ours("zfnet", drop=["conv3", "conv4"])):
        assert resolve(model, None, "rectified") == "relu5"
        names = [n for n, _ in model.named_children()]
        for conv in [n for n in names if n.startswith("conv")]:
            end = names.index(conv)
            while names[end + 1].startswith(("relu", "pool", "norm")):
                end += 1
            assert layer_outputs(model)[conv] == names[end]


@pytest.mark.parametrize(
    "net,layer,output,rectified,block",
    [
        ("alexnet", None, "features.10", "features.11", "features.12"),
        ("alexnet", "features.0", "features.0", "features.1", "features.2"),
        ("alexnet", "classifier.1", "classifier.1", "classifier.2", "classifier.2"),
        ("vgg11", None, "features.18", "features.19", "features.20"),
        ("vgg16", None, "features.28", "features.29", "features.30"),
        ("vgg11_bn", "features.0", "features.0", "features.2", "features.3"),  # conv, bn, relu, pool
        # The last conv sits in a BasicBlock (ReLU after the residual sum): the block, widened to layer4.
        ("resnet18", None, "layer4", "layer4", "layer4"),
        ("resnet50", None, "layer4", "layer4", "layer4"),
        ("resnet18", "layer4.1.conv2", "layer4.1.conv2", "layer4.1.conv2", "layer4.1.conv2"),
        ("resnet18", "layer3.0", "layer3.0", "layer3.0", "layer3.0"),
    ],
)
def test_module_paths_and_defaults_on_torchvision_nets(net, layer, output, rectified, block):
    model = on_meta(net)
    assert [resolve(model, layer, m) for m in ("output", "rectified", "block")] == [output, rectified, block]


def test_a_wrong_name_lists_the_valid_ones():
    model = ours()
    with pytest.raises(UserError) as error:
        resolve(model, "conv9", "rectified")
    assert str(error.value) == f"unknown layer 'conv9'; choose one of: {', '.join(layer_names(model))}"
    assert layer_names(model)[:4] == ["conv1", "relu1", "pool1", "norm1"]
    with pytest.raises(UserError, match="unknown layer ''"):
        resolve(model, "")
    with pytest.raises(UserError, match="unknown layer meaning 'pre'; choose one of: output, rectified, block"):
        resolve(model, "conv5", "pre")


def test_long_lists_show_the_top_level_and_weighted_layers_then_stop():
    # resnet18 has 60+ paths: the message keeps its stages and convs, not its batch norms.
    with pytest.raises(UserError) as error:
        resolve(on_meta("resnet18"), "conv5")
    shown = str(error.value).split("choose one of: ")[1].split(", ")
    assert shown[:6] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer1.0.conv1"]
    assert "layer1.0.bn1" not in shown and shown[-1] == "fc"
    deep = nn.Sequential(*[nn.Conv2d(1, 1, 1) for _ in range(100)])
    with pytest.raises(UserError) as error:
        resolve(deep, "conv5")
    assert str(error.value).endswith(", 38, 39, ... (60 more)")


def test_a_net_without_convs_has_no_default():
    with pytest.raises(UserError, match="no conv layer to default to; name a layer, one of: 0, 1"):
        resolve(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), None)


# --- capture -------------------------------------------------------------------------------------


def test_captured_outputs_equal_a_manual_forward():
    model, x = ours(), torch.randn(3, 3, 64, 64)
    names = [n for n, _ in model.named_children()]
    layers = ["conv1", "relu3", "pool5", "fc7"]
    with torch.no_grad():
        manual = {layer: model[: names.index(layer) + 1](x) for layer in layers}
        with Capture(model, layers) as capture:
            logits = capture(x)
        assert torch.equal(logits, model(x))  # the same kernels on the same batch: bit for bit
        for layer in layers:
            assert torch.equal(capture.outputs[layer], manual[layer])
        # Stopping: nothing after fc7 runs, the outputs are the same.
        fc8_calls = []
        model.fc8.register_forward_hook(lambda *_: fc8_calls.append(1))
        with Capture(model, {"a": "fc7", "b": "conv1"}, stop=True) as capture:
            assert capture(x) is None
        assert fc8_calls == [] and torch.equal(capture.outputs["a"], manual["fc7"])


def test_an_in_place_relu_after_the_layer_does_not_change_what_was_captured():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Conv2d(2, 1, 1))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = net[0](x)
        with Capture(net, ["0", "1"]) as capture:
            capture(x)
        flat = Capture(net, ["0"], keep=lambda out: out.flatten(1))  # a view of the map is cloned too
        with flat:
            flat(x)
    assert (expected < 0).any()
    assert torch.equal(capture.outputs["0"], expected)
    assert torch.equal(capture.outputs["1"], expected.relu())
    assert torch.equal(flat.outputs["0"], expected.flatten(1))


def test_graph_capture_keeps_the_graph_and_stops_at_the_last_layer_in_running_order():
    """``graph=True`` (the mechanism, maximization): gradients flow from what is kept to the input, a
    later in-place op does not touch it (the net goes on with a copy), ``order`` is the running order."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Conv2d(3, 1, 1))
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    calls = []
    net[4].register_forward_hook(lambda *_: calls.append(1))
    with Capture(net, ["2", "0"], stop=True, graph=True) as capture:
        assert capture(x) is None
    first, second = capture.outputs["0"], capture.outputs["2"]
    assert capture.order == ["0", "2"] and calls == []  # stopped after the later of the two
    with torch.no_grad():
        assert (net[0](x) < 0).any() and torch.equal(first, net[0](x))  # not rectified in place
    (grad,) = torch.autograd.grad(second.sum(), first)
    expected = torch.autograd.grad(net[2](net[1](first.clone())).sum(), first)[0]
    assert torch.equal(grad, expected)  # ``second`` was computed from ``first`` itself


def test_hooks_are_gone_after_the_block_and_after_an_exception():
    model = ours()
    with Capture(model, ["conv1", "fc7"], stop=True) as capture:
        assert hooks_left(model) == 2
        capture(torch.randn(1, 3, 64, 64))
    assert hooks_left(model) == 0
    with pytest.raises(RuntimeError), Capture(model, ["conv1", "fc7"]) as capture:
        capture(torch.randn(1, 5, 64, 64))  # wrong channel count: conv1 raises inside the forward
    assert hooks_left(model) == 0
    model.train()
    with pytest.raises(KeyError), stream(model, [torch.randn(1, 3, 64, 64)] * 3, ["conv2"]) as passes:
        for _seen, _ in passes:
            raise KeyError("the caller's loop fails")
    assert hooks_left(model) == 0 and all(m.training for m in model.modules())
    with pytest.raises(UserError, match="unknown layer 'conv9'"):
        Capture(model, ["conv9"])


def test_a_layer_the_forward_never_calls_is_a_user_error():
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(2, 2), nn.ReLU()

        def forward(self, x):
            return self.used(x)

    model = Partial()
    with pytest.raises(UserError, match=r"^layer\(s\) spare are never called"), Capture(model, ["used", "spare"]) as c:
        c(torch.randn(1, 2))
    assert hooks_left(model) == 0


def test_streaming_over_batches_equals_one_batch():
    model, x = ours(), torch.randn(11, 3, 64, 64)
    with stream(model, [x], ["relu2", "fc6"], stop=False) as passes:
        seen, logits = next(passes)
        whole = dict(seen)
    grad_modes = []
    with stream(model, [x[:4], x[4:9], x[9:]], ["relu2", "fc6"], stop=False) as passes:
        parts = []
        for seen, out in passes:
            grad_modes.append(torch.is_grad_enabled())  # the passes run without gradients, the loop body not
            parts.append((dict(seen), out))
    assert grad_modes == [True] * 3 and not parts[0][1].requires_grad
    for layer in ("relu2", "fc6"):
        # A batch of 4 and one of 11 may take different conv/matmul blockings: last bits can differ.
        assert_close(torch.cat([seen[layer] for seen, _ in parts]), whole[layer], atol=1e-5, rtol=1e-5)
    assert_close(torch.cat([out for _, out in parts]), logits, atol=1e-5, rtol=1e-5)


# --- occlusion's default layer on other nets -------------------------------------------------------


def brute_force(model, images, target, window, stride, layer):
    """One forward per occluder position (mean fill = 0), the map total from a plain hook on ``layer``."""
    n, _, h, w = images.shape
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
    try:
        with torch.no_grad():
            model(images)
            channel = seen[-1].flatten(2).amax(dim=2).argmax(dim=1)
            ys, xs = range(0, h - window + 1, stride), range(0, w - window + 1, stride)
            p_true, total = torch.zeros(n, len(ys), len(xs)), torch.zeros(n, len(ys), len(xs))
            for i in range(n):
                for r, y in enumerate(ys):
                    for c, x in enumerate(xs):
                        copy = images[i : i + 1].clone()
                        copy[..., y : y + window, x : x + window] = 0.0
                        p_true[i, r, c] = model(copy).softmax(dim=1)[0, target[i]]
                        total[i, r, c] = seen[-1][0, channel[i]].sum()
    finally:
        handle.remove()
    return p_true, total, channel


@pytest.mark.slow
@pytest.mark.parametrize("net,layer", [("alexnet", "features.11"), ("resnet18", "layer4")])
def test_occlusion_defaults_to_the_last_conv_block_on_torchvision_nets(net, layer):
    model = getattr(models, net)(weights=None, num_classes=10).eval()
    images, target = torch.randn(2, 3, 64, 64), torch.tensor([3, 8])
    maps = occlusion(model, images, target, Occluder(window=16, stride=16))
    p_true, total, channel = brute_force(model, images, target, 16, 16, layer)
    assert maps["layer"] == layer
    assert torch.equal(maps["channel"], channel)
    # Copies batched vs one at a time: the same math, blocked differently, so the last bits may differ.
    assert_close(maps["p_true"], p_true, atol=1e-6, rtol=1e-5)
    assert_close(maps["feature_activation"], total, atol=1e-4, rtol=1e-5)
    assert hooks_left(model) == 0


def test_occlusion_reports_the_layer_it_used_on_our_nets():
    model = ours()
    images = torch.randn(1, 3, 64, 64)
    default = occlusion(model, images, 1, Occluder(32, 32))
    named = occlusion(model, images, 1, Occluder(32, 32), layer="conv5")
    assert default["layer"] == named["layer"] == "relu5"
    for key in ("p_true", "feature_activation", "channel"):
        assert torch.equal(default[key], named[key])
