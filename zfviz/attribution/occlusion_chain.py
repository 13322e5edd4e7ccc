"""Which models occlusion's receptive-field fast path can follow (Zeiler & Fergus 2014, Section 4.2, Fig. 7).

The path follows a chain found without class names: the model's children, walked recursively, as long
as each is a conv, a max-pool, a pointwise module (ReLU, batch norm and dropout in eval mode, contrast
normalization) or a torchvision ResNet block (``BasicBlock``/``Bottleneck``, unchanged ``forward``:
its changed region is the union of the main path's and the shortcut's). One recorded forward pass
checks that each link reads exactly its predecessor's output and runs once. Anything else ends the
chain there. How the rectangles travel along the chain is ``zfviz.attribution.occlusion_fast``'s business.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.activations import Capture, hooks

# Modules that act on each spatial position alone (in eval mode), so a rectangle passes through.
POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.LocalResponseNorm, nn.Dropout, nn.Dropout2d, nn.Identity, nn.BatchNorm2d)


@dataclass
class Rect:
    """The rectangle of a map that the occluder can change, along each axis (rows, columns).

    ``lo``/``length``: exact, per occluder origin on that axis. ``start``/``lengths``: what is computed,
    one length per class of origins (``zfviz.attribution.occlusion_fast`` groups origins so a class runs as
    one batch) and a start per origin, clamped so the rectangle stays inside the map."""

    size: tuple[int, int]
    lo: tuple[Tensor, Tensor]
    length: tuple[Tensor, Tensor]
    start: tuple[Tensor, Tensor] | None = None
    lengths: tuple[list[int], list[int]] | None = None


@dataclass
class Window:
    """A conv or max-pool: kernel, stride, padding, the clean input it reads, the rectangle it outputs."""

    module: nn.Module
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: float
    padded: Tensor | None = None  # the clean input, padded as the layer pads it, channels last
    weight: Tensor | None = None  # a conv's weight, channels last like its inputs (else each call converts it)
    rect: Rect | None = None


@dataclass
class Step:
    """One link of the chain: ``after(main(x) + shortcut(x))``, or ``main(x)`` without a shortcut."""

    path: str
    main: list
    shortcut: list | None = None  # [] is the identity shortcut
    after: list = field(default_factory=list)
    out: Tensor | None = None  # the clean output (N, C, H, W)
    rect: Rect | None = None  # the output's rectangle
    paste: dict = field(default_factory=dict)  # "main"/"shortcut": clean map (NHWC) to paste a path's patch into


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _op(module: nn.Module):
    """The module as a rectangle op (a ``Window`` or the pointwise module itself), or None."""
    if isinstance(module, nn.Conv2d):
        plain = module.padding_mode == "zeros" and not isinstance(module.padding, str)
        if plain and _pair(module.dilation) == (1, 1):
            return Window(module, _pair(module.kernel_size), _pair(module.stride), _pair(module.padding), 0.0)
    if isinstance(module, nn.MaxPool2d) and _pair(module.dilation) == (1, 1) and not module.return_indices:
        stride = _pair(module.stride or module.kernel_size)
        return Window(module, _pair(module.kernel_size), stride, _pair(module.padding), float("-inf"))
    if isinstance(module, POINTWISE) and not module.training:
        if not isinstance(module, nn.BatchNorm2d) or module.running_mean is not None:  # else batch statistics
            return module
    return None


def _block(module: nn.Module) -> Step | None:
    """A torchvision ResNet block as a step; None for anything else (or a block with a changed forward)."""
    # A model holding torchvision's blocks has imported their module (importing torchvision costs seconds).
    resnet = sys.modules.get("torchvision.models.resnet")
    if resnet is None:
        return None
    BasicBlock, Bottleneck = resnet.BasicBlock, resnet.Bottleneck  # noqa: N806
    kind = type(module)
    if not (isinstance(module, BasicBlock) and kind.forward is BasicBlock.forward) and not (
        isinstance(module, Bottleneck) and kind.forward is Bottleneck.forward
    ):
        return None
    names = ["conv1", "bn1", "relu", "conv2", "bn2"]
    names += ["relu", "conv3", "bn3"] if isinstance(module, Bottleneck) else []
    main = [_op(getattr(module, name)) for name in names]
    shortcut = [] if module.downsample is None else [_op(m) for m in module.downsample.children()]
    if any(op is None for op in main + shortcut):
        return None
    return Step("", main, shortcut, [_op(module.relu)])


def candidates(model: nn.Module) -> tuple[list[Step], dict[str, list[int]]]:
    """The longest run of steps found by walking children in definition order; and per container walked
    that is not an ``nn.Sequential``, the indices of its steps (the recorded pass checks that it returns
    its last step's output), or ``[first, end]`` past its end when the walk stopped inside it."""
    steps: list[Step] = []
    containers: dict[str, list[int]] = {}

    def walk(module: nn.Module, prefix: str) -> bool:
        for name, child in module.named_children():
            path = prefix + name
            op = _op(child)
            step = _block(child) if op is None else Step(path, [op])
            if step is not None:
                step.path = path
                steps.append(step)
                continue
            if not any(True for _ in child.children()):
                return False  # a leaf the rectangles cannot follow: the chain ends here
            first = len(steps)
            whole = walk(child, path + ".")
            if not isinstance(child, nn.Sequential):  # its forward is unknown: checked in the recorded pass
                containers[path] = list(range(first, len(steps))) if whole else [first, len(steps)]
            if not whole:
                return False
        return True

    walk(model, "")
    return steps, containers


def record(model: nn.Module, images: Tensor, steps: list[Step], containers, feat: str):
    """One forward pass: the logits, the feature layer's output, and how many steps form a checked chain."""
    seen: dict[str, list] = {}

    def hook(path):
        return lambda _m, inputs, output: seen.setdefault(path, []).append((inputs, output))

    pairs = [(s.path, hook(s.path)) for s in steps] + [(p, hook(p)) for p in containers]
    with hooks(model, pairs), Capture(model, [feat]) as capture:
        logits = capture(images)
    act = capture.outputs[feat]
    good, previous = 0, images
    for step in steps:
        calls = seen.get(step.path, [])
        if len(calls) != 1 or len(calls[0][0]) != 1 or calls[0][0][0] is not previous:
            break
        previous, good = calls[0][1], good + 1
    for path, members in containers.items():  # a container must hand on its last step's output
        calls = seen.get(path, [])
        if members and members[0] < good:
            last = members[-1] < good and seen[steps[members[-1]].path][0][1]
            if len(calls) != 1 or calls[0][1] is not last:
                good = min(good, members[0])
    for i, step in enumerate(steps[:good]):  # the feature layer inside a block: the block runs whole
        if feat.startswith(step.path + "."):
            good = i
            break
    return logits, act, good


def pointwise(module: nn.Module, x: Tensor, fast: bool = True, inplace: bool = False) -> Tensor:
    """``module(x)``; in place only when asked (a rectangle's input may still be needed elsewhere); PyTorch's
    own contrast normalization as shifted channel slices when ``fast`` (a subclass with its own forward is called)."""
    if isinstance(module, nn.ReLU):
        return torch.relu_(x) if inplace else torch.relu(x)
    if isinstance(module, nn.LeakyReLU):
        return F.leaky_relu(x, module.negative_slope, inplace=inplace)
    if fast and type(module).forward is nn.LocalResponseNorm.forward and x.dim() == 4:
        return lrn(module, x)
    return module(x)


def lrn(module: nn.LocalResponseNorm, x: Tensor) -> Tensor:
    """``module(x)`` to float rounding, as a sum of shifted channel slices: about twice as fast as PyTorch's
    average-pool formulation on the many small maps of a sweep."""
    c, size = x.shape[1], module.size
    padded = F.pad(x * x, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    total = padded[:, :c]
    for j in range(1, size):
        total = total + padded[:, j : j + c]
    return x / (total / size).mul(module.alpha).add(module.k).pow(module.beta)
