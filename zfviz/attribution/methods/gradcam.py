"""Grad-CAM and guided Grad-CAM (Selvaraju et al. 2017).

- ``gradcam``: at a layer's map ``A`` (``N x K x h x w``), the weights ``alpha_k = mean_ij
  dy/dA_kij`` and the map ``ReLU(sum_k alpha_k A_k)``, bilinearly upsampled to the input
  (``upsample=False`` keeps the layer's grid).
- ``guided_gradcam``: guided backprop times the upsampled Grad-CAM map.

The default layer is the last spatial map before global pooling, as the paper takes the last conv
layer's: found from the graph, not from the module list, in one forward pass with a hook on every
module. It is the last module output, in call order, that lies on the input's grid (``_fits``), is
not a pooling module's output (nor a block's that returns it, nor a shape-keeping module's applied to
a globally pooled one), and on whose cells the target depends (a non-zero gradient there; if none
has one, the last the target is connected to: a zero head gives honest zeros). An output changed in
place later is read as the forward pass left it, its gradient with it (DenseNet's ``features`` after
the ``F.relu`` its forward applies). So ``relu5`` on our nets, ``features.11`` on AlexNet (the ReLU
before the last max pool), ``layer4`` on a ResNet, RegNet's ``trunk_output`` (after the last residual
sum), ``inception5b`` on GoogLeNet (its aux branches never run in eval mode), ``permute`` on Swin (the
normed last stage, channels first) and ``encoder.layers.encoder_layer_<last>.ln_1`` on a ViT: the
class token, which alone feeds the head, reads the patch tokens only through the last block's attention.
A block and its last module share one output; the block, called last, names it. Guided Grad-CAM searches
the default in the forward pass of its guided backprop: one pass serves the search, the map and the guided
signal, as it does with a named layer.

A map, the default's or a named ``layer=``'s, is read on the input's grid as ``zfviz.attribution.grids`` lays
it out: a conv map as it is, a channels-last map (Swin's) permuted, a token sequence's (ViT's) patch tokens
without its class token.

The gradient starts from 1 at the target (its gradient, not its score).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.activations import MEANINGS, evaluating, hooks, layer_names, resolve
from zfviz.attribution.composites import GUIDED_BACKPROP
from zfviz.attribution.graph import operands_kept, rectify_functions
from zfviz.attribution.grids import as_grid, on_grid, token_grid
from zfviz.attribution.mechanism import backward, prepared
from zfviz.attribution.options import FLAG, NAME, Option, choice, optional
from zfviz.attribution.registry import register_method
from zfviz.attribution.targets import parse_target, start_signal
from zfviz.errors import UserError


def layer_gradient(model: nn.Module, inputs: Tensor, target, path: str) -> tuple[Tensor, Tensor]:
    """The output ``A`` of module ``path`` and the gradient of the target wrt it (start 1).

    Grad-CAM needs nothing below the layer, so the forward hook hands the rest of the net a copy of
    a detached ``A``: the backward stops there (half the work of ``mechanism.backward(wrt=...)`` on
    resnet18, the same as Captum's), and a later in-place op cannot touch the ``A`` we keep.
    """
    parsed = parse_target(model, target, len(inputs))
    found: dict[str, Tensor] = {}

    def cut(_module, _inputs, output):
        if "layer" in found:  # a module called twice: its first call, as Capture does
            return None
        if not isinstance(output, Tensor):
            raise UserError(f"layer {path!r} returns {type(output).__name__}, not one tensor; name another layer")
        found["layer"] = output.detach().requires_grad_(True)
        return found["layer"].clone()

    def keep(_module, _inputs, output):
        found.setdefault("target", output)

    pairs = [(path, cut)] + ([(parsed.layer, keep)] if parsed.layer is not None else [])
    with evaluating(model), hooks(model, pairs), torch.enable_grad():
        out = model(inputs.detach())
        point = out if parsed.layer is None else found.get("target")
        if "layer" not in found or point is None:
            missing = path if "layer" not in found else parsed.layer
            raise UserError(f"layer {missing!r} is never called by the model's forward pass")
        grad_start, _ = start_signal(point, parsed, "one")
        (grad,) = torch.autograd.grad(point, found["layer"], grad_start, allow_unused=True)
    if grad is None:
        what = "the model's output" if parsed.layer is None else f"the unit of {parsed.layer}"
        raise UserError(f"the target ({what}) does not depend on layer {path!r}; name a layer below it")
    return found["layer"].detach(), grad


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)


def _fits(t: Tensor, size: tuple[int, int]) -> bool:
    """Whether ``t`` lies on the grid of an input of ``size`` in one of ``as_grid``'s readings (a named
    layer's 4-D output is read channels first even when neither fits; the default takes only a fit, not
    MaxViT's windows partitioned as ``N x windows x cells x C``)."""
    if t.dim() == 4:
        return on_grid(t.shape[2], t.shape[3], size) or on_grid(t.shape[1], t.shape[2], size)
    return t.dim() == 3 and token_grid(t.shape[1], size) is not None


class _Maps:
    """Forward hooks on every module: each module's first output that lies on the input's grid and is
    not pooled, in call order."""

    def __init__(self, inputs: Tensor) -> None:
        self.n, self.size = len(inputs), tuple(inputs.shape[2:])
        self.seen: list[tuple[str, Tensor]] = []
        self.pooled: dict[int, Tensor] = {}  # a pool's output, and a block's that returns it unchanged, by id
        self.called: set[str] = set()

    def _pooled(self, inputs: tuple, output: Tensor) -> bool:
        """A pooled tensor itself (a block returning it), or a globally pooled one (one cell) with its shape
        kept (ConvNeXt's LayerNorm2d after the global pool): past the pooling, not a map before it."""
        if id(output) in self.pooled:  # held there, so an id names one tensor
            return True
        p = self.pooled.get(id(inputs[0])) if inputs and isinstance(inputs[0], Tensor) else None
        return p is not None and output.shape == p.shape and p.shape[2:].numel() == 1

    def release(self) -> None:
        """Drop the candidates: a backward pass after the search can free their memory as it goes."""
        self.seen.clear()
        self.pooled.clear()

    def hook(self, path: str):
        def record(module, inputs, output) -> None:
            if path in self.called or not isinstance(output, Tensor):
                return
            self.called.add(path)  # a module called twice: its first call, as layer_gradient reads it
            if isinstance(module, _POOLS) or self._pooled(inputs, output):
                self.pooled[id(output)] = output
            elif output.dim() > 2 and len(output) == self.n and _fits(output, self.size):
                self.seen.append((path, output))

        return record


def _mapped_forward(model: nn.Module, x: Tensor, parsed, maps: _Maps) -> Tensor:
    """``model(x)`` with ``maps`` recording the candidates: the target's point (the output, or the unit's layer)."""
    found: dict[str, Tensor] = {}

    def keep(_module, _inputs, output):
        found.setdefault("target", output)

    pairs = [(path, maps.hook(path)) for path in layer_names(model)]
    pairs += [(parsed.layer, keep)] if parsed.layer is not None else []
    with hooks(model, pairs):
        out = model(x)
    point = out if parsed.layer is None else found.get("target")
    if point is None:
        raise UserError(f"layer {parsed.layer!r} is never called by the model's forward pass")
    return point


def _search(maps: _Maps, point: Tensor, grad_start: Tensor) -> tuple[str, Tensor, Tensor]:
    """The default layer among ``maps``' candidates, its output and the target's gradient there (the graph
    kept): the backward runs from the target down to the last one on whose cells it depends, trying them last
    first (on a CNN the first try is it; on a ViT the last block's outputs come first, whose patch tokens the
    class token never reads)."""
    connected = None
    for path, output in reversed(maps.seen):
        if output is point:
            continue
        (grad,) = torch.autograd.grad(point, output, grad_start, retain_graph=True, allow_unused=True)
        if grad is not None and as_grid(grad, maps.size).any():
            return path, output.detach(), grad
        if connected is None and grad is not None:  # a zero gradient everywhere (a zero head): honest zeros
            connected = path, output.detach(), grad
    if connected is None:
        raise UserError(
            "the target depends on no layer output on the input's grid (N x C x H x W, channels-last, or patch "
            "tokens); name a layer"
        )
    return connected


def _last_map(model: nn.Module, inputs: Tensor, target) -> tuple[str, Tensor, Tensor]:
    """The default layer (module docstring), its output and the target's gradient there (start 1), from one
    forward pass that records the candidates."""
    parsed, maps = parse_target(model, target, len(inputs)), _Maps(inputs)
    with evaluating(model), torch.enable_grad():
        point = _mapped_forward(model, inputs.detach(), parsed, maps)
        grad_start, _ = start_signal(point, parsed, "one")
        return _search(maps, point, grad_start)


def _guided_last_map(model: nn.Module, inputs: Tensor, target) -> tuple[Tensor, str, Tensor, Tensor]:
    """Guided backprop's signal at ``inputs``, and the default layer, its output and the target's gradient there
    (``_last_map``'s), from one forward pass under guided backprop's rules: the search's gradients with the rules
    standing aside (as ``backward(plain_wrt=True)``'s at a named layer), then the rules' pass over the same graph."""
    parsed, maps = parse_target(model, target, len(inputs)), _Maps(inputs)
    with prepared(model, GUIDED_BACKPROP) as state:
        x = inputs.detach().requires_grad_(True)
        with operands_kept(state):  # as backward's forward pass
            point = _mapped_forward(model, x.clone(), parsed, maps)  # a copy: an in-place first module keeps x a leaf
        rectify_functions(point, state)
        grad_start, _ = start_signal(point, parsed, "one")
        state.routing = False
        try:
            path, acts, grads = _search(maps, point, grad_start)
        finally:
            state.routing = True
            maps.release()  # held, every map would outlive the guided pass, which frees each as it goes
        (guided,) = torch.autograd.grad(point, x, grad_start, allow_unused=True)
    return (torch.zeros_like(x) if guided is None else guided), path, acts, grads


_LAYER = Option(
    "layer", optional(NAME), None, "the layer (null: the last spatial map before global pooling, found from the graph)"
)
_MEANING = Option("meaning", choice(*MEANINGS), "rectified", "how layer is read (rectified: after its ReLU)")


@register_method(
    "gradcam",
    options=(
        _LAYER,
        _MEANING,
        Option("upsample", FLAG, True, "bilinearly to the input's size (false: the layer's grid)"),
        Option("relu", FLAG, True, "the paper's ReLU on the map (false: keep the negative evidence)"),
    ),
)
def gradcam(
    model: nn.Module, inputs: Tensor, target, *, layer: str | None, meaning: str, upsample: bool, relu: bool
) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017), ``N x 1 x H x W`` at the input's size (``upsample=False``:
    the layer's ``h x w``). ``layer`` resolves with ``meaning`` (``"rectified"``: ``conv5`` is read
    after its ReLU, ``layer4`` is itself); ``None`` is the last spatial map before global pooling
    (module docstring). ``relu=False`` keeps the negative evidence the paper's ReLU removes."""
    if layer is None:
        path, acts, grads = _last_map(model, inputs, target)
    else:
        path = resolve(model, layer, meaning)
        acts, grads = layer_gradient(model, inputs, target, path)
    return _cam(path, acts, grads, inputs, upsample=upsample, relu=relu)


def _cam(path: str, acts: Tensor, grads: Tensor, inputs: Tensor, *, upsample: bool, relu: bool) -> Tensor:
    """Grad-CAM's map from layer ``path``'s output ``acts`` and the target's gradient there, both read
    on the input's grid (``as_grid``)."""
    size = tuple(inputs.shape[2:])
    grid = as_grid(acts, size) if acts.dim() > 2 else None
    if grid is None:
        raise UserError(
            f"Grad-CAM needs a conv layer's map (N x C x H x W, channels-last, or tokens on the input's patch grid), "
            f"but {path!r} gives shape {tuple(acts.shape)}; name a conv layer or block"
        )
    acts, grads = grid, as_grid(grads, size)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # alpha_k: the global-average-pooled gradient
    cam = (weights * acts).sum(dim=1, keepdim=True)
    if relu:
        cam = F.relu(cam)
    if upsample and cam.shape[2:] != inputs.shape[2:]:
        cam = F.interpolate(cam, size=tuple(inputs.shape[2:]), mode="bilinear", align_corners=False)
    return cam


@register_method("guided_gradcam", supports=GUIDED_BACKPROP.supports, options=(_LAYER, _MEANING))
def guided_gradcam(model: nn.Module, inputs: Tensor, target, *, layer: str | None, meaning: str) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times the upsampled Grad-CAM map,
    shaped like ``inputs`` (the one-channel map weights every input channel alike).

    One forward pass serves both: the plain gradient at the layer first, then guided backprop over
    the same graph (``backward(plain_wrt=True)``), where two calls would run the net twice; the default
    layer is searched in that pass too (``_guided_last_map``).
    """
    if layer is None:
        guided, path, acts, grads = _guided_last_map(model, inputs, target)
    else:
        path = resolve(model, layer, meaning)
        result = backward(model, inputs, target, composite=GUIDED_BACKPROP, wrt=path, plain_wrt=True)
        guided, acts, grads = result.inputs, result.layer, result.layer_grad
    return guided * _cam(path, acts, grads, inputs, upsample=True, relu=True)
