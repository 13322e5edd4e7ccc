"""The deconvnet of Section 2.1: project one activation (or one feature map) back to pixel space.

To examine an activation, every other activation in its layer is zeroed and the result is passed
down through the layers below, each inverted as the paper describes:

- max pooling -> unpooling with the *switches* (argmax locations) recorded on the way up. With
  overlapping 3x3/2 pools two pooled cells can share one argmax; their contributions are added
  (a ``scatter_add``), whereas ``nn.MaxUnpool2d`` keeps only one of them.
- ReLU -> ReLU of the signal coming down (the deconvnet's rectification, not the ReLU's gradient).
- convolution / linear -> the transposed filters, without bias.
- contrast normalization (``LocalResponseNorm``) -> passed through unchanged by default, as the
  paper does ("norm='pass'"); ``norm='backprop'`` multiplies by the layer's Jacobian instead.
- dropout, flatten, identity and views between modules -> reshaped, not changed.
- average pooling (``AdaptiveAvgPool2d``, ``AvgPool2d``) -> its transpose: each output spreads its
  value evenly over its window (the identity when the adaptive pool keeps the size).

``project`` is the ``deconvnet`` method of ``zfviz.attribution`` (the one backward mechanism of
issue 13) started from the activation's value, so it runs on any model that mechanism handles
(residual nets, batch norm); given a list of maps it projects them all from one forward pass and
one batched backward (``deconv_batched``). ``project_batches`` (the top 9 of Fig. 2) takes each
distinct image up the net once per batch, on the mechanism with batched seeds for any model, or,
for chains of the layers above (ours, torchvision's ``alexnet`` and ``vgg16``), on a path of its
own: ``trace`` records the chain and its switches, stopping at the examined layer, and ``descend``
inverts it for every projection of that image. The chain path stays because it is still faster
(the mechanism measured 1.2-1.5x its time on the cpu-preset ZFNet's conv5 top 9, one thread);
both give the same projections (``tests/test_deconv.py``, ``tests/test_deconv_maps.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.activations import Capture, evaluating, hooks, resolve
from zfviz.attribution import attribute
from zfviz.errors import UserError
from zfviz.viz.deconv_batched import NORM_MODES, grouped_projections, project_maps

_PASS_THROUGH = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity, nn.Flatten, nn.Unflatten)
_SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.LocalResponseNorm, nn.AdaptiveAvgPool2d, nn.AvgPool2d)


class NotTraceable(UserError):
    """``trace`` cannot record the model as a chain of invertible layers (``project`` still can)."""


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


def _check_supported(name: str, module: nn.Module) -> None:
    if isinstance(module, _SUPPORTED + _PASS_THROUGH):
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise NotTraceable(f"layer {name}: the deconvnet inverts zero-padded convolutions only")
        return
    kinds = ", ".join(t.__name__ for t in _SUPPORTED + _PASS_THROUGH)
    raise NotTraceable(
        f"layer {name} is a {type(module).__name__}, which the deconvnet cannot invert; supported: {kinds}"
    )


def trace(model: nn.Module, images: Tensor, layer: str, *, norm: str = "pass") -> Trace:
    """Run ``model`` on ``images`` up to ``layer``, recording the module chain and pooling switches.

    The forward pass runs in eval mode without gradients and stops at ``layer``; the hooks are
    removed and the model's train/eval mode restored when this returns or raises.
    """
    if norm not in NORM_MODES:
        raise UserError(f"unknown norm mode {norm!r}; choose one of: {', '.join(NORM_MODES)}")
    path = resolve(model, layer, "output")
    result = Trace(layer)

    def record(name: str, module: nn.Module, inputs, output) -> None:
        x = inputs[0]
        out = output[0] if isinstance(output, tuple) else output
        _check_supported(name, module)
        step = Step(name, module, x.shape, out.shape, x.data_ptr(), out.data_ptr())
        if isinstance(module, nn.MaxPool2d):
            # The switches: recomputed on the recorded input with the pool's own geometry.
            _, step.saved = F.max_pool2d(
                x, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode, True
            )
        elif isinstance(module, nn.LocalResponseNorm) and norm == "backprop":
            step.saved = x.detach().clone()
        result.steps.append(step)

    # The chain's hooks go first, so the examined module's own step is recorded before the pass stops;
    # stopping there also means no later in-place op (torchvision's ReLU(inplace=True)) touches it.
    chain = [(name, lambda m, i, o, name=name: record(name, m, i, o)) for name, m in model.named_modules() if _leaf(m)]
    with hooks(model, chain), Capture(model, {layer: path}, stop=True) as capture:
        with evaluating(model), torch.no_grad():
            capture(images)
    result.activation = capture.outputs[layer]
    _check_chain(result, images)
    return result


def _check_chain(result: Trace, images: Tensor) -> None:
    """Each module must read what the one before it wrote (views allowed), or inversion is meaningless."""
    prev_name, prev_ptr, prev_numel = "the input", images.data_ptr(), images[0].numel()
    for step in result.steps:
        numel = step.in_shape[1:].numel()
        if step.in_ptr != prev_ptr or numel != prev_numel:
            raise NotTraceable(
                f"the model is not a plain chain of layers: {step.name} does not read the output of {prev_name} "
                "(residual branches and functional operations cannot be inverted)"
            )
        prev_name, prev_ptr, prev_numel = step.name, step.out_ptr, step.out_shape[1:].numel()
    if result.activation[0].numel() != prev_numel:
        raise NotTraceable(f"layer {result.layer!r} does not output what its last module {prev_name} computed")


def unpool(signal: Tensor, switches: Tensor, input_shape: torch.Size) -> Tensor:
    """Place each pooled value at its switch; values of cells sharing a switch are added."""
    n, c = signal.shape[:2]
    out = signal.new_zeros(n, c, input_shape[-2] * input_shape[-1])
    out.scatter_add_(2, switches.reshape(n, c, -1), signal.reshape(n, c, -1))
    return out.reshape(n, c, *input_shape[-2:])


def _conv_transpose(signal: Tensor, conv: nn.Conv2d, in_shape: torch.Size) -> Tensor:
    """The transposed filters (no bias), with the output padding that restores the input size."""
    padding = conv.padding
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        if any((d * (k - 1)) % 2 for d, k in zip(conv.dilation, conv.kernel_size, strict=True)):
            raise UserError("the deconvnet cannot invert padding='same' with an even kernel")
        padding = tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    extra = []
    for dim in range(2):
        size = (signal.shape[2 + dim] - 1) * conv.stride[dim] - 2 * padding[dim]
        size += conv.dilation[dim] * (conv.kernel_size[dim] - 1) + 1
        extra.append(in_shape[2 + dim] - size)
    return F.conv_transpose2d(signal, conv.weight, None, conv.stride, padding, tuple(extra), conv.groups, conv.dilation)


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
    if isinstance(module, nn.AdaptiveAvgPool2d):
        if step.in_shape[-2:] == step.out_shape[-2:]:
            return signal
        return _vjp(module, step.in_shape, signal)
    if isinstance(module, nn.AvgPool2d):
        return _vjp(module, step.in_shape, signal)
    return signal.reshape(step.in_shape)  # dropout (eval), identity, flatten


def descend(result: Trace, seed: Tensor, norm: str = "pass") -> Tensor:
    """Pass ``seed`` (shaped like the layer's activation) down the recorded chain to pixels."""
    signal = seed
    with torch.no_grad():
        for step in reversed(result.steps):
            # A view between two modules (torchvision's torch.flatten) shows up as a shape change.
            signal = invert(step, signal.reshape(step.out_shape), norm)
    return signal


def strongest(activation: Tensor, channel: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, the value and (y, x) of the largest activation in map ``channel[i]``."""
    maps = activation[torch.arange(len(activation), device=activation.device), channel]
    flat = maps.reshape(len(maps), -1)
    values, index = flat.max(dim=1)
    width = maps.shape[-1] if maps.dim() == 3 else 1
    return values, torch.stack([index // width, index % width], dim=1)


def select(activation: Tensor, channel, position=None) -> tuple[Tensor, Tensor, Tensor]:
    """The seed for ``descend``: the chosen activations kept, everything else in the layer zeroed.

    ``channel`` is one map index or one per image; ``position`` is ``None`` (the strongest
    activation of the map in each image), ``"all"`` (the whole map), a ``(y, x)`` pair, or an
    ``(N, 2)`` tensor of pairs. Returns the seed, the chosen values and their positions (for
    ``"all"``: the map's maximum and where it is). Fully connected layers have one position.
    """
    n, maps = activation.shape[:2]
    channel = torch.as_tensor(channel, device=activation.device).long().expand(n).clone()
    if channel.min() < 0 or channel.max() >= maps:
        raise UserError(f"channel must lie in 0..{maps - 1} for this layer, got {channel.unique().tolist()}")
    rows = torch.arange(n, device=activation.device)
    seed = torch.zeros_like(activation)
    spatial = activation.dim() == 4
    if isinstance(position, str):
        if position != "all":
            raise UserError(f"position must be None, 'all', (y, x) or an (N, 2) tensor, got {position!r}")
        seed[rows, channel] = activation[rows, channel]
        values, where = strongest(activation, channel)
        return seed, values, where
    if position is None or not spatial:
        values, where = strongest(activation, channel)
    else:
        where = torch.as_tensor(position, device=activation.device).long().reshape(-1, 2).expand(n, 2)
        height, width = activation.shape[-2:]
        if where[:, 0].min() < 0 or where[:, 0].max() >= height or where[:, 1].min() < 0 or where[:, 1].max() >= width:
            raise UserError(f"position must lie inside the {height}x{width} map of this layer")
        values = activation[rows, channel, where[:, 0], where[:, 1]]
    if spatial:
        seed[rows, channel, where[:, 0], where[:, 1]] = values
    else:
        seed[rows, channel] = values
    return seed, values, where


def project(model: nn.Module, images: Tensor, layer: str, channel, position=None, *, norm: str = "pass") -> Tensor:
    """Project activations of ``layer``'s map ``channel`` down to pixels.

    ``layer`` is a module path (``conv5`` on our nets, ``features.10`` on torchvision's); the
    examined activation is that module's output. ``channel``:

    - an ``int``, or a tensor with one index per image: returns ``N x C x H x W``, like ``images``;
    - a list (tuple, range) of ``K`` indices: every image's maps ``channel``, all from one forward
      pass and one batched backward (``deconv_batched``); returns ``N x K x C x H x W``, ``[i, k]``
      being map ``channel[k]`` of image ``i``, equal to ``project(model, images, layer, channel[k])[i]``.

    ``position=None`` projects each image's strongest activation of the map, ``"all"`` the whole
    map, ``(y, x)`` or an ``(N, 2)`` tensor one chosen cell (with a list of maps also an
    ``(N, K, 2)`` tensor). ``norm``: ``"pass"`` (the paper) or ``"backprop"`` for
    contrast-normalization layers. The projection starts from the activation's value, as the
    paper's does (``attribute(..., "deconvnet")``'s default seed).
    """
    if isinstance(channel, (list, tuple, range)):
        return project_maps(model, images, layer, channel, position, norm=norm)
    return attribute(model, images, (layer, channel, position), "deconvnet", norm=norm)


def project_with_values(
    model: nn.Module, images: Tensor, layer: str, channel, position=None, *, norm: str = "pass"
) -> tuple[Tensor, Tensor, Tensor]:
    """``project`` plus the projected activations' values and (y, x) positions, one per image
    (for ``position="all"``: the map's maximum and where it is)."""
    with Capture(model, {"act": resolve(model, layer, "output")}) as capture:  # records during project's pass
        projection = project(model, images, layer, channel, position, norm=norm)
    _, values, where = select(capture.outputs["act"], channel, position)
    return projection, values, where


def project_batches(
    model: nn.Module,
    images: Tensor,
    layer: str,
    image: Tensor,
    channel: Tensor,
    position: Tensor | None = None,
    *,
    batch_size: int = 64,
    norm: str = "pass",
    prepare: Callable[[Tensor], Tensor] | None = None,
    path: str = "auto",
) -> Iterator[tuple[Tensor, Tensor]]:
    """Project many activations, the ``j``-th of map ``channel[j]`` in ``images[image[j]]``.

    Yields ``(rows, projections)``: which ``j`` each batch of about ``batch_size`` projections
    holds and their projections (shaped like the model input), equal to ``project``'s. Each
    distinct image of a batch goes up the net once (Fig. 2's top 9 of all maps hit far fewer images
    than maps x 9). ``path``: ``"mechanism"`` runs the one backward mechanism with batched seeds
    (``deconv_batched.grouped_projections``, any model it handles); ``"chain"`` the traced chain
    (``trace``/``descend``, chains of the layers above only), which reuses each image's switches;
    ``"auto"`` the chain where the model is one, else the mechanism. ``prepare`` turns stored
    images into model input; ``position`` is as in ``select`` (``None``: the strongest).
    """
    if path not in ("auto", "chain", "mechanism"):
        raise UserError(f"unknown path {path!r}; choose one of: auto, chain, mechanism")
    image = torch.as_tensor(image, dtype=torch.long)
    order = torch.argsort(image, stable=True)
    start = 0
    if path != "mechanism":
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            unique, inverse = torch.unique(image[rows], return_inverse=True)
            x = images[unique] if prepare is None else prepare(images[unique])
            inverse = inverse.to(x.device)
            where = None if position is None else position[rows.to(position.device)]
            chosen = channel[rows.to(channel.device)]
            try:
                result = trace(model, x, layer, norm=norm).take(inverse)
            except NotTraceable:
                if path == "chain":
                    raise
                break  # a residual net, batch norm, ...: the general mechanism from here on
            seed, _, _ = select(result.activation, chosen, where)
            yield rows, descend(result, seed, norm).reshape(len(rows), *x.shape[1:])
        else:
            return
    rest = order[start:]
    batches = grouped_projections(
        model, images, layer, image[rest], channel[rest.to(channel.device)],
        None if position is None else position[rest.to(position.device)],
        batch_size=batch_size, norm=norm, prepare=prepare,
    )  # fmt: skip
    for rows, projections in batches:
        yield rest[rows], projections
