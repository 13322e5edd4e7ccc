"""Attention maps of vision transformers (issue 28): attention rollout (Abnar & Zuidema 2020, "Quantifying
attention flow in transformers") and generic attention (Chefer et al. 2021, "Generic attention-model
explainability for interpreting bi-modal and encoder-decoder transformers").

Both read each layer's attention probabilities ``A_l = softmax(Q K^T / sqrt(d))`` (``N x heads x T x T``),
one per ``nn.MultiheadAttention`` call, in call order. torchvision's ViT calls its attention with
``need_weights=False`` (and a fused kernel in eval mode), so for the one call a forward hook on each
attention module recomputes the module's output from its own weights (``in_proj``, ``out_proj``) with
``A`` in the graph and hands that on instead: the model's output moves by float rounding only, and
the hooks are removed when the call ends, also on an exception.

- ``attention_rollout``: per layer ``Â_l = rownorm(mean_heads(A_l) + I)`` (``0.5 mean + 0.5 I``, as each
  row of ``A_l`` sums to one), multiplied through the layers, ``R = Â_L ... Â_1``. It explains no
  class (the paper's flow is the same for every output): ``target`` is only checked.
- ``generic_attention``: ``R = I``, then per layer, first to last, ``R += mean_heads(clamp(dy/dA_l *
  A_l, min=0)) @ R`` (Chefer et al.'s rule for self-attention), the gradient starting from 1 at the
  target (a layer the target does not reach adds nothing).

The map is the class token's row of ``R`` over the patch tokens, laid out on the patch grid as Grad-CAM
lays out tokens (``grids.token_grid``: the class token is the first of the leading extra tokens),
bilinearly upsampled to the input (``upsample=False``: the grid): ``N x 1 x H x W``.

Swin (torchvision's v1 and v2; our convention, neither paper defines windowed attention): each block's
attention is written as the token-to-token matrix it is on the whole ``H x W`` map of its stage. It is
block-diagonal over the block's windows, with the bottom/right padding and the cyclic shift as
torchvision applies them and the shifted-window mask in the probabilities (those the module computed;
a padded token is no token of the image, so its column is left out). The hook recomputes the module's
output from its own weights as for ViT (v1: the relative position bias; v2: cosine attention, the
logit scale and the continuous position bias MLP). A patch merging (2 x 2 tokens -> 1) is the matrix
``M`` whose row averages the rows of the tokens it merges: each merged token is a linear map of those,
and equal weights are rollout's own assumption for the residual. ``R`` runs from stage 1's tokens to
the current stage's: ``R <- Â_l R`` (rollout) or ``R <- R + mean_heads(clamp(dy/dA_l * A_l, 0)) R``
(generic attention) per block, ``R <- M R`` per merge. Swin has no class token but pools every final
token, so the map is the mean of the final rows of ``R`` on stage 1's patch grid (the channels-last map
as the image lies), upsampled as above.

MaxViT (torchvision's; our convention too): the stem's two convs map the input to the first token grid
(``ceil(H/2) x ceil(W/2)``), and ``R`` runs from there. Each MaxViT layer is an MBConv, then window
attention (``PartitionAttentionLayer``: windows of ``P x P`` neighbouring tokens), then grid attention (the
same layer on a dilated grid: each group the tokens ``H/P`` apart). Each attention is the block-diagonal
matrix it is on its stage's ``H x W`` map, its groups' tokens found by the layer's own partition (no padding,
no mask: torchvision needs sides that divide). The MBConv mixes tokens outside the attention: its depthwise
3 x 3 conv mixes each token with its 3 x 3 neighbourhood. We model it as rollout models attention, with
equal weights: ``K`` is the row-normalized 3 x 3 neighbourhood average (cells outside the map left out);
with stride 1 the shortcut is the identity, ``M = 0.5 I + 0.5 K`` as rollout's ``0.5 A + 0.5 I``; with
stride 2 (a stage's first MBConv) the shortcut is a 3 x 3 average pool and the main path a stride-2
depthwise conv, both on the same neighbourhoods (padding 1), so ``M = K`` on every second token: each
output token the mean of its 3 x 3 input neighbourhood, padding excluded. The squeeze-and-excitation gate
(a per-channel scale from the pooled map) is a gate, not a mixing of tokens, and is left out. ``R <- M R``
per MBConv, per attention as for Swin; the net pools every final token, so the map is the mean of the final
rows of ``R`` on the first token grid, upsampled to the input (the stem's stride-2 conv centres token ``i``
on pixel ``2i``, half a pixel before the upsampling's ``2i + 0.5``).

Neither the block-diagonal matrices nor ``R`` are built: a product gathers each window's rows
(``_window_product``), and, as ``R`` is linear, the mean of its final rows is the gradient of the mean of
``R x`` by a column ``x`` run through the steps (``_pooled_rows``), one column instead of ``H*W``.

A net without attention (a CNN) is refused in one line naming the methods that work; so is MaxViT's
attention outside a ``PartitionAttentionLayer`` (nothing says where its tokens lie), and an attention call
with a mask, ``bias_k`` or ``add_zero_attn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.maxvit import MBConv, PartitionAttentionLayer, RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import PatchMerging, PatchMergingV2, ShiftedWindowAttention

from zfviz.activations import evaluating, hooks
from zfviz.attribution.grids import token_grid
from zfviz.attribution.options import FLAG, Option
from zfviz.attribution.registry import METHODS, register_method
from zfviz.attribution.state import Unsupported
from zfviz.attribution.targets import check_classes, parse_target, start_signal
from zfviz.attribution.transformer import attend, read_maxvit, read_swin
from zfviz.errors import UserError

_ARGUMENTS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
_KINDS = {
    nn.MultiheadAttention: "ViT's self-attention",
    ShiftedWindowAttention: "Swin's windowed attention",
    RelativePositionalMultiHeadAttention: "MaxViT's window and grid attention",
}  # the attention these methods read, by module type (Swin V2's a subclass of V1's)
_WINDOWED = (ShiftedWindowAttention, RelativePositionalMultiHeadAttention)


def _self_attention(module: nn.Module) -> bool:
    """The modules these methods read (and so list in another method's refusal)."""
    return isinstance(module, tuple(_KINDS))


def _attention_paths(model: nn.Module, method: str) -> list[str]:
    """The model's attention modules, all of one kind; none at all is one line naming what works."""
    modules = dict(model.named_modules())
    paths = [name for name, module in modules.items() if _self_attention(module)]
    placed = {id(m.attn_layer[1]) for m in modules.values() if isinstance(m, PartitionAttentionLayer)}
    for path in paths:
        if isinstance(modules[path], RelativePositionalMultiHeadAttention) and id(modules[path]) not in placed:
            raise UserError(
                f"{method} cannot place {path} (RelativePositionalMultiHeadAttention) on a token map: it reads MaxViT's "
                "attention inside torchvision's PartitionAttentionLayer, whose partition says where its tokens lie"
            )
    kinds = {_KINDS[next(kind for kind in _KINDS if isinstance(modules[path], kind))] for path in paths}
    if len(kinds) > 1:
        raise UserError(f"{method} reads one kind of attention in a net, got {' and '.join(sorted(kinds))}")
    if not paths:
        # an empty container (ShuffleNet's branch1) computes nothing
        containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
        leaves = [m for m in modules.values() if not any(True for _ in m.children()) and not isinstance(m, containers)]
        able = [n for n, m in METHODS.items() if m.supports is not _self_attention and all(map(m.supports, leaves))]
        raise UserError(
            f"{method} needs self-attention (nn.MultiheadAttention as in torchvision's ViT, or Swin's or MaxViT's "
            f"windowed attention) and {type(model).__name__} has none; methods that work on it: {', '.join(able)}"
        )
    return paths


def _projections(mha: nn.MultiheadAttention) -> list[tuple[Tensor, Tensor | None]]:
    """The (weight, bias) of the query, key and value projections."""
    if mha._qkv_same_embed_dim:
        weights = mha.in_proj_weight.chunk(3)
    else:
        weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
    return list(zip(weights, biases, strict=True))


def recompute(mha: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """``(output, A)``: the module's output (batch first, ``N x T x E``) and its attention probabilities
    ``softmax(Q K^T / sqrt(d))`` per head (``N x heads x T x S``), from its own weights, in eval mode."""
    heads = mha.num_heads
    q, k, v = (
        F.linear(x, weight, bias).unflatten(-1, (heads, -1)).transpose(1, 2)
        for x, (weight, bias) in zip((query, key, value), _projections(mha), strict=True)
    )
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    mixed = (probs @ v).transpose(1, 2).flatten(2)
    return F.linear(mixed, mha.out_proj.weight, mha.out_proj.bias), probs


def window_attention(attn: ShiftedWindowAttention, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(output, A, tokens)`` of a Swin attention module on ``x`` (``N x H x W x C``), from its own weights in eval
    mode (``transformer.read_swin``: the windows cut as torchvision cuts them, its bias, the shift mask): its
    output, its probabilities (``N*windows x heads x t x t``, ``t`` tokens a window, the batch outermost; the
    tensor the output was computed from, so a gradient reaches it) and each window's tokens (``windows x t``:
    indices into the ``H*W`` map, row-major; ``H*W`` for a padded one)."""
    h, w = x.shape[1:3]
    heads, to_windows, back = read_swin(attn, x)
    step = attend(heads, to_windows(x))
    ids = to_windows(torch.arange(1, h * w + 1, device=x.device).view(1, h, w, 1))[..., 0] - 1  # padding: -1
    return back(step.out), step.probs, ids.where(ids >= 0, h * w)


def partition_attention(attn: nn.Module, layer: PartitionAttentionLayer, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(output, A, tokens)`` of MaxViT's attention ``attn`` in its ``layer`` on ``x`` (``N x G x P x C``: the G
    windows or grid cells of P tokens the layer cut), from its own weights in eval mode (``transformer.read_maxvit``):
    its output, its probabilities (``N*G x heads x P x P``, the batch outermost) and each group's tokens (``G x P``:
    indices into the layer's ``H*W`` map, row-major), cut from the map by the layer's own partition."""
    heads, to_groups, back = read_maxvit(attn, x)
    step = attend(heads, to_groups(x))
    h, w = layer.grid_size
    ids = layer.partition_swap(layer.partition_op(torch.arange(h * w, device=x.device).view(1, 1, h, w), layer.p))
    return back(step.out), step.probs, ids[0, ..., 0]


def _window_product(a: Tensor, tokens: Tensor, r: Tensor) -> Tensor:
    """``A r`` for the block-diagonal full-map matrix ``A`` given by its windows (``a``: ``N*windows x t x t``,
    ``tokens`` as ``window_attention`` gives them) and ``r`` (``N x H*W x K``): a padded token's row is zero."""
    n, count, width = r.shape
    padded = torch.cat([r, r.new_zeros(n, 1, width)], dim=1)
    mixed = a.unflatten(0, (n, -1)) @ padded[:, tokens]
    return mixed.flatten(1, 2)[:, tokens.flatten().argsort()[:count]]


def full_map(a: Tensor, tokens: Tensor, count: int) -> Tensor:
    """The full-map matrix (``N x count x count``) of a block's windows (``a``: ``N*windows x t x t``) on a map
    of ``count`` tokens."""
    eye = torch.eye(count, dtype=a.dtype, device=a.device)
    return _window_product(a, tokens, eye.expand(len(a) // len(tokens), -1, -1))


def merge_rows(r: Tensor, grid: tuple[int, int]) -> Tensor:
    """``M r``: each 2 x 2 patch merging's row the mean of the rows of the tokens it merges (``r``:
    ``N x h*w x K`` on an ``h x w`` grid, padded at the bottom and right to even sides as torchvision pads)."""
    h, w = grid
    cells = F.pad(r.unflatten(1, grid), (0, 0, 0, w % 2, 0, h % 2))
    counts = F.pad(r.new_ones(1, h, w, 1), (0, 0, 0, w % 2, 0, h % 2))
    quads = [(slice(None), slice(i, None, 2), slice(j, None, 2)) for i in (0, 1) for j in (0, 1)]
    return (sum(cells[q] for q in quads) / sum(counts[q] for q in quads)).flatten(1, 2)


def neighbourhood_rows(r: Tensor, grid: tuple[int, int], stride: int) -> Tensor:
    """``M r`` for MaxViT's MBConv (our convention, the module docstring; ``r``: ``N x h*w x K`` on an ``h x w``
    grid): ``K r``, each row the mean of the rows of the token's 3 x 3 neighbourhood (cells outside the map left
    out), on every ``stride``-th token as torchvision's depthwise conv (padding 1); stride 1: ``0.5 r + 0.5 K r``."""
    cells = r.transpose(1, 2).unflatten(2, grid)  # r's columns as channels
    mean = F.avg_pool2d(cells, 3, stride, padding=1, count_include_pad=False).flatten(2).transpose(1, 2)
    return mean if stride > 1 else (r + mean) / 2


class _Attentions:
    """Hooks that recompute every attention module's output with its probabilities kept, in call order."""

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        self.model, self.paths, self.probs = model, paths, []

    def _hook(self, path: str):
        def hook(mha, args, kwargs, output):
            given = dict(zip(_ARGUMENTS, args, strict=False)) | kwargs  # positional ones by name
            masked = any(given.get(k) is not None for k in ("key_padding_mask", "attn_mask")) or given.get("is_causal")
            if masked or mha.bias_k is not None or mha.add_zero_attn:
                why = ": an attention mask, bias_k or add_zero_attn, which the recomputed attention leaves out"
                raise Unsupported(path, mha, why)
            query, key, value = (given[k] if mha.batch_first else given[k].transpose(0, 1) for k in _ARGUMENTS[:3])
            out, probs = recompute(mha, query, key, value)
            self.probs.append(probs)
            return (out if mha.batch_first else out.transpose(0, 1)), output[1]

        return hook

    def check(self, method: str) -> None:
        """Every layer attends over one token sequence, so that the layers' matrices multiply."""
        shapes = sorted({tuple(p.shape[-2:]) for p in self.probs})
        if len(shapes) != 1 or shapes[0][0] != shapes[0][1]:
            raise UserError(f"{method} needs self-attention over one token sequence throughout, got T x S: {shapes}")

    def __enter__(self) -> _Attentions:
        self.handles = [
            self.model.get_submodule(path).register_forward_hook(self._hook(path), with_kwargs=True)
            for path in self.paths
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass
class _Step:
    """One step of a Swin or a MaxViT on the ``grid`` of tokens it reads: an attention's probabilities and its
    windows' (or grid cells') tokens, or (``probs`` None) a mixing of tokens outside the attention, ``R -> M R``
    (Swin's patch merging, MaxViT's MBConv), leaving a grid ``stride`` times smaller (rounded up)."""

    grid: tuple[int, int]
    probs: Tensor | None = None
    tokens: Tensor | None = None
    mixing: Callable[[Tensor, tuple[int, int]], Tensor] = merge_rows
    stride: int = 1


class _Windows:
    """Hooks that recompute every windowed attention module's output (Swin's, MaxViT's) with its probabilities
    kept and note every patch merging and MBConv, in call order (``steps``)."""

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        mixers = [name for name, m in model.named_modules() if isinstance(m, PatchMerging | PatchMergingV2 | MBConv)]
        self.model, self.paths, self.steps = model, paths + mixers, []
        self.layers = {id(m.attn_layer[1]): m for m in model.modules() if isinstance(m, PartitionAttentionLayer)}

    def _hook(self, module, args, output):
        x = args[0]
        if isinstance(module, ShiftedWindowAttention):
            out, probs, tokens = window_attention(module, x)
            self.steps.append(_Step(tuple(x.shape[1:3]), probs, tokens))
            return out
        if isinstance(module, RelativePositionalMultiHeadAttention):
            layer = self.layers[id(module)]
            out, probs, tokens = partition_attention(module, layer, x)
            self.steps.append(_Step(tuple(layer.grid_size), probs, tokens))
            return out
        if isinstance(module, MBConv):  # N x C x H x W
            stride = module.layers.conv_b[0].stride[0]  # its depthwise conv's
            mixing = partial(neighbourhood_rows, stride=stride)
            self.steps.append(_Step(tuple(x.shape[2:]), mixing=mixing, stride=stride))
        else:  # a patch merging, N x H x W x C
            self.steps.append(_Step(tuple(x.shape[1:3]), stride=2))
        return None

    def check(self, method: str) -> None:
        """A block was called, and each step reads the grid the step before it left."""
        if not any(step.probs is not None for step in self.steps):
            raise UserError(f"{method}: the model's forward pass calls none of its windowed attention modules")
        grid = self.steps[0].grid
        for step in self.steps:
            if step.grid != grid:
                raise UserError(f"{method} follows the tokens from stage to stage; a {grid} grid became {step.grid}")
            grid = tuple(-(-side // step.stride) for side in grid)

    def __enter__(self) -> _Windows:
        self.handles = [self.model.get_submodule(path).register_forward_hook(self._hook) for path in self.paths]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _forward(model: nn.Module, inputs: Tensor, target, method: str) -> tuple[Tensor, Tensor, _Attentions | _Windows]:
    """One forward pass: the target's point (the output, or the unit's layer), where its backward
    starts (1 at the target), and the attention it read (a ViT's ``probs`` or a Swin's ``steps``)."""
    paths = _attention_paths(model, method)
    parsed = parse_target(model, target, len(inputs))
    found: dict[str, Tensor] = {}

    def keep(_module, _inputs, output):
        found.setdefault("target", output)

    pairs = [(parsed.layer, keep)] if parsed.layer is not None else []
    windowed = isinstance(model.get_submodule(paths[0]), _WINDOWED)
    with evaluating(model), hooks(model, pairs), (_Windows if windowed else _Attentions)(model, paths) as attention:
        out = model(inputs.detach())
    point = out if parsed.layer is None else found.get("target")
    if point is None:
        raise UserError(f"layer {parsed.layer!r} is never called by the model's forward pass")
    if parsed.layer is None:
        check_classes(parsed.channel, out.shape[1])
    grad_start, _ = start_signal(point, parsed, "one")
    attention.check(method)
    return point, grad_start, attention


def _class_row(relevance: Tensor, inputs: Tensor, upsample: bool, method: str) -> Tensor:
    """The class token's row of ``relevance`` (``N x T x T``) over the patch tokens, ``N x 1 x h x w``
    on the patch grid, bilinearly upsampled to the input when ``upsample``."""
    size = tuple(inputs.shape[2:])
    found = token_grid(relevance.shape[-1], size)
    if found is None or found[0] == 0:
        raise UserError(
            f"{method} reads the class token's row, but {relevance.shape[-1]} tokens are no class token "
            f"before a patch grid of the {size[0]}x{size[1]} input"
        )
    extra, h, w = found
    return _upsampled(relevance[:, 0, extra:].reshape(len(relevance), 1, h, w), inputs, upsample)


def _upsampled(grid: Tensor, inputs: Tensor, upsample: bool) -> Tensor:
    """``grid`` bilinearly upsampled to the input when ``upsample``."""
    return F.interpolate(grid, size=tuple(inputs.shape[2:]), mode="bilinear", align_corners=False) if upsample else grid


def flow(steps: list[_Step], block, r: Tensor) -> Tensor:
    """``R r`` (``r``: ``N x h*w x K`` on the first step's grid): ``r <- block(step, r)`` per attention, ``r <- M r``
    per merge or MBConv; ``r`` the identity gives ``R``."""
    for step in steps:
        r = step.mixing(r, step.grid) if step.probs is None else block(step, r)
    return r


def _pooled_rows(steps: list[_Step], block, inputs: Tensor, upsample: bool) -> Tensor:
    """A windowed net's map: the mean of the final rows of ``R`` (the tokens the net pools) on the first grid,
    ``N x 1 x h x w``. ``R x`` is linear in ``x``, so that mean is the gradient of ``mean(R x)`` by ``x``: one column
    runs through the steps instead of ``R``'s ``h*w`` (12544 on maxvit_t's first grid at 224 px)."""
    first = steps[0].grid
    with torch.enable_grad():
        column = inputs.new_zeros(len(inputs), first[0] * first[1], 1, requires_grad=True)
        (mean_row,) = torch.autograd.grad(flow(steps, block, column).mean(dim=1).sum(), column)
    return _upsampled(mean_row.view(len(inputs), 1, *first), inputs, upsample)


def _rolled(step: _Step, relevance: Tensor) -> Tensor:
    """``Â R`` for a windowed attention: ``rownorm(mean_heads(A) + I) R`` with ``A`` its full-map matrix."""
    a = step.probs.mean(dim=1)
    sums = _window_product(a, step.tokens, relevance.new_ones(*relevance.shape[:2], 1)) + 1
    return (_window_product(a, step.tokens, relevance) + relevance) / sums


_UPSAMPLE = Option("upsample", FLAG, True, "bilinearly to the input's size (false: the patch grid)")


@register_method("attention_rollout", supports=_self_attention, options=(_UPSAMPLE,))
def attention_rollout(model: nn.Module, inputs: Tensor, target, *, upsample: bool) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): the class token's attention to each patch, multiplied
    through the layers with the residual as identity, ``N x 1 x H x W`` (the same for every target)."""
    with torch.no_grad():
        _, _, attention = _forward(model, inputs, target, "attention_rollout")
        if isinstance(attention, _Windows):
            return _pooled_rows(attention.steps, _rolled, inputs, upsample)
        probs = attention.probs
        eye = torch.eye(probs[0].shape[-1], dtype=probs[0].dtype, device=probs[0].device)
        rollout = eye.expand(len(inputs), -1, -1)
        for layer in probs:
            mixed = layer.mean(dim=1) + eye
            rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    return _class_row(rollout, inputs, upsample, "attention_rollout")


@register_method("generic_attention", supports=_self_attention, options=(_UPSAMPLE,))
def generic_attention(model: nn.Module, inputs: Tensor, target, *, upsample: bool) -> Tensor:
    """Generic attention (Chefer et al. 2021): each layer's attention weighted by the target's gradient
    there, its positive part averaged over heads and accumulated through the layers, ``N x 1 x H x W``."""
    with torch.enable_grad():
        point, grad_start, attention = _forward(model, inputs, target, "generic_attention")
        windowed = isinstance(attention, _Windows)
        probs = [s.probs for s in attention.steps if s.probs is not None] if windowed else attention.probs
        grads = torch.autograd.grad(point, probs, grad_start, allow_unused=True)
    weighted = [None if g is None else (g * a.detach()).clamp(min=0) for a, g in zip(probs, grads, strict=True)]
    if windowed:
        found = iter(weighted)
        return _pooled_rows(attention.steps, lambda step, r: _accumulated(step, next(found), r), inputs, upsample)
    eye = torch.eye(probs[0].shape[-1], dtype=probs[0].dtype, device=probs[0].device)
    relevance = eye.expand(len(inputs), -1, -1)
    for layer in weighted:
        if layer is not None:
            relevance = relevance + layer.mean(dim=1) @ relevance
    return _class_row(relevance, inputs, upsample, "generic_attention")


def _accumulated(step: _Step, weighted: Tensor | None, relevance: Tensor) -> Tensor:
    """``R + mean_heads(clamp(dy/dA * A, 0)) R`` for a windowed attention (``weighted``: the clamped product per
    window and head; ``None``: the target does not reach it)."""
    if weighted is None:
        return relevance
    return relevance + _window_product(weighted.mean(dim=1), step.tokens, relevance)
