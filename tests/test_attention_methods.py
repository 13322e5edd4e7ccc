"""Attention rollout (Abnar & Zuidema 2020) and generic attention (Chefer et al. 2021), issue 28.

Oracles: a forward pass of a hand-built two-layer attention net written again in numpy (its
probabilities, the rollout, the relevance accumulation); generic attention's gradient in closed form on
one layer; torch's own ``nn.MultiheadAttention`` with ``need_weights=True`` for the recomputed attention.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from tests.test_attribution_core import assert_unchanged, snapshot
from zfviz.attribution import attribute
from zfviz.attribution.methods.attention import recompute
from zfviz.commands import viz_attribution
from zfviz.errors import UserError
from zfviz.plotting.attribution import attribution_figure

METHODS = ("attention_rollout", "generic_attention")


class TinyTransformer(nn.Module):
    """2 x 2 patches of a one-channel image embedded linearly, a class token first, ``layers`` attention
    blocks ``t + attention(t)``, a linear head on the class token."""

    def __init__(self, layers: int = 2, dim: int = 4, heads: int = 2, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=batch_first) for _ in range(layers))
        self.head = nn.Linear(dim, 3)
        self.batch_first = batch_first

    def forward(self, x):
        t = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x).flatten(2).transpose(1, 2)], dim=1)
        for block in self.blocks:
            s = t if self.batch_first else t.transpose(0, 1)
            out = block(s, s, s, need_weights=False)[0]
            t = t + (out if self.batch_first else out.transpose(0, 1))
        return self.head(t[:, 0])


def tiny(layers: int = 2, **kwargs) -> TinyTransformer:
    torch.manual_seed(0)
    model = TinyTransformer(layers, **kwargs).eval()
    with torch.no_grad():  # sharper attention than the default init's near-uniform rows
        for block in model.blocks:
            block.in_proj_weight.mul_(3)
            block.in_proj_bias.uniform_(-0.5, 0.5)
    return model


def numpy_forward(model: TinyTransformer, x: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer, the attention probabilities (N x heads x T x T) and the tokens it reads, in float64."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    img = x.double().numpy()[:, 0]
    n, h, w = len(img), img.shape[1] // 2, img.shape[2] // 2
    patches = img.reshape(n, h, 2, w, 2).transpose(0, 1, 3, 2, 4).reshape(n, h * w, 4)
    tokens = patches @ p["embed.weight"].reshape(-1, 4).T + p["embed.bias"]
    t = np.concatenate([np.repeat(p["cls"], n, axis=0), tokens], axis=1)
    probs, seen = [], []
    for i, block in enumerate(model.blocks):
        heads, e = block.num_heads, block.embed_dim
        wq, wk, wv = np.split(p[f"blocks.{i}.in_proj_weight"], 3)
        bq, bk, bv = np.split(p[f"blocks.{i}.in_proj_bias"], 3)
        q, k, v = ((t @ w_.T + b_).reshape(n, -1, heads, e // heads).transpose(0, 2, 1, 3) for w_, b_ in
                   ((wq, bq), (wk, bk), (wv, bv)))  # fmt: skip
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(e // heads)
        a = np.exp(scores - scores.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        probs.append(a)
        seen.append(t)
        mixed = (a @ v).transpose(0, 2, 1, 3).reshape(n, -1, e)
        t = t + mixed @ p[f"blocks.{i}.out_proj.weight"].T + p[f"blocks.{i}.out_proj.bias"]
    return probs, seen


def test_rollout_equals_numpy():
    model, x = tiny(), torch.randn(2, 1, 6, 8)  # a 3 x 4 patch grid
    probs, _ = numpy_forward(model, x)
    tokens = probs[0].shape[-1]
    rollout = np.broadcast_to(np.eye(tokens), (2, tokens, tokens))
    for a in probs:
        mixed = a.mean(axis=1) + np.eye(tokens)
        rollout = (mixed / mixed.sum(-1, keepdims=True)) @ rollout
    want = rollout[:, 0, 1:].reshape(2, 1, 3, 4)
    got = attribute(model, x, [0, 2], "attention_rollout", upsample=False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)
    assert torch.equal(attribute(model, x, 1, "attention_rollout", upsample=False), got)  # no class in it
    full = attribute(model, x, [0, 2], "attention_rollout")
    assert full.shape == (2, 1, 6, 8)
    torch.testing.assert_close(full, nn.functional.interpolate(got, size=(6, 8), mode="bilinear"), atol=0, rtol=0)


def test_generic_attention_of_one_layer_by_hand():
    """One layer: y_c = w_c . (t_0 + W_o concat_h(sum_j A_h0j v_hj) + b_o) + b_c, so dy_c/dA_h0j = (W_o^T w_c)_h . v_hj
    and zero off the class row; R = I + mean_h (dy/dA * A)^+, read at the class row."""
    model, x = tiny(layers=1), torch.randn(2, 1, 4, 4)
    (a,), (t,) = numpy_forward(model, x)
    block = model.blocks[0]
    wv, bv = (block.in_proj_weight[8:].double().detach().numpy(), block.in_proj_bias[8:].double().detach().numpy())
    v = (t @ wv.T + bv).reshape(2, -1, 2, 2).transpose(0, 2, 1, 3)  # N x heads x T x d
    target = np.array([2, 0])
    reads = model.head.weight.double().detach().numpy()[target] @ block.out_proj.weight.double().detach().numpy()
    grad_class_row = np.einsum("nhd,nhjd->nhj", reads.reshape(2, 2, 2), v)  # N x heads x T
    want = np.maximum(grad_class_row * a[:, :, 0], 0).mean(axis=1)[:, 1:].reshape(2, 1, 2, 2)
    got = attribute(model, x, target.tolist(), "generic_attention", upsample=False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-7)
    assert got.abs().sum() > 0


def test_generic_attention_accumulates_through_the_layers_first_to_last():
    """Two layers: the gradients at each layer's probabilities from autograd on the net written out in
    float64 (no hooks; layer 1's gradient also reaches the target through layer 2's queries and keys),
    the accumulation R += mean_h((G * A)^+) @ R in numpy on the numpy forward's probabilities."""
    model, x, target = tiny(), torch.randn(2, 1, 4, 6), [1, 2]
    probs, _ = numpy_forward(model, x)
    p = {k: v.detach().double() for k, v in model.state_dict().items()}
    t = torch.cat(
        [
            p["cls"].expand(2, -1, -1),
            nn.functional.conv2d(x.double(), p["embed.weight"], p["embed.bias"], stride=2).flatten(2).transpose(1, 2),
        ],
        dim=1,
    )
    t, explicit = t.requires_grad_(True), []  # a leaf, so that the probabilities are in a graph
    for i in range(2):
        q, k, v = ((t @ w.T + b).unflatten(-1, (2, 2)).transpose(1, 2) for w, b in
                   zip(p[f"blocks.{i}.in_proj_weight"].chunk(3), p[f"blocks.{i}.in_proj_bias"].chunk(3), strict=True))  # fmt: skip
        explicit.append(torch.softmax(q @ k.transpose(-2, -1) / np.sqrt(2), dim=-1))
        mixed = (explicit[-1] @ v).transpose(1, 2).flatten(2)
        t = t + mixed @ p[f"blocks.{i}.out_proj.weight"].T + p[f"blocks.{i}.out_proj.bias"]
    logits = t[:, 0] @ p["head.weight"].T + p["head.bias"]
    grads = torch.autograd.grad(logits[[0, 1], target].sum(), explicit)
    relevance = np.broadcast_to(np.eye(7), (2, 7, 7))
    for a, g in zip(probs, grads, strict=True):
        relevance = relevance + np.maximum(g.detach().numpy() * a, 0).mean(axis=1) @ relevance
    want = relevance[:, 0, 1:].reshape(2, 1, 2, 3)
    got = attribute(model, x, target, "generic_attention", upsample=False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-7)


def test_the_recomputed_attention_is_torchs():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    q, k = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    out, probs = recompute(mha, q, k, k)
    want_out, want_probs = mha(q, k, k, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, want_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs, want_probs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_sequence_first_attention_gives_the_same_map(method):
    first, second = tiny(), tiny(batch_first=False)
    second.load_state_dict(first.state_dict())
    x = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(attribute(first, x, [0, 1], method), attribute(second, x, [0, 1], method))


@pytest.mark.parametrize("method", METHODS)
def test_the_model_is_left_as_it_was(method):
    model, x = tiny(), torch.randn(2, 1, 4, 4)
    with torch.no_grad():
        plain = model(x)
    before = snapshot(model)
    attribute(model, x, [0, 1], method)
    assert_unchanged(model, before)
    assert all(not m._forward_hooks and not m._forward_hooks_with_kwargs for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), plain)


class Masked(TinyTransformer):
    """Its attention called with a mask, which the recomputation would leave out."""

    def forward(self, x):
        t = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x).flatten(2).transpose(1, 2)], dim=1)
        mask = torch.zeros(t.shape[1], t.shape[1], dtype=torch.bool)
        return self.head(self.blocks[0](t, t, t, attn_mask=mask, need_weights=False)[0][:, 0])


@pytest.mark.parametrize("method", METHODS)
def test_a_masked_attention_is_refused_in_one_line_and_the_hooks_go(method):
    torch.manual_seed(0)
    model = Masked(layers=1).eval()
    before = snapshot(model)
    with pytest.raises(UserError, match=r"cannot handle blocks.0 \(MultiheadAttention\): an attention mask") as err:
        attribute(model, torch.randn(1, 1, 4, 4), 0, method)
    assert "\n" not in str(err.value)
    assert_unchanged(model, before)
    assert all(not m._forward_hooks and not m._forward_hooks_with_kwargs for m in model.modules())


@pytest.mark.parametrize("method", METHODS)
def test_a_cnn_is_refused_naming_the_methods_that_work(method):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UserError) as err:
        attribute(model.eval(), torch.randn(1, 3, 8, 8), 0, method)
    message = str(err.value)
    assert message.startswith(f"{method} needs self-attention (nn.MultiheadAttention") and "\n" not in message
    works = message.split("methods that work on it: ")[1].split(", ")
    assert {"saliency", "gradcam", "guided_backprop", "lrp"} <= set(works) and not set(METHODS) & set(works)


def test_an_empty_container_does_not_strike_methods_from_the_list():
    """ShuffleNetV2's stride-1 blocks hold an empty ``nn.Sequential`` (branch1): a leaf by its children, but no
    computation, so the rule-based methods that work on the net stay in the refusal's list."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))  # fmt: skip
    with pytest.raises(UserError) as err:
        attribute(model.eval(), torch.randn(1, 3, 8, 8), 0, "attention_rollout")
    works = str(err.value).split("methods that work on it: ")[1].split(", ")
    assert {"deconvnet", "guided_backprop", "lrp", "guided_gradcam"} <= set(works)


@pytest.mark.parametrize("method", METHODS)
def test_a_torchvision_vit_gives_a_finite_non_zero_map(method):
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    nn.init.normal_(model.heads.head.weight, std=0.05)  # torchvision starts the head at zero
    x = torch.randn(2, 3, 32, 32)
    got = attribute(model.eval(), x, [3, 7], method)
    assert got.shape == (2, 1, 32, 32) and torch.isfinite(got).all() and (got.flatten(1).abs().sum(1) > 0).all()


def small_vit() -> nn.Module:
    """torchvision's ViT at 32 px in 8 px patches, its head drawn: ``net=tests.test_attention_methods:small_vit``."""
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    nn.init.normal_(model.heads.head.weight, std=0.05)  # torchvision starts the head at zero
    return model


@pytest.mark.slow  # a command run: the net, two photos, the figure
@pytest.mark.parametrize("method, overlaid", [*((m, True) for m in METHODS), ("saliency", False)])
def test_the_command_draws_attention_maps_over_the_image(method, overlaid, viz_config, photo_folder, tmp_path,
                                                         monkeypatch):  # fmt: skip
    drawn = {}

    def figure(*args, **kwargs):
        drawn.update(kwargs)
        return attribution_figure(*args, **kwargs)

    monkeypatch.setattr(viz_attribution, "attribution_figure", figure)
    net = "viz.net=tests.test_attention_methods:small_vit"
    viz_attribution.run(viz_config("attribution", "checkpoint=null", net, f"viz.images={photo_folder}",
                                   "viz.size=32", f"viz.method={method}"))  # fmt: skip
    maps = np.load(tmp_path / f"attribution_{method}.npz")["maps"]
    if overlaid:  # one channel, non-negative, a value per patch: a heat map like Grad-CAM's
        assert maps.shape == (2, 1, 32, 32) and (maps >= 0).all() and maps.any()
    else:  # saliency's signed gradient per pixel and channel, drawn beside the image
        assert maps.shape == (2, 3, 32, 32) and (maps < 0).any()
    assert drawn["overlay"] is overlaid


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_vit_b_16_random_weights(method):
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=64).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    before = snapshot(model)
    got = attribute(model, torch.randn(1, 3, 64, 64), 5, method)
    assert got.shape == (1, 1, 64, 64) and torch.isfinite(got).all() and got.abs().sum() > 0
    assert_unchanged(model, before)
