"""Rules for what a forward pass calls as functions, found by walking autograd's graph (issue 28).

Module hooks (``mechanism``) see leaf modules only. What a ``forward`` calls as a function leaves no
module to hook: ``F.relu``, ``torch.sigmoid``, ``F.avg_pool2d``, a residual ``x + branch``, a global
``x.mean([2, 3])``, or any other op. After the forward pass, ``rectify_functions`` walks the graph
between the target and the input and gives each such node the rule the composite gives its module,
asking the composite about a stand-in module:

- an activation (a rectification, a gate such as ``F.silu``, a layer norm): its module's rule on
  autograd's own node (``through_node``), or a refusal where the module is refused;
- an average pool (``F.avg_pool2d``): its module rebuilt from the node, which keeps its input;
- a sum of two tensors that both depend on the input (a residual ``+``, ``+=``, ``torch.add``) and a
  mean or sum over dimensions: ``canonize.Sum``'s and the average pool's rule (LRP's proportional
  split, ``rules.Proportional``) on the operands, which autograd does not keep, so ``operands_kept``
  records them during the forward pass (a ``TorchFunctionMode``, only where a rule needs them);
- a product of a signal and a sigmoid gate (a squeeze-and-excitation written by hand, ``x *
  torch.sigmoid(x)``): ``canonize.Product``'s rule (LRP: the signal takes all), autograd's gradient
  under a composite that lists no ``Product`` (the deconvnet's and guided backprop's, as for
  torchvision's SE block);
- an elementwise affine map of one such tensor (``x * c``, ``x / c``, ``-x``, ``x + c``, ``c - x``, the
  input's normalization written in a forward): ``Sum``'s rule read for a one-operand map (LRP: the
  operand takes all the relevance, where autograd's gradient scaled it by ``c``);
- a conv or linear layer (``F.conv2d``, ``F.linear``, ``x @ w``): autograd's gradient where the composite
  gives its module that (the deconvnet's transposed filters); a rule that needs the module (LRP's) refuses;
- a batch norm in eval mode (``F.batch_norm``): ``nn.BatchNorm2d``'s rule. Under LRP, right after a
  conv/linear module it is folded into that layer's rule as ``canonize.MergeBatchNorm`` folds the module
  (the layer's rule reads the folded weight and bias, the norm passes the relevance); elsewhere it passes
  it, as the module does. Its bias, which autograd does not keep, ``operands_kept`` records. In training
  mode (batch statistics) it is refused; the deconvnet and guided backprop keep its gradient;
- linear and shape ops (a view, ``torch.cat``, a max pool's switches): autograd's gradient, their
  definition under the deconvnet and guided backprop;
- anything else (``F.softsign``, a GELU written by hand, a product of two inputs that is no gate, a
  division by the input) is refused in one line naming the op, the module it follows and the methods
  that work: never the plain gradient under another method's name.

The ops inside a leaf module whose rule is autograd's gradient (the contrast normalization's
``F.local_response_norm`` under guided backprop) are that module's, as its hook would see them: a hook
marks them (``cover_hook``) and the walk leaves them alone.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from zfviz.attribution.canonize import MergeBatchNorm, Product, Sum, folded, with_params
from zfviz.attribution.composites import (
    AVG_POOLS,
    LAYER_NORMS,
    MAX_POOLS,
    NORMS,
    PASS_THROUGH,
    WEIGHTED,
    GradientForm,
)
from zfviz.attribution.state import CallState, Unsupported

_RELU = nn.ReLU()  # what a rectification called as a function is to a composite
# autograd's node of an activation called as a function (F.silu, torch.sigmoid, ...) -> its module, which
# the composite is asked about: a gate a composite refuses as a module is refused as a function too
_GATES = {
    "HardtanhBackward0": nn.Hardtanh,  # F.relu6, F.hardtanh
    "ClampBackward1": nn.Hardtanh,  # x.clamp(0, 6) (clamp(min=0) alone is a rectification: _rectifies)
    "ClampMinBackward0": nn.Hardtanh,
    "ClampMaxBackward0": nn.Hardtanh,
    "LeakyReluBackward0": nn.LeakyReLU,
    "LeakyReluBackward1": nn.LeakyReLU,
    "RreluWithNoiseBackward0": nn.RReLU,
    "EluBackward0": nn.ELU,  # F.elu, F.selu
    "EluBackward1": nn.ELU,
    "CeluBackward0": nn.CELU,
    "CeluBackward1": nn.CELU,
    "GeluBackward0": nn.GELU,
    "SiluBackward0": nn.SiLU,
    "HardswishBackward0": nn.Hardswish,
    "HardsigmoidBackward0": nn.Hardsigmoid,
    "SigmoidBackward0": nn.Sigmoid,
    "TanhBackward0": nn.Tanh,
    "SoftplusBackward0": nn.Softplus,
    "MishBackward0": nn.Mish,
    "LogSigmoidBackward0": nn.LogSigmoid,
    "PreluKernelBackward0": nn.PReLU,
    "GluBackward0": nn.GLU,
    "SoftmaxBackward0": nn.Softmax,  # attention's (Swin's, MaxViT's): no method of the family has its rule yet
    "LogSoftmaxBackward0": nn.LogSoftmax,
}
_ACTIVATIONS = (nn.ReLU, *dict.fromkeys(_GATES.values()))  # modules whose stock forward makes one of these nodes
_NORMS = {"NativeLayerNormBackward0": lambda: nn.LayerNorm(1), "NativeGroupNormBackward0": lambda: nn.GroupNorm(1, 1)}
_ATTENTION = "ScaledDotProduct"  # fused attention's nodes (nn.MultiheadAttention in ViT): its softmax, to a composite
# autograd's node of a pool called as a function, which keeps its input -> the module rebuilt from it (and
# the signal arriving at its output), so a rule that needs the module (LRP's proportional split) still acts
_POOLS: dict[str, Callable] = {
    "AvgPool2DBackward0": lambda node, _grad: nn.AvgPool2d(
        node._saved_kernel_size,
        node._saved_stride,
        node._saved_padding,
        node._saved_ceil_mode,
        node._saved_count_include_pad,
        node._saved_divisor_override,
    ),
    "AdaptiveAvgPool2DBackward0": lambda _node, grad: nn.AdaptiveAvgPool2d(grad.shape[-2:]),
}
# autograd's node of a batch norm called as a function (eval or training mode) -> what it is to a composite
_BATCH_NORM_OPS = frozenset(
    "NativeBatchNorm NativeBatchNormLegit NativeBatchNormLegitNoTraining BatchNormNoUpdate CudnnBatchNorm "
    "MiopenBatchNorm".split()
)
_BATCH_NORM = nn.BatchNorm2d(1)
_SUMS = ("AddBackward0", "SubBackward0")  # of two tensors: a residual's + (a - b is a + (-1) b)
_REDUCTIONS = ("MeanBackward0", "MeanBackward1", "SumBackward0", "SumBackward1")  # x.mean([2, 3]), torch.sum ...
_SIGMOID_GATES = ("SigmoidBackward0", "HardsigmoidBackward0")  # a gate in (0, 1): squeeze-and-excitation's
_MEAN = nn.AdaptiveAvgPool2d(1)  # what a mean or sum over dimensions is to a composite (a global average pool)
_SUM, _PRODUCT = Sum(), Product()
# elementwise and affine in one operand that depends on the input (x * c, x / c, -x, x + c, c - x): the
# proportional split of such a map gives that operand all the relevance, as a residual's sum with a constant
_AFFINE = frozenset("Add Sub Rsub Mul Div Neg".split())
# ops whose gradient is their definition under every method (``_base`` names: autograd's without Backward<n>)
_SHAPE = frozenset(
    "View UnsafeView Reshape ReshapeAlias ReshapeCopy Permute Transpose T Expand Squeeze Unsqueeze Clone LazyClone "
    "ToCopy Alias Cat Stack Split SplitWithSizes UnsafeSplit UnsafeSplitWithSizes Chunk Unbind Select Slice Narrow "
    "NarrowCopy Index UnsafeIndex IndexSelect Gather AsStrided Diagonal Flip Roll Rot90 Repeat Unfold Im2Col Col2Im "
    "PixelShuffle PixelUnshuffle ChannelShuffle ConstantPadNd ReflectionPad1D ReflectionPad2D ReflectionPad3D "
    "ReplicationPad1D ReplicationPad2D ReplicationPad3D Where MaskedFill Tril Triu".split()
)
_LINEAR = _SHAPE | frozenset(
    "Neg Add Sub Rsub Mul Div Cumsum Convolution ConvDepthwise2D ConvDepthwise3D SlowConv2D SlowConvDilated2D "
    "SlowConvTranspose2D MkldnnConvolution CudnnConvolution CudnnConvolutionTranspose MiopenConvolution "
    "MiopenDepthwiseConvolution Addmm Mm Bmm Matmul Mv Addmv Baddbmm Addbmm Linear MkldnnLinear NativeBatchNorm "
    "NativeBatchNormLegit NativeBatchNormLegitNoTraining BatchNormNoUpdate CudnnBatchNorm MiopenBatchNorm "
    "MaxPool2DWithIndices MaxPool2D MaxPool3DWithIndices AdaptiveMaxPool2D AdaptiveMaxPool3D MkldnnMaxPool2D Amax "
    "Amin Max Min AvgPool3D AdaptiveAvgPool3D MkldnnAdaptiveAvgPool2D MaxUnpool2D".split()
)
# a conv or linear layer called as a function (F.conv2d, F.linear, x @ w): the module a composite is asked about
_WEIGHTED_OPS = {
    **dict.fromkeys(
        "Convolution ConvDepthwise2D SlowConv2D MkldnnConvolution CudnnConvolution".split(), nn.Conv2d(1, 1, 1)
    ),
    **dict.fromkeys("Addmm Mm Bmm Matmul Mv Addmv Baddbmm Addbmm Linear MkldnnLinear".split(), nn.Linear(1, 1)),
}
# linear in each operand: a product where two operands depend on the input
_MULTILINEAR = frozenset("Mul Mm Bmm Matmul Addmm Baddbmm Addbmm Mv Addmv Linear Convolution".split())
# the leaf modules whose stock forward makes only nodes the walk reads itself: no hook marks their ops
_PLAIN = (*WEIGHTED, *PASS_THROUGH, *MAX_POOLS, *AVG_POOLS, *NORMS, *LAYER_NORMS, Sum, Product, *_ACTIVATIONS)


class Uncovered(nn.Module):
    """What an op no rule covers is to a method's ``supports`` (no composite lists it): a refusal names
    the methods that take any module (the gradient family, Grad-CAM, occlusion, RISE)."""


_UNCOVERED = Uncovered()


class Scaled(nn.Module):
    """What an elementwise affine map of one input-dependent operand (``x * c``, ``x / c``, ``-x``, ``x + c``)
    is to the walk: a linear map without parameters, so it gets the rule the composite gives ``Sum``."""


_SCALED = Scaled()


class _Reduction(nn.Module):
    """A mean or sum over dimensions as the forward pass called it, for a rule that needs a module."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


@cache
def _base(name: str) -> str:
    """Autograd's node name without ``Backward<n>``: the op (``MulBackward0`` -> ``Mul``)."""
    return re.sub(r"Backward\d*$", "", name)


def _stand_in(node, reach: set) -> nn.Module | None:
    """The module ``node`` stands for (the composite is asked about it), or None: a linear or shape op,
    or one no rule covers."""
    name = node.name()
    if _rectifies(node):
        return _RELU
    if name in _GATES or name in _NORMS or name in _POOLS or name.startswith(_ATTENTION):
        return _cached(name)
    if name in _SUMS and _inputs_reached(node, reach) == 2:
        return _SUM
    if name in _REDUCTIONS:
        return _MEAN
    if _base(name) in _BATCH_NORM_OPS:
        return _BATCH_NORM
    if name == "MulBackward0" and _inputs_reached(node, reach) == 2 and _gate_of(node) is not None:
        return _PRODUCT
    if _base(name) in _AFFINE and _inputs_reached(node, reach) == 1 and _scales(node, reach):
        return _SCALED
    return None


def _scales(node, reach: set) -> bool:
    """Whether the operand ``node`` reaches is one it scales or shifts (not a division's denominator)."""
    return _base(node.name()) != "Div" or node.next_functions[0][0] in reach


_STAND_INS: dict[str, nn.Module] = {}


def _cached(name: str) -> nn.Module:
    """The stand-in module of a gate's, a norm's, a pool's or attention's node, made once."""
    module = _STAND_INS.get(name)
    if module is None:
        make = _GATES.get(name) or _NORMS.get(name) or (lambda: nn.AvgPool2d(1) if name in _POOLS else nn.Softmax())
        module = _STAND_INS[name] = make()
    return module


def _inputs_reached(node, reach: set) -> int:
    return sum(child in reach for child, _ in node.next_functions)


def _gate_of(node) -> int | None:
    """Which operand of a product is a sigmoid gate (through views and expansions), if exactly one is."""
    gates = []
    for index, (child, _) in enumerate(node.next_functions):
        while child is not None and _base(child.name()) in _SHAPE and len(child.next_functions) == 1:
            child = child.next_functions[0][0]
        if child is not None and child.name() in _SIGMOID_GATES:
            gates.append(index)
    return gates[0] if len(gates) == 1 else None


def _rectifies(node) -> bool:
    """Whether autograd node ``node`` is a rectification, ``max(x, 0)``: ``F.relu``, ``torch.relu``,
    ``x.relu()`` and their in-place forms (``ReluBackward0``); ``F.threshold`` at 0 (its gradient is
    ReLU's); ``x.clamp(min=0)`` with no upper bound. Clipped or smooth gates (``relu6``, ``leaky_relu``,
    ``silu``) are not: they get their own modules' rules (``_GATES``)."""
    kind = node.name()
    if kind == "ReluBackward0":
        return True
    if kind in ("ThresholdBackward0", "ThresholdBackward1"):
        return node._saved_threshold == 0
    if kind == "ClampMinBackward0":
        return node._saved_min == 0
    return kind == "ClampBackward1" and node._saved_min == 0 and node._saved_max is None


def _what(module: nn.Module) -> str:
    """How a refusal names an op called as a function."""
    names = {
        _RELU: "a rectification",
        _SUM: "an addition",
        _MEAN: "a mean or sum",
        _PRODUCT: "a gating product",
        _BATCH_NORM: "a batch norm",
    }
    return next((what for stand_in, what in names.items() if module is stand_in), type(module).__name__)


def walk_finds(composite, name: str, module: nn.Module) -> bool:
    """Whether ``rectify_functions`` gives ``module`` its rule without a hook: an activation with its
    class's own forward (``nn.ReLU``, ``nn.SiLU``, ``nn.ReLU6`` ...), whose autograd node the walk of the
    graph finds as it finds a function's, and a rule that acts on that node (``through_node``)."""
    kind = next((k for k in _ACTIVATIONS if isinstance(module, k)), None)
    if kind is None or type(module).forward is not kind.forward:
        return False
    try:
        return hasattr(composite.rule_for(name, module), "through_node")
    except Unsupported:
        return False  # the module's hook says so, naming the module


def opaque(module: nn.Module) -> bool:
    """Whether a leaf module that keeps autograd's gradient may make ops the walk would refuse (a contrast
    normalization's, a module with a forward of its own): ``cover_hook`` marks them as the module's."""
    return not any(type(module).forward is kind.forward for kind in _PLAIN)


def cover_hook(state: CallState) -> Callable:
    """A forward hook: the nodes between the module's inputs and its output are the module's."""

    def hook(module, inputs, output):
        node, stops = getattr(output, "grad_fn", None), {t.grad_fn for t in inputs if isinstance(t, Tensor)}
        if node is not None and node not in stops:  # a module returning its input made no op of its own
            state.opaque[node] = stops

    return hook


def _plan(composite, module: nn.Module) -> tuple[object, str | None]:
    """(the rule ``module``'s op called as a function gets, why it is refused): the composite's rule for
    the module, usable where it acts on autograd's node (its ``through_node``) or the walk rebuilds the
    module from what the forward pass kept (``_REBUILT``); else a refusal. A gating product a composite
    does not list keeps autograd's gradient (the deconvnet's and guided backprop's SE convention)."""
    if module is _PRODUCT and not composite.supports(module):
        return None, None
    if module is _SCALED:
        return _plan(composite, _SUM)[0], None
    try:
        rule = composite.rule_for(type(module).__name__, module)
    except Unsupported:
        return None, ""
    if rule is None or type(module) in _REBUILT or hasattr(rule, "through_node"):
        return rule, None
    kind = type(module).__name__
    return None, f": its {kind} rule ({type(rule).__name__}) needs an nn.{kind} module, not a function"


def _planned(module: nn.Module, state: CallState) -> tuple[object, str | None]:
    """``_plan`` for the call's composite, once per stand-in type and call."""
    if type(module) not in state.plans:
        state.plans[type(module)] = _plan(state.composite, module)
    return state.plans[type(module)]


def _graph(root) -> Iterator:
    """Every node of the autograd graph below ``root``, each once, nearest first (iteratively: a deep
    net's graph would overflow a recursion)."""
    seen, queue = set(), deque([root])
    while queue:
        node = queue.popleft()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        queue.extend(child for child, _ in node.next_functions)


def _reaching(root, state: CallState) -> set:
    """The nodes below ``root`` that depend on the input: those from which a leaf that is no parameter of
    the model is reached. Depth first, each node finished after its children (iteratively)."""
    params = {id(p) for p in state.model.parameters()}
    reach, done, stack = set(), set(), [(root, False)]
    while stack:
        node, finished = stack.pop()
        if node is None or (not finished and node in done):
            continue
        if finished:
            done.add(node)
            variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf's
            if (variable is not None and id(variable) not in params) or any(c in reach for c, _ in node.next_functions):
                reach.add(node)
            continue
        stack.append((node, True))
        stack.extend((child, False) for child, _ in node.next_functions if child is not None and child not in done)
    return reach


def _below(node, stops: set) -> set:
    """``node`` and the nodes below it down to ``stops`` (a module's ops, from its output to its inputs)."""
    found, queue = set(), deque([node])
    while queue:
        current = queue.popleft()
        if current is None or current in found or current in stops:
            continue
        found.add(current)
        queue.extend(child for child, _ in current.next_functions)
    return found


def rectify_functions(point: Tensor, state: CallState) -> None:
    """Every op between ``point`` and the input that no module's rule claimed gets the composite's rule
    for its stand-in module (the module docstring lists them), or the call is refused in one line: a
    module's refusal where it is met, nearest the target first; else an op no rule covers.

    Module hooks see leaf modules only, so without this a guided backprop of a net calling ``F.relu``
    was its plain gradient, and LRP's relevance crossed a residual ``+`` twice. One walk of the graph
    per forward pass (cheap next to the pass), none without rules.
    """
    if point.grad_fn is None or state.composite is None:
        return
    reach, inside, uncovered = _reaching(point.grad_fn, state), set(), None
    for node in _graph(point.grad_fn):
        if node not in reach or node in inside or node in state.claimed:
            continue
        if node in state.opaque:
            inside |= _below(node, state.opaque[node])
            continue
        module = _stand_in(node, reach)
        if module is not None:
            _give_rule(node, module, state)
        elif uncovered is None:
            uncovered = _refusal(node, reach, state)
    if uncovered is not None:
        raise uncovered


def _give_rule(node, module: nn.Module, state: CallState) -> None:
    """``module``'s rule on ``node``, by a hook on the node; a refusal raised at once."""
    rule, refusal = _planned(module, state)
    if refusal is not None:
        after = _made_after(node, state)
        within = state.model.get_submodule(after) if after != "the input" else None
        raise Unsupported(f"{_what(module)} called as a function after {after}", module, refusal, node.name(), within)
    if rule is not None:
        build = _REBUILT.get(type(module))
        hook = build(rule, node, state) if build is not None else _through_node(rule, state)
        state.claimed.add(node)
        state.graph_hooks.append(node.register_hook(hook))


def _refusal(node, reach: set, state: CallState) -> Unsupported | None:
    """Why ``node`` is refused (None: a linear or shape op, or one of zfviz's own functions)."""
    name = node.name()
    base = _base(name)
    if name.startswith("torch::autograd::"):
        return None  # the input's leaf (AccumulateGrad); an in-place copy into a slice (CopySlices)
    if _ours(node):
        return None
    if base in _MULTILINEAR and _inputs_reached(node, reach) >= 2:
        why = ": a product of two tensors that both depend on the input, neither a sigmoid gate"
    elif base == "Div" and len(node.next_functions) > 1 and node.next_functions[1][0] in reach:
        why = ": a division by a tensor that depends on the input"
    elif base in _WEIGHTED_OPS:
        return _weighted_refusal(node, base, state)
    elif base in _LINEAR or base.startswith("Upsample"):
        return None
    else:
        why = ": no rule covers it"
    where = f"{base.lower()} called as a function after {_made_after(node, state)}"
    return Unsupported(where, _UNCOVERED, why, kind=name)


def _ours(node) -> bool:
    """Whether ``node`` is a torch.autograd.Function's (``<Function>Backward``) of zfviz's own passes."""
    forward_cls = getattr(node, "_forward_cls", None) if node.name().endswith("Backward") else None
    return forward_cls is not None and forward_cls.__module__.startswith("zfviz.")


def _weighted_refusal(node, base: str, state: CallState) -> Unsupported | None:
    """A conv or linear layer called as a function keeps autograd's gradient where its module would (the
    deconvnet's transposed filters); a rule that needs the module (LRP's) refuses it."""
    module = _WEIGHTED_OPS[base]
    refusal = _planned(module, state)[1]
    if refusal is None:
        return None
    where = f"{type(module).__name__} called as a function after {_made_after(node, state)}"
    return Unsupported(where, module, refusal, kind=node.name())


def _through_node(rule, state: CallState) -> Callable:
    """A post-hook on an activation's autograd node: its input gradient becomes the rule's."""

    def hook(grad_inputs, grad_outputs):
        return (rule.through_node(grad_inputs[0], grad_outputs[0]),) if state.routing else None

    return hook


def _rebuilt(rule, node, state: CallState) -> Callable:
    """A post-hook on a pool's node: its input gradient becomes ``rule.backward`` of the module rebuilt
    from the node, at the input it kept (read now: the backward pass frees it)."""
    x, build = node._saved_self.detach(), _POOLS[node.name()]

    def hook(grad_inputs, grad_outputs):
        if not state.routing:
            return None
        module = build(node, grad_outputs[0])
        return (rule.backward(module, x, module(x), grad_outputs[0]),)

    return hook


def _kept(node, module: nn.Module, state: CallState) -> tuple:
    """What the forward pass recorded for ``node`` (``operands_kept``); refused where nothing was, or an
    operand changed in place since."""
    record = state.kept.get(node)
    why = None
    if record is None:
        why = ": its rule needs the operands, which autograd does not keep and this call did not see"
    elif any(t._version != version for t, version in record[0]):
        why = ": its rule needs the operands, and one was changed in place after it"
    if why is not None:
        where = f"{_what(module)} called as a function after {_made_after(node, state)}"
        raise Unsupported(where, module, why, kind=node.name())
    return record


def _split_sum(rule, node, state: CallState) -> Callable:
    """A post-hook on ``a + alpha b`` (or ``a - alpha b``) of two tensors that depend on the input: the
    rule of ``canonize.Sum`` on the two contributions stacked (LRP: in proportion to them)."""
    ((a, _), (b, _)), _ = _kept(node, _SUM, state)
    b = b * (node._saved_alpha * (-1 if node.name() == "SubBackward0" else 1))
    stacked = torch.stack(torch.broadcast_tensors(a, b), dim=-1)
    out = stacked.sum(dim=-1)

    def hook(grad_inputs, grad_outputs):
        if not state.routing:
            return None
        relevance = rule.backward(_SUM, stacked, out, grad_outputs[0])
        return relevance[..., 0].sum_to_size(a.shape), relevance[..., 1].sum_to_size(b.shape)

    return hook


def _split_mean(rule, node, state: CallState) -> Callable:
    """A post-hook on a mean or sum over dimensions: the average pool's rule on the call rebuilt as a
    module, at the input the forward pass kept (LRP: in proportion to the positions)."""
    ((x, _),), fn = _kept(node, _MEAN, state)
    module = _Reduction(fn)

    def hook(grad_inputs, grad_outputs):
        if not state.routing:
            return None
        return (rule.backward(module, x, module.forward(x), grad_outputs[0]),)

    return hook


def _split_product(rule, node, state: CallState) -> Callable:
    """A post-hook on ``signal * gate``: ``canonize.Product``'s rule on the two stacked (LRP: the signal
    takes all). The product's node keeps both factors."""
    gate = _gate_of(node)
    factors = (node._saved_self.detach(), node._saved_other.detach())
    signal, gated = factors[1 - gate], factors[gate]
    stacked = torch.stack(torch.broadcast_tensors(signal, gated), dim=-1)
    out = factors[0] * factors[1]

    def hook(grad_inputs, grad_outputs):
        if not state.routing:
            return None
        relevance = rule.backward(_PRODUCT, stacked, out, grad_outputs[0])
        parts = (relevance[..., 0].sum_to_size(signal.shape), relevance[..., 1].sum_to_size(gated.shape))
        return parts if gate == 1 else parts[::-1]

    return hook


def _passed(node, state: CallState) -> Callable:
    """A post-hook on an elementwise affine map of one operand: under a rule that splits linear maps in
    proportion, that operand takes all the relevance (``c x / (c x)``), summed to its shape."""

    leaves = [getattr(child, "variable", None) is not None for child, _ in node.next_functions]  # parameters'

    def hook(grad_inputs, grad_outputs):
        if not state.routing:
            return None
        relevance = grad_outputs[0]
        pairs = zip(grad_inputs, leaves, strict=True)
        return tuple(g if g is None or leaf else relevance.sum_to_size(g.shape) for g, leaf in pairs)

    return hook


def _batch_norm(rule, node, state: CallState) -> Callable:
    """A post-hook on a batch norm called as a function: the input's gradient slot becomes ``rule``'s (LRP's
    pass), the parameters' slots stay. Right after a conv/linear module whose rule a composite merging batch
    norms applies, the norm is first folded into that rule (``_fold_into``), as ``MergeBatchNorm`` folds a module."""
    if getattr(node, "_saved_training", False):
        where = f"a batch norm called as a function after {_made_after(node, state)}"
        raise Unsupported(where, _BATCH_NORM, ": in training mode (batch statistics): no rule covers it", node.name())
    below = node.next_functions[0][0]
    if below in state.made_by and any(isinstance(c, MergeBatchNorm) for c in state.composite.canonizers):
        _fold_into(below, node, state)

    def hook(grad_inputs, grad_outputs):
        if not state.routing:
            return None
        return (rule.through_node(grad_inputs[0], grad_outputs[0]), *grad_inputs[1:])

    return hook


def _fold_into(routed, node, state: CallState) -> None:
    """The eval-mode batch norm ``node`` folded into the rule of the module whose output it reads (``routed``,
    its ``mechanism._Routed`` node): that rule reads the folded layer and the norm's output (``folded``)."""
    layer = routed.module
    if not isinstance(layer, WEIGHTED):
        return
    record = state.kept.get(node)
    if record is None or hasattr(routed, "folded"):
        why = ": its rule folds it into that layer, which needs F.batch_norm's bias (this call did not see it)"
        if record is not None:
            why = ": its rule folds it into that layer, which another batch norm was already folded into"
        raise Unsupported(f"a batch norm called as a function after {state.made_by[routed]}", _BATCH_NORM, why)
    weight, bias, scale, shift = folded(
        layer, node._saved_running_mean, node._saved_running_var, node._saved_eps, node._saved_weight, record[1]
    )
    routed.folded = (with_params(layer, weight, bias), scale, shift)


# stand-in type -> the post-hook that applies a rule needing the module, from what the node or the forward pass kept
_REBUILT: dict[type, Callable] = {
    nn.BatchNorm2d: _batch_norm,
    nn.AvgPool2d: _rebuilt,
    nn.AdaptiveAvgPool2d: _split_mean,
    Sum: _split_sum,
    Product: _split_product,
    Scaled: lambda rule, node, state: _passed(node, state),
}


def _made_after(node, state: CallState) -> str:
    """The module nearest above ``node`` in the graph: a routed module whose output it reads, or one
    whose parameter it uses (``the input``: none)."""
    owners = {id(p): name.rpartition(".")[0] for name, p in state.model.named_parameters()}
    for above in _graph(node):
        if above in state.made_by:
            return state.made_by[above]
        variable = getattr(above, "variable", None)  # an AccumulateGrad node: a parameter's
        if variable is not None and id(variable) in owners:
            return owners[id(variable)]
    return "the input"


_ADDS = frozenset(("add", "__add__", "__iadd__", "add_", "sub", "__sub__", "__isub__", "sub_"))
_REDUCERS = frozenset(("mean", "sum", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"))


class _Keeper(TorchFunctionMode):
    """Records, for the forward pass, what autograd's sum, mean and batch-norm nodes do not keep: by node,
    each operand detached with its version (a later in-place change is refused, not read) and, for a
    reduction, the call itself; for ``F.batch_norm``, its bias. Only calls the program makes are seen, not
    those inside a function."""

    def __init__(self, kept: dict) -> None:
        super().__init__()
        self.kept = kept

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func is F.batch_norm:
            return self._batch_norm(func, args, kwargs)
        if name not in _ADDS and name not in _REDUCERS:
            return func(*args, **kwargs)
        operands = [t for t in (*args, *kwargs.values()) if isinstance(t, Tensor)]
        in_place = name in ("__iadd__", "add_", "__isub__", "sub_") and len(operands) == 2
        before = operands[0].detach().clone() if in_place else None  # the sum overwrites it
        out = func(*args, **kwargs)
        node = getattr(out, "grad_fn", None)
        if node is not None and name in _ADDS and node.name() in _SUMS and len(operands) == 2:
            first = operands[0].detach() if before is None else before
            self.kept[node] = ((_versioned(first), _versioned(operands[1].detach())), None)
        elif node is not None and name in _REDUCERS and node.name() in _REDUCTIONS and _only_first(operands, args):
            rest = args[1:]
            self.kept[node] = ((_versioned(operands[0].detach()),), lambda t: func(t, *rest, **kwargs))
        return out

    def _batch_norm(self, func, args: tuple, kwargs: dict) -> Tensor:
        """``F.batch_norm(input, running_mean, running_var, weight, bias, ...)``: its bias, by its node."""
        out = func(*args, **kwargs)
        if out.grad_fn is not None:
            bias = kwargs["bias"] if "bias" in kwargs else (args[4] if len(args) > 4 else None)
            self.kept[out.grad_fn] = ((), None if bias is None else bias.detach())
        return out


def _only_first(operands: list, args: tuple) -> bool:
    """Whether the one tensor of a call is its first argument (a reduction of it)."""
    return len(operands) == 1 and len(args) > 0 and args[0] is operands[0]


def _versioned(t: Tensor) -> tuple[Tensor, int]:
    return t, t._version


def keeps_operands(composite) -> bool:
    """Whether ``composite``'s rule for a sum or a mean needs operands autograd does not keep (LRP's, not in
    gradient form: there a sum called as a function is no gradient's business, ``gradient_form_holds``)."""
    if isinstance(composite, GradientForm):
        return False
    return any(_plan(composite, module)[0] is not None for module in (_SUM, _MEAN))


class NotGradientForm(Exception):
    """An op of the forward pass whose LRP rule is not autograd's gradient in gradient form (a residual ``+``
    or a GELU called as a function, attention): the explicit rules run instead (``mechanism.backward``)."""


_MAX_POOL_OPS = frozenset("MaxPool2DWithIndices MaxPool2D AdaptiveMaxPool2D MkldnnMaxPool2D".split())


def _gradient_is_rule(node, reach: set) -> bool:
    """Whether LRP-epsilon in gradient form is autograd's own gradient at ``node``, an op no module claimed:
    the input's leaf and zfviz's own passes, a rectification (its gradient is ``h(x) / x``), a shape op or
    max pool (the gradient is their rule), a product or quotient by a constant (``y = c x``: ``R_x = R_y``)."""
    name = node.name()
    base = _base(name)
    if name.startswith("torch::autograd::") or _rectifies(node) or base in _SHAPE or base in _MAX_POOL_OPS:
        return True
    if _ours(node):
        return True
    return base in ("Mul", "Div", "Neg") and _inputs_reached(node, reach) == 1 and _scales(node, reach)


def gradient_form_holds(point: Tensor, state: CallState) -> None:
    """``rectify_functions`` for a composite in gradient form: every op between ``point`` and the input that
    no module claimed (``cover_hook``) must be one whose gradient is its rule, else ``NotGradientForm``."""
    if point.grad_fn is None:
        return
    reach, inside = _reaching(point.grad_fn, state), set()
    for node in _graph(point.grad_fn):
        if node not in reach or node in inside:
            continue
        if node in state.opaque:
            inside |= _below(node, state.opaque[node])
        elif not _gradient_is_rule(node, reach):
            raise NotGradientForm(node.name())


@contextmanager
def operands_kept(state: CallState) -> Iterator[None]:
    """Inside the block (a forward pass), the operands of sums and means are kept for the walk, where a
    rule of ``state``'s composite needs them (LRP's); otherwise nothing runs per op."""
    keep = state.composite is not None and keeps_operands(state.composite)
    with _Keeper(state.kept) if keep else nullcontext():
        yield
