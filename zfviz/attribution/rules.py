"""Rules: how a signal crosses one module on the way back (the taxonomy paper's one degree of freedom).

A rule is ``backward(module, x, out, grad) -> grad_x``: ``x`` and ``out`` are the module's input and
output in the forward pass, ``grad`` the signal arriving at ``out``. Modules without a rule keep
autograd's gradient, which already is the right thing for convolutions and linear layers under
saliency, the deconvnet and guided backprop (the transposed filters, without bias), and for max
pooling everywhere (the switches; PyTorch's backward adds where overlapping pools share an argmax).

ReLU rules: the deconvnet passes the rectified signal, ``relu(grad)`` (Zeiler & Fergus 2014, Sec.
2.1); guided backprop also keeps the forward mask, ``relu(grad) * (x > 0)`` (Springenberg et al. 2015).
A rule that only looks at gradients may also say how it crosses an activation's own autograd node
given that node's input gradient: ``through_node(local, grad)``, ``local = f'(x) * grad`` (for a ReLU
``grad * (x > 0)``). ``mechanism`` then leaves the activation's output and backward alone and only
rewrites its input gradient, which saves a copy of every activation output in the forward pass and a
mask in the backward (guided backprop ran 1.1x Captum's time before on resnet18).

Other activations (ReLU6, SiLU, GELU, Hardswish, Hardsigmoid, ELU, LeakyReLU, Sigmoid, Tanh, Mish, ...),
whose papers define no deconvnet or guided backprop, follow one convention, the ReLU case read as
"the gate's own gradient, and the signal rectified": the deconvnet passes the rectified signal,
``relu(grad)``, whatever the gate (``Deconvnet``, as for a ReLU: the forward pass plays no part);
guided backprop multiplies the gate's local gradient by the rectified signal, ``f'(x) * relu(grad)``
(``Guided``; for a ReLU ``f'(x)`` is the mask). A gate's local gradient may be negative (SiLU below
about -1.28, GELU, Mish, a leaky ReLU's slope is not): guided backprop does not rectify it again.
LRP passes relevance through every activation unchanged (``Pass``, as Zennit's ``Pass`` does).

LRP rules (Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance propagation: an overview"),
for a layer ``z = W x + b`` with relevance ``R`` at its output, ``T(s; W)`` the transpose of ``W``
applied to ``s`` and ``stab(z) = z + epsilon * sign(z)`` (sign(0) = 1; a zero denominator divides by 1):

- ``Epsilon``: ``R_in = x * T(R / stab(z); W)``; epsilon = 0 is LRP-0.
- ``AlphaBeta``: positive and negative contributions apart, ``alpha - beta = 1``;
  ``z+ = W+ x+ + W- x- + b+``, ``z- = W- x+ + W+ x- + b-``,
  ``R_in = alpha (x+ T(R/z+; W+) + x- T(R/z+; W-)) - beta (x+ T(R/z-; W-) + x- T(R/z-; W+))``.
- ``ZPlus``: the positive part only (alpha = 1, beta = 0).
- ``ZBox`` (z^B, for the pixels, bounded by ``low`` and ``high``):
  ``z = W x - W+ low - W- high``, ``R_in = x T(R/z; W) - low T(R/z; W+) - high T(R/z; W-)``.
- ``Flat``: every input of a unit's receptive field gets an equal share (W = 1, x = 1, no bias).
- These four read the layer's ``weight``: a conv/linear subclass whose ``forward`` is not the base class's
  is refused by them (``ReadsWeight``), unless a canonizer made it plain (timm's weight-standardized convs).
- ``Proportional``: any linear map without parameters (average pooling, the residual ``Sum``):
  ``R_in = x * J^T (R / stab(out))``, a split in proportion to the inputs' contributions.
- ``Pass``: the signal crosses unchanged (every activation, contrast normalization and a batch norm
  that could not be merged, as Zennit does, under LRP; contrast normalization also under the
  deconvnet, as the paper does).
- ``SignalTakeAll`` (Arras et al. 2017, "Explaining recurrent neural network predictions in
  sentiment analysis"): a product ``signal * gate`` gives all its relevance to the signal; the gate
  (a squeeze-and-excitation's sigmoid) is a constant and gets none: conserved exactly.
- ``NormalizerConstant`` (Ali et al. 2022, "XAI for Transformers: better explanations through
  conservative propagation", their LN-rule): a LayerNorm or GroupNorm with its standard deviation
  held constant is the linear map ``y = gamma * center(x) / sigma + beta``; the epsilon rule on it,
  ``R_in = x * T(R / stab(y); gamma * center / sigma)``, conserves relevance when ``beta = 0``.
- In gradient form (``OutputShare``, ``PassRatio``, ``NormalizerConstantGradient``): with ``R_t = t * g_t``,
  LRP-epsilon, the proportional split, ``Pass`` on an activation with ``h(0) = 0`` and the LN-rule are
  autograd's backward with the arriving ``g`` scaled (by ``z / stab(z)``, ``h(x) / x``; sigma constant), the
  same relevance without a transpose of their own (``mechanism``'s fast path).
- ``softmax_relevance`` and ``product_relevance`` (Achtibat et al. 2024, "AttnLRP: attention-aware
  layer-wise relevance propagation for transformers"): the attention's softmax and its two bilinear
  products, applied by ``transformer.AttnLRP`` inside one attention call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz.errors import UserError


class Pass:
    """The signal crosses unchanged."""

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        return grad.reshape(x.shape)

    def through_node(self, local: Tensor, grad: Tensor) -> Tensor:
        return grad


class Deconvnet:
    """The deconvnet's ReLU, and any activation's: rectify the signal coming down (Zeiler & Fergus 2014)."""

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)

    def through_node(self, local: Tensor, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


class ReluGuided:
    """Guided backprop's ReLU: the gradient's mask and the deconvnet's rectification (Springenberg et al.)."""

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        # ReLU's own backward kernel applies the mask in one pass (no bool tensor, no float copy of it)
        return torch.ops.aten.threshold_backward(grad, out, 0).clamp_(min=0)

    def through_node(self, local: Tensor, grad: Tensor) -> Tensor:
        return local.clamp(min=0)  # relu(grad) * mask = relu(grad * mask): the mask is 0 or 1


class Guided:
    """Guided backprop through any activation: its local gradient times the rectified signal,
    ``f'(x) * relu(grad)`` (the convention above; for a ReLU, ``ReluGuided``)."""

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        return vjp(module.forward, x, grad.clamp(min=0))

    def through_node(self, local: Tensor, grad: Tensor) -> Tensor:
        return torch.ops.aten.threshold_backward(local, grad, 0)  # local where grad > 0: f'(x) * relu(grad), one kernel


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = 1; a denominator still zero becomes 1 (its share is 0).

    With ``epsilon`` at least the dtype's smallest normal number no denominator is zero (``z + epsilon >=
    epsilon`` where ``z >= 0``, ``z - epsilon < 0`` elsewhere), so one ``where`` gives the same numbers bit for
    bit in a third of the time: the sign tensor, its product and the zero check were a quarter of LRP's time on
    efficientnet_b0 and convnext_tiny (cProfile, one 224 px batch)."""
    if epsilon >= torch.finfo(z.dtype).tiny:
        return torch.where(z >= 0, z + epsilon, z - epsilon)
    den = z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z)  # LRP-0 (epsilon 0): zeros stay, and become 1
    return torch.where(den == 0, torch.ones_like(den), den)


class ReadsWeight:
    """A rule that reads the layer's ``weight`` and ``bias`` (LRP's on conv/linear layers): it holds for a layer
    that computes with them as nn.Conv2d's or nn.Linear's forward does. A subclass with a forward of its own
    (a weight standardized, masked or quantized inside ``forward``) may compute with another weight, so the
    relevance would be silently wrong: refused, unless a canonizer made it plain for the call
    (``canonize.StandardizedWeights``, which sets nn.Conv2d's forward on the instance)."""

    def refusal(self, module: nn.Module) -> str | None:
        """Why the rule cannot read ``module``'s weight (None: it can)."""
        base = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
        if not isinstance(module, base):
            return None
        forward = module.__dict__.get("forward", type(module).forward)
        if getattr(forward, "__func__", forward) is base.forward:
            return None
        return (
            f": its forward is not nn.{base.__name__}'s, and the rule reads the module's weight, "
            "which that forward may not compute with"
        )


def _params(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    return module.weight.detach(), None if module.bias is None else module.bias.detach()


def linear_forward(module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The conv/linear layer ``module`` applied to ``x`` with other parameters."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def transpose(module: nn.Module, s: Tensor, x_shape: torch.Size, weight: Tensor) -> Tensor:
    """``T(s; weight)``: the layer's input gradient for output gradient ``s`` (no forward pass needed)."""
    if isinstance(module, nn.Linear):
        return s @ weight
    if module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return torch.nn.grad.conv2d_input(
            x_shape, weight, s, module.stride, module.padding, module.dilation, module.groups
        )
    return vjp(lambda t: module._conv_forward(t, weight, None), torch.zeros(x_shape).to(s), s)


def vjp(fn, x: Tensor, s: Tensor) -> Tensor:
    """``s`` times the Jacobian of ``fn`` at ``x``, by autograd."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(x), x, s)
    return grad


class Epsilon(ReadsWeight):
    """LRP-epsilon (Bach et al. 2015); ``epsilon=0`` is LRP-0."""

    def __init__(self, epsilon: float = 1e-6, zero_bias: bool = False):
        self.epsilon, self.zero_bias = float(epsilon), zero_bias

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        weight, bias = _params(module)
        z = linear_forward(module, x, weight, None) if self.zero_bias and bias is not None else out
        return x * transpose(module, grad / stabilize(z, self.epsilon), x.shape, weight)


class AlphaBeta(ReadsWeight):
    """LRP-alpha-beta (Bach et al. 2015); ``alpha - beta = 1`` keeps relevance conserved."""

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, epsilon: float = 1e-6):
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-9:
            raise UserError(f"LRP alpha-beta needs alpha >= 0, beta >= 0 and alpha - beta = 1, got {alpha}, {beta}")
        self.alpha, self.beta, self.epsilon = float(alpha), float(beta), float(epsilon)

    def _part(self, module, xp, xn, wa, wb, bias, grad) -> Tensor:
        """``xp T(R/z; wa) + xn T(R/z; wb)`` with ``z = wa xp + wb xn + bias``."""
        z = linear_forward(module, xp, wa, bias)
        if xn is not None:
            z = z + linear_forward(module, xn, wb, None)
        s = grad / stabilize(z, self.epsilon)
        part = xp * transpose(module, s, xp.shape, wa)
        return part if xn is None else part + xn * transpose(module, s, xn.shape, wb)

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        weight, bias = _params(module)
        wp, wn = weight.clamp(min=0), weight.clamp(max=0)
        bp, bn = (None, None) if bias is None else (bias.clamp(min=0), bias.clamp(max=0))
        xp = x.clamp(min=0)
        xn = x.clamp(max=0) if (x < 0).any() else None  # after a ReLU: no negative inputs, half the work
        relevance = self.alpha * self._part(module, xp, xn, wp, wn, bp, grad)
        if self.beta:
            relevance = relevance - self.beta * self._part(module, xp, xn, wn, wp, bn, grad)
        return relevance


class ZPlus(AlphaBeta):
    """LRP-z+ (Montavon et al. 2017): alpha-beta with alpha = 1, beta = 0."""

    def __init__(self, epsilon: float = 1e-6):
        super().__init__(1.0, 0.0, epsilon)


class ZBox(ReadsWeight):
    """LRP-z^B for the first layer, inputs bounded by ``low`` and ``high`` (Montavon et al. 2017).

    ``low``/``high`` are numbers or tensors broadcasting to one image (e.g. ``3 x 1 x 1`` per channel),
    in the model's input space (after normalization).
    """

    def __init__(self, low, high, epsilon: float = 1e-6):
        self.low, self.high, self.epsilon = low, high, float(epsilon)

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        weight, _ = _params(module)
        wp, wn = weight.clamp(min=0), weight.clamp(max=0)
        low = torch.as_tensor(self.low).to(x).expand_as(x)
        high = torch.as_tensor(self.high).to(x).expand_as(x)
        z = linear_forward(module, x, weight, None)
        z = z - linear_forward(module, low, wp, None) - linear_forward(module, high, wn, None)
        s = grad / stabilize(z, self.epsilon)
        return (
            x * transpose(module, s, x.shape, weight)
            - low * transpose(module, s, x.shape, wp)
            - high * transpose(module, s, x.shape, wn)
        )


class Flat(ReadsWeight):
    """LRP-flat (Lapuschkin et al. 2019): a unit's relevance spread evenly over its receptive field."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = float(epsilon)

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        ones = torch.ones_like(module.weight)
        z = linear_forward(module, torch.ones_like(x[:1]), ones, None)
        return transpose(module, grad / stabilize(z, self.epsilon), x.shape, ones)


class Proportional:
    """A parameter-free linear map (average pooling, the residual ``Sum``) split by contribution."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = float(epsilon)

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        # module.forward, not module(...): the call's hooks must not fire again inside the backward pass
        return x * vjp(module.forward, x, grad / stabilize(out, self.epsilon))


class SignalTakeAll:
    """A product of a signal and a gate, stacked on the last dimension (``canonize.Product``): the
    signal (slot 0) takes all the relevance, the gate (slot 1) none (Arras et al. 2017)."""

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        return torch.stack([grad, torch.zeros_like(grad)], dim=-1)


class NormalizerConstant:
    """LayerNorm / LayerNorm2d / GroupNorm with sigma held constant, then LRP-epsilon (Ali et al. 2022)."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = float(epsilon)

    def refusal(self, module: nn.Module) -> str | None:
        """Why this rule cannot read ``module``'s normalized dimensions (None: it can)."""
        if isinstance(module, nn.GroupNorm) or type(module).forward is nn.LayerNorm.forward or _channels_first(module):
            return None
        return f": its rule needs nn.LayerNorm's own forward or a LayerNorm2d, not {type(module).__name__}'s"

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        return x * self.transposed(module, x, grad / stabilize(out, self.epsilon))

    def transposed(self, module: nn.Module, x: Tensor, s: Tensor, rstd: Tensor | None = None) -> Tensor:
        """``s`` through the transpose of the map with sigma constant, ``gamma * P x / sigma`` (``P`` the
        centering): symmetric, so the transpose is ``P (gamma s / sigma)``. ``rstd``: ``1 / sigma`` as the
        forward pass computed it, if known."""
        mean = _group_mean(module, x.shape)
        if rstd is None:
            rstd = mean((x - mean(x)).square()).add(module.eps).rsqrt()
        u = torch.mul(s, rstd).mul_(_per_channel(module, module.weight, x))
        return u.sub_(mean(u))


def _channels_first(module: nn.Module) -> bool:
    """torchvision's (and timm's) ``LayerNorm2d``: a LayerNorm over dimension 1 of an ``N x C x H x W`` map."""
    return isinstance(module, nn.LayerNorm) and type(module).__name__ == "LayerNorm2d"


def _group_mean(module: nn.Module, shape: torch.Size):
    """``t`` -> the mean over each normalized group of ``t``, broadcast back to ``shape``."""
    if isinstance(module, nn.GroupNorm):

        def group_mean(t: Tensor) -> Tensor:
            grouped = t.reshape(shape[0], module.num_groups, -1)
            return grouped.mean(-1, keepdim=True).expand_as(grouped).reshape(shape)

        return group_mean
    dims = (1,) if _channels_first(module) else tuple(range(-len(module.normalized_shape), 0))
    return lambda t: t.mean(dims, keepdim=True)


def _per_channel(module: nn.Module, gamma: Tensor | None, x: Tensor) -> Tensor | float:
    """The affine scale ``gamma`` shaped to broadcast against ``x`` (1 without one)."""
    if gamma is None:
        return 1.0
    gamma = gamma.detach()
    if isinstance(module, nn.GroupNorm) or _channels_first(module):
        return gamma.reshape(-1, *(1,) * (x.dim() - 2))
    return gamma


def softmax_relevance(x: Tensor, probs: Tensor, relevance: Tensor) -> Tensor:
    """AttnLRP's softmax rule (Achtibat et al. 2024, Proposition 3.1): ``R_in = x * (R - s * sum(R))`` over
    the last dimension, ``s = softmax(x)``.

    It is the epsilon rule on the softmax linearized at its input (each output ``s_j`` split over the inputs
    by ``x_i ds_j/dx_i``), with the decomposition's bias term ``sum_j R_j (1 - x_j + sum_i s_i x_i)`` not
    redistributed, as the paper and its library (``lxt``) leave it: the one place where AttnLRP does not
    conserve relevance, even with every bias of the net zero.
    """
    return x * (relevance - probs * relevance.sum(-1, keepdim=True))


def product_relevance(a: Tensor, b: Tensor, relevance: Tensor, total: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """AttnLRP's uniform rule for a bilinear product ``a @ b`` (Achtibat et al. 2024, Proposition 3.3): half
    the relevance to each operand, each half by the epsilon rule with the other operand held constant,
    ``R_a = a * ((R / 2z) @ b^T)``, ``R_b = b * (a^T @ (R / 2z))``.

    ``total`` is the ``z`` the product enters: ``a @ b`` itself, or with a constant added (Swin's relative
    position bias), which then keeps its share as a bias does under the epsilon rule. With nothing added
    and epsilon 0, ``R_a`` and ``R_b`` each sum to half of ``R``.
    """
    share = relevance / stabilize(2 * total, epsilon)
    return a * (share @ b.transpose(-2, -1)), b * (a.transpose(-2, -1) @ share)


# LRP-epsilon as a modified gradient (``mechanism``'s fast path): with ``R_t = t * g_t`` on every tensor, each
# rule above that ``composites.gradient_form`` translates becomes autograd's backward with the incoming ``g``
# scaled, so no rule transposes a layer itself.


def kept_share(z: Tensor, epsilon: float) -> Tensor:
    """``z / stab(z)``: the share of its relevance the epsilon rule passes down through ``z``'s layer,
    ``|z| / (|z| + epsilon)`` (0 at ``z = 0``; for epsilon 0, LRP-0: ``1[z != 0]``), in three kernels where
    no denominator can be zero (``stabilize``)."""
    if epsilon >= torch.finfo(z.dtype).tiny:
        share = z.abs()
        return share.div_(share + epsilon)
    return z / stabilize(z, epsilon)


def times_share(grad: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """``grad * kept_share(z, epsilon)`` in three kernels: ``grad - epsilon * grad / (|z| + epsilon)`` (exactly 0
    at ``z = 0``; where ``|z|`` is far below epsilon the share, itself that small, loses digits to the
    subtraction, not the sum of the relevance)."""
    if epsilon >= torch.finfo(z.dtype).tiny:
        return torch.addcdiv(grad, grad, z.abs().add_(epsilon), value=-epsilon)
    return grad * kept_share(z, epsilon)


class OutputShare:
    """The epsilon rule on a conv/linear layer (a batch norm merged into it: at the norm's output) and the
    proportional split of a sum or average pool, in gradient form: ``R_x = x * T(R_z / stab(z))`` is
    ``g_x = T(g_z * z / stab(z))``, autograd's own backward of the layer with ``g_z`` scaled by ``kept_share``."""

    def __init__(self, epsilon: float):
        self.epsilon = epsilon

    def scaled(self, out: Tensor, grad: Tensor) -> Tensor:
        return times_share(grad, out, self.epsilon)


class PassRatio:
    """``Pass`` in gradient form on an activation with ``h(0) = 0``: ``R_x = R_y`` is ``g_x = g_y * h(x) / x``
    (a ReLU's is its gradient and needs no rule; a SiLU's is ``sigmoid(x)``, one kernel). Elsewhere (a GELU's
    ``Phi(x)``: ``erf`` took four times as long) ``g_y * y / x``, 0 at ``x = 0``: there ``R_x = x g_x = 0``
    whatever ``g_x`` is, and every rule that reads ``g_x`` further down scales it by ``kept_share``, 0 at 0."""

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        if type(module) is nn.SiLU:
            return grad * torch.sigmoid(x)
        return torch.mul(grad, out).div_(x).nan_to_num_(0.0)


class NormalizerConstantGradient:
    """``NormalizerConstant`` in gradient form: ``g_x`` is the layer norm's gradient with sigma constant
    (``NormalizerConstant.transposed``) of ``g_y * y / stab(y)``."""

    def __init__(self, rule: NormalizerConstant, rstd: Tensor | None = None):
        self.rule, self.rstd = rule, rstd

    def at(self, module: nn.Module, out: Tensor) -> NormalizerConstantGradient:
        """The rule for one call of the layer norm that made ``out``, with the ``1 / sigma`` autograd's node
        of ``F.layer_norm`` kept (behind ``LayerNorm2d``'s permute: permuted back), if it kept one."""
        node = out.grad_fn
        if node is not None and node.name() == "PermuteBackward0":
            node = node.next_functions[0][0]
        if node is None or node.name() != "NativeLayerNormBackward0":
            return self
        rstd = node._saved_result2
        return NormalizerConstantGradient(self.rule, rstd.permute(0, 3, 1, 2) if _channels_first(module) else rstd)

    def backward(self, module: nn.Module, x: Tensor, out: Tensor, grad: Tensor) -> Tensor:
        return self.rule.transposed(module, x, times_share(grad, out, self.rule.epsilon), self.rstd)
