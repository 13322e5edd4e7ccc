"""LRP through attention (issue 28): AttnLRP (Achtibat et al. 2024, "AttnLRP: attention-aware layer-wise
relevance propagation for transformers", ICML) on torchvision's vision transformers (ViT, Swin V1 and V2, MaxViT).

Outside the attention a transformer is made of modules LRP already has rules for: linear layers (epsilon),
layer norms (sigma held constant, Ali et al. 2022), GELUs (identity: the relevance passes, AttnLRP's
Eq. 9), residual additions (split in proportion, AttnLRP's Eq. 8 on a sum). The attention itself,
``softmax(Q K^T / sqrt(d) + B) V`` with ``B`` a constant bias (none in ViT; Swin's and MaxViT's relative
position bias, Swin's shift mask), gets AttnLRP's rules (``rules.softmax_relevance``, ``rules.product_relevance``):

- the query, key, value and output projections: epsilon (Eq. 8), as any linear layer;
- ``A V`` and ``Q K^T``: the uniform rule, half the relevance to each operand, each half by epsilon
  (Proposition 3.3); a bias added to ``Q K^T`` keeps its share, as a bias does under epsilon;
- the softmax: ``R_in = S * (R - A * sum(R))`` (Proposition 3.1), which leaves the decomposition's bias
  term out and so does not conserve relevance (with every bias zero, the one place in the net that does not);
- the scaling by ``1/sqrt(d)`` (Swin V2: its logit scale; epsilon on a constant factor is the identity) and
  Swin V2's normalization of queries and keys (Proposition 3.4): identity, the relevance passes.

How it runs on the mechanism (``mechanism``: a rule crosses one leaf module with one input tensor). For
the call, ``AttentionBlocks`` rewrites each of torchvision's ``EncoderBlock`` (ViT), ``SwinTransformerBlock``/``V2``
and ``PartitionAttentionLayer`` (MaxViT) so that its attention is called through an ``AttentionCall``, a leaf whose
forward is the attention module's own (the model's output does not move) and whose rule (``AttnLRP``)
recomputes the attention from the module's weights and propagates the relevance of its output to its
input tokens; the block's two residual additions, ViT's position embedding and the shortcut of MaxViT's
``MBConv`` go through a ``Sum`` (``canonize``; the position embedding, a constant, keeps its share as a bias
does). Swin's windows are cut from the map and put back as its forward does (zero padding, the cyclic
shift, the partition), MaxViT's by its own modules: moving values, they move relevance unchanged. The
rewrite is undone when the call returns or raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import maxvit
from torchvision.models import swin_transformer as swin
from torchvision.models import vision_transformer as vit

from zfviz.attribution.canonize import Sum, added, in_reverse, rewrite
from zfviz.attribution.rules import product_relevance, softmax_relevance, stabilize


@dataclass
class Heads:
    """One attention's weights for one call, read from its module: ``softmax(Q K^T * scale + bias) V``."""

    projections: list[tuple[Tensor, Tensor | None]]  # (weight, bias) of the query, key and value projections
    out: tuple[Tensor, Tensor | None]  # the output projection's
    heads: int
    scale: Tensor | float  # multiplies the queries: 1/sqrt(d), or Swin V2's per-head logit scale (heads x 1 x 1)
    bias: Tensor | None = None  # added to the scores (Swin, MaxViT: relative position bias; Swin: shift mask)
    cosine: bool = False  # queries and keys normalized first (Swin V2)


@dataclass
class _Pass:
    """One pass through the attention with what its rules read (per head: ``N x heads x T x ...``)."""

    projected: list[Tensor]  # the query, key and value projections' outputs, N x T x E
    queries: Tensor  # normalized (Swin V2) and scaled
    keys: Tensor  # normalized (Swin V2)
    values: Tensor
    scores: Tensor  # before the softmax, bias included
    probs: Tensor
    mixed: Tensor  # probs @ values
    out: Tensor  # N x T x E


def _split(t: Tensor, heads: int) -> Tensor:
    """``N x T x E`` -> ``N x heads x T x E/heads``."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge(t: Tensor) -> Tensor:
    """``N x heads x T x d`` -> ``N x T x heads*d``."""
    return t.transpose(1, 2).flatten(2)


def attend(heads: Heads, x: Tensor) -> _Pass:
    """The attention of tokens ``x`` (``N x T x E``), every intermediate kept."""
    projected = [F.linear(x, weight, bias) for weight, bias in heads.projections]
    q, k, v = (_split(t, heads.heads) for t in projected)
    if heads.cosine:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    q = q * heads.scale
    scores = q @ k.transpose(-2, -1)
    if heads.bias is not None:
        scores = scores + heads.bias
    probs = scores.softmax(dim=-1)
    mixed = probs @ v
    return _Pass(projected, q, k, v, scores, probs, mixed, F.linear(_merge(mixed), *heads.out))


def _epsilon(x: Tensor, weight: Tensor, z: Tensor, relevance: Tensor, epsilon: float) -> Tensor:
    """LRP-epsilon through ``z = x W^T + b``: ``x * ((R / stab(z)) @ W)``."""
    return x * ((relevance / stabilize(z, epsilon)) @ weight)


def attention_relevance(heads: Heads, x: Tensor, relevance: Tensor, epsilon: float) -> Tensor:
    """AttnLRP: the relevance of tokens ``x`` (``N x T x E``) from ``relevance`` at the attention's output."""
    step = attend(heads, x)
    mixed = _split(_epsilon(_merge(step.mixed), heads.out[0], step.out, relevance, epsilon), heads.heads)
    probs, values = product_relevance(step.probs, step.values, mixed, step.mixed, epsilon)
    scores = softmax_relevance(step.scores, step.probs, probs)
    queries, keys = product_relevance(step.queries, step.keys.transpose(-2, -1), scores, step.scores, epsilon)
    # the scale and Swin V2's normalization pass the relevance on unchanged (identity)
    shares = (queries, keys.transpose(-2, -1), values)
    return sum(
        _epsilon(x, weight, z, _merge(share), epsilon)
        for (weight, _), z, share in zip(heads.projections, step.projected, shares, strict=True)
    )


# --- reading torchvision's attention modules ------------------------------------------------------------

Layout = tuple[Heads, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]  # heads, to tokens, back


def _same(t: Tensor) -> Tensor:
    return t


def _thirds(weight: Tensor, bias: Tensor | None) -> list[tuple[Tensor, Tensor | None]]:
    """The query, key and value projections of one fused projection (stacked in that order)."""
    biases = bias.chunk(3) if bias is not None else (None,) * 3
    return list(zip(weight.chunk(3), biases, strict=True))


def _mha_call(mha: nn.MultiheadAttention, x: Tensor) -> Tensor:
    return mha(x, x, x, need_weights=False)[0]


def read_mha(mha: nn.MultiheadAttention, x: Tensor) -> Layout:
    """ViT's self-attention (``nn.MultiheadAttention``, batch first, one input projection, no mask)."""
    projections = _thirds(mha.in_proj_weight, mha.in_proj_bias)
    scale = 1 / math.sqrt(mha.head_dim)
    return Heads(projections, (mha.out_proj.weight, mha.out_proj.bias), mha.num_heads, scale), _same, _same


def _windows(t: Tensor, window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """``N x H x W x C`` -> ``N*windows x T x C`` as Swin cuts them: zero padding to whole windows, the
    cyclic shift, the partition (also the transpose of ``_unwindows``: relevance arriving at its output)."""
    (wh, ww), (n, h, w, c) = window, t.shape
    t = F.pad(t, (0, 0, 0, -w % ww, 0, -h % wh))
    if any(shift):
        t = torch.roll(t, (-shift[0], -shift[1]), (1, 2))
    t = t.reshape(n, (h + -h % wh) // wh, wh, (w + -w % ww) // ww, ww, c)
    return t.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, c)


def _unwindows(t: Tensor, size: torch.Size, window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """The windows put back on the ``size`` map, shifted back, the padding cut off."""
    (wh, ww), (n, h, w, c) = window, size
    ph, pw = h + -h % wh, w + -w % ww
    t = t.reshape(n, ph // wh, pw // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(n, ph, pw, c)
    if any(shift):
        t = torch.roll(t, shift, (1, 2))
    return t[:, :h, :w]


def _shift_mask(padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """``windows x T x T``: 0 between tokens of one region of the shifted map, -100 across (torchvision's)."""

    def bands(size: int, win: int, by: int) -> Tensor:  # the region along one axis: 0, 1 or 2
        i = torch.arange(size)
        return (i >= size - win).long() + (i >= size - by).long()

    (ph, pw), (wh, ww) = padded, window
    region = bands(ph, wh, shift[0])[:, None] * 3 + bands(pw, ww, shift[1])[None, :]
    cells = region.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    return (cells[:, None, :] != cells[:, :, None]) * -100.0


def _relative_bias(attn: nn.Module) -> Tensor:
    """Swin's relative position bias, ``1 x heads x T x T``; V2's MLP called by ``forward`` so that the
    call's hooks (a rule on its linear layers) stay out of the rule's backward."""
    if not isinstance(attn, swin.ShiftedWindowAttentionV2):
        return attn.get_relative_position_bias()
    table = attn.relative_coords_table
    for layer in attn.cpb_mlp:
        table = layer.forward(table)
    table = table.view(-1, attn.num_heads)
    return 16 * torch.sigmoid(swin._get_relative_position_bias(table, attn.relative_position_index, attn.window_size))


def _module_call(attn: nn.Module, x: Tensor) -> Tensor:
    return attn(x)


def read_swin(attn: nn.Module, x: Tensor) -> Layout:
    """Swin's shifted-window attention on an ``N x H x W x C`` map, V1 or V2 (cosine attention)."""
    window, (n, h, w, c) = tuple(attn.window_size), x.shape
    padded = (h + -h % window[0], w + -w % window[1])
    shift = tuple(0 if win >= size else by for win, size, by in zip(window, padded, attn.shift_size, strict=True))
    bias = _relative_bias(attn)
    if any(shift):
        bias = (bias + _shift_mask(padded, window, shift).to(bias)[:, None]).repeat(n, 1, 1, 1)
    qkv_bias = attn.qkv.bias
    v2 = isinstance(attn, swin.ShiftedWindowAttentionV2)
    if v2 and qkv_bias is not None:  # V2 gives its keys no bias
        qkv_bias = torch.cat([qkv_bias[:c], torch.zeros_like(qkv_bias[c : 2 * c]), qkv_bias[2 * c :]])
    projections = _thirds(attn.qkv.weight, qkv_bias)
    scale = torch.clamp(attn.logit_scale, max=math.log(100.0)).exp() if v2 else (c // attn.num_heads) ** -0.5
    heads = Heads(projections, (attn.proj.weight, attn.proj.bias), attn.num_heads, scale, bias, cosine=v2)
    back = partial(_unwindows, size=x.shape, window=window, shift=shift)
    return heads, partial(_windows, window=window, shift=shift), back


def read_maxvit(attn: nn.Module, x: Tensor) -> Layout:
    """MaxViT's relative-position attention on ``N x G x P x C``: G windows (or grid cells) of P tokens each."""
    projections = _thirds(attn.to_qkv.weight, attn.to_qkv.bias)
    position = attn.get_relative_positional_bias()  # 1 x heads x P x P
    heads = Heads(projections, (attn.merge.weight, attn.merge.bias), attn.n_heads, attn.scale_factor, position)
    return heads, partial(torch.flatten, start_dim=0, end_dim=1), partial(torch.unflatten, dim=0, sizes=x.shape[:2])


class AttentionCall(nn.Module):
    """One attention module called on one tensor, for the call: its output is the module's own; ``AttnLRP``
    gives it its rule. The module is held as a reference, not a child, so this one stays a leaf."""

    def __init__(self, attention: nn.Module, call: Callable, read: Callable[[nn.Module, Tensor], Layout]) -> None:
        super().__init__()
        object.__setattr__(self, "attention", attention)  # nn.Module's __setattr__ would make it a child
        self.call, self.read = call, read

    def forward(self, x: Tensor) -> Tensor:
        return self.call(self.attention, x)

    def relevance(self, x: Tensor, relevance: Tensor, epsilon: float) -> Tensor:
        heads, to_tokens, back = self.read(self.attention, x)
        return back(attention_relevance(heads, to_tokens(x), to_tokens(relevance), epsilon))


class AttnLRP:
    """The rule of an ``AttentionCall``: AttnLRP from its output to its input tokens (the module docstring)."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = float(epsilon)

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        with torch.no_grad():
            return module.relevance(x, grad, self.epsilon)


# --- the canonizer ------------------------------------------------------------------------------------


def _vit_block(block: nn.Module) -> Callable[[Tensor], Tensor]:
    def forward(input: Tensor) -> Tensor:
        x = added(block, input, block.dropout(block.attention_call(block.ln_1(input))))
        return added(block, x, block.mlp(block.ln_2(x)))

    return forward


def _vit_encoder(encoder: nn.Module) -> Callable[[Tensor], Tensor]:
    """ViT's ``Encoder``: the position embedding added through ``Sum``, as a bias."""
    return lambda x: encoder.ln(encoder.layers(encoder.dropout(added(encoder, x, encoder.pos_embedding.expand_as(x)))))


def _swin_block(block: nn.Module) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        x = added(block, x, block.stochastic_depth(block.attention_call(block.norm1(x))))
        return added(block, x, block.stochastic_depth(block.mlp(block.norm2(x))))

    return forward


def _swin_v2_block(block: nn.Module) -> Callable[[Tensor], Tensor]:
    """Swin V2 normalizes after the attention and the MLP, not before."""

    def forward(x: Tensor) -> Tensor:
        x = added(block, x, block.stochastic_depth(block.norm1(block.attention_call(x))))
        return added(block, x, block.stochastic_depth(block.norm2(block.mlp(x))))

    return forward


def _maxvit_layer(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """MaxViT's ``PartitionAttentionLayer``: windows (or grid cells) cut, attention and MLP added, put back."""

    def forward(x: Tensor) -> Tensor:
        gh, gw = layer.grid_size[0] // layer.p, layer.grid_size[1] // layer.p
        x = layer.partition_swap(layer.partition_op(x, layer.p))
        norm, _, dropout = layer.attn_layer
        x = added(layer, x, layer.stochastic_dropout(dropout(layer.attention_call(norm(x)))))
        x = added(layer, x, layer.stochastic_dropout(layer.mlp_layer(x)))
        return layer.departition_op(layer.departition_swap(x), layer.p, gh, gw)

    return forward


def _mbconv(block: nn.Module) -> Callable[[Tensor], Tensor]:
    """MaxViT's ``MBConv``: its shortcut added through ``Sum``."""
    return lambda x: added(block, block.proj(x), block.stochastic_depth(block.layers(x)))


# torchvision's transformer modules -> (their forward for the call, their attention module, how it is called,
# how it is read; None: no attention)
_KINDS = {
    vit.EncoderBlock: (_vit_block, lambda b: b.self_attention, _mha_call, read_mha),
    vit.Encoder: (_vit_encoder, None, None, None),
    swin.SwinTransformerBlock: (_swin_block, lambda b: b.attn, _module_call, read_swin),
    swin.SwinTransformerBlockV2: (_swin_v2_block, lambda b: b.attn, _module_call, read_swin),
    maxvit.PartitionAttentionLayer: (_maxvit_layer, lambda b: b.attn_layer[1], _module_call, read_maxvit),
    maxvit.MBConv: (_mbconv, None, None, None),
}


ATTENTION_MODULES = (
    nn.MultiheadAttention,
    swin.ShiftedWindowAttention,
    swin.ShiftedWindowAttentionV2,
    maxvit.RelativePositionalMultiHeadAttention,
)  # the attention modules of the blocks ``AttentionBlocks`` rewrites, whose calls AttnLRP explains


class AttentionBlocks:
    """torchvision's ViT, Swin and MaxViT blocks call their attention through an ``AttentionCall`` and add
    through a ``Sum`` for the call (ViT's encoder its position embedding too, MaxViT's MBConv its shortcut)."""

    def apply(self, model: nn.Module, state) -> Callable[[], None]:
        blocks = [m for m in model.modules() if type(m) in _KINDS and "forward" not in m.__dict__]
        blocks = [b for b in blocks if "residual_sum" not in b._modules and "attention_call" not in b._modules]
        undos = []
        for block in blocks:
            build, attention, call, read = _KINDS[type(block)]
            children = {"residual_sum": Sum()}
            if attention is not None:
                children["attention_call"] = AttentionCall(attention(block), call, read)
            undos.append(rewrite(block, build, **children))
        return in_reverse(undos)
