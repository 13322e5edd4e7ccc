"""Receptive fields from layer geometry: the image patch beside each projection in Fig. 2.

Section 2.1 / Fig. 2 show every top activation next to "the corresponding image patches". The
patch is the activation's receptive field: walking the layers below it, a layer with kernel ``k``
(dilation ``d``), stride ``s`` and padding ``p`` turns ``(offset a, jump j, size r)`` into
``(a - p*j, j*s, r + d*(k-1)*j)``. Cell ``(y, x)`` of the layer then sees input rows
``a + y*j .. a + y*j + r - 1`` (likewise columns), before clipping to the image. A fully connected
layer, or an adaptive pool that changes the size, sees the whole image. The walk follows the
module graph, not only chains: where a residual block adds its shortcut, the union of the two
paths (torchvision's ResNets, VGGs and AlexNet as well as ours).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zfviz.activations import Capture, evaluating, hooks, resolve
from zfviz.errors import UserError

_GEOMETRY = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class ReceptiveField:
    """Per axis (rows, cols): ``offset`` of cell 0's first pixel, ``jump`` between cells, ``size``."""

    offset: tuple[int, int]
    jump: tuple[int, int]
    size: tuple[int, int]
    image_size: tuple[int, int]
    whole_image: bool = False

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), bottom/right exclusive, clipped to the image."""
        if self.whole_image:
            return 0, 0, *self.image_size
        top, left = self.offset[0] + y * self.jump[0], self.offset[1] + x * self.jump[1]
        height, width = self.image_size
        return max(top, 0), max(left, 0), min(top + self.size[0], height), min(left + self.size[1], width)

    @property
    def window(self) -> tuple[int, int]:
        """The size of ``window_at``'s crop: the receptive field, at most the whole image."""
        if self.whole_image:
            return self.image_size
        return min(self.size[0], self.image_size[0]), min(self.size[1], self.image_size[1])

    def window_at(self, y: int, x: int) -> tuple[int, int]:
        """Top-left of a ``window``-sized crop inside the image that holds the field's visible part."""
        if self.whole_image:
            return 0, 0
        top, left = self.offset[0] + y * self.jump[0], self.offset[1] + x * self.jump[1]
        height, width = self.window
        top = min(max(top, 0), self.image_size[0] - height)
        left = min(max(left, 0), self.image_size[1] - width)
        return top, left


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


@dataclass(frozen=True)
class _Geometry:
    """What a tensor's cells see of the image (per axis: offset, jump, size), or the whole image."""

    offset: tuple[int, int] = (0, 0)
    jump: tuple[int, int] = (1, 1)
    size: tuple[int, int] = (1, 1)
    whole: bool = False

    def through(self, module: nn.Module) -> _Geometry:
        """The geometry after a conv or pool: ``(a, j, r) -> (a - p*j, j*s, r + d*(k-1)*j)``."""
        kernel, stride = _pair(module.kernel_size), _pair(module.stride)
        dilation = _pair(getattr(module, "dilation", 1))
        padding = module.padding
        if padding == "valid":
            padding = 0
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=True))
        padding = _pair(padding)
        offset = tuple(self.offset[a] - padding[a] * self.jump[a] for a in range(2))
        size = tuple(self.size[a] + dilation[a] * (kernel[a] - 1) * self.jump[a] for a in range(2))
        jump = tuple(self.jump[a] * stride[a] for a in range(2))
        return _Geometry(offset, jump, size, self.whole)


def _union(name: str, fields: list[_Geometry]) -> _Geometry:
    """Where paths meet (a residual block's sum, a module reading two tensors): what either sees."""
    if any(f.whole for f in fields):
        return _Geometry(whole=True)
    if len({f.jump for f in fields}) > 1:
        raise UserError(f"receptive field: paths with different strides meet at {name}")
    start = tuple(min(f.offset[a] for f in fields) for a in range(2))
    end = tuple(max(f.offset[a] + f.size[a] for f in fields) for a in range(2))
    return _Geometry(start, fields[0].jump, (end[0] - start[0], end[1] - start[1]))


# Modules that keep each cell where it is (pointwise, or along channels only, like contrast
# normalization); batch norm counts only in eval mode, which the walk runs in.
_IN_PLACE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.BatchNorm1d, nn.BatchNorm2d, nn.LocalResponseNorm,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity, nn.Flatten, nn.Unflatten,
)  # fmt: skip


def _step(name: str, module: nn.Module, field: _Geometry, x: Tensor, out: Tensor) -> _Geometry:
    if isinstance(module, _GEOMETRY):
        return field.through(module)
    if isinstance(module, nn.Linear):
        return _Geometry(whole=True)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return field if x.shape[-2:] == out.shape[-2:] else _Geometry(whole=True)
    # A contrast normalization of our own need not subclass PyTorch's: it is channel-local all the same.
    if isinstance(module, _IN_PLACE) or type(module).__name__ == "LocalResponseNorm":
        return field
    raise UserError(
        f"receptive field: cannot follow {name} ({type(module).__name__}); followed: convolutions, pools, "
        "linear layers and pointwise modules"
    )


def receptive_field(model: nn.Module, layer: str, image_shape: tuple[int, int, int]) -> ReceptiveField:
    """The receptive field of one cell of ``layer``'s output for inputs shaped ``(C, H, W)``.

    The geometry is walked along the module graph of one forward pass on a blank image (eval mode,
    no gradients, stopped at ``layer``): each leaf module's output gets the geometry of the tensors
    it read, through its own kernel, stride and padding. Tensors are told apart by their memory
    (all of them are kept alive during the pass, so no address is reused): a view (``flatten``)
    or an in-place operation keeps the geometry of what it changes. ResNet's ``out += identity``
    therefore keeps the main path's geometry, which holds the shortcut's (a 1x1 conv or nothing)
    -- the union of the two paths. A module reading a tensor no module wrote (``torch.cat``, an
    out-of-place ``x + y``) is one line naming it. ``layer`` may be a container (``layer2``): the
    geometry of what it outputs.
    """
    path = resolve(model, layer, "output")
    param = next(model.parameters(), None)
    blank = torch.zeros(1, *image_shape, device=param.device if param is not None else "cpu")
    fields: dict[int, _Geometry] = {blank.data_ptr(): _Geometry()}
    alive = [blank]  # every tensor of the pass stays referenced: no address is reused

    def walk(name: str, module: nn.Module, inputs, output) -> None:
        tensors = [t for t in inputs if isinstance(t, Tensor)]
        unknown = [t for t in tensors if t.data_ptr() not in fields]
        if not tensors or unknown or not isinstance(output, Tensor):
            raise UserError(
                f"receptive field: {name} reads a tensor no module wrote (a functional operation such as "
                "torch.cat or x + y), so the geometry cannot be followed through it"
            )
        field = _step(name, module, _union(name, [fields[t.data_ptr()] for t in tensors]), tensors[0], output)
        fields[output.data_ptr()] = field
        alive.append(output)

    pairs = [(name, lambda m, i, o, name=name: walk(name, m, i, o)) for name, m in model.named_modules() if _leaf(m)]
    # The walk's hooks go first, so the layer's own output has its geometry when the capture reads it.
    with hooks(model, pairs), Capture(model, [path], stop=True, keep=lambda out: fields.get(out.data_ptr())) as capture:
        with evaluating(model), torch.no_grad():
            capture(blank)
    field = capture.outputs[path]
    if field is None:
        raise UserError(f"receptive field: {layer}'s output was not written by a module the walk followed")
    return ReceptiveField(field.offset, field.jump, field.size, tuple(image_shape[-2:]), field.whole)


def _leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def crop(images: Tensor, corners: Tensor, size: tuple[int, int]) -> Tensor:
    """Cut an ``size`` window at ``corners[i] = (top, left)`` out of each ``images[i]``."""
    height, width = size
    rows = corners[:, 0, None] + torch.arange(height, device=images.device)
    cols = corners[:, 1, None] + torch.arange(width, device=images.device)
    index = torch.arange(len(images), device=images.device)[:, None, None]
    # Advanced indexing over (image, row, col) picks every window in one gather.
    out = images.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def windows(field: ReceptiveField, positions: Tensor) -> Tensor:
    """``window_at`` for many (y, x) positions: an (N, 2) tensor of top-left corners."""
    return torch.tensor([field.window_at(int(y), int(x)) for y, x in positions.reshape(-1, 2)], dtype=torch.long)
