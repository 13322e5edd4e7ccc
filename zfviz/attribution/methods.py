"""The gradient family on the one mechanism: saliency, input x gradient, deconvnet, guided backprop, LRP.

Each is one call of ``core.backward`` with a composite (``None``: autograd's gradient) and a seed:

- ``saliency`` (Simonyan et al. 2014): the signed gradient of the target; seed 1.
- ``input_x_gradient`` (Shrikumar et al. 2016): inputs times that gradient; seed 1.
- ``deconvnet`` (Zeiler & Fergus 2014, Sec. 2.1): ReLUs rectify the signal coming down, filters are
  transposed, pools route through the switches; contrast normalization passes (``norm="pass"``, the
  paper) or backpropagates (``"backprop"``). Seed: the target's value, as the paper projects the
  activation, so a unit target equals ``zfviz.viz.deconv.project``.
- ``guided_backprop`` (Springenberg et al. 2015): the gradient, and ReLUs also rectify; seed 1.
- ``lrp`` (Bach et al. 2015): relevance, starting from the target's score; see ``composites``.
"""

from __future__ import annotations

from torch import Tensor, nn

from zfviz.attribution import rules
from zfviz.attribution.composites import DECONVNET, GUIDED_BACKPROP, LRP, gradient_composite, lrp_from_options
from zfviz.attribution.core import backward, register_method
from zfviz.errors import UserError

NORM_MODES = ("pass", "backprop")


@register_method("saliency", gradient=True)
def saliency(model: nn.Module, inputs: Tensor, target) -> Tensor:
    """The gradient of the target with respect to the inputs (signed; take ``abs`` for the paper's map)."""
    return backward(model, inputs, target).inputs


@register_method("input_x_gradient", gradient=True)
def input_x_gradient(model: nn.Module, inputs: Tensor, target) -> Tensor:
    """Inputs times the gradient of the target."""
    return inputs * backward(model, inputs, target).inputs


@register_method("deconvnet", supports=DECONVNET.supports, gradient=True)
def deconvnet(model: nn.Module, inputs: Tensor, target, *, norm: str = "pass", seed: str = "value") -> Tensor:
    """The deconvnet's projection of the target (its value, as the paper) down to pixel space."""
    if norm not in NORM_MODES:
        raise UserError(f"unknown norm mode {norm!r}; choose one of: {', '.join(NORM_MODES)}")
    composite = DECONVNET if norm == "pass" else gradient_composite("deconvnet", rules.ReluDeconvnet())
    return backward(model, inputs, target, composite=composite, seed=seed).inputs


@register_method("guided_backprop", supports=GUIDED_BACKPROP.supports, gradient=True)
def guided_backprop(model: nn.Module, inputs: Tensor, target) -> Tensor:
    """Guided backprop: the gradient with every ReLU also rectifying the signal coming down."""
    return backward(model, inputs, target, composite=GUIDED_BACKPROP).inputs


@register_method("lrp", supports=LRP.supports)
def lrp(model: nn.Module, inputs: Tensor, target, **options) -> Tensor:
    """Layer-wise relevance propagation of the target's score; options as ``composites.lrp_from_options``
    (``rule``, ``epsilon``, ``alpha``, ``beta``, ``first_rule``, ``low``, ``high``, ``composite``)."""
    try:
        composite = lrp_from_options(**options)
    except TypeError as err:
        raise UserError(f"lrp: {str(err).partition('() ')[2] or err}") from None
    return backward(model, inputs, target, composite=composite, seed="value").inputs
