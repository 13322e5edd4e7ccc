"""Two deconvnet oracles independent of ``zfviz.attribution`` (Section 2.1), for tests and ``scripts/bench_deconv.py``.

1. ``autograd_oracle``: autograd on the net itself with every ReLU swapped for a module whose backward
   is the deconvnet's rule (ReLU of the signal coming down) and, with ``lrn="pass"``, every contrast
   normalization for one whose backward is the identity; max pools keep autograd's backward, which
   routes through the switches and adds the contributions of cells that share one.
2. The chain inverter (``trace``/``descend``): the deconvnet as the paper draws it, for plain chains of
   layers (ours, torchvision's ``alexnet`` and ``vgg16``). ``trace`` records the module chain and the
   pools' switches on the way up, ``invert`` undoes one layer: unpooling with a ``scatter_add``,
   ReLU of the signal, ``conv_transpose2d`` with the layer's filters and no bias. It was zfviz's fast
   path for Fig. 2 until the one mechanism took a batch of starting signals (issue 24); here it is a
   third implementation to compare against, and the baseline of ``scripts/bench_deconv.py``.

Neither imports the code under test: hooks, module swaps and the layer inversions are written here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Stop(Exception):
    """The examined layer ran."""


# --- 1. autograd on the deconv-rule net -------------------------------------------------------------


class _DeconvReLUFn(torch.autograd.Function):
    """The deconvnet's rectification as a backward rule: ReLU of the incoming gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


class _PassLRNFn(torch.autograd.Function):
    """Contrast normalization on the way up, the identity on the way down (the paper's choice)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


class _OracleReLU(nn.Module):
    def forward(self, x):
        return _DeconvReLUFn.apply(x)


class _OracleLRN(nn.Module):
    def __init__(self, lrn: nn.LocalResponseNorm):
        super().__init__()
        self.lrn = lrn

    def forward(self, x):
        return _PassLRNFn.apply(x, self.lrn.size, self.lrn.alpha, self.lrn.beta, self.lrn.k)


def autograd_oracle(
    model: nn.Module, images: Tensor, layer: str, start_fn: Callable[[Tensor], Tensor], lrn: str = "pass"
) -> Tensor:
    """Autograd with every ReLU's backward replaced by ReLU(grad_out); pools and convs keep autograd's own.

    ``start_fn(activation)`` gives the signal at ``layer``'s output (its module's output)."""
    swapped = []  # modules are swapped in place (no copy of a 138M-parameter net) and put back after
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.ReLU):
            swapped.append((name, module, _OracleReLU()))
        elif isinstance(module, nn.LocalResponseNorm) and lrn == "pass":
            swapped.append((name, module, _OracleLRN(module)))
    x = images.clone().requires_grad_(True)
    captured = {}

    def hook(module, inputs, output):
        captured["out"] = output
        raise _Stop

    for name, _, replacement in swapped:
        model.set_submodule(name, replacement)
    handle = model.get_submodule(layer).register_forward_hook(hook)
    training = model.training
    try:
        model.eval()(x)
    except _Stop:
        pass
    finally:
        handle.remove()
        model.train(training)
        for name, original, _ in swapped:
            model.set_submodule(name, original)
    out = captured["out"]
    return torch.autograd.grad(out, x, start_fn(out.detach()))[0]


def strongest_start(channel: int) -> Callable[[Tensor], Tensor]:
    """Keep, in each image, only the largest activation of map ``channel`` (a plain loop)."""

    def start_fn(act: Tensor) -> Tensor:
        start = torch.zeros_like(act)
        for i in range(len(act)):
            flat = act[i, channel].reshape(-1)
            j = int(torch.argmax(flat))
            start[i, channel].view(-1)[j] = flat[j]
        return start

    return start_fn


def cell_start(channel: int, y: int, x: int) -> Callable[[Tensor], Tensor]:
    """Keep, in each image, only the activation of map ``channel`` at (y, x)."""

    def start_fn(act: Tensor) -> Tensor:
        start = torch.zeros_like(act)
        start[:, channel, y, x] = act[:, channel, y, x]
        return start

    return start_fn


def whole_map_start(channel: int) -> Callable[[Tensor], Tensor]:
    def start_fn(act: Tensor) -> Tensor:
        start = torch.zeros_like(act)
        start[:, channel] = act[:, channel]
        return start

    return start_fn


# --- 2. the chain inverter ---------------------------------------------------------------------------

_PASS_THROUGH = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity, nn.Flatten, nn.Unflatten)
_SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.LocalResponseNorm, nn.AdaptiveAvgPool2d, nn.AvgPool2d)


class NotTraceable(Exception):
    """``trace`` cannot record the model as a chain of invertible layers."""


@dataclass
class Step:
    """One module call on the way up, with what its inversion needs."""

    name: str
    module: nn.Module
    in_shape: torch.Size
    out_shape: torch.Size
    in_ptr: int
    out_ptr: int
    saved: Tensor | None = None  # pool switches, or the input of a layer inverted by autograd


@dataclass
class Trace:
    """The chain of module calls below ``layer`` and the layer's output (the activations)."""

    layer: str
    steps: list[Step] = field(default_factory=list)
    activation: Tensor | None = None

    def take(self, index: Tensor) -> Trace:
        """The trace of ``images[index]`` (rows may repeat), without running the net again."""
        n = len(index)
        steps = [
            replace(
                s,
                in_shape=torch.Size((n, *s.in_shape[1:])),
                out_shape=torch.Size((n, *s.out_shape[1:])),
                saved=None if s.saved is None else s.saved[index],
            )
            for s in self.steps
        ]
        return Trace(self.layer, steps, self.activation[index])


def _leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def trace(model: nn.Module, images: Tensor, layer: str, *, norm: str = "pass") -> Trace:
    """Run ``model`` (eval mode, no gradients) on ``images`` up to ``layer``, recording the chain and switches."""
    result = Trace(layer)

    def record(name: str, module: nn.Module, inputs, output) -> None:
        x = inputs[0]
        if not isinstance(module, _SUPPORTED + _PASS_THROUGH):
            raise NotTraceable(f"layer {name} is a {type(module).__name__}, which the chain cannot invert")
        step = Step(name, module, x.shape, output.shape, x.data_ptr(), output.data_ptr())
        if isinstance(module, nn.MaxPool2d):
            _, step.saved = F.max_pool2d(
                x, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode, True
            )
        elif isinstance(module, nn.LocalResponseNorm) and norm == "backprop":
            step.saved = x.detach().clone()
        result.steps.append(step)
        if name == layer:
            result.activation = output.detach().clone()
            raise _Stop

    handles = [
        m.register_forward_hook(lambda m, i, o, name=name: record(name, m, i, o))
        for name, m in model.named_modules()
        if _leaf(m)
    ]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(images)
    except _Stop:
        pass
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    _check_chain(result, images)
    return result


def _check_chain(result: Trace, images: Tensor) -> None:
    """Each module must read what the one before it wrote (views allowed), or inversion is meaningless."""
    prev_name, prev_ptr, prev_numel = "the input", images.data_ptr(), images[0].numel()
    for step in result.steps:
        if step.in_ptr != prev_ptr or step.in_shape[1:].numel() != prev_numel:
            raise NotTraceable(f"not a plain chain of layers: {step.name} does not read the output of {prev_name}")
        prev_name, prev_ptr, prev_numel = step.name, step.out_ptr, step.out_shape[1:].numel()


def unpool(signal: Tensor, switches: Tensor, input_shape: torch.Size) -> Tensor:
    """Place each pooled value at its switch; values of cells sharing a switch are added."""
    n, c = signal.shape[:2]
    out = signal.new_zeros(n, c, input_shape[-2] * input_shape[-1])
    out.scatter_add_(2, switches.reshape(n, c, -1), signal.reshape(n, c, -1))
    return out.reshape(n, c, *input_shape[-2:])


def _conv_transpose(signal: Tensor, conv: nn.Conv2d, in_shape: torch.Size) -> Tensor:
    """The transposed filters (no bias), with the output padding that restores the input size."""
    extra = []
    for dim in range(2):
        size = (signal.shape[2 + dim] - 1) * conv.stride[dim] - 2 * conv.padding[dim]
        size += conv.dilation[dim] * (conv.kernel_size[dim] - 1) + 1
        extra.append(in_shape[2 + dim] - size)
    return F.conv_transpose2d(
        signal, conv.weight, None, conv.stride, conv.padding, tuple(extra), conv.groups, conv.dilation
    )


def _vjp(fn, saved_or_shape, signal: Tensor) -> Tensor:
    """Signal times the Jacobian of ``fn`` (for layers that are linear, or whose input was kept)."""
    with torch.enable_grad():
        if isinstance(saved_or_shape, Tensor):
            x = saved_or_shape.detach().requires_grad_(True)
        else:
            x = signal.new_zeros(saved_or_shape, requires_grad=True)
        (grad,) = torch.autograd.grad(fn(x), x, signal)
    return grad


def invert(step: Step, signal: Tensor, norm: str = "pass") -> Tensor:
    """One layer of the deconvnet: ``signal`` shaped like the step's output -> shaped like its input."""
    module = step.module
    if isinstance(module, nn.Conv2d):
        return _conv_transpose(signal, module, step.in_shape)
    if isinstance(module, nn.Linear):
        return signal @ module.weight
    if isinstance(module, nn.ReLU):
        return F.relu(signal)
    if isinstance(module, nn.MaxPool2d):
        return unpool(signal, step.saved, step.in_shape)
    if isinstance(module, nn.LocalResponseNorm):
        return signal if norm == "pass" else _vjp(module, step.saved, signal)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
        return signal if step.in_shape == step.out_shape else _vjp(module, step.in_shape, signal)
    return signal.reshape(step.in_shape)  # dropout (eval), identity, flatten


def descend(result: Trace, start: Tensor, norm: str = "pass") -> Tensor:
    """Pass ``start`` (shaped like the layer's activation) down the recorded chain to pixels."""
    signal = start
    with torch.no_grad():
        for step in reversed(result.steps):
            signal = invert(step, signal.reshape(step.out_shape), norm)  # a view between modules: a reshape
    return signal


def chain_project(
    model: nn.Module, images: Tensor, layer: str, start_fn: Callable[[Tensor], Tensor], norm: str = "pass"
) -> Tensor:
    """The chain inverter's projection of ``start_fn(activation)`` of ``layer`` for ``images``."""
    result = trace(model, images, layer, norm=norm)
    return descend(result, start_fn(result.activation), norm)


def chain_batches(
    model: nn.Module,
    x: Tensor,
    layer: str,
    units: tuple[Tensor, Tensor, Tensor],
    batch_size: int = 64,
    norm: str = "pass",
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(rows, projections)`` of ``units`` = (image, channel, position) by the chain inverter, as zfviz's
    fast path did before issue 24: units in order of image, ``batch_size`` a batch, each distinct image of
    a batch traced once and its switches reused for all its units (the baseline of ``bench_deconv.py``)."""
    image, channel, position = units
    order = torch.argsort(image, stable=True)
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        distinct, inverse = torch.unique(image[rows], return_inverse=True)
        result = trace(model, x[distinct], layer, norm=norm).take(inverse)
        act, index = result.activation, torch.arange(len(rows))
        start = torch.zeros_like(act)
        y, w = position[rows, 0], position[rows, 1]
        start[index, channel[rows], y, w] = act[index, channel[rows], y, w]
        yield rows, descend(result, start, norm).reshape(len(rows), *x.shape[1:])


def unit_starts(activation: Tensor, image: Tensor, channel: Tensor, position: Tensor) -> Tensor:
    """Row ``j``: zero but map ``channel[j]`` of ``activation[image[j]]`` at ``position[j]`` (a plain loop)."""
    start = torch.zeros(len(image), *activation.shape[1:])
    for j, (i, c, (y, x)) in enumerate(zip(image.tolist(), channel.tolist(), position.tolist(), strict=True)):
        start[j, c, y, x] = activation[i, c, y, x]
    return start
