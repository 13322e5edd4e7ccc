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

Windowed attention (Swin's shifted windows, MaxViT's block and grid attention) mixes tokens only inside
each window, with a different partition per layer: a product of token-to-token matrices across layers
is not the rollout the paper defines, so it is refused in one line naming the methods that work; a net
without attention (a CNN) too. So is an attention call with a mask, ``bias_k`` or ``add_zero_attn``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention

from zfviz.activations import evaluating, hooks
from zfviz.attribution.grids import token_grid
from zfviz.attribution.options import FLAG, Option
from zfviz.attribution.registry import METHODS, register_method
from zfviz.attribution.state import Unsupported
from zfviz.attribution.targets import check_classes, parse_target, start_signal
from zfviz.errors import UserError

_WINDOWED = (ShiftedWindowAttention, RelativePositionalMultiHeadAttention)
_ARGUMENTS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")


def _self_attention(module: nn.Module) -> bool:
    """The module these methods read (and so list in another method's refusal)."""
    return isinstance(module, nn.MultiheadAttention)


def _attention_paths(model: nn.Module, method: str) -> list[str]:
    """The model's attention modules; windowed attention, or none at all, is one line naming what works."""
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, _WINDOWED):
            raise Unsupported(name, module, ": windowed attention, whose product across layers is not defined")
    paths = [name for name, module in modules.items() if _self_attention(module)]
    if not paths:
        containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # an empty one (ShuffleNet's branch1) computes nothing
        leaves = [m for m in modules.values() if not any(True for _ in m.children()) and not isinstance(m, containers)]
        able = [n for n, m in METHODS.items() if m.supports is not _self_attention and all(map(m.supports, leaves))]
        raise UserError(
            f"{method} needs self-attention (nn.MultiheadAttention, as in torchvision's ViT) and "
            f"{type(model).__name__} has none; methods that work on it: {', '.join(able)}"
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

    def __enter__(self) -> _Attentions:
        self.handles = [
            self.model.get_submodule(path).register_forward_hook(self._hook(path), with_kwargs=True)
            for path in self.paths
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _forward(model: nn.Module, inputs: Tensor, target, method: str) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One forward pass: the target's point (the output, or the unit's layer), where its backward
    starts (1 at the target), and every layer's attention probabilities."""
    paths = _attention_paths(model, method)
    parsed = parse_target(model, target, len(inputs))
    found: dict[str, Tensor] = {}

    def keep(_module, _inputs, output):
        found.setdefault("target", output)

    pairs = [(parsed.layer, keep)] if parsed.layer is not None else []
    with evaluating(model), hooks(model, pairs), _Attentions(model, paths) as attention:
        out = model(inputs.detach())
    point = out if parsed.layer is None else found.get("target")
    if point is None:
        raise UserError(f"layer {parsed.layer!r} is never called by the model's forward pass")
    if parsed.layer is None:
        check_classes(parsed.channel, out.shape[1])
    grad_start, _ = start_signal(point, parsed, "one")
    shapes = sorted({tuple(p.shape[-2:]) for p in attention.probs})
    if len(shapes) != 1 or shapes[0][0] != shapes[0][1]:
        raise UserError(f"{method} needs self-attention over one token sequence throughout, got T x S: {shapes}")
    return point, grad_start, attention.probs


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
    row = relevance[:, 0, extra:].reshape(len(relevance), 1, h, w)
    if upsample:
        row = F.interpolate(row, size=size, mode="bilinear", align_corners=False)
    return row


_UPSAMPLE = Option("upsample", FLAG, True, "bilinearly to the input's size (false: the patch grid)")


@register_method("attention_rollout", supports=_self_attention, options=(_UPSAMPLE,))
def attention_rollout(model: nn.Module, inputs: Tensor, target, *, upsample: bool) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): the class token's attention to each patch, multiplied
    through the layers with the residual as identity, ``N x 1 x H x W`` (the same for every target)."""
    with torch.no_grad():
        _, _, probs = _forward(model, inputs, target, "attention_rollout")
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
        point, grad_start, probs = _forward(model, inputs, target, "generic_attention")
        grads = torch.autograd.grad(point, probs, grad_start, allow_unused=True)
    eye = torch.eye(probs[0].shape[-1], dtype=probs[0].dtype, device=probs[0].device)
    relevance = eye.expand(len(inputs), -1, -1)
    for layer, grad in zip(probs, grads, strict=True):
        if grad is not None:
            relevance = relevance + (grad * layer.detach()).clamp(min=0).mean(dim=1) @ relevance
    return _class_row(relevance, inputs, upsample, "generic_attention")
