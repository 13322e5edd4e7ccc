"""The gradient family on the one mechanism: saliency, input x gradient, deconvnet, guided backprop, LRP.

Each is one call of ``mechanism.backward`` with a composite (``None``: autograd's gradient) and a
start (where the backward pass starts: ``targets.start_signal``):

- ``saliency`` (Simonyan et al. 2014): the signed gradient of the target; start 1.
- ``input_x_gradient`` (Shrikumar et al. 2016): inputs times that gradient; start 1.
- ``deconvnet`` (Zeiler & Fergus 2014, Sec. 2.1): ReLUs rectify the signal coming down, filters are
  transposed, pools route through the switches; contrast normalization passes (``norm="pass"``, the
  paper) or backpropagates (``"backprop"``). Start (``start=``): the target's value, as the paper
  projects the activation, so a unit target equals ``zfviz.viz.deconv.project``; or ``one``.
- ``guided_backprop`` (Springenberg et al. 2015): the gradient, and ReLUs also rectify; start 1.
- ``lrp`` (Bach et al. 2015): relevance, starting from the target's score; see ``composites``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zfviz.attribution.composites import (
    COMPOSITES,
    DECONVNET,
    FIRST_RULES,
    GUIDED_BACKPROP,
    LRP,
    NORM_MODES,
    RULES,
    deconvnet_composite,
    lrp_from_options,
)
from zfviz.attribution.mechanism import backward
from zfviz.attribution.options import TENSOR, Option, choice, either, number, optional
from zfviz.attribution.registry import register_method
from zfviz.attribution.targets import STARTS
from zfviz.attribution.transformer import ATTENTION_MODULES
from zfviz.errors import UserError

_BOUND = optional(either(number(), TENSOR))


@register_method("saliency", gradient=True)
def saliency(model: nn.Module, inputs: Tensor, target) -> Tensor:
    """The gradient of the target with respect to the inputs (signed; take ``abs`` for the paper's map)."""
    return backward(model, inputs, target).inputs


@register_method("input_x_gradient", gradient=True)
def input_x_gradient(model: nn.Module, inputs: Tensor, target) -> Tensor:
    """Inputs times the gradient of the target."""
    return inputs * backward(model, inputs, target).inputs


@register_method(
    "deconvnet",
    supports=DECONVNET.supports,
    gradient=True,
    options=(
        Option("norm", choice(*NORM_MODES), "pass", "contrast normalization passes (the paper) or backpropagates"),
        Option("start", choice(*STARTS), "value", "the backward pass starts from the target's value (the paper) or 1"),
    ),
)
def deconvnet(model: nn.Module, inputs: Tensor, target, *, norm: str, start: str) -> Tensor:
    """The deconvnet's projection of the target (its value, as the paper) down to pixel space."""
    return backward(model, inputs, target, composite=deconvnet_composite(norm), start=start).inputs


@register_method("guided_backprop", supports=GUIDED_BACKPROP.supports, gradient=True)
def guided_backprop(model: nn.Module, inputs: Tensor, target) -> Tensor:
    """Guided backprop: the gradient with every ReLU also rectifying the signal coming down."""
    return backward(model, inputs, target, composite=GUIDED_BACKPROP).inputs


def _lrp_supports(module: nn.Module) -> bool:
    """The modules LRP's composite lists, and the attention modules AttnLRP explains (inside their blocks)."""
    return LRP.supports(module) or isinstance(module, ATTENTION_MODULES)


@register_method(
    "lrp",
    supports=_lrp_supports,
    options=(
        Option("composite", optional(choice(*COMPOSITES)), None, "a named composite of rules, instead of rule"),
        Option("rule", optional(choice(*RULES)), None, "the rule of every conv/linear layer (null: epsilon)"),
        Option("first_rule", optional(choice(*FIRST_RULES)), None, "the first layer's rule (zbox needs low, high)"),
        Option("epsilon", number(at_least=0), 1e-6, "the epsilon rule's stabilizer (0: LRP-0)"),
        Option("alpha", optional(number(at_least=0)), None, "alpha_beta: alpha (null: 2)"),
        Option("beta", optional(number(at_least=0)), None, "alpha_beta: beta (null: alpha - 1)"),
        Option("low", _BOUND, None, "zbox: the lowest input value, in the model's input space"),
        Option("high", _BOUND, None, "zbox: the highest input value, in the model's input space"),
    ),
)
def lrp(model: nn.Module, inputs: Tensor, target, **options) -> Tensor:
    """Layer-wise relevance propagation (Bach et al. 2015): the target's score redistributed layer by layer.

    The rules: ``composites.lrp_from_options`` (the declared options, handed on whole). Relevance that overflowed
    the dtype (the epsilon rule divides by pre-activations near zero; a deep net with random or badly scaled
    weights, DenseNet-161's at 1e-6, multiplies that layer after layer) is refused in one line, never a map of
    NaNs: a larger ``epsilon`` or float64 is the fix."""
    relevance = backward(model, inputs, target, composite=lrp_from_options(**options), start="value").inputs
    if not bool(torch.isfinite(relevance).all()):
        raise UserError(
            f"lrp's relevance overflowed {str(relevance.dtype).removeprefix('torch.')} on {type(model).__name__} "
            f"(epsilon={options.get('epsilon')}: the epsilon rule divides by pre-activations near zero, layer after "
            "layer); give a larger epsilon=, e.g. 0.01, or run the model and input in float64"
        )
    return relevance
