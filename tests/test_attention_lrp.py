"""LRP through attention (AttnLRP, Achtibat et al. 2024) on torchvision's ViT and Swin, issue 28.

Oracles: each rule against another formulation of it (the softmax rule as the epsilon rule on the softmax's
Jacobian, the uniform rule term by term); the whole net against AttnLRP written as gradient x input of a
modified forward pass, as the paper's library does it (``lxt``'s efficient mode): every layer norm's sigma
detached, GELU's gradient replaced by ``out / in`` (the identity rule), the gradient of each attention
product halved (the uniform rule), everything else autograd's own, in float64 -- equal to the per-operation
rules of ``zfviz.attribution.transformer`` when epsilon is 0. Conservation: with every bias zero the
relevance is conserved block by block, up to the softmax's bias term (AttnLRP's Proposition 3.1 leaves it
out), which the oracle measures at each softmax.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode
from torchvision.models.maxvit import MaxVit, RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    ShiftedWindowAttention,
    ShiftedWindowAttentionV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)
from torchvision.models.vision_transformer import VisionTransformer

from tests.cli_args import run_zfviz
from tests.test_attribution_core import assert_unchanged, snapshot
from zfviz.attribution import attribute, backward
from zfviz.attribution.composites import lrp_from_options
from zfviz.attribution.rules import product_relevance, softmax_relevance
from zfviz.attribution.transformer import attend, read_maxvit, read_mha, read_swin
from zfviz.errors import UserError

LRP0 = {"composite": None, "rule": None, "first_rule": None, "epsilon": 0.0}
LRP0 |= {"alpha": None, "beta": None, "low": None, "high": None}


# --- the rules ----------------------------------------------------------------------------------------


def test_the_softmax_rule_is_epsilon_on_its_linearization_and_leaves_out_the_bias_term():
    torch.manual_seed(0)
    x, relevance = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    probs = x.softmax(-1)
    got = softmax_relevance(x, probs, relevance)
    for row in range(3):  # R_i = sum_j x_i (ds_j/dx_i) R_j / s_j: the epsilon rule (epsilon 0) on the Jacobian
        jacobian = torch.autograd.functional.jacobian(lambda t: t.softmax(-1), x[row])  # [j, i] = ds_j/dx_i
        want = x[row] * (jacobian * (relevance[row] / probs[row])[:, None]).sum(0)
        torch.testing.assert_close(got[row], want)
    # what is not passed on is the Taylor decomposition's bias term, sum_j R_j (1 - x_j + sum_i s_i x_i)
    bias = (relevance * (1 - x + (probs * x).sum(-1, keepdim=True))).sum(-1)
    torch.testing.assert_close(got.sum(-1) + bias, relevance.sum(-1))


def test_the_uniform_rule_gives_each_operand_half_by_epsilon_term_by_term():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    z, relevance = a @ b, torch.randn(2, 3, 5, dtype=torch.float64)
    got_a, got_b = product_relevance(a, b, relevance, z, 0.0)
    # the contribution a_ik b_kj of each term to z_ij, half of it, times R_ij / z_ij
    share = relevance / (2 * z)
    torch.testing.assert_close(got_a, torch.einsum("nik,nkj,nij->nik", a, b, share))
    torch.testing.assert_close(got_b, torch.einsum("nik,nkj,nij->nkj", a, b, share))
    torch.testing.assert_close(got_a.sum(), relevance.sum() / 2)
    torch.testing.assert_close(got_b.sum(), relevance.sum() / 2)


def test_a_bias_added_to_the_product_keeps_its_share():
    torch.manual_seed(0)
    a, b = torch.randn(1, 2, 3, dtype=torch.float64), torch.randn(1, 3, 2, dtype=torch.float64)
    bias, relevance = torch.randn(1, 2, 2, dtype=torch.float64), torch.randn(1, 2, 2, dtype=torch.float64)
    got_a, got_b = product_relevance(a, b, relevance, a @ b + bias, 0.0)
    torch.testing.assert_close(got_a.sum() + got_b.sum(), (relevance * (a @ b) / (a @ b + bias)).sum())


# --- the attention recomputed from its module's weights -----------------------------------------------------


@pytest.mark.parametrize("kind", [ShiftedWindowAttention, ShiftedWindowAttentionV2])
@pytest.mark.parametrize("shift", [[0, 0], [1, 1], [1, 0]])
def test_swins_attention_recomputed_is_torchvisions(kind, shift):
    torch.manual_seed(0)
    attn = kind(8, [2, 3], shift, num_heads=2).eval()
    with torch.no_grad():
        attn.qkv.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 5, 7, 8)  # padded to whole windows on both axes
    heads, to_tokens, back = read_swin(attn, x)
    with torch.no_grad():
        torch.testing.assert_close(back(attend(heads, to_tokens(x)).out), attn(x))


def test_maxvits_attention_recomputed_is_torchvisions():
    torch.manual_seed(0)
    attn = RelativePositionalMultiHeadAttention(8, 4, 4).eval()
    x = torch.randn(2, 3, 4, 8)  # 3 windows of 2 x 2 tokens
    heads, to_tokens, back = read_maxvit(attn, x)
    with torch.no_grad():
        torch.testing.assert_close(back(attend(heads, to_tokens(x)).out), attn(x))


def test_vits_attention_recomputed_is_torchs():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    heads, to_tokens, back = read_mha(mha, x)
    with torch.no_grad():
        torch.testing.assert_close(back(attend(heads, to_tokens(x)).out), mha(x, x, x, need_weights=False)[0])


# --- the oracle: AttnLRP as gradient x input of a modified forward pass --------------------------------------


class _Half(torch.autograd.Function):
    """The identity, half the gradient back: the uniform rule of a product in gradient x input form."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad / 2


class _IdentityRule(torch.autograd.Function):
    """``fn(x)`` with the gradient ``out / in``: its relevance passes unchanged (AttnLRP's identity rule, for
    GELU and Swin V2's normalization of queries and keys)."""

    @staticmethod
    def forward(ctx, x, fn):
        out = fn(x)
        ctx.save_for_backward(torch.where(x == 0, 0.0, out / x))  # at 0 the relevance is 0 either way
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.saved_tensors[0], None


def _layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(shape), 0))
    centred = x - x.mean(dims, keepdim=True)
    sigma = centred.square().mean(dims, keepdim=True).add(eps).sqrt().detach()
    return centred / sigma * weight + bias


_PRODUCTS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.einsum)  # attention's, in these nets


def _identity(fn):
    """``fn`` (of one tensor, with options) under the identity rule."""
    return lambda x, *args, **kwargs: _IdentityRule.apply(x, lambda t: fn(t, *args, **kwargs))


def _constant(fn):
    """``fn`` as a constant: a squeeze-and-excitation's sigmoid gate gets no relevance (the signal takes all)."""
    return lambda *args, **kwargs: fn(*args, **kwargs).detach()


class AttnLRPAsGradient(TorchFunctionMode):
    """Inside, a forward pass whose gradient times the input is AttnLRP-0; keeps each softmax's input and
    output (the relevance entering and leaving it is each times its gradient)."""

    def __init__(self):
        super().__init__()
        self.softmaxes: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.replaced = {
            F.layer_norm: _layer_norm,
            F.gelu: _identity(F.gelu),
            torch.tanh: _identity(torch.tanh),
            F.normalize: _identity(F.normalize),
            torch.sigmoid: _constant(torch.sigmoid),
            F.softmax: self.softmax,
            F.multi_head_attention_forward: self.attention,
        }

    def softmax(self, scores, *_args, **_kwargs):
        probs = scores.softmax(-1)
        self.softmaxes.append((scores, probs))
        return probs

    def attention(self, query, _key, _value, _dim, heads, w_in, b_in, *args, **kwargs):
        """``F.multi_head_attention_forward`` (sequence first), as ViT's attention calls it: no mask."""
        x = query.transpose(0, 1)
        projections = zip(w_in.chunk(3), b_in.chunk(3), strict=True)
        q, k, v = (F.linear(x, w, b).unflatten(-1, (heads, -1)).transpose(1, 2) for w, b in projections)
        probs = self.softmax(_Half.apply(q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]))
        mixed = _Half.apply(probs @ v).transpose(1, 2).flatten(2)
        return F.linear(mixed, args[4], args[5]).transpose(0, 1), None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.replaced:
            return self.replaced[func](*args, **kwargs)
        out = func(*args, **kwargs)
        return _Half.apply(out) if func in _PRODUCTS else out


def oracle(model: nn.Module, x: torch.Tensor, target: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """AttnLRP-0 at the input, and the relevance each softmax does not pass on (per softmax, in call order)."""
    x = x.clone().requires_grad_(True)
    with AttnLRPAsGradient() as mode:
        score = model(x)[range(len(x)), target].sum()
    ins, outs = zip(*mode.softmaxes, strict=True)
    grads = torch.autograd.grad(score, [x, *ins, *outs])
    at_ins, at_outs = grads[1 : 1 + len(ins)], grads[1 + len(ins) :]
    kept = [(o * g).sum() - (i * h).sum() for i, o, h, g in zip(ins, outs, at_ins, at_outs, strict=True)]
    return (x * grads[0]).detach(), torch.stack(kept).detach()


_BIASES = ("bias", "class_token", "pos_embedding", "bias_table")


def _draw(model: nn.Module, head: nn.Linear, zero_biases: bool) -> nn.Module:
    """Biases (and what acts as one: the class token, position embeddings, Swin's position bias table) drawn
    anew or zero, the head drawn anew (torchvision's ViT starts it at zero), in float64."""
    with torch.no_grad():
        biases = [p for name, p in model.named_parameters() if name.endswith(_BIASES)]
        for p in biases:
            p.uniform_(-0.5, 0.5)  # drawn either way: the head drawn next is the same
            if zero_biases:
                p.zero_()
        head.weight.normal_(0, 0.5)
    return model.double().eval()


def tiny_vit(zero_biases: bool = False) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16)
    with torch.no_grad():  # sharper attention than the initialization's
        for block in model.encoder.layers:
            block.self_attention.in_proj_weight.mul_(3)
    return _draw(model, model.heads.head, zero_biases)


def tiny_swin(v2: bool = False, zero_biases: bool = False) -> SwinTransformer:
    """Patches of 2 px, windows of 2: a 10 px input is 5 x 5 tokens (padded to 6), then 3 x 3 (padded to 4)."""
    torch.manual_seed(0)
    kinds = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    model = SwinTransformer([2, 2], 8, [2, 2], [2, 2], [2, 2], num_classes=5, **kinds)
    return _draw(model, model.head, zero_biases)


def tiny_maxvit(zero_biases: bool = False) -> MaxVit:
    """A 16 px input, 8 x 8 after the stem, two blocks of one layer: windows and grid cells of 2 x 2 tokens. Its
    MBConvs' pre-norms (batch norms before a conv, which LRP passes) are a per-channel scaling: their mean and
    bias 0, so gradient x input passes them too."""
    torch.manual_seed(0)
    model = MaxVit((16, 16), 8, 2, [8, 16], [1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=5)
    model = _draw(model, model.classifier[-1], zero_biases)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pre_norm.bias"):
                p.zero_()
    return model


NETS = {
    "vit": (tiny_vit, (3, 8, 8)),
    "swin": (tiny_swin, (3, 10, 10)),
    "swin_v2": (lambda **kw: tiny_swin(v2=True, **kw), (3, 10, 10)),
    "maxvit": (tiny_maxvit, (3, 16, 16)),
}


def lrp0(model: nn.Module, x: torch.Tensor, target, wrt: str | None = None):
    """LRP-0 through the mechanism with every stabilizer 0: the sums' and layer norms' too, which ``epsilon=``
    does not reach (their 1e-6 moves a map by about 1e-4 of its largest value)."""
    composite = lrp_from_options(**LRP0)
    for _, rule in composite.rules:
        if hasattr(rule, "epsilon"):
            rule.epsilon = 0.0
    return backward(model, x, target, composite=composite, start="value", wrt=wrt)


@pytest.mark.parametrize("net", NETS)
def test_lrp_equals_attnlrp_as_gradient_times_input(net):
    build, shape = NETS[net]
    model = build()
    x = torch.randn(2, *shape, dtype=torch.float64)
    want, _ = oracle(model, x, [1, 3])
    got = lrp0(model, x, [1, 3]).inputs
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert got.abs().sum() > 0
    # the method's own stabilizers (epsilon=0 reaches the linear layers and the attention) move it by little
    torch.testing.assert_close(
        attribute(model, x, [1, 3], "lrp", epsilon=0.0), got, rtol=0, atol=1e-3 * got.abs().max()
    )


@pytest.mark.parametrize("net", ["vit", "swin", "maxvit"])
def test_with_every_bias_zero_relevance_is_conserved_up_to_the_softmax_bias_terms(net):
    build, shape = NETS[net]
    model = build(zero_biases=True)
    x = torch.randn(2, *shape, dtype=torch.float64)
    _, kept = oracle(model, x, [1, 3])
    with torch.no_grad():
        logits = model(x)[[0, 1], [1, 3]]
    got = lrp0(model, x, [1, 3]).inputs
    torch.testing.assert_close(got.sum(), logits.sum() - kept.sum())
    assert kept.abs().max() > 1e-3  # the softmax's term is real: conservation is not exact, as the paper says


def test_block_by_block_on_the_tiny_vit():
    """The relevance at each block's output (the mechanism's own signal there) sums to the block's input's
    plus what its softmax kept; the final layer norm and the head, biases zero, conserve it exactly."""
    model, x = tiny_vit(zero_biases=True), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    _, kept = oracle(model, x, [2])
    layers = ["encoder.dropout", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    sums = [lrp0(model, x, 2, wrt=layer).layer_grad.sum() for layer in layers]
    with torch.no_grad():
        logit = model(x)[0, 2]
    torch.testing.assert_close(sums[-1], logit)
    for block in range(2):
        torch.testing.assert_close(sums[block + 1] - sums[block], kept[block])


# --- the model, the maps ------------------------------------------------------------------------------


@pytest.mark.parametrize("net", NETS)
def test_the_model_is_left_as_it_was_and_the_map_is_not_saliencys(net):
    build, shape = NETS[net]
    model = build()
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        plain = model(x)
    before = snapshot(model)
    got = attribute(model, x, [1, 3], "lrp")
    assert_unchanged(model, before)
    with torch.no_grad():
        assert torch.equal(model(x), plain)
    saliency = attribute(model, x, [1, 3], "saliency")
    for other in (saliency, x * saliency):
        assert not torch.allclose(got, other, rtol=1e-2, atol=1e-3 * float(got.abs().max()))


def test_other_methods_of_the_family_still_refuse_attention():
    model = tiny_vit()
    for method in ("deconvnet", "guided_backprop"):
        with pytest.raises(UserError, match=f"^{method} cannot handle"):
            attribute(model, torch.randn(1, 3, 8, 8, dtype=torch.float64), 0, method)


def _redrawn(model: nn.Module, head: nn.Linear) -> nn.Module:
    with torch.no_grad():
        head.weight.normal_(0, 0.02)
        head.bias.zero_()
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,size,head",
    [("vit_b_16", 32, lambda m: m.heads.head), ("swin_t", 32, lambda m: m.head)],
    ids=["vit_b_16", "swin_t"],
)
def test_torchvision_transformers_random_weights(name, size, head):
    """At the smallest input each allows: ViT-B/16 built for 32 px (2 x 2 patches), Swin-T at 32 px."""
    torch.manual_seed(0)
    kwargs = {"image_size": size} if name.startswith("vit") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    model = _redrawn(model, head(model))
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        plain = model(x)
    before = snapshot(model)
    got = attribute(model, x, 5, "lrp")
    assert got.shape == x.shape and torch.isfinite(got).all() and got.abs().sum() > 0
    assert_unchanged(model, before)
    with torch.no_grad():
        assert torch.equal(model(x), plain)
    saliency = attribute(model, x, 5, "saliency")
    assert not torch.allclose(got, saliency, rtol=1e-2, atol=1e-3 * float(got.abs().max()))


@pytest.mark.slow
def test_the_cli_runs_lrp_on_vit_b_16_from_a_local_state_dict(photo_folder, tmp_path):
    """``zfviz viz attribution net=torchvision:vit_b_16 weights=<file> method=lrp images=<folder>``, at the
    224 px ViT-B/16 is built for (random weights, the head drawn anew: torchvision starts it at zero)."""
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    args = ["viz", "attribution", "net=torchvision:vit_b_16", f"weights={tmp_path / 'vit.pth'}", "method=lrp"]
    done = run_zfviz(*args, f"images={photo_folder}", "device=cpu", "out_dir=out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    maps = torch.from_numpy(np.load(tmp_path / "out" / "attribution_lrp.npz")["maps"])
    assert maps.shape == (2, 3, 224, 224) and torch.isfinite(maps).all() and (maps.flatten(1).abs().sum(1) > 0).all()
