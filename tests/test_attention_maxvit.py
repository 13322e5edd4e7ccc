"""Attention rollout and generic attention on MaxViT (issue 28; the convention in attention.py's docstring).

The oracles are brute forces written token by token: the window and grid attention laid on the stage's map
by formulas for where torchvision's partition puts each token (checked against the module's own output), the
MBConv's matrix by a loop over each token's 3 x 3 neighbourhood, both built as dense matrices and multiplied
through the net by hand; generic attention's gradient at one layer against a central finite difference of the
net with that layer's probabilities replaced.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.maxvit import MaxVit, PartitionAttentionLayer, RelativePositionalMultiHeadAttention

from tests.test_attribution_core import assert_unchanged, snapshot
from zfviz.attribution import attribute
from zfviz.attribution.methods.attention import (
    _forward,
    _rolled,
    _window_product,
    flow,
    full_map,
    neighbourhood_rows,
    partition_attention,
)
from zfviz.errors import UserError

METHODS = ("attention_rollout", "generic_attention")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: a second thread on busy cores mostly waits


def sharpened(model: nn.Module) -> nn.Module:
    """Larger attention weights and position biases than the default init, so that the rows are far from uniform,
    and a drawn head, so that generic attention's gradients differ between tokens; float64, eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RelativePositionalMultiHeadAttention):
                m.to_qkv.weight.normal_(std=0.5)
                m.to_qkv.bias.uniform_(-1, 1)
                m.relative_position_bias_table.normal_(std=1.0)
        if isinstance(model, MaxVit):
            model.classifier[-1].weight.normal_(std=0.5)
    return model.double().eval()


def tiny_maxvit() -> MaxVit:
    """A 32 px input, 16 x 16 after the stem; a stage of two layers on 8 x 8 (a stride-2 MBConv, then one of
    stride 1), one on 4 x 4; windows of 2 x 2 tokens, grid cells 4 (then 2) tokens apart."""
    torch.manual_seed(0)
    model = MaxVit((32, 32), 8, 2, [8, 16], [2, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=5)
    return sharpened(model)


def layer(kind: str, grid: tuple[int, int], partition: int) -> PartitionAttentionLayer:
    torch.manual_seed(0)
    made = PartitionAttentionLayer(8, 4, partition, kind, grid, 2, nn.GELU, nn.LayerNorm, 0.0, 0.0, 0.0)
    return sharpened(made)


def group_and_place(kind: str, grid: tuple[int, int], partition: int, r: int, c: int) -> tuple[int, int]:
    """Which group (window or grid cell) torchvision's partition puts token ``(r, c)`` in, and where in it."""
    h, w = grid
    if kind == "window":  # P x P neighbouring tokens, windows row-major, tokens row-major in each
        return (r // partition) * (w // partition) + c // partition, (r % partition) * partition + c % partition
    p = h // partition  # the grid's step: tokens p apart share a group, one per p x p block, blocks row-major
    return (r % p) * p + c % p, (r // p) * (w // p) + c // p


def dense(kind: str, grid: tuple[int, int], partition: int, probs: torch.Tensor) -> torch.Tensor:
    """The ``N x heads x H*W x H*W`` matrix of the attention on the map, pair by pair (``probs``:
    ``N*groups x heads x t x t`` as the module computed them)."""
    h, w = grid
    where = [group_and_place(kind, grid, partition, r, c) for r in range(h) for c in range(w)]
    n = len(probs) // len({g for g, _ in where})
    probs = probs.unflatten(0, (n, -1))
    out = probs.new_zeros(n, probs.shape[2], h * w, h * w)
    for i, (gi, pi) in enumerate(where):
        for j, (gj, pj) in enumerate(where):
            if gi == gj:
                out[:, :, i, j] = probs[:, gi, :, pi, pj]
    return out


PARTITIONS = [("window", (4, 4), 2), ("grid", (4, 4), 2), ("window", (6, 6), 3), ("grid", (6, 6), 3),
              ("window", (6, 6), 2), ("grid", (6, 6), 2), ("grid", (8, 8), 2)]  # fmt: skip


@pytest.mark.parametrize("kind, grid, partition", PARTITIONS)
def test_the_gathered_product_is_the_dense_matrix_built_pair_by_pair(kind, grid, partition):
    made = layer(kind, grid, partition)
    x = torch.randn(2, 8, *grid, dtype=torch.float64)
    seen = []
    handle = made.attn_layer[1].register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    try:
        with torch.no_grad():
            want_out = made(x)
    finally:
        handle.remove()
    attn, read = made.attn_layer[1], seen[0]
    with torch.no_grad():
        out, probs, tokens = partition_attention(attn, made, read)
        torch.testing.assert_close(out, attn(read))
        matrix = dense(kind, grid, partition, probs)
        # the oracle's indices are torchvision's: its matrix mixing the map's values gives the layer's output
        on_map = x.flatten(2).transpose(1, 2)  # N x H*W x C, row-major
        values = attn.to_qkv(made.attn_layer[0](on_map)).chunk(3, dim=-1)[2]
        values = values.unflatten(-1, (attn.n_heads, -1)).transpose(1, 2)
        mixed = on_map + attn.merge((matrix @ values).transpose(1, 2).flatten(2))
        mixed = mixed + made.mlp_layer(mixed)
    torch.testing.assert_close(mixed.transpose(1, 2).unflatten(2, grid), want_out)
    count = grid[0] * grid[1]
    for head in range(attn.n_heads):  # ours, gathered, against the oracle
        torch.testing.assert_close(full_map(probs[:, head], tokens, count), matrix[:, head], atol=0, rtol=0)
    r = torch.randn(2, count, 3, dtype=torch.float64)
    torch.testing.assert_close(_window_product(probs.mean(dim=1), tokens, r), matrix.mean(dim=1) @ r)


def brute_mbconv(grid: tuple[int, int], stride: int) -> torch.Tensor:
    """The MBConv's matrix (the convention) by a loop: each output token the mean of its 3 x 3 neighbourhood's
    tokens on the map, centred on every ``stride``-th token; stride 1: half that and half the token itself."""
    h, w = grid
    out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1  # torchvision's conv: kernel 3, padding 1
    m = torch.zeros(out_h * out_w, h * w, dtype=torch.float64)
    for i in range(out_h):
        for j in range(out_w):
            cells = [(r, c) for r in range(i * stride - 1, i * stride + 2) for c in range(j * stride - 1, j * stride + 2)
                     if 0 <= r < h and 0 <= c < w]  # fmt: skip
            for r, c in cells:
                m[i * out_w + j, r * w + c] += 1 / len(cells)
    if stride == 1:
        m = 0.5 * m + 0.5 * torch.eye(h * w, dtype=torch.float64)
    return m


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("grid", [(5, 5), (4, 6), (7, 4), (1, 3)])
def test_the_mbconv_matrix_is_the_neighbourhood_mean_by_hand(grid, stride):
    want = brute_mbconv(grid, stride)
    count = grid[0] * grid[1]
    got = neighbourhood_rows(torch.eye(count, dtype=torch.float64).expand(2, -1, -1), grid, stride)
    torch.testing.assert_close(got, want.expand(2, -1, -1), atol=1e-15, rtol=0)
    r = torch.randn(2, count, 4, dtype=torch.float64)
    torch.testing.assert_close(neighbourhood_rows(r, grid, stride), want @ r)
    torch.testing.assert_close(got.sum(dim=-1), torch.ones(2, len(want), dtype=torch.float64))
    conv = nn.Conv2d(1, 1, 3, stride, padding=1)  # the output grid is the depthwise conv's
    assert conv(torch.zeros(1, 1, *grid)).shape[2:].numel() == len(want)


def attention_inputs(model: nn.Module, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """What each MaxViT attention module reads in a plain forward pass (no code of ours), by module."""
    seen = {}

    def keep(module, args, _output):  # returns None: the output stays the module's
        seen[id(module)] = args[0]

    handles = [
        m.register_forward_hook(keep) for m in model.modules() if isinstance(m, RelativePositionalMultiHeadAttention)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def by_hand(model: MaxVit, x: torch.Tensor, factor) -> torch.Tensor:
    """The mean of the final rows of ``R`` on the first grid (``N x h*w``), ``R`` multiplied densely, layer by
    layer: each attention's factor ``factor(index, its dense matrix by dense()'s loop)``, MBConvs by loop."""
    seen, grid = attention_inputs(model, x), tuple(model.stem(x).shape[2:])
    relevance = torch.eye(grid[0] * grid[1], dtype=torch.float64).expand(len(x), -1, -1)
    index = 0
    for block in model.blocks:
        for maxvit_layer in block.layers:
            mbconv, *partitions = maxvit_layer.layers
            stride = mbconv.layers.conv_b[0].stride[0]
            relevance, grid = brute_mbconv(grid, stride) @ relevance, tuple((g - 1) // stride + 1 for g in grid)
            for part in partitions:
                attn = part.attn_layer[1]
                with torch.no_grad():
                    _, probs, _ = partition_attention(attn, part, seen[id(attn)])
                matrix = partial(dense, part.partition_type, grid, model.partition_size)
                relevance = factor(index, matrix, probs) @ relevance
                index += 1
    return relevance.mean(dim=1)


def rolled_by_hand(_index, matrix, probs) -> torch.Tensor:
    """``rownorm(mean_heads(A) + I)`` of the dense matrix."""
    mixed = matrix(probs).mean(dim=1)
    mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype)
    return mixed / mixed.sum(dim=-1, keepdim=True)


def test_rollout_is_the_dense_product_by_hand_and_its_rows_sum_to_one():
    model, x = tiny_maxvit(), torch.randn(2, 3, 32, 32, dtype=torch.float64)
    want = by_hand(model, x, rolled_by_hand)
    got = attribute(model, x, [0, 2], "attention_rollout", upsample=False)
    assert got.shape == (2, 1, 16, 16)
    torch.testing.assert_close(got.flatten(1), want)
    assert (got[0] != got[0].mean()).any() and not torch.allclose(got[0], got[1])
    # each factor is row-stochastic, so every row of R sums to one (the property, not only its mean)
    with torch.no_grad():
        _, _, attention = _forward(model, x, 0, "attention_rollout")
    relevance = flow(attention.steps, _rolled, torch.eye(256, dtype=torch.float64).expand(2, -1, -1))
    assert relevance.shape == (2, 16, 256) and (relevance >= 0).all()
    torch.testing.assert_close(relevance.sum(dim=-1), torch.ones(2, 16, dtype=torch.float64))
    for step in attention.steps:
        count = step.grid[0] * step.grid[1]
        eye = torch.eye(count, dtype=torch.float64).expand(2, -1, -1)
        factor = step.mixing(eye, step.grid) if step.probs is None else _rolled(step, eye)
        torch.testing.assert_close(factor.sum(dim=-1), torch.ones(*factor.shape[:2], dtype=torch.float64))
    full = attribute(model, x, 1, "attention_rollout")
    torch.testing.assert_close(full, F.interpolate(got, size=(32, 32), mode="bilinear"), atol=0, rtol=0)


def replaced(model: MaxVit, x: torch.Tensor, which: int, probs: torch.Tensor) -> torch.Tensor:
    """The logits with the ``which``-th attention's probabilities replaced by ``probs``, written with the
    module's own layers (its values, its merge), none of our code."""
    attn = [m for m in model.modules() if isinstance(m, RelativePositionalMultiHeadAttention)][which]

    def hook(module, args, _output):
        b, g, p, d = args[0].shape
        values = module.to_qkv(args[0]).chunk(3, dim=-1)[2].reshape(b, g, p, module.n_heads, -1).transpose(2, 3)
        return module.merge((probs.view(b, g, *probs.shape[1:]) @ values).transpose(2, 3).reshape(b, g, p, d))

    handle = attn.register_forward_hook(hook)
    try:
        return model(x)
    finally:
        handle.remove()


def test_generic_attentions_gradient_is_a_finite_difference_and_its_map_the_dense_product():
    model, x, target = tiny_maxvit(), torch.randn(2, 3, 32, 32, dtype=torch.float64), [3, 1]
    with torch.enable_grad():
        point, start, attention = _forward(model, x, target, "generic_attention")
        probs = [step.probs for step in attention.steps if step.probs is not None]
        grads = torch.autograd.grad(point, probs, start)
    assert len(probs) == 6  # 3 layers of window and grid attention
    which = 2  # the second layer's window attention (after the stride-1 MBConv)
    torch.manual_seed(2)
    direction, eps = torch.randn_like(probs[which]), 1e-6
    with torch.no_grad():
        rows = torch.arange(2), torch.tensor(target)
        up = replaced(model, x, which, probs[which] + eps * direction)[rows].sum()
        down = replaced(model, x, which, probs[which] - eps * direction)[rows].sum()
        same = replaced(model, x, which, probs[which].detach())
        torch.testing.assert_close(same, model(x))  # the replacement itself changes nothing
    finite = (up - down) / (2 * eps)
    torch.testing.assert_close((grads[which] * direction).sum(), finite, rtol=1e-6, atol=1e-9)
    assert grads[which].abs().sum() > 0
    weighted = [(g * a.detach()).clamp(min=0) for a, g in zip(probs, grads, strict=True)]

    def accumulated(index, matrix, _probs):  # R <- R + mean_heads(clamp(dy/dA * A, 0)) R, the matrix by the loop
        clamped = matrix(weighted[index]).mean(dim=1)
        return torch.eye(clamped.shape[-1], dtype=clamped.dtype) + clamped

    want = by_hand(model, x, accumulated)
    got = attribute(model, x, target, "generic_attention", upsample=False)
    torch.testing.assert_close(got.flatten(1), want)
    assert (got[0] != got[0].mean()).any()


@pytest.mark.parametrize("method", METHODS)
def test_the_model_is_left_as_it_was_and_the_batch_changes_nothing(method):
    model, x = tiny_maxvit(), torch.randn(3, 3, 32, 32, dtype=torch.float64)
    model.blocks[0].train()  # a flag of its own, given back
    with torch.no_grad():
        plain = model.eval()(x)
    model.blocks[0].train()
    before = snapshot(model)
    got = attribute(model, x, [0, 4, 2], method)
    assert got.shape == (3, 1, 32, 32) and torch.isfinite(got).all() and got.abs().sum() > 0
    assert_unchanged(model, before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert model.blocks[0].training and not model.training
    alone = torch.cat([attribute(model, x[i : i + 1], [0, 4, 2][i], method) for i in range(3)])
    torch.testing.assert_close(alone, got, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain, atol=0, rtol=0)


@pytest.mark.slow
def test_torchvision_maxvit_t_gives_a_finite_map_the_batch_does_not_change():
    """maxvit_t at 224 px, the smallest size its 7 x 7 partitions allow (the fourth stage's grid is 7 x 7)."""
    torch.manual_seed(0)
    model = torchvision.models.maxvit_t(weights=None).eval()
    nn.init.normal_(model.classifier[-1].weight, std=0.05)  # torchvision starts the head near zero
    before, x = snapshot(model), torch.randn(2, 3, 224, 224)
    for method in METHODS:
        got = attribute(model, x, [5, 7], method)
        assert got.shape == (2, 1, 224, 224) and torch.isfinite(got).all() and got.abs().sum() > 0
        assert (got != got.mean()).any()
        alone = attribute(model, x[1:], 7, method)
        torch.testing.assert_close(alone, got[1:], rtol=1e-4, atol=1e-6 * got.abs().max().item())
    assert_unchanged(model, before)
    assert all(not m._forward_hooks for m in model.modules())


class Loose(nn.Module):
    """MaxViT's attention module called on its own, outside a PartitionAttentionLayer."""

    def __init__(self) -> None:
        super().__init__()
        self.attn, self.head = RelativePositionalMultiHeadAttention(8, 4, 4), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.attn(x.flatten(2).transpose(1, 2).reshape(len(x), 4, 4, 8)).mean(dim=(1, 2)))


@pytest.mark.parametrize("method", METHODS)
def test_maxvits_attention_outside_its_layer_is_refused_in_one_line(method):
    with pytest.raises(UserError) as err:
        attribute(Loose().eval(), torch.randn(1, 8, 4, 4), 0, method)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{method} cannot place attn (RelativePositionalMultiHead")


def test_lrp_still_explains_maxvit():
    model = tiny_maxvit()
    assert attribute(model, torch.randn(1, 3, 32, 32, dtype=torch.float64), 0, "lrp").abs().sum() > 0
