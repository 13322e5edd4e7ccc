"""zfviz's fast contrast normalization against PyTorch's ``nn.LocalResponseNorm`` (the oracle, issue 17)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zfviz.models import LocalResponseNorm, build_model
from zfviz.models import lrn as lrn_module

# The maps the two LRN layers of ZFNet and AlexNet see: cpu preset (64 px, width 0.25, batch 128) and
# paper preset (224 px, batch 8; the maps are what matter, the batch only repeats them).
CPU_SHAPES = [(128, 24, 15, 15), (128, 64, 3, 3), (128, 64, 7, 7)]
PAPER_SHAPES = [(2, 96, 55, 55), (2, 256, 13, 13), (2, 256, 27, 27)]
PRESET = (5, 5e-4, 0.75, 2.0)  # size, alpha, beta, k of models/convnets.py


def both(shape, size, alpha, beta, k, scale=3.0, dtype=torch.float32, memory_format=torch.contiguous_format):
    """Output and input gradient of PyTorch's layer and ours on the same input and output gradient."""
    x = (torch.randn(shape, dtype=dtype) * scale).contiguous(memory_format=memory_format)
    g = torch.randn(shape, dtype=dtype)
    results = []
    for layer in (nn.LocalResponseNorm(size, alpha, beta, k), LocalResponseNorm(size, alpha, beta, k)):
        xx = x.clone().requires_grad_()
        y = layer(xx)
        y.backward(g)
        results.append((y.detach(), xx.grad))
    return results


# 1e-5: the same formula, but a window sum in another order and d**-beta via rsqrt instead of pow.
@pytest.mark.parametrize("shape", CPU_SHAPES + PAPER_SHAPES)
def test_equals_pytorch_on_the_presets_shapes(shape):
    (y_ref, g_ref), (y, g) = both(shape, *PRESET)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


# Large alpha so the window sum matters (at the presets' alpha it barely moves d); odd and even
# sizes (PyTorch's window for even n reaches one channel further back than forward), windows wider
# than the channels, and betas with and without a special-cased power.
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 9])
@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6])
def test_equals_pytorch_for_odd_and_even_sizes(size, beta):
    (y_ref, g_ref), (y, g) = both((3, 7, 5, 4), size, alpha=0.5, beta=beta, k=1.0, scale=2.0)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 6, 9), (2, 6, 3, 4, 5)])
def test_3d_and_5d_inputs(shape):
    (y_ref, g_ref), (y, g) = both(shape, 4, alpha=0.5, beta=0.75, k=1.0)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_channels_last_and_many_uneven_chunks(monkeypatch):
    # A chunk of 2 images out of 13: the batch loop's last chunk is short.
    monkeypatch.setattr(lrn_module, "CHUNK", 100)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    for fmt in (torch.contiguous_format, torch.channels_last):
        (y_ref, g_ref), (y, g) = both((13, 8, 5, 5), 5, 0.5, 0.75, 1.0, memory_format=fmt)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("size", [2, 3, 5])
def test_gradcheck_and_second_derivatives_in_float64(size):
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    layer = LocalResponseNorm(size, alpha=0.3, beta=0.75, k=1.5)
    assert torch.autograd.gradcheck(layer, (x,))
    assert torch.autograd.gradgradcheck(layer, (x,))


@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_float64_matches_pytorch_to_rounding(beta):
    (y_ref, g_ref), (y, g) = both((4, 10, 6, 6), 5, 0.5, beta, 1.0, dtype=torch.float64)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def test_same_module_kind_repr_and_refusals():
    layer = LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    assert isinstance(layer, nn.LocalResponseNorm)  # every rule and fast path keyed on it still applies
    assert repr(layer) == repr(nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
    assert layer.state_dict() == {}  # nothing to save: old checkpoints load unchanged
    with pytest.raises(ValueError, match="3D or higher"):
        layer(torch.ones(2, 3))
    empty = torch.ones(0, 4, 2, 2)
    assert layer(empty).shape == empty.shape


@pytest.mark.parametrize("name", ["zfnet", "alexnet"])
def test_a_model_built_with_it_matches_one_with_pytorchs(name):
    model = build_model(name, num_classes=10, input_size=64, width=0.25, fc_dims=64).eval()
    lrns = [n for n, m in model.named_children() if isinstance(m, nn.LocalResponseNorm)]
    assert lrns == ["norm1", "norm2"] and all(type(model.get_submodule(n)) is LocalResponseNorm for n in lrns)
    old = copy.deepcopy(model)
    for n in lrns:
        m = model.get_submodule(n)
        setattr(old, n, nn.LocalResponseNorm(m.size, m.alpha, m.beta, m.k))
    old.load_state_dict(model.state_dict())  # the same checkpoint fits both
    x = torch.randn(8, 3, 64, 64, requires_grad=True)
    outs, grads = [], []
    for net in (old, model):
        x.grad = None
        out = net(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append(x.grad.clone())
    # Not bit-equal: the normalization rounds differently and the convs pass that on.
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_equals_pytorch():
    x = torch.randn(4, 96, 13, 13, device="cuda", requires_grad=True)
    g = torch.randn_like(x)
    y_ref = nn.LocalResponseNorm(*PRESET)(x)
    (g_ref,) = torch.autograd.grad(y_ref, x, g)
    y = LocalResponseNorm(*PRESET)(x)
    (g_new,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_new, g_ref, rtol=1e-5, atol=1e-5)
