"""Canonizers: temporary rewrites of a model so that each rule sees one plain module (issue 13).

LRP's rules are stated for a chain of linear layers and ReLUs (Montavon et al. 2019, Sec. 10.3):

- ``OutOfPlace``: ``inplace=True`` modules (torchvision's ReLUs) run out of place, so the input a
  rule needs still exists in the backward pass. Every method uses it.
- ``StandardizedWeights``: timm's ``StdConv2d`` and ``ScaledStdConv2d`` standardize their weight inside
  ``forward``; the standardized weight becomes the layer's weight and nn.Conv2d's forward its forward, so
  a rule reading ``module.weight`` reads the weight the net computes with (the raw one gave wrong relevance).
  The mechanism applies it under every composite, first. Any other conv/linear subclass with a forward of
  its own is refused by the rules that read the weight (``rules``).
- ``MergeBatchNorm``: a batch norm after a conv/linear layer is folded into that layer's weight and
  bias, and itself made the identity, so the layer's rule sees the affine map the net computes
  (``folded``; a batch norm called as a function is folded the same way, ``graph``).
- ``ResidualSum``: torchvision's residual blocks (ResNet's ``BasicBlock``/``Bottleneck``, MobileNetV2/V3's
  ``InvertedResidual``, MNASNet's ``_InvertedResidual``, EfficientNet's ``MBConv``/``FusedMBConv``,
  RegNet's ``ResBottleneckBlock``, ConvNeXt's ``CNBlock``) add their shortcut with ``+``; the block's
  forward is replaced by one that adds through an explicit ``Sum`` module, so a rule can split
  relevance between the two branches in proportion to their contributions. ConvNeXt's layer scale (a per-channel factor after the block's
  last linear layer) is folded into that layer's weight and bias, so the layer's rule sees the map the
  net computes.
- ``SqueezeExcitationGate``: torchvision's ``SqueezeExcitation`` multiplies its input by a gate computed
  from it; the product goes through an explicit ``Product`` module, so a rule can treat the gate as
  a constant (``rules.SignalTakeAll``).
- ``ConstantGate`` and ``ResidualSum(pairwise=True)``: the same two rewrites for LRP in gradient form
  (``rules.OutputShare``): the gate detached from the product (its branch never runs backward), the sum a
  ``PairSum`` of the two operands (no stacked copy).
- ``ModulePooling``: torchvision's DenseNet and MobileNetV2 pool globally with
  ``F.adaptive_avg_pool2d``, which PyTorch records as a mean that keeps no input, so no rule could
  split it; for the call they pool through an ``nn.AdaptiveAvgPool2d`` module instead.
- ``transformer.AttentionBlocks`` (beside the attention's rule, in ``transformer``): torchvision's ViT and
  Swin blocks call their attention through one module and add their residuals through ``Sum``.
- A batch norm *before* its conv (DenseNet, pre-activation ResNets) has a ReLU between the two, so no
  rewrite folds it exactly; LRP passes relevance through it (``composites``), as Zennit does.

Each ``apply`` returns its undo; ``canonized`` undoes them in reverse order, also on an exception.
The rewrite swaps objects (parameters, buffers, attributes) in and puts the user's own objects
back, so weights come back bit for bit and references the user holds stay valid.

Why rewrite and undo rather than work on ``copy.deepcopy(model)``: measured on resnet50 (2 shared
cores), a deepcopy takes 0.23-0.37 s and all three canonizers applied and undone 0.35 s (merging
writes a new weight for each of its 53 convs), so time does not decide. The copy doubles the
weights' memory, fails on tensors that refuse deep copies (non-leaf parameters, weight-norm
hooks), and runs the user's hooks on modules that are not the ones the user registered them on;
rewrite-and-undo touches only what LRP needs and puts the same objects back.
"""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.attribution.state import CallState

_WEIGHTED = (nn.Conv2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class Canonizer(Protocol):
    def apply(self, model: nn.Module, state) -> Callable[[], None]: ...


@contextmanager
def canonized(model: nn.Module, canonizers, state=None) -> Iterator:
    """Apply ``canonizers`` in order for the block; undo in reverse, also on an exception."""
    state = state or CallState()
    undos = []
    try:
        for canonizer in canonizers:
            undos.append(canonizer.apply(model, state))
        yield state
    finally:
        for undo in reversed(undos):
            undo()


class OutOfPlace:
    """Every module with ``inplace=True`` runs out of place for the call."""

    def apply(self, model: nn.Module, state) -> Callable[[], None]:
        # __dict__, not getattr: a miss on an nn.Module raises inside __getattr__, slow on every module
        changed = [m for m in model.modules() if m.__dict__.get("inplace", False) is True]
        for module in changed:
            module.inplace = False

        def undo() -> None:
            for module in changed:
                module.inplace = True

        return undo


def batchnorm_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(conv/linear, batch norm) pairs: a batch norm defined right after a layer with its width.

    In an ``nn.Sequential`` definition order is call order (VGG-BN). In other modules it is a
    convention torchvision keeps (``conv1``/``bn1`` in ResNet); the call checks each pair at run
    time (the norm must read the layer's output) and stops with an error otherwise.
    """
    pairs = []
    for parent in model.modules():
        children = list(parent.children())
        for before, norm in zip(children, children[1:], strict=False):
            if isinstance(norm, _NORMS) and isinstance(before, _WEIGHTED):
                width = before.out_channels if isinstance(before, nn.Conv2d) else before.out_features
                if norm.num_features == width and norm.track_running_stats:
                    pairs.append((before, norm))
    return pairs


def _swap(module: nn.Module, store: str, name: str, value) -> Callable[[], None]:
    table = getattr(module, store)
    old = table[name]
    table[name] = value
    return lambda: table.__setitem__(name, old)


def in_reverse(undos: list[Callable[[], None]]) -> Callable[[], None]:
    """One undo that runs ``undos`` last first."""

    def undo() -> None:
        for step in reversed(undos):
            step()

    return undo


def rewrite(module: nn.Module, build: Callable[[nn.Module], Callable], **children: nn.Module) -> Callable[[], None]:
    """For the call, ``module`` holds ``children`` and runs ``build(module)`` as its forward (an instance
    attribute shadows its class's); the undo takes both away."""
    for name, child in children.items():
        module.add_module(name, child)
    module.forward = build(module)

    def undo() -> None:
        for name in children:
            del module._modules[name]
        del module.__dict__["forward"]

    return undo


def folded(
    layer: nn.Module, mean: Tensor, var: Tensor, eps: float, gamma, beta
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A batch norm (eval-mode statistics ``mean``, ``var``; affine ``gamma``, ``beta``, either may be None) after
    ``layer``, folded: ``(weight, bias, scale, shift)`` with ``norm(layer(x)) = layer'(x)`` for the layer with that
    weight and bias, and ``norm(z) = z * scale + shift`` per channel."""
    with torch.no_grad():
        scale = var.add(eps).rsqrt()
        if gamma is not None:
            scale = scale * gamma
        bias = ((layer.bias if layer.bias is not None else torch.zeros_like(mean)) - mean) * scale
        shift = -mean * scale
        if beta is not None:
            bias, shift = bias + beta, shift + beta
        weight = layer.weight * scale.reshape((-1,) + (1,) * (layer.weight.dim() - 1))
    return weight, bias, scale, shift


def with_params(layer: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A shallow copy of the conv/linear ``layer`` holding ``weight`` and ``bias``: the rules read a layer's
    parameters and settings only, and ``layer`` itself is untouched (its own parameter table stays its own)."""
    twin = copy.copy(layer)
    twin._parameters = {**layer._parameters, "weight": weight, "bias": bias}
    return twin


class MergeBatchNorm:
    """Batch norms folded into the conv/linear layer before them (eval-mode statistics)."""

    def apply(self, model: nn.Module, state) -> Callable[[], None]:
        undos = []
        for layer, norm in batchnorm_pairs(model):
            weight, bias, _, _ = folded(layer, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias)
            undos.append(_swap(layer, "_parameters", "weight", nn.Parameter(weight, layer.weight.requires_grad)))
            undos.append(_swap(layer, "_parameters", "bias", nn.Parameter(bias, layer.weight.requires_grad)))
            # The norm becomes exactly the identity: (x - 0) / sqrt(1 + 0) * 1 + 0.
            for store, name, value in (
                ("_buffers", "running_mean", torch.zeros_like(norm.running_mean)),
                ("_buffers", "running_var", torch.ones_like(norm.running_var)),
                ("_parameters", "weight", None if norm.weight is None else nn.Parameter(torch.ones_like(norm.weight))),
                ("_parameters", "bias", None if norm.bias is None else nn.Parameter(torch.zeros_like(norm.bias))),
            ):
                undos.append(_swap(norm, store, name, value))
            undos.append(_swap(norm, "__dict__", "eps", 0.0))
            state.merged[id(norm)] = layer
            undos.append(lambda norm=norm: state.merged.pop(id(norm), None))
        return in_reverse(undos)


# timm's weight-standardized convolutions (``timm.layers.std_conv``; Qiao et al. 2019, Brock et al. 2021): class
# name -> the gain their forward multiplies the standardized weight by (None: none). The ``Same`` variants only
# where they pad statically (``same_pad`` false): a dynamic pad is a step nn.Conv2d's forward does not take.
_STANDARDIZED: dict[str, Callable[[nn.Module], Tensor | None]] = {
    "StdConv2d": lambda _conv: None,
    "StdConv2dSame": lambda _conv: None,
    "ScaledStdConv2d": lambda conv: (conv.gain * conv.scale).view(-1),
    "ScaledStdConv2dSame": lambda conv: (conv.gain * conv.scale).view(-1),
}


def standardizes(module: nn.Module) -> bool:
    """Whether ``module`` is one of timm's weight-standardized convs that ``StandardizedWeights`` rewrites."""
    kind = type(module)
    return (
        kind.__name__ in _STANDARDIZED
        and kind.__module__.startswith("timm.")
        and isinstance(module, nn.Conv2d)
        and not getattr(module, "same_pad", False)
        and "forward" not in module.__dict__
    )


def standardized_weight(conv: nn.Module) -> Tensor:
    """The weight timm's forward computes from ``conv.weight``: each filter centred and divided by its (biased)
    standard deviation, times the gain; the same op timm's forward calls, so the same numbers."""
    flat = conv.weight.reshape(1, conv.out_channels, -1)
    gain = _STANDARDIZED[type(conv).__name__](conv)
    return F.batch_norm(flat, None, None, weight=gain, training=True, momentum=0.0, eps=conv.eps).reshape_as(
        conv.weight
    )


class StandardizedWeights:
    """timm's weight-standardized convs compute with a weight made from ``module.weight``; for the call that
    weight is their ``weight`` and nn.Conv2d's forward their forward, so a rule that reads the layer's weight
    (LRP's) reads the one the net computes with, and a batch norm after it merges into that weight."""

    def apply(self, model: nn.Module, state) -> Callable[[], None]:
        undos = []
        for conv in [m for m in model.modules() if standardizes(m)]:
            with torch.no_grad():
                weight = standardized_weight(conv)
            undos.append(_swap(conv, "_parameters", "weight", nn.Parameter(weight, conv.weight.requires_grad)))
            undos.append(rewrite(conv, lambda module: types.MethodType(nn.Conv2d.forward, module)))
        return in_reverse(undos)


class Sum(nn.Module):
    """The explicit residual addition: ``x`` stacked on its last dimension, summed over it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.sum(dim=-1)


class PairSum(Sum):
    """``Sum`` of two operands without stacking them: for a rule that needs only the sum's output (LRP in
    gradient form, ``rules.OutputShare``), a copy of both operands saved."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        return x + y


class Product(nn.Module):
    """The explicit gating: signal and gate stacked on the last dimension (in that order), multiplied."""

    def forward(self, x: Tensor) -> Tensor:
        return x[..., 0] * x[..., 1]


def added(block: nn.Module, shortcut: Tensor, branch: Tensor) -> Tensor:
    """``shortcut + branch`` through the block's ``Sum`` module (``residual_sum``), which a rule can split."""
    if isinstance(block.residual_sum, PairSum):
        return block.residual_sum(shortcut, branch)
    return block.residual_sum(torch.stack([shortcut, branch], dim=-1))


def _basic_forward(block: nn.Module) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.bn2(block.conv2(out))
        identity = x if block.downsample is None else block.downsample(x)
        return block.relu(added(block, identity, out))

    return forward


def _bottleneck_forward(block: nn.Module) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
        identity = x if block.downsample is None else block.downsample(x)
        return block.relu(added(block, identity, out))

    return forward


def _inverted_forward(block: nn.Module) -> Callable[[Tensor], Tensor]:
    """MobileNetV2's ``InvertedResidual`` (its branch is ``conv``)."""
    return lambda x: added(block, x, block.conv(x))


def _mbconv_forward(block: nn.Module) -> Callable[[Tensor], Tensor]:
    """MobileNetV3's ``InvertedResidual``, EfficientNet's ``MBConv``/``FusedMBConv``: ``block``, then the
    stochastic depth where there is one (the identity at eval)."""
    depth = getattr(block, "stochastic_depth", None)
    return lambda x: added(block, x, block.block(x) if depth is None else depth(block.block(x)))


def _mnasnet_forward(block: nn.Module) -> Callable[[Tensor], Tensor]:
    """MNASNet's ``_InvertedResidual`` (its branch is ``layers``)."""
    return lambda x: added(block, x, block.layers(x))


def _regnet_forward(block: nn.Module) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        return block.activation(added(block, x if block.proj is None else block.proj(x), block.f(x)))

    return forward


def _convnext_forward(block: nn.Module) -> Callable[[Tensor], Tensor]:
    """ConvNeXt's ``CNBlock`` with its layer scale folded into the block's last linear layer (``_fold_scale``)."""
    return lambda x: added(block, x, block.stochastic_depth(block.block(x)))


def _fold_scale(block: nn.Module) -> list[Callable[[], None]]:
    """``layer_scale * linear(x)`` as one linear layer: the scale multiplies its rows and bias."""
    linear = scaled_linear(block)
    scale = block.layer_scale.detach().reshape(-1)
    with torch.no_grad():
        weight, bias = linear.weight * scale[:, None], None if linear.bias is None else linear.bias * scale
    undos = [_swap(linear, "_parameters", "weight", nn.Parameter(weight, linear.weight.requires_grad))]
    if bias is not None:
        undos.append(_swap(linear, "_parameters", "bias", nn.Parameter(bias, linear.bias.requires_grad)))
    return undos


# torchvision module -> {block class name: (forward builder, whether the block adds its shortcut)}
_BLOCKS = {
    "torchvision.models.resnet": {
        "BasicBlock": (_basic_forward, lambda _block: True),
        "Bottleneck": (_bottleneck_forward, lambda _block: True),
    },
    "torchvision.models.mobilenetv2": {"InvertedResidual": (_inverted_forward, lambda b: b.use_res_connect)},
    "torchvision.models.mobilenetv3": {"InvertedResidual": (_mbconv_forward, lambda b: b.use_res_connect)},
    "torchvision.models.efficientnet": {
        "MBConv": (_mbconv_forward, lambda b: b.use_res_connect),
        "FusedMBConv": (_mbconv_forward, lambda b: b.use_res_connect),
    },
    "torchvision.models.mnasnet": {"_InvertedResidual": (_mnasnet_forward, lambda b: b.apply_residual)},
    "torchvision.models.regnet": {"ResBottleneckBlock": (_regnet_forward, lambda _block: True)},
    "torchvision.models.convnext": {"CNBlock": (_convnext_forward, lambda _block: True)},
}


def _block_kinds() -> dict[type, tuple]:
    """The residual block classes of the torchvision modules this process imported (a process that never
    imported one holds none of its blocks, so none is imported here)."""
    kinds = {}
    for module_name, blocks in _BLOCKS.items():
        module = sys.modules.get(module_name)
        if module is not None:
            kinds.update({getattr(module, name): how for name, how in blocks.items()})
    return kinds


def residual_blocks(model: nn.Module) -> list[tuple[nn.Module, Callable]]:
    """The torchvision residual blocks of ``model`` that add their shortcut, not rewritten by the user (whose
    additions stay plain gradients), each with its forward builder."""
    kinds = _block_kinds()
    found = []
    for block in model.modules():
        build, adds = kinds.get(type(block), (None, None))
        if build is not None and adds(block) and "residual_sum" not in block._modules:
            if "forward" not in block.__dict__:
                found.append((block, build))
    return found


def scaled_linear(block: nn.Module) -> nn.Linear:
    """The linear layer a ConvNeXt block's layer scale multiplies (its last)."""
    return [m for m in block.block if isinstance(m, nn.Linear)][-1]


class LayerScale(nn.Module):
    """ConvNeXt's layer scale as a module (``ResidualSum(pairwise=True)``): for LRP in gradient form the rule of
    the linear layer it scales applies at its output, the folded layer's, with no folded weight written."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)  # a reference, not a child

    def forward(self, x: Tensor) -> Tensor:
        return self.block.layer_scale * x


def _convnext_scaled_forward(block: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: added(block, x, block.stochastic_depth(block.layer_scale_product(block.block(x))))


class ResidualSum:
    """torchvision's residual blocks add their shortcut through an explicit ``Sum`` module for the call
    (``pairwise``: a ``PairSum``, and ConvNeXt's layer scale a ``LayerScale`` rather than folded)."""

    def __init__(self, pairwise: bool = False) -> None:
        self.pairwise = pairwise

    def apply(self, model: nn.Module, state) -> Callable[[], None]:
        undos = []
        for block, build in residual_blocks(model):
            if hasattr(block, "layer_scale") and self.pairwise:
                undos.append(
                    rewrite(
                        block, _convnext_scaled_forward, residual_sum=PairSum(), layer_scale_product=LayerScale(block)
                    )
                )
                continue
            if hasattr(block, "layer_scale"):
                undos += _fold_scale(block)
            undos.append(rewrite(block, build, residual_sum=PairSum() if self.pairwise else Sum()))
        return in_reverse(undos)


def _gated_forward(block: nn.Module) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        scale = block._scale(x)
        return block.gate_product(torch.stack([x, scale.expand_as(x)], dim=-1))

    return forward


def squeeze_excitations(model: nn.Module) -> list[nn.Module]:
    """torchvision's ``SqueezeExcitation`` blocks in ``model`` not rewritten by the user."""
    misc = sys.modules.get("torchvision.ops.misc")
    kind = None if misc is None else misc.SqueezeExcitation
    blocks = [m for m in model.modules() if kind is not None and type(m) is kind]
    return [b for b in blocks if "gate_product" not in b._modules and "forward" not in b.__dict__]


class SqueezeExcitationGate:
    """torchvision's ``SqueezeExcitation`` multiplies by its gate through an explicit ``Product`` for the call."""

    def apply(self, model: nn.Module, state) -> Callable[[], None]:
        blocks = squeeze_excitations(model)
        return in_reverse([rewrite(block, _gated_forward, gate_product=Product()) for block in blocks])


def _constant_gate_forward(block: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: block._scale(x).detach() * x


class ConstantGate:
    """``SqueezeExcitationGate`` for LRP in gradient form (``rules.OutputShare``): the product's backward with
    the gate detached is the signal-takes-all rule (``g_x = g_y * gate``), and the gate's branch is never
    run backward. No stacked copy, no extra module."""

    def apply(self, model: nn.Module, state) -> Callable[[], None]:
        return in_reverse([rewrite(block, _constant_gate_forward) for block in squeeze_excitations(model)])


def _densenet_forward(net: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: net.classifier(torch.flatten(net.global_pool(F.relu(net.features(x))), 1))


def _mobilenet_v2_forward(net: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: net.classifier(torch.flatten(net.global_pool(net.features(x)), 1))


_POOLING_NETS = {
    "torchvision.models.densenet": ("DenseNet", _densenet_forward),
    "torchvision.models.mobilenetv2": ("MobileNetV2", _mobilenet_v2_forward),
}


class ModulePooling:
    """torchvision's DenseNet and MobileNetV2 pool through an ``nn.AdaptiveAvgPool2d`` module for the call."""

    def apply(self, model: nn.Module, state) -> Callable[[], None]:
        kinds = {}
        for module_name, (name, build) in _POOLING_NETS.items():
            module = sys.modules.get(module_name)
            if module is not None:
                kinds[getattr(module, name)] = build
        nets = [m for m in model.modules() if type(m) in kinds and "forward" not in m.__dict__]
        nets = [m for m in nets if "global_pool" not in m._modules]
        return in_reverse([rewrite(net, kinds[type(net)], global_pool=nn.AdaptiveAvgPool2d(1)) for net in nets])
