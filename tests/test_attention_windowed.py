"""Attention rollout and generic attention on Swin's windowed attention (issue 28).

The oracle is a brute force written pair by pair: for every two tokens of the padded map, whether the
cyclic shift puts them in one window, their places in it (the position bias) and their regions (the
shifted-window mask), the softmax taken over each window's members. It is checked against torchvision's
own module output, then our full-map matrices against it; the rollout and the relevance accumulation
are written out by hand on its matrices (merges built by hand too).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    ShiftedWindowAttention,
    ShiftedWindowAttentionV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)

from tests.test_attribution_core import assert_unchanged, snapshot
from zfviz.attribution import attribute
from zfviz.attribution.methods.attention import _rolled, _Step, full_map, merge_rows, window_attention
from zfviz.errors import UserError

METHODS = ("attention_rollout", "generic_attention")


def sharpened(module: nn.Module) -> nn.Module:
    """Larger weights and biases than the default init, so that the attention rows are far from uniform and
    every bias term (the key bias v2 drops included) is felt."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ShiftedWindowAttention):
                m.qkv.weight.mul_(4)
                m.qkv.bias.uniform_(-1, 1)
                if not isinstance(m, ShiftedWindowAttentionV2):
                    m.relative_position_bias_table.normal_(std=1.0)
    return module.eval()


def tiny_swin(v2: bool, depths: list[int], window: int) -> SwinTransformer:
    """torchvision's Swin (v1 or v2) in 2 x 2 patches, 8 channels, 2 heads a stage, a drawn head."""
    torch.manual_seed(0)
    v2_parts = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    model = SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=depths, num_heads=[2] * len(depths),
                            window_size=[window, window], stochastic_depth_prob=0.0, num_classes=3, **v2_parts)  # fmt: skip
    nn.init.normal_(model.head.weight, std=0.5)
    return sharpened(model)


def _band(at: int, side: int, window: int, shift: int) -> int:
    """The region of the shifted-window mask a (rolled) coordinate lies in: torchvision's three slices."""
    return 0 if at < side - window else 1 if at < side - shift else 2


def brute_probs(attn: ShiftedWindowAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """``(A, V, padded grid)``: per head the probabilities over the padded map's tokens (``N x heads x P x P``,
    row-major, zero between tokens of different windows) and the values (``N x heads x P x d``), pair by pair."""
    n, h, w, c = x.shape
    (wh, ww), heads = attn.window_size, attn.num_heads
    ph, pw = -(-h // wh) * wh, -(-w // ww) * ww
    shift = [s if win < side else 0 for s, win, side in zip(attn.shift_size, (wh, ww), (ph, pw), strict=True)]
    tokens = F.pad(x, (0, 0, 0, pw - w, 0, ph - h)).flatten(1, 2)
    bias, v2 = attn.qkv.bias.clone(), isinstance(attn, ShiftedWindowAttentionV2)
    if v2:
        bias[c : 2 * c] = 0
    q, k, v = F.linear(tokens, attn.qkv.weight, bias).unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)
    if v2:
        scale = attn.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * scale
    else:
        logits = q @ k.transpose(-2, -1) / math.sqrt(c // heads)
    table = attn.get_relative_position_bias()[0]  # heads x t x t, by place in the window
    window, place, region = [], [], []
    for r in range(ph):
        for col in range(pw):
            rr, cc = (r - shift[0]) % ph, (col - shift[1]) % pw  # where torch.roll(-shift) puts the token
            window.append((rr // wh, cc // ww))
            place.append((rr % wh) * ww + cc % ww)
            region.append((_band(rr, ph, wh, shift[0]), _band(cc, pw, ww, shift[1])) if any(shift) else 0)
    probs = torch.zeros_like(logits)
    for i in range(ph * pw):
        members = [j for j in range(ph * pw) if window[j] == window[i]]
        mask = torch.tensor([0.0 if region[j] == region[i] else -100.0 for j in members], dtype=x.dtype)
        scores = logits[:, :, i, members] + table[:, place[i], [place[j] for j in members]] + mask
        probs[:, :, i, members] = torch.softmax(scores, dim=-1)
    return probs, v, (ph, pw)


def through_projection(attn: ShiftedWindowAttention, mixed: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]):
    """The module's output from its attention's output before the projection (``N x heads x P x d`` on ``grid``),
    cropped to the ``size`` of its input."""
    out = F.linear(mixed.transpose(1, 2).flatten(2), attn.proj.weight, attn.proj.bias)
    return out.unflatten(1, grid)[:, : size[0], : size[1]]


# (window, shift, map): no padding, a shift, padding at the bottom and right, padding and a shift
CASES = [([3, 3], [0, 0], (6, 6)), ([3, 3], [1, 1], (6, 6)), ([3, 3], [0, 0], (5, 7)), ([2, 3], [1, 1], (5, 7))]


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("window, shift, grid", CASES)
def test_the_full_map_matrix_is_the_attention_the_module_computed(v2, window, shift, grid):
    kind = ShiftedWindowAttentionV2 if v2 else ShiftedWindowAttention
    torch.manual_seed(0)
    attn = sharpened(kind(8, window, shift, num_heads=2))
    x = torch.randn(2, *grid, 8)
    out, probs, tokens = window_attention(attn, x)
    with torch.no_grad():  # the same operations in torchvision's order: equal up to float rounding
        torch.testing.assert_close(out, attn(x), atol=1e-6, rtol=1e-5)
    attn, x = attn.double(), x.double()
    with torch.no_grad():
        want, v, padded = brute_probs(attn, x)
        torch.testing.assert_close(through_projection(attn, want @ v, padded, grid), attn(x))  # the oracle itself
    real = torch.tensor([r * padded[1] + c for r in range(grid[0]) for c in range(grid[1])])
    _, probs, tokens = window_attention(attn, x)
    count = grid[0] * grid[1]
    for head in range(2):
        ours = full_map(probs[:, head], tokens, count)
        torch.testing.assert_close(ours, want[:, head][:, real][:, :, real])
    if padded == grid:  # no padded token: the full-map matrix times the values is the attention's output
        ours = torch.stack([full_map(probs[:, head], tokens, count) for head in range(2)], dim=1)
        torch.testing.assert_close(through_projection(attn, ours @ v, grid, grid), attn(x).detach())


def inputs_of_attention(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """What each attention module of ``model`` reads in a plain forward pass (no code of ours)."""
    seen = []
    handles = [m.register_forward_hook(lambda _m, args, _o: seen.append(args[0])) for m in model.modules()
               if isinstance(m, ShiftedWindowAttention)]  # fmt: skip
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def hand_merge(h: int, w: int) -> torch.Tensor:
    """The patch merging's matrix on an even ``h x w`` grid: each merged token the mean of its 2 x 2 tokens."""
    merge = torch.zeros(h // 2 * w // 2, h * w, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            merge[r // 2 * (w // 2) + c // 2, r * w + c] = 0.25
    return merge


def hand_rolled(attn: ShiftedWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """``rownorm(mean_heads(A) + I)`` of the brute-force matrix, on the real tokens."""
    probs, _, padded = brute_probs(copy.deepcopy(attn).double(), x.double())
    h, w = x.shape[1:3]
    real = torch.tensor([r * padded[1] + c for r in range(h) for c in range(w)])
    mixed = probs.mean(dim=1)[:, real][:, :, real] + torch.eye(h * w, dtype=torch.float64)
    return mixed / mixed.sum(dim=-1, keepdim=True)


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("depths", [[2], [1, 1]])
def test_rollout_with_one_window_over_the_map_is_the_product_by_hand(v2, depths):
    """One 4 x 4 window over stage 1's 4 x 4 grid (the second block's shift dropped by torchvision, as the window
    spans the map); with [1, 1], a merge to 2 x 2 and a block on the padded map: ``R = Â_2 M Â_1``, the mean row."""
    model, x = tiny_swin(v2, depths, window=4), torch.randn(2, 3, 8, 8)
    blocks = [hand_rolled(attn, seen) for attn, seen in zip(
        [m for m in model.modules() if isinstance(m, ShiftedWindowAttention)], inputs_of_attention(model, x), strict=True)]  # fmt: skip
    relevance = blocks[1] @ (hand_merge(4, 4) if len(depths) == 2 else torch.eye(16, dtype=torch.float64)) @ blocks[0]
    want = relevance.mean(dim=1).reshape(2, 1, 4, 4)
    got = attribute(model, x, [0, 2], "attention_rollout", upsample=False)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5)
    full = attribute(model, x, 1, "attention_rollout")
    torch.testing.assert_close(full, F.interpolate(got, size=(8, 8), mode="bilinear"), atol=0, rtol=0)


def test_rows_of_every_rolled_matrix_and_of_the_merge_sum_to_one():
    torch.manual_seed(0)
    attn = sharpened(ShiftedWindowAttention(8, [2, 3], [1, 1], num_heads=2))
    x = torch.randn(2, 5, 7, 8)
    _, probs, tokens = window_attention(attn, x)
    rolled = _rolled(_Step((5, 7), probs, tokens), torch.eye(35).expand(2, -1, -1))
    torch.testing.assert_close(rolled.sum(dim=-1), torch.ones(2, 35))
    assert (rolled > 0).sum() < rolled.numel() / 2  # block-diagonal: most pairs share no window
    merged = merge_rows(torch.eye(35).expand(2, -1, -1), (5, 7))  # odd sides: padded as torchvision pads
    assert merged.shape == (2, 12, 35)
    torch.testing.assert_close(merged.sum(dim=-1), torch.ones(2, 12))
    assert merged[0, -1].nonzero().flatten().tolist() == [34]  # the corner token merges with padding alone
    torch.testing.assert_close(merge_rows(torch.eye(16, dtype=torch.float64)[None], (4, 4))[0], hand_merge(4, 4))


def by_hand_one_block(model: SwinTransformer, x: torch.Tensor, v2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, A)``: the one-block net in float64 with its attention written out by the brute force, ``A``
    (``N x heads x T x T``, one window over the map) in the graph."""
    model = copy.deepcopy(model).double()
    block, tokens = model.features[1][0], model.features[0](x.double())
    read = tokens if v2 else block.norm1(tokens)
    probs, v, grid = brute_probs(block.attn, read)
    attended = through_projection(block.attn, probs @ v, grid, grid)
    if v2:  # post-norm: t + norm(attn(t)), then t + norm(mlp(t))
        tokens = tokens + block.norm1(attended)
        tokens = tokens + block.norm2(block.mlp(tokens))
    else:  # pre-norm: t + attn(norm(t)), then t + mlp(norm(t))
        tokens = tokens + attended
        tokens = tokens + block.mlp(block.norm2(tokens))
    return model.head(model.norm(tokens).mean(dim=(1, 2))), probs


@pytest.mark.parametrize("v2", [False, True])
def test_generic_attention_of_one_block_by_hand(v2):
    """``R = I + mean_h((dy/dA * A)^+)``, the mean of its rows: the gradient from autograd on the net written out."""
    model, x, target = tiny_swin(v2, [2], window=4), torch.randn(2, 3, 8, 8), [2, 0]
    model.features[1] = model.features[1][:1]  # one block (torchvision builds no single-block Swin)
    got = attribute(model, x, target, "generic_attention", upsample=False)
    logits, probs = by_hand_one_block(model, x, v2)
    (grad,) = torch.autograd.grad(logits[[0, 1], target].sum(), probs)
    relevance = torch.eye(16, dtype=torch.float64) + (grad * probs).clamp(min=0).mean(dim=1)
    want = relevance.mean(dim=1).reshape(2, 1, 4, 4).detach()
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-4)
    assert (got != got.mean()).any()  # the gradient made a difference between tokens


class Failing(nn.Module):
    """Raises after the Swin's forward pass has called every hooked module."""

    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("method", METHODS)
def test_the_model_is_left_as_it_was_also_on_an_exception(method):
    model, x = tiny_swin(True, [1, 1], window=2), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = model(x)
    before = snapshot(model)
    got = attribute(model, x, [0, 1], method)
    assert got.shape == (2, 1, 8, 8) and torch.isfinite(got).all()
    assert_unchanged(model, before)
    assert all(not m._forward_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), plain)
    failing = nn.Sequential(model, Failing()).eval()
    with pytest.raises(RuntimeError, match="boom"):
        attribute(failing, x, 0, method)
    assert all(not m._forward_hooks for m in model.modules())
    assert_unchanged(model, before)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_torchvision_swin_gives_a_map_shaped_like_the_input(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    nn.init.normal_(model.head.weight, std=0.05)  # torchvision starts the head near zero
    before, x = snapshot(model), torch.randn(1, 3, 32, 32)
    for method in METHODS:
        got = attribute(model, x, 5, method)
        assert got.shape == (1, 1, 32, 32) and torch.isfinite(got).all() and got.abs().sum() > 0
        assert (got != got.mean()).any()
    assert_unchanged(model, before)
    assert all(not m._forward_hooks for m in model.modules())


class Unused(nn.Module):
    """Holds a Swin attention module its forward pass never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.attn, self.head = ShiftedWindowAttention(8, [2, 2], [0, 0], num_heads=2), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", METHODS)
def test_windowed_attention_never_called_is_one_line(method):
    with pytest.raises(UserError, match=f"^{method}: the model's forward pass calls none of its windowed attention"):
        attribute(Unused().eval(), torch.randn(1, 3, 8, 8), 0, method)
