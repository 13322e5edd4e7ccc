"""Grad-CAM and guided Grad-CAM (Selvaraju et al. 2017).

- ``gradcam``: at a conv layer's map ``A`` (``N x K x h x w``), the weights ``alpha_k = mean_ij
  dy/dA_kij`` and the map ``ReLU(sum_k alpha_k A_k)``, bilinearly upsampled to the input
  (``upsample=False`` keeps the layer's grid). The default layer is the last conv layer's rectified
  output (``relu5`` on our nets, ``layer4`` on a ResNet), the layer the paper uses.
- ``guided_gradcam``: guided backprop times the upsampled Grad-CAM map.

The gradient starts from 1 at the target (its gradient, not its score).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.activations import MEANINGS, evaluating, hooks, resolve
from zfviz.attribution.composites import GUIDED_BACKPROP
from zfviz.attribution.mechanism import backward
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


_LAYER = Option("layer", optional(NAME), None, "the layer (null: the last conv layer's, relu5 or layer4)")
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
    after its ReLU, ``layer4`` is itself); ``None`` is the last conv layer's. ``relu=False`` keeps
    the negative evidence the paper's ReLU removes."""
    path = resolve(model, layer, meaning)
    acts, grads = layer_gradient(model, inputs, target, path)
    return _cam(path, acts, grads, inputs, upsample=upsample, relu=relu)


def _cam(path: str, acts: Tensor, grads: Tensor, inputs: Tensor, *, upsample: bool, relu: bool) -> Tensor:
    """Grad-CAM's map from layer ``path``'s output ``acts`` and the target's gradient there."""
    if acts.dim() != 4:
        raise UserError(
            f"Grad-CAM needs a conv layer's map (N x C x H x W), but {path!r} gives shape {tuple(acts.shape)}; "
            "name a conv layer or block"
        )
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
    the same graph (``backward(plain_wrt=True)``), where two calls would run the net twice.
    """
    path = resolve(model, layer, meaning)
    result = backward(model, inputs, target, composite=GUIDED_BACKPROP, wrt=path, plain_wrt=True)
    return result.inputs * _cam(path, result.layer, result.layer_grad, inputs, upsample=True, relu=True)
